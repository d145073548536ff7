//! Shared test support: the server started by scripts/test, a database per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use bluegreen_core::{MigrationContext, MigrationPhase};
use bluegreen_postgres::{
    BackupSettings, Database, MigrationSettings, MigrationSource, PostgresMigrations,
};

/// The superuser URL exported by scripts/services/postgres.sh, with the
/// server's CA as `sslrootcert`: TLS verified (`verify-full`, the default),
/// as a user reaches a server whose certificate a private CA signed.
pub fn server_url() -> String {
    format!("{}?sslrootcert={}", plain_server_url(), server_ca())
}

/// The superuser URL as exported, without TLS parameters.
pub fn plain_server_url() -> String {
    std::env::var("BLUEGREEN_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "BLUEGREEN_TEST_PG_URL is not set: run scripts/test, which starts PostgreSQL \
             (scripts/services/postgres.sh) and exports it"
        )
    })
}

/// The server's certificate, exported by the same script.
pub fn server_ca() -> String {
    std::env::var("BLUEGREEN_TEST_PG_CA").unwrap_or_else(|_| {
        panic!("BLUEGREEN_TEST_PG_CA is not set: run scripts/test (scripts/services/postgres.sh exports it)")
    })
}

/// A database of this test's own, created afresh (dropped first if an
/// earlier run left it).
pub async fn fresh_database(name: &str) -> Database {
    let admin = Database::from_url(&server_url()).expect("BLUEGREEN_TEST_PG_URL parses");
    let client = admin.connect().await.expect("connect to the test server");
    let db = format!("bgt_{name}");
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .expect("drop the test database an earlier run left");
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create the test database");
    admin.with_dbname(&db)
}

/// Settings for tests: short waits, backups in a temporary directory.
pub fn settings(backup_dir: PathBuf) -> MigrationSettings {
    MigrationSettings {
        lock_wait: Duration::from_secs(2),
        lock_poll: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_millis(400),
        backup: BackupSettings {
            dir: backup_dir,
            ..BackupSettings::default()
        },
        ..MigrationSettings::default()
    }
}

/// A runner over in-memory files with test settings.
pub fn runner(
    db: &Database,
    files: &[(&str, &str)],
    backups: &tempfile::TempDir,
) -> PostgresMigrations {
    let source =
        MigrationSource::from_files(files.iter().map(|(n, s)| (n.to_string(), s.to_string())))
            .expect("the test migrations load");
    PostgresMigrations::new(db.clone(), source)
        .with_settings(settings(backups.path().to_path_buf()))
}

pub fn ctx(deployment: &str) -> MigrationContext {
    MigrationContext {
        deployment_id: deployment.to_string(),
        backup_id: None,
    }
}

pub fn versions(ms: &[bluegreen_core::MigrationInfo]) -> Vec<u64> {
    ms.iter().map(|m| m.version).collect()
}

pub const EXPAND: MigrationPhase = MigrationPhase::Expand;
pub const CONTRACT: MigrationPhase = MigrationPhase::Contract;

/// The reference deployment's migrations: an orders table, the
/// order_metadata column (expand, reversible) and dropping a legacy column
/// (contract, irreversible).
pub const ORDERS: &[(&str, &str)] = &[
    (
        "0001_create_orders.up.sql",
        "-- bluegreen: reversible\nCREATE TABLE orders (id bigint PRIMARY KEY, legacy_status text);\n\
         INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 3) g;",
    ),
    ("0001_create_orders.down.sql", "DROP TABLE orders;"),
    (
        "0025_add_order_metadata.up.sql",
        "-- bluegreen: phase=expand, reversible\nALTER TABLE orders ADD COLUMN order_metadata jsonb;",
    ),
    (
        "0025_add_order_metadata.down.sql",
        "ALTER TABLE orders DROP COLUMN order_metadata;",
    ),
    (
        "0026_drop_legacy_status.up.sql",
        "-- bluegreen: phase=contract\nALTER TABLE orders DROP COLUMN legacy_status;",
    ),
];
