//! The core conformance suites, run against a real PostgreSQL server.

mod common;

use std::time::Duration;

use bluegreen_core::testing::conformance;
use bluegreen_core::{ErrorKind, Journal, Timestamp};
use bluegreen_postgres::PostgresJournal;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_runner_passes_the_core_conformance_suite() {
    let db = fresh_database("conformance_migrations").await;
    // The suite verifies its backup with a minimum of 1 entry, and
    // bluegreen's own ledger tables do not count: give the database one
    // table of the application's.
    db.connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE app_settings (key text PRIMARY KEY)")
        .await
        .unwrap();
    let backups = tempfile::tempdir().unwrap();
    let runner = runner(&db, ORDERS, &backups);
    let ctx = ctx("conformance-deploy");
    conformance::migrations(&runner, &ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_passes_the_core_conformance_suite() {
    let db = fresh_database("conformance_journal").await;
    let journal = PostgresJournal::connect(db)
        .await
        .expect("journal connects");
    conformance::journal(&journal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployers_on_two_connections_share_one_lease_and_the_stale_one_is_fenced() {
    let db = fresh_database("journal_two_deployers").await;
    let a = PostgresJournal::connect(db.clone()).await.unwrap();
    let b = PostgresJournal::connect(db).await.unwrap();
    let ttl = Duration::from_secs(30);
    let t0 = Timestamp(1_700_000_000_000);
    let lease_a = a.acquire("order-api", "host-a:41", ttl, t0).await.unwrap();
    let held = b
        .acquire(
            "order-api",
            "host-b:77",
            ttl,
            t0.after(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(held.kind(), ErrorKind::LeaseHeld);
    assert!(held.to_string().contains("host-a:41"), "{held}");

    let lease_b = b
        .acquire(
            "order-api",
            "host-b:77",
            ttl,
            t0.after(Duration::from_secs(31)),
        )
        .await
        .expect("takeover after expiry");
    assert_eq!(lease_b.token, lease_a.token + 1);
    let rec = bluegreen_core::Record::Step {
        input: bluegreen_core::machine::Input::Tick,
        commands: vec![],
        events: vec![],
        notifications: vec![],
    };
    let fenced = a
        .append(&lease_a, "dep-1", t0.after(Duration::from_secs(32)), &rec)
        .await
        .unwrap_err();
    assert_eq!(fenced.kind(), ErrorKind::Fenced);
    assert!(fenced.to_string().contains("host-b:77"), "{fenced}");
    assert_eq!(
        b.append(&lease_b, "dep-1", t0.after(Duration::from_secs(33)), &rec)
            .await
            .unwrap(),
        1
    );
    let entries = a.read("dep-1").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].token, lease_b.token);
    assert_eq!(entries[0].record, rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_gives_only_the_records_past_a_seq() {
    let db = fresh_database("journal_read_after").await;
    let j = PostgresJournal::connect(db).await.unwrap();
    let t0 = Timestamp(1_700_000_000_000);
    let lease = j
        .acquire("order-api", "host-a:41", Duration::from_secs(30), t0)
        .await
        .unwrap();
    for (n, input) in [
        bluegreen_core::machine::Input::Tick,
        bluegreen_core::machine::Input::Start,
        bluegreen_core::machine::Input::Tick,
    ]
    .into_iter()
    .enumerate()
    {
        let rec = bluegreen_core::Record::Step {
            input,
            commands: vec![],
            events: vec![],
            notifications: vec![],
        };
        let at = t0.after(Duration::from_secs(n as u64));
        j.append(&lease, "dep-1", at, &rec).await.unwrap();
    }
    let all = j.read("dep-1").await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let after = j.read_after("dep-1", 1).await.unwrap();
    assert_eq!(after, all[1..].to_vec());
    assert!(j.read_after("dep-1", 3).await.unwrap().is_empty());
    assert!(j.read_after("dep-2", 0).await.unwrap().is_empty());
}
