//! The migration runner against a real PostgreSQL server: phases, the
//! ledger, dirty detection, the runner lock, CONCURRENTLY, changed files,
//! verification and revert.

mod common;

use std::time::Duration;

use bluegreen_core::{ErrorKind, MigrationPhase, MigrationRunner};
use bluegreen_postgres::{
    Expectation, LedgerState, MigrationSettings, PostgresMigrations, Resolution, VerificationQuery,
};
use common::*;
use tokio_postgres::Client;

async fn admin(db: &bluegreen_postgres::Database) -> Client {
    db.connect().await.expect("connect to the test database")
}

async fn scalar_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until a backend of `db` runs a query containing `needle`; returns its pid.
async fn backend_running(c: &Client, db: &str, needle: &str) -> i32 {
    for _ in 0..600 {
        let row = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE $2 AND pid <> pg_backend_pid()",
                &[&db, &format!("%{needle}%")],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            return r.get(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no backend of {db} ran a query containing {needle} within 30s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_runs_only_expand_and_contract_only_contract_with_ids_in_the_ledger() {
    let db = fresh_database("phases").await;
    let backups = tempfile::tempdir().unwrap();
    let r = runner(&db, ORDERS, &backups);

    let plan = r.dry_run().await.unwrap();
    let listed: Vec<(u64, MigrationPhase)> = plan.iter().map(|p| (p.version, p.phase)).collect();
    assert_eq!(listed, vec![(1, EXPAND), (25, EXPAND), (26, CONTRACT)]);
    assert!(plan[2].to_string().contains("irreversible"), "{}", plan[2]);

    let mut ctx = ctx("order-api-2.5.0");
    ctx.backup_id = Some("orders-20240501T120000000Z".into());
    assert_eq!(versions(&r.apply(EXPAND, &ctx).await.unwrap()), vec![1, 25]);
    let status = r.status().await.unwrap();
    assert_eq!(versions(&status.applied), vec![1, 25]);
    assert_eq!(versions(&status.pending), vec![26]);
    let c = admin(&db).await;
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'legacy_status'").await,
        1,
        "the contract step has not run during expand"
    );

    assert_eq!(versions(&r.apply(CONTRACT, &ctx).await.unwrap()), vec![26]);
    assert_eq!(r.dry_run().await.unwrap(), vec![]);
    let ledger = r.ledger().await.unwrap();
    assert_eq!(ledger.len(), 3);
    for e in &ledger {
        assert_eq!(e.state, LedgerState::Applied);
        assert_eq!(e.deployment_id.as_deref(), Some("order-api-2.5.0"));
        assert_eq!(e.backup_id.as_deref(), Some("orders-20240501T120000000Z"));
        assert_eq!(e.checksum.len(), 64);
    }
    let e26 = ledger.iter().find(|e| e.version == 26).unwrap();
    assert!(!e26.reversible);
    assert_eq!(e26.phase, CONTRACT);

    let refused = r.revert(&[26, 25], &ctx).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    assert!(
        refused
            .to_string()
            .contains("0026_drop_legacy_status.up.sql is irreversible"),
        "{refused}"
    );
    assert_eq!(
        versions(&r.status().await.unwrap().applied),
        vec![1, 25, 26],
        "nothing was reverted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_migration_leaves_a_dirty_state_the_next_run_reports() {
    let db = fresh_database("killed_no_tx").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ("0001_orders.up.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);"),
        (
            "0002_slow_backfill.up.sql",
            "-- bluegreen: no-transaction\nCREATE TABLE audit (id bigint);\nSELECT pg_sleep(60);\nCREATE TABLE audit_done (id bigint);",
        ),
    ];
    let r = runner(&db, &files, &backups);
    let c = admin(&db).await;
    let dbname = db.dbname().to_string();
    let run = tokio::spawn(async move {
        let ctx = ctx("deploy-killed");
        r.apply(EXPAND, &ctx).await
    });
    let pid = backend_running(&c, &dbname, "pg_sleep(60)").await;
    let killed: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let err = run.await.unwrap().expect_err("the killed run fails");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    let next = runner(&db, &files, &backups);
    let dirty = next
        .status()
        .await
        .expect_err("the next run detects the dirty migration");
    assert_eq!(dirty.kind(), ErrorKind::Conflict);
    let msg = dirty.to_string();
    assert!(
        msg.contains("0002_slow_backfill.up.sql") && msg.contains("dirty"),
        "{msg}"
    );
    assert!(msg.contains("after 1 of 3 statements"), "{msg}");
    assert!(msg.contains("deploy-killed"), "{msg}");
    let refused = next.apply(EXPAND, &ctx("deploy-next")).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::Conflict,
        "apply refuses too: {refused}"
    );
    let ledger = next.ledger().await.unwrap();
    let row = ledger.iter().find(|e| e.version == 2).unwrap();
    assert!(row.is_dirty());
    assert_eq!((row.statements_done, row.statements_total), (1, 3));

    // A human repairs it and records the outcome; the migration is pending again.
    c.batch_execute("DROP TABLE audit").await.unwrap();
    next.resolve_dirty(2, Resolution::NotApplied).await.unwrap();
    assert_eq!(versions(&next.status().await.unwrap().pending), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_migration_killed_mid_way_rolls_back_and_is_reported_as_interrupted() {
    let db = fresh_database("killed_tx").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [(
        "0001_orders.up.sql",
        "CREATE TABLE orders (id bigint PRIMARY KEY);\nSELECT pg_sleep(60);",
    )];
    let r = runner(&db, &files, &backups);
    let c = admin(&db).await;
    let dbname = db.dbname().to_string();
    let run = tokio::spawn(async move { r.apply(EXPAND, &ctx("deploy-killed")).await });
    let pid = backend_running(&c, &dbname, "pg_sleep(60)").await;
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    run.await.unwrap().expect_err("the killed run fails");

    let next = runner(&db, &files, &backups);
    let row = next
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 1)
        .unwrap();
    assert!(row.was_interrupted() && !row.is_dirty(), "{row:?}");
    assert_eq!(row.state, LedgerState::Applying);
    assert_eq!(row.deployment_id.as_deref(), Some("deploy-killed"));
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'"
        )
        .await,
        0,
        "the transaction was rolled back"
    );
    assert_eq!(versions(&next.status().await.unwrap().pending), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_waits_for_the_lock_then_fails_naming_the_holder() {
    let db = fresh_database("two_runners").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [(
        "0001_slow.up.sql",
        "CREATE TABLE t (id int);\nSELECT pg_sleep(4);",
    )];
    let first = runner(&db, &files, &backups);
    let second = runner(&db, &files, &backups);
    let c = admin(&db).await;
    let dbname = db.dbname().to_string();
    let run = tokio::spawn(async move { first.apply(EXPAND, &ctx("deploy-first")).await });
    let holder_pid = backend_running(&c, &dbname, "pg_sleep(4)").await;

    let err = second
        .apply(EXPAND, &ctx("deploy-second"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseHeld, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {holder_pid}")), "{msg}");
    assert!(
        msg.contains("deployment deploy-first"),
        "names the holder's application_name: {msg}"
    );
    assert!(msg.contains("gave up after waiting 2s"), "{msg}");

    assert_eq!(
        versions(&run.await.unwrap().unwrap()),
        vec![1],
        "the first runner finished"
    );
    assert!(second
        .apply(EXPAND, &ctx("deploy-second"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_concurrently_runs_statement_by_statement() {
    let db = fresh_database("concurrently").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ("0001_orders.up.sql", "CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint);\nINSERT INTO orders SELECT g, g % 10 FROM generate_series(1, 1000) g;"),
        (
            "0002_orders_customer_idx.up.sql",
            "-- bluegreen: no-transaction, reversible\nCREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer);\nANALYZE orders;",
        ),
        ("0002_orders_customer_idx.down.sql", "-- bluegreen: no-transaction\nDROP INDEX CONCURRENTLY orders_customer_idx;"),
    ];
    let r = runner(&db, &files, &backups);
    let ctx = ctx("deploy-idx");
    assert_eq!(versions(&r.apply(EXPAND, &ctx).await.unwrap()), vec![1, 2]);
    let c = admin(&db).await;
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer_idx'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid, "the concurrently built index is valid");
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert!(row.no_transaction);
    assert_eq!((row.statements_done, row.statements_total), (2, 2));

    assert_eq!(versions(&r.revert(&[2], &ctx).await.unwrap()), vec![2]);
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer_idx'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_applied_file_is_refused_naming_the_file() {
    let db = fresh_database("changed_file").await;
    let backups = tempfile::tempdir().unwrap();
    let v1 = [(
        "0001_orders.up.sql",
        "CREATE TABLE orders (id bigint PRIMARY KEY);",
    )];
    runner(&db, &v1, &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();

    let v2 = [
        (
            "0001_orders.up.sql",
            "CREATE TABLE orders (id bigint PRIMARY KEY, note text);",
        ),
        ("0002_more.up.sql", "CREATE TABLE more (id int);"),
    ];
    let changed = runner(&db, &v2, &backups);
    for e in [
        changed.status().await.unwrap_err(),
        changed.apply(EXPAND, &ctx("d2")).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.to_string()
                .contains("applied migration file 0001_orders.up.sql (version 1) was changed"),
            "{e}"
        );
    }
    let c = admin(&db).await;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'more'"
        )
        .await,
        0,
        "nothing ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_row_count_invariant_fails_verification_and_the_migration_reverts() {
    let db = fresh_database("row_count").await;
    let backups = tempfile::tempdir().unwrap();
    runner(&db, &ORDERS[..2], &backups)
        .apply(EXPAND, &ctx("order-api-2.4.0"))
        .await
        .unwrap();

    let files = [
        ORDERS[0],
        ORDERS[1],
        (
            "0025_add_order_metadata.up.sql",
            "-- bluegreen: reversible\nALTER TABLE orders ADD COLUMN order_metadata jsonb;\nDELETE FROM orders WHERE id = 3;",
        ),
        ("0025_add_order_metadata.down.sql", "ALTER TABLE orders DROP COLUMN order_metadata;"),
    ];
    let column_check = |phase, expect| {
        VerificationQuery {
        name: "column orders.order_metadata exists".into(),
        phase,
        sql: "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'order_metadata'".into(),
        expect,
    }
    };
    let r: PostgresMigrations = runner(&db, &files, &backups)
        .with_check(column_check(EXPAND, Expectation::Rows))
        .with_check(VerificationQuery {
            name: "orders count".into(),
            phase: EXPAND,
            sql: "SELECT count(*) FROM orders".into(),
            expect: Expectation::Value("3".into()),
        })
        .with_row_count_invariant(EXPAND, "orders");
    let ctx = ctx("order-api-2.5.0");
    assert_eq!(versions(&r.apply(EXPAND, &ctx).await.unwrap()), vec![25]);
    let checks = r.verify(EXPAND, &ctx).await.unwrap();
    let by = |name: &str| {
        checks
            .iter()
            .find(|c| c.name.contains(name))
            .unwrap_or_else(|| panic!("{name} in {checks:?}"))
    };
    assert!(by("every expand migration is applied").passed);
    assert!(by("column orders.order_metadata exists").passed);
    let inv = by("row count of orders");
    assert!(!inv.passed, "{inv:?}");
    assert_eq!(inv.detail, "orders: 3 rows before, 2 after");
    let value = by("orders count");
    assert!(!value.passed);
    assert_eq!(value.detail, "expected 3, got 2");

    // The rollback path: revert the expand migration, newest first.
    assert_eq!(versions(&r.revert(&[25], &ctx).await.unwrap()), vec![25]);
    let c = admin(&db).await;
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'order_metadata'").await,
        0
    );
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 25)
        .unwrap();
    assert_eq!(row.state, LedgerState::Reverted);
    assert_eq!(row.reverted_by.as_deref(), Some("order-api-2.5.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_not_available_is_retried_with_backoff_until_the_lock_frees() {
    let db = fresh_database("lock_retry").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        (
            "0001_orders.up.sql",
            "CREATE TABLE orders (id bigint PRIMARY KEY);",
        ),
        (
            "0002_add_col.up.sql",
            "-- bluegreen: lock_timeout=100ms\nALTER TABLE orders ADD COLUMN note text;",
        ),
    ];
    let r = runner(&db, &files[..1], &backups);
    r.apply(EXPAND, &ctx("d1")).await.unwrap();

    // Another session holds a lock on orders for a while.
    let mut blocker = admin(&db).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE orders IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let r = runner(&db, &files, &backups);
    let run = tokio::spawn(async move { r.apply(EXPAND, &ctx("d2")).await.map(|m| (m, r)) });
    let watcher = admin(&db).await;
    // Wait until the runner has failed at least once on the lock, then free it.
    for _ in 0..600 {
        let attempts = watcher
            .query_opt(
                "SELECT attempts FROM bluegreen_migrations WHERE version = 2",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
            .unwrap_or(0);
        if attempts >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.rollback().await.unwrap();
    let (applied, r) = run
        .await
        .unwrap()
        .expect("the migration succeeds once the lock is free");
    assert_eq!(versions(&applied), vec![2]);
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_eq!(row.state, LedgerState::Applied);
    assert!(row.attempts >= 2, "it was retried: {row:?}");
}

/// The test server's password, which no error may show.
fn server_password() -> String {
    let config: tokio_postgres::Config = plain_server_url().parse().expect("the test URL parses");
    String::from_utf8_lossy(config.get_password().expect("the test URL has a password"))
        .into_owned()
}

/// The runner with test settings but `lock_retries` extra attempts.
fn runner_with_retries(
    db: &bluegreen_postgres::Database,
    files: &[(&str, &str)],
    backups: &tempfile::TempDir,
    lock_retries: u32,
) -> PostgresMigrations {
    runner(db, files, backups).with_settings(MigrationSettings {
        lock_retries,
        ..settings(backups.path().to_path_buf())
    })
}

/// A session named `name` that has read `table` in an open transaction of
/// `isolation`, so it holds ACCESS SHARE on it (and, under REPEATABLE READ,
/// a snapshot); returns it and its pid.
async fn reader_in_transaction(
    db: &bluegreen_postgres::Database,
    name: &str,
    isolation: &str,
    table: &str,
) -> (Client, i32) {
    let c = db
        .with_application_name(name)
        .connect()
        .await
        .expect("connect the blocker");
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL {isolation}; SELECT count(*) FROM {table}"
    ))
    .await
    .unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (c, pid)
}

const ORDERS_1000: (&str, &str) = (
    "0001_orders.up.sql",
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint);\nINSERT INTO orders SELECT g, g % 10 FROM generate_series(1, 1000) g;",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_alter_holds_readers_up_no_longer_than_the_lock_timeout() {
    let db = fresh_database("probe_reader").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ORDERS_1000,
        (
            "0002_add_note.up.sql",
            "ALTER TABLE orders ADD COLUMN note text;",
        ),
    ];
    runner(&db, &files[..1], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let lock_timeout = MigrationSettings::default().lock_timeout;

    // An open transaction that read orders: the ALTER queues behind it.
    let (blocker, _) =
        reader_in_transaction(&db, "probe-blocker", "READ COMMITTED", "orders").await;
    // The probe reads orders in a loop and times each read.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe_client = admin(&db).await;
    let probe_stop = stop.clone();
    let probe = tokio::spawn(async move {
        let mut waits = Vec::new();
        while !probe_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = std::time::Instant::now();
            probe_client
                .query_one("SELECT count(*) FROM orders", &[])
                .await
                .unwrap();
            waits.push(t.elapsed());
        }
        waits
    });

    let r = runner(&db, &files, &backups);
    let run = tokio::spawn(async move { r.apply(EXPAND, &ctx("d2")).await.map(|m| (m, r)) });
    let watcher = admin(&db).await;
    // Let the ALTER time out and be retried a few times, then commit the blocker.
    for _ in 0..1500 {
        let attempts = watcher
            .query_opt(
                "SELECT attempts FROM bluegreen_migrations WHERE version = 2",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
            .unwrap_or(0);
        if attempts >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.batch_execute("COMMIT").await.unwrap();
    let (applied, r) = run
        .await
        .unwrap()
        .expect("the ALTER applies once the blocker commits");
    assert_eq!(versions(&applied), vec![2]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let waits = probe.await.unwrap();
    let longest = waits.iter().max().copied().unwrap_or_default();
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_eq!(row.state, LedgerState::Applied);
    eprintln!(
        "probe reader: {} reads, longest wait {longest:?} (lock_timeout {lock_timeout:?}); the ALTER took {} attempts",
        waits.len(),
        row.attempts
    );
    assert!(row.attempts >= 5, "it timed out and was retried: {row:?}");
    assert!(
        longest <= lock_timeout + Duration::from_millis(200),
        "a reader waited {longest:?} behind the queued ALTER (lock_timeout {lock_timeout:?})"
    );
    assert!(
        longest <= Duration::from_millis(1200) && lock_timeout <= Duration::from_secs(1),
        "the default lock_timeout ({lock_timeout:?}) held a reader up for {longest:?}"
    );
    assert!(
        longest >= lock_timeout / 4,
        "the probe was queued behind the ALTER at least once: {longest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_error_names_the_relation_the_blocker_the_statement_line_and_the_attempts() {
    let db = fresh_database("lock_error").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ORDERS_1000,
        (
            "0002_notes.up.sql",
            "-- bluegreen: lock_timeout=200ms\nCREATE TABLE notes (id int);\n\nALTER TABLE orders ADD COLUMN note text;\n",
        ),
    ];
    runner(&db, &files[..1], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let (blocker, blocker_pid) =
        reader_in_transaction(&db, "report-job-blocker", "READ COMMITTED", "orders").await;
    let r = runner_with_retries(&db, &files, &backups, 2);
    let e = r.apply(EXPAND, &ctx("d2")).await.unwrap_err();
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let msg = e.to_string();
    eprintln!("lock-timeout error: {msg}");
    for want in [
        "0002_notes.up.sql",
        "line 4",
        "`ALTER TABLE orders ADD COLUMN note text`",
        "lock timeout",
        "AccessExclusiveLock on relation orders",
        &format!("pid {blocker_pid} (application_name 'report-job-blocker', state idle in transaction, query started 20"),
        "3 attempts in ",
        "lock_timeout 200ms each",
    ] {
        assert!(msg.contains(want), "`{want}` in {msg}");
    }
    assert!(!msg.contains(&server_password()), "{msg}");
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_eq!(row.state, LedgerState::Failed);
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("report-job-blocker"),
        "{row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_in_a_no_transaction_file_names_the_blocker_and_the_second_statement() {
    let db = fresh_database("lock_error_no_tx").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ORDERS_1000,
        (
            "0002_notes.up.sql",
            "-- bluegreen: no-transaction, lock_timeout=200ms\nCREATE TABLE notes (id int);\nALTER TABLE orders\n  ADD COLUMN note text;",
        ),
    ];
    runner(&db, &files[..1], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let (blocker, blocker_pid) =
        reader_in_transaction(&db, "nightly-export", "READ COMMITTED", "orders").await;
    let e = runner_with_retries(&db, &files, &backups, 1)
        .apply(EXPAND, &ctx("d2"))
        .await
        .unwrap_err();
    blocker.batch_execute("COMMIT").await.unwrap();
    let msg = e.to_string();
    for want in [
        "line 3",
        "`ALTER TABLE orders ADD COLUMN note text`",
        "on relation orders",
        &format!("pid {blocker_pid} (application_name 'nightly-export', state idle in transaction"),
        "2 attempts in ",
    ] {
        assert!(msg.contains(want), "`{want}` in {msg}");
    }
    assert!(!msg.contains(&server_password()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_after_the_first_in_a_transactional_file_is_reported_at_its_own_line() {
    let db = fresh_database("tx_line").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [
        ORDERS_1000,
        (
            "0002_seed.up.sql",
            "-- seed\nINSERT INTO orders VALUES (5000, 1);\n\n\nINSERT INTO orders VALUES (1, 1);\n",
        ),
    ];
    let e = runner(&db, &files, &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("0002_seed.up.sql"), "{msg}");
    assert!(msg.contains("failed at line 5 "), "{msg}");
    assert!(msg.contains("`INSERT INTO orders VALUES (1, 1)`"), "{msg}");
    assert!(msg.contains("23505"), "{msg}");
    assert!(msg.contains("1 attempt in "), "{msg}");
}

/// Whether index `name` exists, and whether it is valid.
async fn index_validity(c: &Client, name: &str) -> Option<bool> {
    c.query_opt(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
        &[&name],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

const CIC_IF_NOT_EXISTS: (&str, &str) = (
    "0002_orders_customer_idx.up.sql",
    "-- bluegreen: no-transaction, lock_timeout=1s\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON orders(customer_id);",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_concurrently_if_not_exists_under_an_old_snapshot_is_never_recorded_applied_with_an_invalid_index(
) {
    let db = fresh_database("cic_snapshot").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [ORDERS_1000, CIC_IF_NOT_EXISTS];
    runner(&db, &files[..1], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let c = admin(&db).await;
    // A REPEATABLE READ snapshot on orders: CIC waits for it, and with
    // lock_timeout=1s fails, leaving an INVALID idx behind.
    let (holder, _) = reader_in_transaction(&db, "old-snapshot", "REPEATABLE READ", "orders").await;
    let r = runner(&db, &files, &backups);
    let run = tokio::spawn(async move { r.apply(EXPAND, &ctx("d2")).await.map(|m| (m, r)) });
    for _ in 0..1500 {
        if index_validity(&c, "idx").await == Some(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        index_validity(&c, "idx").await,
        Some(false),
        "the build started"
    );
    // Past the first attempt's lock_timeout: it failed, leaving idx INVALID.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (applied, r) = run
        .await
        .unwrap()
        .expect("the index is built once the old snapshot is gone");
    assert_eq!(versions(&applied), vec![2]);
    assert_eq!(
        index_validity(&c, "idx").await,
        Some(true),
        "the ledger says applied, so idx must be valid"
    );
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_eq!(row.state, LedgerState::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_concurrently_that_never_gets_past_an_old_snapshot_fails_instead_of_claiming_an_invalid_index(
) {
    let db = fresh_database("cic_snapshot_held").await;
    let backups = tempfile::tempdir().unwrap();
    let files = [ORDERS_1000, CIC_IF_NOT_EXISTS];
    runner(&db, &files[..1], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let c = admin(&db).await;
    let (holder, holder_pid) =
        reader_in_transaction(&db, "old-snapshot", "REPEATABLE READ", "orders").await;
    let r = runner_with_retries(&db, &files, &backups, 1);
    let e = r.apply(EXPAND, &ctx("d2")).await.unwrap_err();
    holder.batch_execute("COMMIT").await.unwrap();
    let msg = e.to_string();
    eprintln!("CIC error: {msg}");
    for want in [
        "line 2",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON orders(customer_id)",
        "lock timeout",
        &format!("pid {holder_pid} (application_name 'old-snapshot'"),
        "2 attempts in ",
        "INVALID index public.idx on orders",
        "DROP INDEX CONCURRENTLY public.idx",
    ] {
        assert!(msg.contains(want), "`{want}` in {msg}");
    }
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_ne!(row.state, LedgerState::Applied, "{row:?}");
    assert!(row.is_dirty(), "{row:?}");
    assert_eq!(index_validity(&c, "idx").await, Some(false));

    // Marked not applied without dropping idx: the next run's IF NOT EXISTS
    // skips the INVALID index, and the runner refuses to call that applied.
    r.resolve_dirty(2, Resolution::NotApplied).await.unwrap();
    let e = r.apply(EXPAND, &ctx("d3")).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("index public.idx on orders it names is INVALID"),
        "{msg}"
    );
    let row = r
        .ledger()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.version == 2)
        .unwrap();
    assert_ne!(row.state, LedgerState::Applied, "{row:?}");

    // Dropped by hand and resolved: the next run builds it.
    c.batch_execute("DROP INDEX CONCURRENTLY idx")
        .await
        .unwrap();
    r.resolve_dirty(2, Resolution::NotApplied).await.unwrap();
    assert_eq!(
        versions(&r.apply(EXPAND, &ctx("d4")).await.unwrap()),
        vec![2]
    );
    assert_eq!(index_validity(&c, "idx").await, Some(true));
}

/// The first error in `errs` whose message lacks one of `wanted`, shown whole.
fn assert_names(errs: &[bluegreen_core::Error], wanted: &[&str]) {
    for e in errs {
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let msg = e.to_string();
        for w in wanted {
            assert!(msg.contains(w), "`{w}` missing from: {msg}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_down_file_of_an_applied_migration_is_refused_naming_the_version_and_both_checksums(
) {
    let db = fresh_database("drift_down").await;
    let backups = tempfile::tempdir().unwrap();
    let down = "DROP TABLE orders;";
    let v1 = [
        (
            "0001_orders.up.sql",
            "CREATE TABLE orders (id bigint PRIMARY KEY);",
        ),
        ("0001_orders.down.sql", down),
    ];
    runner(&db, &v1, &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let ledger = runner(&db, &v1, &backups).ledger().await.unwrap();
    assert_eq!(
        ledger[0].down_checksum.as_deref(),
        Some(bluegreen_postgres::checksum(down).as_str()),
        "the down file's checksum is recorded at apply time"
    );

    let edited = "DROP TABLE orders CASCADE;";
    let v2 = [v1[0], ("0001_orders.down.sql", edited)];
    let r = runner(&db, &v2, &backups);
    let errs = [
        r.status().await.unwrap_err(),
        r.revert(&[1], &ctx("d1")).await.unwrap_err(),
    ];
    assert_names(
        &errs,
        &[
            "down file 0001_orders.down.sql of applied migration 1 was changed",
            &format!("ledger checksum {}", bluegreen_postgres::checksum(down)),
            &format!("file checksum {}", bluegreen_postgres::checksum(edited)),
        ],
    );
    let c = admin(&db).await;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'"
        )
        .await,
        1,
        "the edited down file did not run"
    );
    let deleted = runner(&db, &v1[..1], &backups);
    assert_names(
        &[deleted.status().await.unwrap_err()],
        &[
            "down file of applied migration 1 (0001_orders.up.sql) was deleted",
            &bluegreen_postgres::checksum(down),
        ],
    );

    // A ledger an older runner created has no down_checksum column: it is
    // read (nothing recorded, nothing checked) and the next apply adds it.
    c.batch_execute("ALTER TABLE bluegreen_migrations DROP COLUMN down_checksum")
        .await
        .unwrap();
    assert_eq!(versions(&r.status().await.unwrap().applied), vec![1]);
    assert_eq!(r.ledger().await.unwrap()[0].down_checksum, None);
    let v3 = [
        v2[0],
        v2[1],
        ("0002_more.up.sql", "CREATE TABLE more (id int);"),
    ];
    runner(&db, &v3, &backups)
        .apply(EXPAND, &ctx("d2"))
        .await
        .unwrap();
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM bluegreen_migrations WHERE down_checksum IS NULL"
        )
        .await,
        2,
        "old rows stay unrecorded; 0002 has no down file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_or_deleted_applied_file_is_refused_naming_the_version_and_both_checksums() {
    let db = fresh_database("drift_renamed").await;
    let backups = tempfile::tempdir().unwrap();
    let notes = "ALTER TABLE orders ADD COLUMN note text;";
    let sum = bluegreen_postgres::checksum(notes);
    let orders = (
        "0001_orders.up.sql",
        "CREATE TABLE orders (id bigint PRIMARY KEY);",
    );
    runner(&db, &[orders, ("0002_notes.up.sql", notes)], &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();

    let deleted = runner(&db, &[orders], &backups);
    assert_names(
        &[
            deleted.status().await.unwrap_err(),
            deleted.apply(EXPAND, &ctx("d2")).await.unwrap_err(),
        ],
        &[&format!(
            "applied migration 2 (0002_notes.up.sql, checksum {sum}) has no file any more"
        )],
    );
    let other_version = runner(&db, &[orders, ("0003_notes.up.sql", notes)], &backups);
    assert_names(
        &[other_version.dry_run().await.unwrap_err()],
        &[&format!(
            "applied migration 2 (0002_notes.up.sql, checksum {sum}) was renamed to 0003_notes.up.sql (version 3, checksum {sum})"
        )],
    );
    for renamed in ["0002_remarks.up.sql", "0002_Notes.up.sql"] {
        let r = runner(&db, &[orders, (renamed, notes)], &backups);
        assert_names(
            &[r.status().await.unwrap_err()],
            &[&format!(
                "applied migration 2 was renamed from 0002_notes.up.sql to {renamed} after it was applied to {} (ledger checksum {sum}, file checksum {sum})",
                db.label()
            )],
        );
    }
    // A changed up file names the version and both full checksums.
    let changed = "ALTER TABLE orders ADD COLUMN note varchar(10);";
    let r = runner(&db, &[orders, ("0002_notes.up.sql", changed)], &backups);
    assert_names(
        &[r.status().await.unwrap_err()],
        &[&format!(
            "applied migration file 0002_notes.up.sql (version 2) was changed after it was applied to {} (ledger checksum {sum}, file checksum {})",
            db.label(),
            bluegreen_postgres::checksum(changed)
        )],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_below_the_highest_applied_is_refused_unless_out_of_order_is_allowed() {
    let db = fresh_database("drift_out_of_order").await;
    let backups = tempfile::tempdir().unwrap();
    let v1 = [
        (
            "0010_orders.up.sql",
            "CREATE TABLE orders (id bigint PRIMARY KEY);",
        ),
        (
            "0030_notes.up.sql",
            "ALTER TABLE orders ADD COLUMN note text;",
        ),
    ];
    runner(&db, &v1, &backups)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    let late = "CREATE TABLE late (id int);";
    let v2 = [
        v1[0],
        v1[1],
        ("0020_late.up.sql", late),
        // A contract migration below an applied expand one is the normal order.
        (
            "0025_drop_note.up.sql",
            "-- bluegreen: phase=contract\nALTER TABLE orders DROP COLUMN note;",
        ),
    ];
    let r = runner(&db, &v2, &backups);
    assert_names(
        &[
            r.status().await.unwrap_err(),
            r.apply(EXPAND, &ctx("d2")).await.unwrap_err(),
        ],
        &[&format!(
            "pending expand migration 20 (0020_late.up.sql, checksum {}) is lower than the highest applied expand migration 30 (0030_notes.up.sql, checksum {})",
            bluegreen_postgres::checksum(late),
            bluegreen_postgres::checksum(v1[1].1)
        )],
    );
    let c = admin(&db).await;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'late'"
        )
        .await,
        0,
        "nothing ran"
    );

    let allowed = r.with_settings(MigrationSettings {
        allow_out_of_order: true,
        ..settings(backups.path().to_path_buf())
    });
    assert_eq!(
        versions(&allowed.apply(EXPAND, &ctx("d2")).await.unwrap()),
        vec![20]
    );
    assert_eq!(
        versions(&allowed.apply(CONTRACT, &ctx("d2")).await.unwrap()),
        vec![25]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_case_variant_in_the_migration_directory_is_refused_not_ignored() {
    let db = fresh_database("drift_case").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_orders.up.sql"),
        "CREATE TABLE orders (id bigint PRIMARY KEY);",
    )
    .unwrap();
    let source = bluegreen_postgres::MigrationSource::from_dir(dir.path()).unwrap();
    PostgresMigrations::new(db.clone(), source)
        .apply(EXPAND, &ctx("d1"))
        .await
        .unwrap();
    for name in [
        "0002_notes.up.SQL",
        "0002_notes.UP.sql",
        "0001_orders.down.Sql",
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, "ALTER TABLE orders ADD COLUMN note text;").unwrap();
        let e = bluegreen_postgres::MigrationSource::from_dir(dir.path())
            .expect_err("a case variant is refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains(&format!("{name} differs only by case")),
            "{e}"
        );
        std::fs::remove_file(path).unwrap();
    }
}

/// The ledger of a no-transaction migration as a runner killed after
/// `done` of its statements leaves it.
async fn record_killed_after(c: &Client, file: &str, sql: &str, done: i32, total: i32) {
    c.execute(
        "INSERT INTO bluegreen_migrations (version, name, file_name, checksum, phase, reversible, state,
            no_transaction, statements_done, statements_total, attempts, deployment_id, started_at)
         VALUES (1, 'indexes', $1, $2, 'expand', false, 'applying', true, $3, $4, 1, 'deploy-killed', now())
         ON CONFLICT (version) DO UPDATE SET statements_done = EXCLUDED.statements_done",
        &[&file, &bluegreen_postgres::checksum(sql), &done, &total],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_next_run_reads_from_the_catalog_whether_the_next_statement_completed() {
    let db = fresh_database("killed_truth").await;
    let backups = tempfile::tempdir().unwrap();
    let file = "0001_indexes.up.sql";
    let sql = "-- bluegreen: no-transaction\nCREATE TABLE t (a int, b int);\n\
               CREATE INDEX CONCURRENTLY idx_t_a ON t (a);\nUPDATE t SET b = a;\n\
               CREATE INDEX CONCURRENTLY idx_t_b ON t (b);";
    // The ledger tables, then the state a runner killed after statement 1
    // leaves, while its abandoned session went on to finish statement 2.
    runner(&db, &[], &backups)
        .apply(EXPAND, &ctx("setup"))
        .await
        .unwrap();
    let c = admin(&db).await;
    c.batch_execute("CREATE TABLE t (a int, b int)")
        .await
        .unwrap();
    record_killed_after(&c, file, sql, 1, 4).await;
    c.batch_execute("CREATE INDEX CONCURRENTLY idx_t_a ON t (a)")
        .await
        .unwrap();

    let next = runner(&db, &[(file, sql)], &backups);
    let report = |e: bluegreen_core::Error| {
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        e.to_string()
    };
    let msg = report(next.status().await.unwrap_err());
    assert!(msg.contains("stopped after 1 of 4 statements"), "{msg}");
    assert!(
        msg.contains("statement 2 of 4 (line 3, `CREATE INDEX CONCURRENTLY idx_t_a ON t (a)`) appears to have completed: index idx_t_a exists and is valid"),
        "{msg}"
    );
    let msg = report(next.apply(EXPAND, &ctx("deploy-next")).await.unwrap_err());
    assert!(msg.contains("index idx_t_a exists and is valid"), "{msg}");

    c.batch_execute("DROP INDEX idx_t_a").await.unwrap();
    let msg = report(next.status().await.unwrap_err());
    assert!(
        msg.contains("statement 2 of 4 (line 3, `CREATE INDEX CONCURRENTLY idx_t_a ON t (a)`) did not complete: index idx_t_a does not exist"),
        "{msg}"
    );

    record_killed_after(&c, file, sql, 2, 4).await;
    let msg = report(next.status().await.unwrap_err());
    assert!(
        msg.contains("whether statement 3 of 4 (line 4, `UPDATE t SET b = a`) completed cannot be read from the catalog"),
        "{msg}"
    );

    // A build the kill cut short leaves an INVALID index.
    record_killed_after(&c, file, sql, 3, 4).await;
    c.batch_execute(
        "CREATE INDEX idx_t_b ON t (b); UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_t_b'::regclass",
    )
    .await
    .unwrap();
    let msg = report(next.status().await.unwrap_err());
    assert!(
        msg.contains("statement 4 of 4 (line 5, `CREATE INDEX CONCURRENTLY idx_t_b ON t (b)`) did not complete: index idx_t_b exists but is INVALID"),
        "{msg}"
    );

    record_killed_after(&c, file, sql, 4, 4).await;
    let msg = report(next.status().await.unwrap_err());
    assert!(
        msg.contains(
            "all 4 statements completed; the runner stopped before recording the migration applied"
        ),
        "{msg}"
    );
}
