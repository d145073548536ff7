#![doc = include_str!("../README.md")]

mod backup;
mod database;
mod error;
mod journal;
mod ledger;
mod lint;
mod metrics;
mod probe;
mod runner;
mod session;
mod source;
mod watch;

pub use backup::{count_list_entries, parse_tool_version};
pub use database::{Database, TlsMode, DEFAULT_CONNECT_TIMEOUT};
pub use journal::PostgresJournal;
pub use ledger::{LedgerEntry, LedgerState, BACKUPS_TABLE, MIGRATIONS_TABLE, ROW_COUNTS_TABLE};
pub use lint::{lint_expand_file, refuse_findings, Finding, Rule};
pub use metrics::{decode_sql_number, PostgresMetrics, STATEMENTS_QUERY};
pub use runner::{
    Expectation, PlannedMigration, PostgresMigrations, Resolution, VerificationQuery,
    MIGRATION_LOCK_KEY,
};
pub use session::{BackupSettings, MigrationSettings};
pub use source::{
    checksum, split_statements, Migration, MigrationFile, MigrationSource, Statement,
};
