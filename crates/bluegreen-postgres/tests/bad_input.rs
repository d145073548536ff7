//! Bad input: SQL errors, inconsistent migration files, bad hosts and
//! credentials, TLS modes.

mod common;

use bluegreen_core::{ErrorKind, MigrationRunner};
use bluegreen_postgres::{Database, MigrationSource, PostgresMigrations};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_error_names_the_file_and_the_server_position() {
    let db = fresh_database("sql_error").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ("0001_orders.up.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);"),
        (
            "0002_typo.up.sql",
            "-- bluegreen: phase=expand\nALTER TABLE orders ADD COLUMN a int;\nALTER TABLE orders\n  ADD COLUMN b intt;\n",
        ),
        (
            "0003_typo_no_tx.up.sql",
            "-- bluegreen: no-transaction\nCREATE TABLE x (id int);\n\nSELEC 1;\n",
        ),
    ];
    let r = runner(&db, &files[..2], &backups);
    let err = r.apply(EXPAND, &ctx("d")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("migration file 0002_typo.up.sql failed at line 4, column 16"),
        "{msg}"
    );
    assert!(msg.contains("type \"intt\" does not exist"), "{msg}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{msg}");
    let status = r.status().await.unwrap();
    assert_eq!(versions(&status.applied), vec![1]);
    assert_eq!(
        versions(&status.pending),
        vec![2],
        "the failed migration rolled back"
    );
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert!(row.last_error.unwrap().contains("line 4, column 16"));

    // Outside a transaction, the position is still counted from the file's start.
    let r = runner(&db, &[files[0], files[2]], &backups);
    let err = r.apply(EXPAND, &ctx("d")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("migration file 0003_typo_no_tx.up.sql failed at line 4, column 1"),
        "{msg}"
    );
    assert!(msg.contains("syntax error at or near \"SELEC\""), "{msg}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_migration_files_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_orders.up.sql"),
        "CREATE TABLE orders (id int);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("0002_add_col.up.sql"),
        "-- bluegreen: reversible\nALTER TABLE orders ADD c int;",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a migration").unwrap();
    let err = MigrationSource::from_dir(dir.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains(
            "0002_add_col.up.sql is marked reversible but 0002_add_col.down.sql is missing"
        ),
        "{err}"
    );

    std::fs::write(
        dir.path().join("0002_add_col.down.sql"),
        "ALTER TABLE orders DROP c;",
    )
    .unwrap();
    std::fs::write(dir.path().join("2_other.up.sql"), "SELECT 1;").unwrap();
    let err = MigrationSource::from_dir(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("duplicate migration version 2")
            && msg.contains("2_other.up.sql")
            && msg.contains("0002_add_col"),
        "{msg}"
    );

    std::fs::remove_file(dir.path().join("2_other.up.sql")).unwrap();
    let source = MigrationSource::from_dir(dir.path()).unwrap();
    assert_eq!(source.migrations().len(), 2);

    // Nothing touched the database: a runner is only built from a valid source.
    let db = fresh_database("refused_files").await;
    let r = PostgresMigrations::new(db.clone(), source);
    assert!(r.ledger().await.unwrap().is_empty());
    let c = db.connect().await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bluegreen%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "status and ledger reads create nothing");
}

fn with_password(url: &str, password: &str) -> String {
    // postgres://user:password@host:port/db
    let (scheme_user, rest) = url.split_once(':').unwrap();
    let rest = rest.trim_start_matches("//");
    let (user, after) = rest.split_once(':').unwrap();
    let (_, hostpart) = after.split_once('@').unwrap();
    format!("{scheme_user}://{user}:{password}@{hostpart}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_give_a_clear_error_without_the_password() {
    let url = with_password(&server_url(), "wrong-Pa55word-xyz");
    let db = Database::from_url(&url).unwrap();
    let r = PostgresMigrations::new(
        db.clone(),
        MigrationSource::from_files([("1_a.up.sql", "SELECT 1;")]).unwrap(),
    );
    let err = r.status().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("password authentication failed for user \"bluegreen\""),
        "{msg}"
    );
    assert!(msg.contains(db.label()), "{msg}");
    for shown in [msg, format!("{err:?}"), format!("{db:?}"), format!("{r:?}")] {
        assert!(
            !shown.contains("wrong-Pa55word-xyz"),
            "the password leaked: {shown}"
        );
    }
}

/// libpq and tokio-postgres end the credentials at the first `@`: the rest
/// of such a password became the host, shown in the label and every error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_with_an_unencoded_at_sign_leaks_into_no_label_or_error() {
    let db = Database::from_url("postgres://user:p@ss@127.0.0.1:1/db?connect_timeout=5").unwrap();
    assert_eq!(db.label(), "postgres://user@127.0.0.1:1/db");
    let err = db.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    for shown in [
        db.label().to_string(),
        format!("{db:?}"),
        err.to_string(),
        format!("{err:?}"),
    ] {
        assert!(
            !shown.contains("p@ss") && !shown.contains("ss@"),
            "the password leaked: {shown}"
        );
    }

    // On the real server: the host is read right, and the wrong password
    // (with two unencoded `@`) is refused without showing any part of it.
    let url = with_password(&server_url(), "wr@ng-Xq7@pw");
    let db = Database::from_url(&url).unwrap();
    let real = Database::from_url(&server_url()).unwrap();
    assert_eq!(db.label(), real.label());
    let r = PostgresMigrations::new(
        db.clone(),
        MigrationSource::from_files([("1_a.up.sql", "SELECT 1;")]).unwrap(),
    );
    let err = r.status().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains(real.label()), "{err}");
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        format!("{db:?}"),
        format!("{r:?}"),
    ] {
        for fragment in ["wr@ng", "Xq7", "@pw"] {
            assert!(!shown.contains(fragment), "the password leaked: {shown}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_gives_a_clear_temporary_error_without_the_password() {
    // Port 1 on the loopback: nothing listens there.
    let db = Database::from_url(
        "postgres://deployer:hunter2-Secret@127.0.0.1:1/orders?connect_timeout=5",
    )
    .unwrap();
    let err = db.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect to postgres://deployer@127.0.0.1:1/orders"),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{msg}"
    );

    let db =
        Database::from_url("postgres://deployer:hunter2-Secret@no-such-host.invalid:5432/orders")
            .unwrap();
    let err = db.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    assert!(!err.to_string().contains("hunter2"));

    let err = Database::from_url("postgres://deployer:hunter2-Secret@h:notaport/db").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
