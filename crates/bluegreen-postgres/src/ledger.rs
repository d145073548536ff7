//! The ledger tables the runner keeps in the target database.
//!
//! * `bluegreen_migrations`: one row per migration version: its file, SHA-256
//!   checksum (and its down file's, `down_checksum`, added to older ledgers
//!   by `ADD COLUMN IF NOT EXISTS`; `NULL` in rows written before), phase, state (`applying`, `applied`, `failed`, `reverting`,
//!   `reverted`), whether the last attempt ran outside a transaction and how
//!   many of its statements completed, the deployment and backup it ran
//!   under, and the last error.
//! * `bluegreen_backups`: every backup taken, with its verification.
//! * `bluegreen_row_counts`: row counts of the invariant tables taken before
//!   a phase was applied, per deployment.

use std::fmt;

use bluegreen_core::{ErrorKind, MigrationPhase, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient};

use crate::error::{err, map_pg};

/// The ledger of migrations.
pub const MIGRATIONS_TABLE: &str = "bluegreen_migrations";
/// The ledger of backups.
pub const BACKUPS_TABLE: &str = "bluegreen_backups";
/// Row counts taken before a phase, for the row-count invariants.
pub const ROW_COUNTS_TABLE: &str = "bluegreen_row_counts";

/// Serialises schema creation between concurrent runners (transaction-level,
/// held for milliseconds).
const SCHEMA_LOCK_KEY: i64 = 0x6267_5f73_6368_656d; // "bg_schem"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bluegreen_migrations (
    version          bigint PRIMARY KEY,
    name             text NOT NULL,
    file_name        text NOT NULL,
    checksum         text NOT NULL,
    phase            text NOT NULL,
    reversible       boolean NOT NULL,
    state            text NOT NULL,
    no_transaction   boolean NOT NULL DEFAULT false,
    statements_done  integer NOT NULL DEFAULT 0,
    statements_total integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    deployment_id    text,
    backup_id        text,
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      bigint,
    reverted_by      text,
    last_error       text
);
ALTER TABLE bluegreen_migrations ADD COLUMN IF NOT EXISTS down_checksum text;
CREATE TABLE IF NOT EXISTS bluegreen_backups (
    id              text PRIMARY KEY,
    deployment_id   text NOT NULL,
    location        text NOT NULL,
    bytes           bigint,
    taken_at_ms     bigint NOT NULL,
    server_version  text NOT NULL,
    pg_dump_version text NOT NULL,
    entries         bigint,
    min_entries     bigint,
    passed          boolean,
    verified_at     timestamptz
);
CREATE TABLE IF NOT EXISTS bluegreen_row_counts (
    deployment_id text NOT NULL,
    phase         text NOT NULL,
    table_name    text NOT NULL,
    row_count     bigint NOT NULL,
    counted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, phase, table_name)
);
";

/// Creates the ledger tables when missing. Safe to run concurrently.
pub(crate) async fn ensure_schema(client: &mut Client, label: &str) -> Result<()> {
    let ctx = format!("cannot create the ledger tables in {label}");
    let tx = client
        .transaction()
        .await
        .map_err(|e| map_pg(e, "ledger", &ctx))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .map_err(|e| map_pg(e, "ledger", &ctx))?;
    tx.batch_execute(SCHEMA)
        .await
        .map_err(|e| map_pg(e, "ledger", &ctx))?;
    tx.commit().await.map_err(|e| map_pg(e, "ledger", &ctx))
}

/// Where a migration stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// An attempt to apply it started and has not finished (or its process died).
    Applying,
    /// Applied.
    Applied,
    /// The last attempt to apply it failed.
    Failed,
    /// An attempt to revert it started and has not finished.
    Reverting,
    /// Reverted: pending again.
    Reverted,
}

impl LedgerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LedgerState::Applying => "applying",
            LedgerState::Applied => "applied",
            LedgerState::Failed => "failed",
            LedgerState::Reverting => "reverting",
            LedgerState::Reverted => "reverted",
        }
    }

    fn parse(s: &str) -> Option<LedgerState> {
        Some(match s {
            "applying" => LedgerState::Applying,
            "applied" => LedgerState::Applied,
            "failed" => LedgerState::Failed,
            "reverting" => LedgerState::Reverting,
            "reverted" => LedgerState::Reverted,
            _ => return None,
        })
    }
}

impl fmt::Display for LedgerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the migration ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The version.
    pub version: u64,
    /// The name.
    pub name: String,
    /// The up file it was applied from.
    pub file_name: String,
    /// The SHA-256 of that file when it was applied.
    pub checksum: String,
    /// The SHA-256 of its down file when it was applied; `None` when it had
    /// none, or the row was written before down files were recorded.
    pub down_checksum: Option<String>,
    /// Its phase.
    pub phase: MigrationPhase,
    /// Whether it had a down file.
    pub reversible: bool,
    /// Where it stands.
    pub state: LedgerState,
    /// Whether the last attempt (apply or revert) ran outside a transaction.
    pub no_transaction: bool,
    /// Statements the last no-transaction attempt completed.
    pub statements_done: u32,
    /// Statements of that attempt's file.
    pub statements_total: u32,
    /// Attempts to apply it so far.
    pub attempts: u32,
    /// The deployment it last ran under.
    pub deployment_id: Option<String>,
    /// The backup taken before it ran.
    pub backup_id: Option<String>,
    /// The deployment that reverted it, if any.
    pub reverted_by: Option<String>,
    /// How long the last successful run took, in milliseconds.
    pub duration_ms: Option<i64>,
    /// The last error, if its last attempt failed.
    pub last_error: Option<String>,
}

impl LedgerEntry {
    /// Half-applied: a no-transaction apply or revert stopped part way, so
    /// the schema may be anywhere between before and after. Needs a human.
    pub fn is_dirty(&self) -> bool {
        self.no_transaction
            && matches!(
                self.state,
                LedgerState::Applying | LedgerState::Failed | LedgerState::Reverting
            )
    }

    /// In force: applied, or a transactional revert of it was interrupted
    /// (its transaction rolled back, so it is still applied).
    pub fn is_applied(&self) -> bool {
        match self.state {
            LedgerState::Applied => true,
            LedgerState::Reverting => !self.no_transaction,
            _ => false,
        }
    }

    /// An attempt that was cut short or failed without leaving anything
    /// behind (its transaction rolled back): the migration is pending again.
    pub fn was_interrupted(&self) -> bool {
        !self.no_transaction
            && matches!(
                self.state,
                LedgerState::Applying | LedgerState::Failed | LedgerState::Reverting
            )
    }
}

/// Reads the ledger, oldest version first. An absent ledger is empty.
pub(crate) async fn read_ledger(
    client: &impl GenericClient,
    label: &str,
) -> Result<Vec<LedgerEntry>> {
    let ctx = format!("cannot read the migration ledger of {label}");
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('bluegreen_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| map_pg(e, "ledger", &ctx))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    // `to_jsonb(m)` reads `down_checksum` from a ledger an older runner
    // created without it too (status and dry runs never alter the ledger).
    let rows = client
        .query(
            "SELECT version, name, file_name, checksum, phase, reversible, state, no_transaction,
                    statements_done, statements_total, attempts, deployment_id, backup_id,
                    reverted_by, duration_ms, last_error,
                    to_jsonb(m) ->> 'down_checksum'
             FROM bluegreen_migrations m ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| map_pg(e, "ledger", &ctx))?;
    rows.iter()
        .map(|r| {
            let version: i64 = r.get(0);
            let phase: String = r.get(4);
            let state: String = r.get(6);
            let corrupt = |what: &str| {
                err(
                    ErrorKind::Corrupt,
                    "ledger",
                    format!("{MIGRATIONS_TABLE} in {label}: version {version} has {what}"),
                )
            };
            Ok(LedgerEntry {
                version: u64::try_from(version).map_err(|_| corrupt("a negative version"))?,
                name: r.get(1),
                file_name: r.get(2),
                checksum: r.get(3),
                down_checksum: r.get(16),
                phase: match phase.as_str() {
                    "expand" => MigrationPhase::Expand,
                    "contract" => MigrationPhase::Contract,
                    _ => return Err(corrupt(&format!("an unknown phase `{phase}`"))),
                },
                reversible: r.get(5),
                state: LedgerState::parse(&state)
                    .ok_or_else(|| corrupt(&format!("an unknown state `{state}`")))?,
                no_transaction: r.get(7),
                statements_done: r.get::<_, i32>(8).max(0) as u32,
                statements_total: r.get::<_, i32>(9).max(0) as u32,
                attempts: r.get::<_, i32>(10).max(0) as u32,
                deployment_id: r.get(11),
                backup_id: r.get(12),
                reverted_by: r.get(13),
                duration_ms: r.get(14),
                last_error: r.get(15),
            })
        })
        .collect()
}
