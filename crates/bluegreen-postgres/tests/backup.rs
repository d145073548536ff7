//! Backups with the real pg_dump and pg_restore against the real server.

mod common;

use std::os::unix::fs::PermissionsExt;

use bluegreen_core::{ErrorKind, MigrationRunner};
use bluegreen_postgres::{BackupSettings, MigrationSettings};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_taken_to_a_timestamped_path_verified_and_recorded() {
    let db = fresh_database("backup").await;
    let backups = tempfile::tempdir().unwrap();
    let r = runner(&db, ORDERS, &backups);
    let ctx = ctx("order-api-2.5.0");
    r.apply(EXPAND, &ctx).await.unwrap();

    let backup = r.backup(&ctx).await.expect("pg_dump succeeds");
    let file = std::path::Path::new(&backup.location);
    assert!(file.starts_with(backups.path()), "{}", backup.location);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("bgt_backup-") && name.ends_with("-order-api-2_5_0.dump"),
        "{name}"
    );
    assert_eq!(backup.id, name.trim_end_matches(".dump"));
    assert!(backup.bytes.unwrap() > 0);
    assert_eq!(
        &std::fs::read(file).unwrap()[..5],
        b"PGDMP",
        "custom format (-Fc)"
    );

    let ok = r.verify_backup(&backup, 3).await.unwrap();
    assert!(ok.passed, "{ok:?}");
    assert_eq!(
        ok.entries, 3,
        "the orders table, its data and its key; bluegreen's ledger tables are left out: {ok:?}"
    );
    let too_many = r.verify_backup(&backup, ok.entries + 1).await.unwrap();
    assert!(!too_many.passed);
    assert!(too_many.detail.contains(&format!(
        "lists {} entries; at least {} required",
        ok.entries,
        ok.entries + 1
    )));

    let c = db.connect().await.unwrap();
    let row = c
        .query_one("SELECT deployment_id, location, entries, min_entries, passed FROM bluegreen_backups WHERE id = $1", &[&backup.id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "order-api-2.5.0");
    assert_eq!(row.get::<_, String>(1), backup.location);
    assert_eq!(row.get::<_, i64>(2) as u64, ok.entries);
    assert_eq!(
        row.get::<_, i64>(3) as u64,
        ok.entries + 1,
        "the last verification is recorded"
    );
    assert!(!row.get::<_, bool>(4));

    // A second backup never overwrites the first.
    let again = r.backup(&ctx).await.unwrap();
    assert_ne!(again.location, backup.location);

    // The migration run under that backup records it.
    let mut with_backup = ctx.clone();
    with_backup.backup_id = Some(backup.id.clone());
    r.apply(CONTRACT, &with_backup).await.unwrap();
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 26)
        .unwrap();
    assert_eq!(row.backup_id.as_deref(), Some(backup.id.as_str()));
}

/// The ledger tables (and the journal's) used to count towards the minimum:
/// a backup of a database holding nothing of the application's listed 21
/// entries (ledger and journal tables, their data, keys and sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_database_holding_only_bluegreens_tables_counts_0_entries() {
    let db = fresh_database("backup_ledger_only").await;
    let backups = tempfile::tempdir().unwrap();
    let r = runner(&db, &[], &backups);
    let ctx = ctx("d");
    assert!(r.apply(EXPAND, &ctx).await.unwrap().is_empty());
    let _journal = bluegreen_postgres::PostgresJournal::connect(db.clone())
        .await
        .unwrap();
    let backup = r.backup(&ctx).await.unwrap();
    let c = db.connect().await.unwrap();
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'bluegreen%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 3, "the ledger tables exist: {tables}");
    let v = r.verify_backup(&backup, 1).await.unwrap();
    assert_eq!(v.entries, 0, "{v:?}");
    assert!(!v.passed, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_older_than_the_server_is_refused_with_both_versions() {
    let db = fresh_database("old_pg_dump").await;
    let backups = tempfile::tempdir().unwrap();
    // A real server cannot make pg_dump old: a stand-in prints an old version.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = runner(&db, ORDERS, &backups).with_settings(MigrationSettings {
        backup: BackupSettings {
            dir: backups.path().to_path_buf(),
            pg_dump: fake,
            ..BackupSettings::default()
        },
        ..MigrationSettings::default()
    });
    let err = r.backup(&ctx("d")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let msg = err.to_string();
    let server: String = db
        .connect()
        .await
        .unwrap()
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        msg.contains("9.6.24") && msg.contains(&server),
        "both versions: {msg}"
    );
    assert_eq!(
        std::fs::read_dir(backups.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing was dumped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_a_missing_backup_names_the_path() {
    let db = fresh_database("missing_backup").await;
    let backups = tempfile::tempdir().unwrap();
    let r = runner(&db, ORDERS, &backups);
    let record = bluegreen_core::BackupRecord {
        id: "gone".into(),
        location: backups.path().join("gone.dump").display().to_string(),
        bytes: None,
        taken_at: bluegreen_core::Timestamp(0),
    };
    let err = r.verify_backup(&record, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("gone.dump"), "{err}");
}
