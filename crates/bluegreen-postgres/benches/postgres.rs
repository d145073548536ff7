//! Latency of the Postgres journal and runner against the server started by
//! scripts/test: `BLUEGREEN_TEST_PG_URL=... cargo bench -p bluegreen-postgres`.
//!
//! Prints p50/p95/max of a journal append (a lease-checked transaction), a
//! lease renewal, and the per-migration cost of applying 20 small migrations
//! (ledger row, transaction, lock and timeouts included).

use std::time::{Duration, Instant};

use bluegreen_core::{
    Journal, MigrationContext, MigrationPhase, MigrationRunner, Record, Timestamp,
};
use bluegreen_postgres::{Database, MigrationSource, PostgresJournal, PostgresMigrations};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<32} n={:<4} p50={:>8.2?} p95={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.5),
        at(0.95),
        samples[samples.len() - 1]
    );
}

fn main() {
    let Ok(url) = std::env::var("BLUEGREEN_TEST_PG_URL").map(|u| {
        match std::env::var("BLUEGREEN_TEST_PG_CA") {
            Ok(ca) => format!("{u}?sslrootcert={ca}"),
            Err(_) => u,
        }
    }) else {
        eprintln!("BLUEGREEN_TEST_PG_URL is not set: start PostgreSQL with scripts/services/postgres.sh (scripts/test does)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = Database::from_url(&url).unwrap();
        let c = admin.connect().await.unwrap();
        c.batch_execute("DROP DATABASE IF EXISTS bgt_bench WITH (FORCE)")
            .await
            .unwrap();
        c.batch_execute("CREATE DATABASE bgt_bench").await.unwrap();
        let db = admin.with_dbname("bgt_bench");

        let j = PostgresJournal::connect(db.clone()).await.unwrap();
        let t0 = Timestamp(1_700_000_000_000);
        let lease = j
            .acquire("bench", "bench-1", Duration::from_secs(60), t0)
            .await
            .unwrap();
        let rec = Record::Step {
            input: bluegreen_core::machine::Input::Tick,
            commands: vec![],
            events: vec![],
            notifications: vec![],
        };
        let mut appends = Vec::new();
        for _ in 0..300 {
            let s = Instant::now();
            j.append(&lease, "bench-dep", t0, &rec).await.unwrap();
            appends.push(s.elapsed());
        }
        summary("journal append", appends);
        let mut renews = Vec::new();
        for _ in 0..100 {
            let s = Instant::now();
            j.renew(&lease, Duration::from_secs(60), t0).await.unwrap();
            renews.push(s.elapsed());
        }
        summary("journal renew", renews);

        let files: Vec<(String, String)> = (1..=20)
            .map(|v| {
                (
                    format!("{v:04}_t{v}.up.sql"),
                    format!("CREATE TABLE t{v} (id bigint PRIMARY KEY);"),
                )
            })
            .collect();
        let runner =
            PostgresMigrations::new(db.clone(), MigrationSource::from_files(files).unwrap());
        let ctx = MigrationContext {
            deployment_id: "bench".into(),
            backup_id: None,
        };
        let s = Instant::now();
        let applied = runner.apply(MigrationPhase::Expand, &ctx).await.unwrap();
        let total = s.elapsed();
        println!(
            "{:<32} n={:<4} total={total:>8.2?} per migration={:>8.2?}",
            "apply 20 migrations",
            applied.len(),
            total / applied.len() as u32
        );
        let mut statuses = Vec::new();
        for _ in 0..50 {
            let s = Instant::now();
            runner.status().await.unwrap();
            statuses.push(s.elapsed());
        }
        summary("status (connect + ledger read)", statuses);
    });
}
