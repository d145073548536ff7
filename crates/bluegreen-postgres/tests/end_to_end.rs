//! The reference deployment end to end: the core driver with the core fakes
//! for compute, traffic, metrics, smoke tests, secrets and events, and this
//! crate's runner and journal on the real PostgreSQL server.
//!
//! The driver runs under `bluegreen_core::testing::simulate` (paused virtual
//! time, so the one-hour soak takes milliseconds). Calls to the real server
//! run on a separate real-time runtime and block the simulated one meanwhile,
//! so virtual time stands still while the database works.

mod common;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bluegreen_core::journal::DeploymentSummary;
use bluegreen_core::plan::MigrationSettings as PlanMigrations;
use bluegreen_core::testing::{reference_plan, simulate, Change, World};
use bluegreen_core::{
    BackupRecord, BackupVerification, Color, Journal, JournalEntry, Lease, MigrationContext,
    MigrationInfo, MigrationPhase, MigrationRunner, MigrationStatus, Outcome, Record, Result,
    Timestamp, VerificationCheck,
};
use bluegreen_postgres::{LedgerState, PostgresJournal, PostgresMigrations};
use common::*;
use tokio::runtime::{Handle, Runtime};

/// Runs `fut` to completion on the real-time runtime, blocking this thread.
fn real<T: Send + 'static>(rt: &Handle, fut: impl Future<Output = T> + Send + 'static) -> T {
    let h = rt.clone();
    std::thread::spawn(move || h.block_on(fut))
        .join()
        .expect("a call to the real server panicked")
}

/// The Postgres runner seen from the simulation; it records what it did in
/// the fakes' world, in order with their changes.
struct RealMigrations {
    inner: Arc<PostgresMigrations>,
    rt: Handle,
    world: World,
}

impl RealMigrations {
    fn record(&self, change: Change) {
        self.world
            .lock()
            .changes
            .push((tokio::time::Instant::now(), change));
    }
}

#[async_trait]
impl MigrationRunner for RealMigrations {
    async fn status(&self) -> Result<MigrationStatus> {
        let i = self.inner.clone();
        real(&self.rt, async move { i.status().await })
    }
    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        let (i, c) = (self.inner.clone(), ctx.clone());
        let b = real(&self.rt, async move { i.backup(&c).await })?;
        self.record(Change::Backup(b.id.clone()));
        Ok(b)
    }
    async fn verify_backup(&self, b: &BackupRecord, min: u64) -> Result<BackupVerification> {
        let (i, b) = (self.inner.clone(), b.clone());
        real(&self.rt, async move { i.verify_backup(&b, min).await })
    }
    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        let (i, c) = (self.inner.clone(), ctx.clone());
        let applied = real(&self.rt, async move { i.apply(phase, &c).await })?;
        for m in &applied {
            self.record(Change::Migrated(m.version, phase));
        }
        Ok(applied)
    }
    async fn verify(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>> {
        let (i, c) = (self.inner.clone(), ctx.clone());
        real(&self.rt, async move { i.verify(phase, &c).await })
    }
    async fn revert(&self, versions: &[u64], ctx: &MigrationContext) -> Result<Vec<MigrationInfo>> {
        let (i, c, v) = (self.inner.clone(), ctx.clone(), versions.to_vec());
        let reverted = real(&self.rt, async move { i.revert(&v, &c).await })?;
        for m in &reverted {
            self.record(Change::Reverted(m.version));
        }
        Ok(reverted)
    }
}

/// The Postgres journal seen from the simulation.
struct RealJournal {
    inner: Arc<PostgresJournal>,
    rt: Handle,
}

#[async_trait]
impl Journal for RealJournal {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: std::time::Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        let (i, s, h) = (self.inner.clone(), service.to_string(), holder.to_string());
        real(&self.rt, async move { i.acquire(&s, &h, ttl, now).await })
    }
    async fn renew(
        &self,
        lease: &Lease,
        ttl: std::time::Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        let (i, l) = (self.inner.clone(), lease.clone());
        real(&self.rt, async move { i.renew(&l, ttl, now).await })
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        let (i, l) = (self.inner.clone(), lease.clone());
        real(&self.rt, async move { i.release(&l).await })
    }
    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        let (i, l, d, r) = (
            self.inner.clone(),
            lease.clone(),
            deployment_id.to_string(),
            record.clone(),
        );
        real(&self.rt, async move { i.append(&l, &d, at, &r).await })
    }
    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        let (i, d) = (self.inner.clone(), deployment_id.to_string());
        real(&self.rt, async move { i.read(&d).await })
    }
    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        let i = self.inner.clone();
        real(&self.rt, async move { i.deployments(service).await })
    }
}

struct Setup {
    rt: Runtime,
    db: bluegreen_postgres::Database,
    runner: Arc<PostgresMigrations>,
    journal: Arc<PostgresJournal>,
    _backups: tempfile::TempDir,
}

/// A database where release 2.4.0's migration (0001, the orders table) is
/// applied, and a runner over `files` (2.5.0's).
fn setup(
    name: &str,
    files: &[(&str, &str)],
    configure: impl FnOnce(PostgresMigrations) -> PostgresMigrations,
) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backups = tempfile::tempdir().unwrap();
    let (db, journal) = rt.block_on(async {
        let db = fresh_database(name).await;
        runner(&db, &ORDERS[..2], &backups)
            .apply(EXPAND, &ctx("order-api-2.4.0"))
            .await
            .expect("release 2.4.0's migration");
        let journal = PostgresJournal::connect(db.clone()).await.expect("journal");
        (db, journal)
    });
    let runner = Arc::new(configure(runner(&db, files, &backups)));
    Setup {
        rt,
        db,
        runner,
        journal: Arc::new(journal),
        _backups: backups,
    }
}

fn position(changes: &[Change], want: impl Fn(&Change) -> bool, what: &str) -> usize {
    changes
        .iter()
        .position(want)
        .unwrap_or_else(|| panic!("{what} never happened: {changes:?}"))
}

fn deploy(s: &Setup, error_rate: f64) -> (bluegreen_core::Report, bluegreen_core::testing::Fakes) {
    let handle = s.rt.handle().clone();
    simulate(|fakes| {
        fakes
            .metrics
            .constant("error-rate", error_rate)
            .constant("p95-latency", 180.0);
        let mut plan = reference_plan();
        // The test database is small: its dump lists 3 entries of the
        // application's (the orders table, its data and its key; bluegreen's
        // own tables are left out), not 100.
        plan.migrations = Some(PlanMigrations {
            backup: true,
            backup_min_entries: 3,
        });
        fakes
            .builder(plan)
            .migrations(Arc::new(RealMigrations {
                inner: s.runner.clone(),
                rt: handle.clone(),
                world: fakes.world.clone(),
            }))
            .journal(Arc::new(RealJournal {
                inner: s.journal.clone(),
                rt: handle.clone(),
            }))
    })
}

async fn column_exists(db: &bluegreen_postgres::Database, column: &str) -> bool {
    let c = db.connect().await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = $1",
            &[&column],
        )
        .await
        .unwrap()
        .get(0);
    n == 1
}

#[test]
fn the_reference_deployment_expands_before_scale_up_and_contracts_after_the_old_color_is_at_zero() {
    let s = setup("e2e_success", ORDERS, |r| {
        r.with_row_count_invariant(EXPAND, "orders")
    });
    let (report, fakes) = deploy(&s, 0.002);
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );

    let changes = fakes.world.changes();
    let backup = position(&changes, |c| matches!(c, Change::Backup(_)), "the backup");
    let expand = position(
        &changes,
        |c| *c == Change::Migrated(25, MigrationPhase::Expand),
        "the expand migration",
    );
    let blue_up = position(
        &changes,
        |c| *c == Change::Scaled(Color::Blue, 3),
        "blue's scale-up",
    );
    let green_zero = position(
        &changes,
        |c| *c == Change::Scaled(Color::Green, 0),
        "green's scale-down",
    );
    let contract = position(
        &changes,
        |c| *c == Change::Migrated(26, MigrationPhase::Contract),
        "the contract migration",
    );
    assert!(backup < expand, "backup before the migration: {changes:?}");
    assert!(
        expand < blue_up,
        "expand before the new color starts: {changes:?}"
    );
    assert!(
        green_zero < contract,
        "contract only after the old color is at zero: {changes:?}"
    );
    assert_eq!(fakes.world.split().percent(Color::Blue), 100);
    assert_eq!(fakes.world.desired(Color::Green), 0);

    let Change::Backup(backup_id) = &changes[backup] else {
        unreachable!()
    };
    s.rt.block_on(async {
        assert!(column_exists(&s.db, "order_metadata").await);
        assert!(
            !column_exists(&s.db, "legacy_status").await,
            "the contract step ran"
        );
        let ledger = s.runner.ledger().await.unwrap();
        for v in [25, 26] {
            let e = ledger.iter().find(|e| e.version == v).unwrap();
            assert_eq!(e.state, LedgerState::Applied);
            assert_eq!(e.deployment_id.as_deref(), Some("sim-1"));
            assert_eq!(
                e.backup_id.as_deref(),
                Some(backup_id.as_str()),
                "ran under the verified backup"
            );
        }
        let c = s.db.connect().await.unwrap();
        let passed: bool = c
            .query_one(
                "SELECT passed FROM bluegreen_backups WHERE id = $1",
                &[backup_id],
            )
            .await
            .unwrap()
            .get(0);
        assert!(passed, "the backup's verification is recorded");
        let list = s
            .journal
            .deployments(Some("order-api".into()))
            .await
            .unwrap();
        let d = list
            .iter()
            .find(|d| d.id == "sim-1")
            .expect("the deployment is journaled in Postgres");
        assert_eq!(d.outcome.as_deref(), Some("succeeded"));
        let entries = s.journal.read("sim-1").await.unwrap();
        assert_eq!(d.records as usize, entries.len());
        assert!(
            entries.iter().any(|e| serde_json::to_string(&e.record)
                .unwrap()
                .contains(backup_id.as_str())),
            "the backup is recorded in the deployment journal"
        );
    });
}

#[test]
fn a_broken_row_count_invariant_rolls_back_and_reverts_the_expand_migration() {
    let files = [
        ORDERS[0],
        ORDERS[1],
        (
            "0025_add_order_metadata.up.sql",
            "-- bluegreen: reversible\nALTER TABLE orders ADD COLUMN order_metadata jsonb;\nDELETE FROM orders WHERE id = 3;",
        ),
        ORDERS[3],
        ORDERS[4],
    ];
    let s = setup("e2e_invariant", &files, |r| {
        r.with_row_count_invariant(EXPAND, "orders")
    });
    let (report, fakes) = deploy(&s, 0.002);
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("expected a rollback: {}", report.to_markdown());
    };
    assert!(
        reason.summary.contains("orders: 3 rows before, 2 after"),
        "{}",
        reason.summary
    );
    let changes = fakes.world.changes();
    assert!(changes.contains(&Change::Reverted(25)), "{changes:?}");
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Migrated(26, _))),
        "no contract step: {changes:?}"
    );
    assert!(
        !changes.contains(&Change::Scaled(Color::Blue, 3)),
        "blue never started: {changes:?}"
    );
    assert_eq!(fakes.world.split().percent(Color::Green), 100);
    s.rt.block_on(async {
        assert!(
            !column_exists(&s.db, "order_metadata").await,
            "the column was reverted"
        );
        let e = s
            .runner
            .ledger()
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.version == 25)
            .unwrap();
        assert_eq!(e.state, LedgerState::Reverted);
        assert_eq!(e.reverted_by.as_deref(), Some("sim-1"));
        let d = s.journal.deployments(None).await.unwrap();
        assert_eq!(
            d.iter()
                .find(|d| d.id == "sim-1")
                .unwrap()
                .outcome
                .as_deref(),
            Some("rolled_back")
        );
    });
}

#[test]
fn a_rollback_after_an_irreversible_migration_halts_with_the_state_recorded() {
    // 2.5.0's expand migration has no down file: it cannot be reverted.
    let files = [
        ORDERS[0],
        ORDERS[1],
        (
            "0025_add_order_metadata.up.sql",
            "ALTER TABLE orders ADD COLUMN order_metadata jsonb;",
        ),
        ORDERS[4],
    ];
    let s = setup("e2e_halt", &files, |r| r);
    // 10% errors on blue after the switch: the rollback trigger fires.
    let (report, fakes) = deploy(&s, 0.10);
    let Some(Outcome::Halted { reason }) = &report.outcome else {
        panic!("expected a halt: {}", report.to_markdown());
    };
    assert!(
        reason.summary.contains("25 add_order_metadata (expand)"),
        "{}",
        reason.summary
    );
    let changes = fakes.world.changes();
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Reverted(_))),
        "nothing reverted: {changes:?}"
    );
    assert_eq!(
        fakes.world.split().percent(Color::Green),
        100,
        "traffic restored first"
    );
    s.rt.block_on(async {
        assert!(
            column_exists(&s.db, "order_metadata").await,
            "the schema is left as it is"
        );
        assert!(
            column_exists(&s.db, "legacy_status").await,
            "the contract step never ran"
        );
        let e = s
            .runner
            .ledger()
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.version == 25)
            .unwrap();
        assert_eq!((e.state, e.reversible), (LedgerState::Applied, false));
        assert_eq!(e.deployment_id.as_deref(), Some("sim-1"));
        let d = s.journal.deployments(None).await.unwrap();
        assert_eq!(
            d.iter()
                .find(|d| d.id == "sim-1")
                .unwrap()
                .outcome
                .as_deref(),
            Some("halted")
        );
        let last = s.journal.read("sim-1").await.unwrap();
        assert!(!last.is_empty());
    });
}
