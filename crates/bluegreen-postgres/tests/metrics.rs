//! PostgreSQL as evidence, on the real server scripts/test starts (with
//! pg_stat_statements loaded): SQL checks returning one number, their bad
//! answers, the read-only transaction and statement timeout, and the
//! slow-query regression.

mod common;

use std::time::Duration;

use bluegreen_core::testing::conformance;
use bluegreen_core::{ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Timestamp};
use bluegreen_postgres::{Database, PostgresMetrics};

const FROM: Timestamp = Timestamp(1_767_225_600_000);
const TO: Timestamp = Timestamp(1_767_225_660_000);

fn q(check: &str, sql: &str) -> MetricQuery {
    MetricQuery::new(check, sql, FROM, TO)
}

async fn value(m: &PostgresMetrics, sql: &str) -> f64 {
    match m.query(&q("c", sql)).await.expect("the query answers") {
        MetricAnswer::Samples { samples } => {
            assert_eq!(samples.len(), 1, "one sample");
            assert_eq!(samples[0].at, TO, "at the window's end");
            samples[0].value
        }
        other => panic!("expected a value from {sql}, got {other:?}"),
    }
}

const POOL: &str =
    "SELECT count(*)::float8 / current_setting('max_connections')::float8 FROM pg_stat_activity";

#[tokio::test]
async fn connection_pool_use_is_connections_over_max_connections() {
    let db = common::fresh_database("metrics_pool").await;
    let m = PostgresMetrics::new(db.clone());
    // Ten more sessions held open: at least 11 of the server's 200.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(db.connect().await.unwrap());
    }
    let v = value(&m, POOL).await;
    assert!((11.0 / 200.0..0.8).contains(&v), "pool use {v}");
    drop(held);
}

#[tokio::test]
async fn numbers_of_every_numeric_type_read_as_themselves() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_types").await);
    assert_eq!(value(&m, "SELECT 7::int2").await, 7.0);
    assert_eq!(value(&m, "SELECT 70000::int4").await, 70000.0);
    assert_eq!(
        value(&m, "SELECT count(*) FROM generate_series(1, 42)").await,
        42.0
    );
    assert_eq!(value(&m, "SELECT 0.25::float4").await, 0.25);
    assert_eq!(value(&m, "SELECT 12.5::numeric").await, 12.5);
    assert_eq!(value(&m, "SELECT -0.0042::numeric").await, -0.0042);
    assert_eq!(
        value(&m, "SELECT 123456789.000001::numeric").await,
        123456789.000001
    );
}

#[tokio::test]
async fn the_window_binds_to_dollar_one_and_dollar_two() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_window").await);
    let secs = value(
        &m,
        "SELECT extract(epoch FROM $2::timestamptz - $1::timestamptz)::float8",
    )
    .await;
    assert_eq!(secs, 60.0);
    let start = value(&m, "SELECT extract(epoch FROM $1::timestamptz)::float8 + 0 * extract(epoch FROM $2::timestamptz)").await;
    assert_eq!(start, FROM.0 as f64 / 1000.0);
}

async fn refused(m: &PostgresMetrics, sql: &str) -> bluegreen_core::Error {
    let e = m
        .query(&q("db-pool", sql))
        .await
        .expect_err("the bad answer is an error");
    assert!(e.message().contains("check \"db-pool\""), "{e}");
    e
}

#[tokio::test]
async fn sql_that_returns_no_row_or_null_is_no_data_naming_the_check() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_norow").await);
    for (sql, why) in [
        ("SELECT 1 WHERE false", "returned no row"),
        ("SELECT NULL::int", "returned NULL"),
    ] {
        match m.query(&q("db-pool", sql)).await.unwrap() {
            MetricAnswer::NoData { reason } => {
                assert!(reason.contains("check \"db-pool\""), "{reason}");
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{sql}: expected no data, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn two_columns_two_rows_text_or_extra_parameters_are_refused_naming_the_check() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_bad").await);
    let e = refused(&m, "SELECT 1 AS used, 2 AS max").await;
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("2 columns (used, max)"), "{e}");
    let e = refused(&m, "SELECT 'high' AS level").await;
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("column \"level\" of type text"), "{e}");
    let e = refused(&m, "SELECT generate_series(1, 2)").await;
    assert!(e.message().contains("returned 2 rows"), "{e}");
    let e = refused(&m, "SELECT $1::int").await;
    assert!(e.message().contains("1 parameters"), "{e}");
    let e = refused(&m, "SELECT nope FROM nowhere").await;
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("the SQL failed"), "{e}");
    let e = refused(&m, "pg_stat_statements top many").await;
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_check_cannot_write() {
    let db = common::fresh_database("metrics_readonly").await;
    db.connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    let m = PostgresMetrics::new(db.clone());
    let e = refused(
        &m,
        "WITH w AS (INSERT INTO t VALUES (1) RETURNING x) SELECT count(*) FROM w",
    )
    .await;
    assert!(e.message().contains("read-only transaction"), "{e}");
    let n: i64 = db
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was written");
}

#[tokio::test]
async fn a_slow_check_is_cancelled_by_its_statement_timeout() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_timeout").await)
        .with_statement_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let e = refused(&m, "SELECT 1 FROM pg_sleep(5)").await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("statement timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_sql_source_passes_the_metrics_conformance_suite() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_conformance").await);
    conformance::metrics(&m, &q("pool", POOL), &q("none", "SELECT 1 WHERE false")).await;
}

async fn with_statements(name: &str) -> Database {
    let db = common::fresh_database(name).await;
    db.connect()
        .await
        .unwrap()
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .expect("pg_stat_statements is installed (scripts/services/postgres.sh loads it)");
    db
}

/// Runs `SELECT … pg_sleep($1)` `n` times sleeping `secs`: one statement
/// in pg_stat_statements whatever `secs` is, marked by `tag`.
async fn run(db: &Database, tag: &str, secs: f64, n: usize) {
    let c = db.connect().await.unwrap();
    let sql = format!("SELECT '{tag}' AS tag, pg_sleep($1)::text");
    for _ in 0..n {
        c.query(&sql, &[&secs]).await.unwrap();
    }
}

fn ratio(a: MetricAnswer) -> f64 {
    match a {
        MetricAnswer::Samples { samples } => samples[0].value,
        other => panic!("expected a ratio, got {other:?}"),
    }
}

#[tokio::test]
async fn a_statement_ten_times_slower_since_the_snapshot_reads_as_a_regression() {
    let db = with_statements("metrics_statements_slow").await;
    // Heavier than anything else on the server since the snapshot.
    run(&db, "slow-query-regression", 0.002, 20).await;
    let m = PostgresMetrics::new(db.clone());
    m.snapshot_statements().await.unwrap();
    run(&db, "slow-query-regression", 0.03, 10).await;
    let r = ratio(
        m.query(&q("slow-queries", "pg_stat_statements top 1"))
            .await
            .unwrap(),
    );
    // About 30 ms a call against about 2 ms before.
    assert!(r > 5.0, "ratio {r}");
}

#[tokio::test]
async fn a_statement_as_fast_as_before_reads_about_one() {
    let db = with_statements("metrics_statements_same").await;
    run(&db, "no-regression", 0.02, 10).await;
    let m = PostgresMetrics::new(db.clone());
    m.snapshot_statements().await.unwrap();
    run(&db, "no-regression", 0.02, 10).await;
    let r = ratio(
        m.query(&q("slow-queries", "pg_stat_statements top 1"))
            .await
            .unwrap(),
    );
    assert!(r > 0.7 && r < 1.5, "ratio {r}");
}

#[tokio::test]
async fn without_a_snapshot_the_first_reading_takes_it_and_is_no_data() {
    let db = with_statements("metrics_statements_first").await;
    let m = PostgresMetrics::new(db.clone());
    match m
        .query(&q("slow-queries", "pg_stat_statements"))
        .await
        .unwrap()
    {
        MetricAnswer::NoData { reason } => {
            assert!(reason.contains("snapshot was taken now"), "{reason}")
        }
        other => panic!("expected no data, got {other:?}"),
    }
}

#[tokio::test]
async fn without_the_extension_the_error_says_how_to_install_it() {
    let m = PostgresMetrics::new(common::fresh_database("metrics_no_extension").await);
    let e = m.snapshot_statements().await.unwrap_err();
    assert!(
        e.message().contains("CREATE EXTENSION pg_stat_statements"),
        "{e}"
    );
    assert!(e.message().contains("shared_preload_libraries"), "{e}");
}
