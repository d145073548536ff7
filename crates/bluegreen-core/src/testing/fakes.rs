//! In-memory fake providers sharing one [`World`], with scriptable faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::{Error, ErrorKind, Result};
use crate::machine::{Event, Stage};
use crate::plan::Release;
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeProvider, ComputeStatus, EventSink,
    MetricAnswer, MetricQuery, MetricsSource, MigrationContext, MigrationInfo, MigrationPhase,
    MigrationRunner, MigrationStatus, Notification, PreparedRelease, Rollout, Sample,
    SecretMetadata, SecretSource, SecretValue, SmokeOutcome, SmokeTarget, SmokeTest, TargetHealth,
    TrafficRouter, VerificationCheck,
};

/// A fault to inject into one fake call.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A permanent error of this kind.
    Error(ErrorKind),
    /// A temporary error (the driver retries it).
    Temporary,
    /// A timeout error (temporary).
    Timeout,
    /// The call never returns (the driver's per-call timeout must end it).
    Hang,
    /// A read answers something other than the truth (the split before the
    /// last change, a status one short, no healthy targets).
    WrongReadBack,
    /// A mutating call takes effect, then its reply is lost: the caller sees
    /// a temporary error (a timeout) and cannot tell whether it applied.
    LostReply,
    /// On `compute.scale`: the count applies but the color keeps running
    /// the other color's release, settled and COMPLETED, as after an ECS
    /// deployment circuit breaker's rollback.
    OldRelease,
    /// Something outside the deployment (an autoscaler, a human, a crash)
    /// sets `color`'s desired count to `count` just before this call runs;
    /// the color's running instances drop to the new count at once and it
    /// takes the world's settle time to grow back. The call itself then runs
    /// as usual.
    ExternalScale {
        /// The color.
        color: Color,
        /// Its new desired count.
        count: u32,
    },
    /// On `router.set_split`: the caller freezes inside the call, as a
    /// stopped process would. The write lands `after` later whatever the
    /// caller does meanwhile (dropped, timed out, superseded), and the call
    /// never returns.
    Frozen {
        /// How long after the call its write lands.
        after: Duration,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    op: String,
    call: Option<u32>,
    onwards: bool,
    fault: Fault,
}

/// Scripted faults, per operation name (`"router.set_split"`,
/// `"compute.status"`, `"metrics.query"`, ...) and call index.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<BTreeMap<String, u32>>,
    world: Mutex<Option<World>>,
}

/// Every operation name the fakes answer to.
pub const OPERATIONS: &[&str] = &[
    "compute.prepare",
    "compute.scale",
    "compute.status",
    "compute.autoscaling_state",
    "compute.suspend_autoscaling",
    "compute.restore_autoscaling",
    "router.current_split",
    "router.set_split",
    "router.target_health",
    "router.drain_period",
    "migrations.status",
    "migrations.backup",
    "migrations.verify_backup",
    "migrations.apply",
    "migrations.verify",
    "migrations.revert",
    "metrics.query",
    "smoke.run",
    "secrets.get",
    "secrets.metadata",
    "events.notify",
];

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call number `call` (0-based) of `op` gets `fault`.
    pub fn inject(&self, op: &str, call: u32, fault: Fault) {
        lock(&self.rules).push(Rule {
            op: op.into(),
            call: Some(call),
            onwards: false,
            fault,
        });
    }

    /// Call number `first` (0-based) of `op` and every later one get `fault`.
    pub fn inject_from(&self, op: &str, first: u32, fault: Fault) {
        lock(&self.rules).push(Rule {
            op: op.into(),
            call: Some(first),
            onwards: true,
            fault,
        });
    }

    /// Every call of `op` gets `fault`.
    pub fn always(&self, op: &str, fault: Fault) {
        lock(&self.rules).push(Rule {
            op: op.into(),
            call: None,
            onwards: false,
            fault,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: &str) -> u32 {
        lock(&self.calls).get(op).copied().unwrap_or(0)
    }

    /// The world that [`Fault::ExternalScale`] acts on.
    pub fn attach(&self, world: World) {
        *lock(&self.world) = Some(world);
    }

    /// Counts the call and applies its fault: `Err` for errors, never returns
    /// for a hang, `Ok(true)` when the read must lie.
    pub async fn check(&self, op: &str) -> Result<bool> {
        Ok(self.check_fault(op).await? == Some(Fault::WrongReadBack))
    }

    /// Like [`check`](Self::check), returning the fault the call must act
    /// out itself ([`Fault::WrongReadBack`], [`Fault::LostReply`],
    /// [`Fault::OldRelease`]); [`Fault::ExternalScale`] is applied here.
    pub async fn check_fault(&self, op: &str) -> Result<Option<Fault>> {
        let n = {
            let mut c = lock(&self.calls);
            // The operation's name is copied only on its first call.
            match c.get_mut(op) {
                Some(n) => {
                    *n += 1;
                    *n - 1
                }
                None => {
                    c.insert(op.to_string(), 1);
                    0
                }
            }
        };
        let fault = lock(&self.rules)
            .iter()
            .find(|r| r.op == op && r.call.is_none_or(|c| c == n || (r.onwards && n >= c)))
            .map(|r| r.fault.clone());
        let (provider, operation) = op.split_once('.').unwrap_or(("fake", op));
        let err = |e: Error| {
            Err(e
                .with_provider(provider.to_string())
                .with_operation(operation.to_string()))
        };
        match fault {
            None => Ok(None),
            Some(Fault::ExternalScale { color, count }) => {
                if let Some(w) = lock(&self.world).clone() {
                    w.external_scale(color, count);
                }
                Ok(None)
            }
            Some(
                f @ (Fault::WrongReadBack
                | Fault::LostReply
                | Fault::OldRelease
                | Fault::Frozen { .. }),
            ) => Ok(Some(f)),
            Some(Fault::Error(kind)) => {
                err(Error::new(kind, format!("injected fault on call {n}")))
            }
            Some(Fault::Temporary) => err(Error::unavailable(format!(
                "injected temporary fault on call {n}"
            ))),
            Some(Fault::Timeout) => err(Error::timeout(format!("injected timeout on call {n}"))),
            Some(Fault::Hang) => std::future::pending().await,
        }
    }

    /// After a mutating call took effect: the lost reply, if that was its fault.
    pub fn reply(&self, fault: &Option<Fault>, op: &str) -> Result<()> {
        if *fault == Some(Fault::LostReply) {
            let (provider, operation) = op.split_once('.').unwrap_or(("fake", op));
            return Err(Error::timeout(format!(
                "injected lost reply: {op} took effect but its answer never arrived"
            ))
            .with_provider(provider.to_string())
            .with_operation(operation.to_string()));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A change the fakes made to the world, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A split took effect.
    Split(TrafficSplit),
    /// A color's desired count changed.
    Scaled(Color, u32),
    /// A release was prepared on a color.
    Prepared(Color, String),
    /// A migration was applied.
    Migrated(u64, MigrationPhase),
    /// A migration was reverted.
    Reverted(u64),
    /// Autoscaling was suspended.
    AutoscalingSuspended(Color),
    /// Autoscaling was restored to a state.
    AutoscalingRestored(Color, AutoscalingState),
    /// Smoke tests ran on a color (None: staging) and passed or not.
    Smoke(Option<Color>, String, bool),
    /// A backup was taken.
    Backup(String),
    /// Something outside the deployment set a color's desired count.
    External(Color, u32),
    /// A color's instances run this release from now on (`None`: unknown).
    Running(Color, Option<String>),
}

/// One color of the fake world.
#[derive(Debug, Clone)]
pub struct ColorState {
    /// Desired instances.
    pub desired: u32,
    /// Running at the last change.
    pub running_before: u32,
    /// When desired last changed.
    pub changed_at: tokio::time::Instant,
    /// The release running or about to run.
    pub version: Option<String>,
    /// The provider's identity of that release (`rev:<color>:<version>`).
    pub release_id: Option<String>,
    /// The prepared release, not yet rolled out.
    pub prepared: Option<String>,
    /// Healthy instances override (None: all running are healthy).
    pub healthy: Option<u32>,
    /// The rollout state to report.
    pub rollout: Rollout,
    /// Autoscaling state.
    pub autoscaling: AutoscalingState,
}

/// The shared state of the fakes: the truth the invariants are checked against.
#[derive(Debug)]
pub struct WorldState {
    /// The split in force.
    pub split: TrafficSplit,
    /// Each color.
    pub colors: BTreeMap<Color, ColorState>,
    /// How long a scaled color takes to reach its desired count.
    pub settle: Duration,
    /// Migrations known to the fake runner, by version.
    pub migrations: Vec<MigrationInfo>,
    /// Applied versions.
    pub applied: Vec<u64>,
    /// The deployment each applied version ran under.
    pub applied_by: BTreeMap<u64, String>,
    /// Entries the fake backup verification reports.
    pub backup_entries: u64,
    /// Phases whose verification fails.
    pub failing_verification: Vec<MigrationPhase>,
    /// The router's own drain figure (an ALB's deregistration delay).
    pub router_drain: Option<Duration>,
    /// Every change, in order, with the virtual time it happened.
    pub changes: Vec<(tokio::time::Instant, Change)>,
    /// When the world was made: the simulation epoch on the fakes' clock.
    started: tokio::time::Instant,
}

impl WorldState {
    /// Instances running now.
    pub fn running(&self, c: Color) -> u32 {
        let s = &self.colors[&c];
        if s.changed_at.elapsed() >= self.settle {
            s.desired
        } else {
            s.running_before
        }
    }

    fn record(&mut self, change: Change) {
        self.changes.push((tokio::time::Instant::now(), change));
    }
}

/// The world the fakes share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct World(Arc<Mutex<WorldState>>);

impl World {
    /// `live` serves everything with `count` instances of `version`; the other
    /// color is at zero. Scaling takes `settle` to take effect.
    pub fn new(live: Color, count: u32, version: &str, settle: Duration) -> World {
        let now = tokio::time::Instant::now();
        let mut colors = BTreeMap::new();
        for c in Color::ALL {
            let n = if c == live { count } else { 0 };
            colors.insert(
                c,
                ColorState {
                    desired: n,
                    running_before: n,
                    changed_at: now,
                    version: (c == live).then(|| version.to_string()),
                    release_id: (c == live).then(|| release_id(c, version)),
                    prepared: None,
                    healthy: None,
                    rollout: Rollout::Completed,
                    autoscaling: AutoscalingState {
                        registered: true,
                        ..AutoscalingState::default()
                    },
                },
            );
        }
        World(Arc::new(Mutex::new(WorldState {
            split: TrafficSplit::all_on(live),
            colors,
            settle,
            migrations: Vec::new(),
            applied: Vec::new(),
            applied_by: BTreeMap::new(),
            backup_entries: 120,
            failing_verification: Vec::new(),
            router_drain: None,
            changes: Vec::new(),
            started: now,
        })))
    }

    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        lock(&self.0)
    }

    /// Every change so far (with their times: [`World::timeline`]).
    pub fn changes(&self) -> Vec<Change> {
        self.lock().changes.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Every change so far with the time it happened on the simulation
    /// clock (the world's creation is [`SIMULATION_EPOCH`](super::SIMULATION_EPOCH),
    /// as on [`Fakes::clock`](super::Fakes::clock)), comparable with the
    /// report's times.
    pub fn timeline(&self) -> Vec<(Timestamp, Change)> {
        let w = self.lock();
        w.changes
            .iter()
            .map(|(at, c)| {
                (
                    super::SIMULATION_EPOCH.after(at.duration_since(w.started)),
                    c.clone(),
                )
            })
            .collect()
    }

    /// The split in force.
    pub fn split(&self) -> TrafficSplit {
        self.lock().split
    }

    /// A color's desired count.
    pub fn desired(&self, c: Color) -> u32 {
        self.lock().colors[&c].desired
    }

    /// Something outside the deployment sets `color`'s desired count to
    /// `count` (an autoscaler, a human, tasks killed and replaced): its
    /// running instances drop to `count` at once, or grow to it over the
    /// settle time.
    pub fn external_scale(&self, color: Color, count: u32) {
        let mut w = self.lock();
        let running = w.running(color);
        let c = w.colors.get_mut(&color).expect("both colors exist");
        c.running_before = running.min(count);
        c.desired = count;
        c.changed_at = tokio::time::Instant::now();
        w.record(Change::External(color, count));
    }
}

fn release_id(color: Color, version: &str) -> String {
    format!("rev:{color}:{version}")
}

/// A fake [`ComputeProvider`] over the world.
#[derive(Debug, Clone)]
pub struct FakeCompute {
    world: World,
    faults: Arc<Faults>,
}

impl FakeCompute {
    /// A fake on `world` with `faults`.
    pub fn new(world: World, faults: Arc<Faults>) -> Self {
        FakeCompute { world, faults }
    }
}

#[async_trait]
impl ComputeProvider for FakeCompute {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        let fault = self.faults.check_fault("compute.prepare").await?;
        {
            let mut w = self.world.lock();
            let c = w.colors.get_mut(&color).expect("both colors exist");
            if c.prepared.as_deref() != Some(release.version.as_str()) {
                c.prepared = Some(release.version.clone());
                w.record(Change::Prepared(color, release.version.clone()));
            }
        }
        self.faults.reply(&fault, "compute.prepare")?;
        Ok(PreparedRelease::with_id(release_id(
            color,
            &release.version,
        )))
    }

    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        let fault = self.faults.check_fault("compute.scale").await?;
        {
            let mut w = self.world.lock();
            let running = w.running(color);
            let other = w.colors[&color.other()].version.clone();
            let c = w.colors.get_mut(&color).expect("both colors exist");
            let mut running_release = None;
            if let Some(p) = c.prepared.take() {
                if fault == Some(Fault::OldRelease) {
                    c.release_id = other.as_deref().map(|v| release_id(color, v));
                    c.version = other;
                } else {
                    c.release_id = Some(release_id(color, &p));
                    c.version = Some(p);
                }
                running_release = Some(c.version.clone());
            }
            let rescaled = c.desired != count;
            if rescaled {
                c.running_before = running;
                c.desired = count;
                c.changed_at = tokio::time::Instant::now();
            }
            if let Some(v) = running_release {
                w.record(Change::Running(color, v));
            }
            if rescaled {
                w.record(Change::Scaled(color, count));
            }
        }
        self.faults.reply(&fault, "compute.scale")
    }

    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        let lie = self.faults.check("compute.status").await?;
        let w = self.world.lock();
        let c = &w.colors[&color];
        let running = w.running(color);
        let mut s = ComputeStatus {
            desired: c.desired,
            running,
            pending: c.desired.saturating_sub(running),
            failed: 0,
            healthy: Some(c.healthy.unwrap_or(running).min(running)),
            version: c.version.clone(),
            release_id: c.release_id.clone(),
            rollout: if running == c.desired {
                c.rollout
            } else {
                Rollout::InProgress
            },
        };
        if lie {
            s.running = s.running.saturating_sub(1);
            s.healthy = Some(s.running);
        }
        Ok(s)
    }

    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.faults.check("compute.autoscaling_state").await?;
        Ok(self.world.lock().colors[&color].autoscaling)
    }

    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        let fault = self
            .faults
            .check_fault("compute.suspend_autoscaling")
            .await?;
        let before = {
            let mut w = self.world.lock();
            let c = w.colors.get_mut(&color).expect("both colors exist");
            let before = c.autoscaling;
            c.autoscaling = AutoscalingState {
                registered: before.registered,
                scale_in_suspended: true,
                scale_out_suspended: true,
                scheduled_suspended: true,
            };
            w.record(Change::AutoscalingSuspended(color));
            before
        };
        self.faults.reply(&fault, "compute.suspend_autoscaling")?;
        Ok(before)
    }

    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        let fault = self
            .faults
            .check_fault("compute.restore_autoscaling")
            .await?;
        {
            let mut w = self.world.lock();
            w.colors
                .get_mut(&color)
                .expect("both colors exist")
                .autoscaling = previous;
            w.record(Change::AutoscalingRestored(color, previous));
        }
        self.faults.reply(&fault, "compute.restore_autoscaling")
    }
}

/// A fake [`TrafficRouter`] over the world.
#[derive(Debug, Clone)]
pub struct FakeRouter {
    world: World,
    faults: Arc<Faults>,
    previous: Arc<Mutex<Option<TrafficSplit>>>,
}

impl FakeRouter {
    /// A fake on `world` with `faults`.
    pub fn new(world: World, faults: Arc<Faults>) -> Self {
        FakeRouter {
            world,
            faults,
            previous: Arc::new(Mutex::new(None)),
        }
    }
}

#[async_trait]
impl TrafficRouter for FakeRouter {
    async fn current_split(&self) -> Result<TrafficSplit> {
        let lie = self.faults.check("router.current_split").await?;
        let split = self.world.split();
        if lie {
            let prev = *lock(&self.previous);
            return Ok(prev
                .filter(|p| *p != split)
                .unwrap_or_else(|| TrafficSplit::with_percent(Color::Blue, 50)));
        }
        Ok(split)
    }

    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        let fault = self.faults.check_fault("router.set_split").await?;
        if let Some(Fault::Frozen { after }) = fault {
            let world = self.world.clone();
            let previous = self.previous.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut w = world.lock();
                if w.split != split {
                    *lock(&previous) = Some(w.split);
                    w.split = split;
                    w.record(Change::Split(split));
                }
            });
            return std::future::pending().await;
        }
        {
            let mut w = self.world.lock();
            if w.split != split {
                *lock(&self.previous) = Some(w.split);
                w.split = split;
                w.record(Change::Split(split));
            }
        }
        self.faults.reply(&fault, "router.set_split")
    }

    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        let lie = self.faults.check("router.target_health").await?;
        let w = self.world.lock();
        let running = w.running(color);
        let healthy = w.colors[&color].healthy.unwrap_or(running).min(running);
        Ok(TargetHealth {
            healthy: if lie { 0 } else { healthy },
            total: running,
        })
    }

    async fn drain_period(&self) -> Result<Option<Duration>> {
        self.faults.check("router.drain_period").await?;
        Ok(self.world.lock().router_drain)
    }
}

/// A fake [`MigrationRunner`] over the world's migrations.
#[derive(Debug, Clone)]
pub struct FakeMigrations {
    world: World,
    faults: Arc<Faults>,
}

impl FakeMigrations {
    /// A fake on `world` with `faults`; its migrations are `world.lock().migrations`.
    pub fn new(world: World, faults: Arc<Faults>) -> Self {
        FakeMigrations { world, faults }
    }
}

#[async_trait]
impl MigrationRunner for FakeMigrations {
    async fn status(&self) -> Result<MigrationStatus> {
        self.faults.check("migrations.status").await?;
        let w = self.world.lock();
        let (applied, pending) = w
            .migrations
            .iter()
            .cloned()
            .partition(|m| w.applied.contains(&m.version));
        Ok(MigrationStatus { applied, pending })
    }

    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        self.faults.check("migrations.backup").await?;
        let mut w = self.world.lock();
        let id = format!("backup-{}-{}", ctx.deployment_id, w.changes.len());
        w.record(Change::Backup(id.clone()));
        Ok(BackupRecord {
            location: format!("memory://{id}"),
            id,
            bytes: Some(4096),
            taken_at: Timestamp(0),
        })
    }

    async fn verify_backup(
        &self,
        _backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification> {
        self.faults.check("migrations.verify_backup").await?;
        let entries = self.world.lock().backup_entries;
        Ok(BackupVerification {
            entries,
            passed: entries >= min_entries,
            detail: format!("{entries} entries listed"),
        })
    }

    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.faults.check("migrations.apply").await?;
        let mut w = self.world.lock();
        let mut todo: Vec<MigrationInfo> = w
            .migrations
            .iter()
            .filter(|m| m.phase == phase && !w.applied.contains(&m.version))
            .cloned()
            .collect();
        todo.sort_by_key(|m| m.version);
        for m in &todo {
            w.applied.push(m.version);
            w.applied_by.insert(m.version, ctx.deployment_id.clone());
            w.record(Change::Migrated(m.version, phase));
        }
        let mut ours: Vec<MigrationInfo> = w
            .migrations
            .iter()
            .filter(|m| {
                m.phase == phase
                    && w.applied.contains(&m.version)
                    && w.applied_by.get(&m.version) == Some(&ctx.deployment_id)
            })
            .cloned()
            .collect();
        ours.sort_by_key(|m| m.version);
        Ok(ours)
    }

    async fn verify(
        &self,
        phase: MigrationPhase,
        _ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>> {
        self.faults.check("migrations.verify").await?;
        let w = self.world.lock();
        let passed = !w.failing_verification.contains(&phase);
        Ok(vec![VerificationCheck {
            name: format!("{phase} row counts unchanged"),
            passed,
            detail: if passed {
                "orders: 1000 rows before and after".into()
            } else {
                "orders: 1000 rows before, 990 after".into()
            },
        }])
    }

    async fn revert(
        &self,
        versions: &[u64],
        _ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.faults.check("migrations.revert").await?;
        let mut w = self.world.lock();
        let mut out = Vec::new();
        for v in versions {
            let m = w
                .migrations
                .iter()
                .find(|m| m.version == *v)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("migration {v} is unknown")))?;
            if !m.reversible {
                return Err(Error::conflict(format!(
                    "migration {v} {} has no down migration",
                    m.name
                )));
            }
            out.push(m);
        }
        let mut reverted = Vec::new();
        for m in out {
            if let Some(pos) = w.applied.iter().position(|v| *v == m.version) {
                w.applied.remove(pos);
                w.applied_by.remove(&m.version);
                w.record(Change::Reverted(m.version));
                reverted.push(m);
            }
        }
        Ok(reverted)
    }
}

/// The stages a deployment went through, each with the time it started:
/// what metric schedules keyed by stage read.
#[derive(Debug, Default)]
pub struct StageTimeline {
    stages: Mutex<Vec<(Timestamp, Stage)>>,
}

impl StageTimeline {
    /// No stage yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `event` if it is a stage change, at `at`.
    pub fn record(&self, at: Timestamp, event: &Event) {
        if let Event::Stage { stage } = event {
            lock(&self.stages).push((at, stage.clone()));
        }
    }

    /// Every stage so far with its start.
    pub fn stages(&self) -> Vec<(Timestamp, Stage)> {
        lock(&self.stages).clone()
    }

    /// The stage in force at `at`: the latest one started at or before it.
    pub fn stage_at(&self, at: Timestamp) -> Option<Stage> {
        lock(&self.stages)
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map(|(_, s)| s.clone())
    }

    /// When the deployment started its 100% traffic step, if it did.
    pub fn switched_at(&self) -> Option<Timestamp> {
        lock(&self.stages)
            .iter()
            .find(|(_, s)| matches!(s, Stage::Shift { percent: 100, .. }))
            .map(|(t, _)| *t)
    }
}

type SeriesFn = dyn Fn(&MetricQuery, Timestamp) -> Option<f64> + Send + Sync;

/// Metrics from scripts: per check, a value at each sample time, or no data.
pub struct ScriptedMetrics {
    scripts: Mutex<BTreeMap<String, Arc<SeriesFn>>>,
    step: Duration,
    faults: Arc<Faults>,
    stages: Arc<StageTimeline>,
}

impl std::fmt::Debug for ScriptedMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedMetrics")
            .field("checks", &lock(&self.scripts).keys().collect::<Vec<_>>())
            .field("step", &self.step)
            .finish()
    }
}

impl ScriptedMetrics {
    /// No scripts; samples every 10 s.
    pub fn new(faults: Arc<Faults>) -> Self {
        ScriptedMetrics {
            scripts: Mutex::new(BTreeMap::new()),
            step: Duration::from_secs(10),
            faults,
            stages: Arc::new(StageTimeline::new()),
        }
    }

    /// Schedules keyed by stage ([`after_switch`](Self::after_switch),
    /// [`during_soak`](Self::during_soak), [`by_stage`](Self::by_stage))
    /// read the stages from `stages` (what [`Fakes`](super::Fakes) wires).
    pub fn following(mut self, stages: Arc<StageTimeline>) -> Self {
        self.stages = stages;
        self
    }

    /// Sample spacing.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// `check` answers `f(query, sample_time)` at each sample time; `None`
    /// leaves the point out. A window with no points is no data.
    pub fn script(
        &self,
        check: &str,
        f: impl Fn(&MetricQuery, Timestamp) -> Option<f64> + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.scripts).insert(check.into(), Arc::new(f));
        self
    }

    /// `check` answers `value` everywhere.
    pub fn constant(&self, check: &str, value: f64) -> &Self {
        self.script(check, move |_, _| Some(value))
    }

    /// `check` has no data.
    pub fn no_data(&self, check: &str) -> &Self {
        self.script(check, |_, _| None)
    }

    /// `check` answers `f(stage)` for each sample, where `stage` is the
    /// deployment's stage at the sample's time (`None` before the first).
    /// The stages come from the [`StageTimeline`] these metrics follow.
    pub fn by_stage(
        &self,
        check: &str,
        f: impl Fn(Option<&Stage>) -> Option<f64> + Send + Sync + 'static,
    ) -> &Self {
        let stages = self.stages.clone();
        self.script(check, move |_, at| f(stages.stage_at(at).as_ref()))
    }

    /// `check` answers `before` until the switch (the moment the deployment
    /// starts its 100% traffic step) and `after` from then on, on every
    /// color: "the error rate rises once all traffic is on the new release".
    pub fn after_switch(&self, check: &str, before: f64, after: f64) -> &Self {
        let stages = self.stages.clone();
        self.script(check, move |_, at| {
            Some(match stages.switched_at() {
                Some(t) if at >= t => after,
                _ => before,
            })
        })
    }

    /// `check` answers `during` for samples taken while the deployment
    /// soaks, and `otherwise` before and after.
    pub fn during_soak(&self, check: &str, otherwise: f64, during: f64) -> &Self {
        self.by_stage(check, move |s| {
            Some(if matches!(s, Some(Stage::Soak { .. })) {
                during
            } else {
                otherwise
            })
        })
    }
}

#[async_trait]
impl MetricsSource for ScriptedMetrics {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        self.faults.check("metrics.query").await?;
        let f = lock(&self.scripts).get(&q.check).cloned();
        let Some(f) = f else {
            return Ok(MetricAnswer::NoData {
                reason: format!("no script for {}", q.check),
            });
        };
        let step = self.step.as_millis().max(1) as u64;
        let mut samples = Vec::new();
        let mut t = q.from.0 + step;
        while t <= q.to.0 {
            if let Some(value) = f(q, Timestamp(t)) {
                samples.push(Sample {
                    at: Timestamp(t),
                    value,
                });
            }
            t += step;
        }
        if samples.is_empty() {
            return Ok(MetricAnswer::NoData {
                reason: "no points in the window".into(),
            });
        }
        Ok(MetricAnswer::Samples { samples })
    }
}

type SmokeFn = dyn Fn(&SmokeTarget) -> std::result::Result<(), String> + Send + Sync;

/// What each fake smoke test answers, configured by the test itself: every
/// test passes unless told otherwise. The answers depend on nothing else
/// (not on the fake compute, not on the world), so they stay the same when a
/// real compute provider or router is plugged in.
///
/// ```
/// use bluegreen_core::testing::{reference_plan, simulate};
/// use bluegreen_core::{Cause, Color};
///
/// let (report, _fakes) = simulate(|f| {
///     f.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
///     f.smoke.fail_on("create-order", Some(Color::Blue), "HTTP 500 from POST /orders");
///     f.builder(reference_plan())
/// });
/// assert!(matches!(report.rolled_back(), Some(Cause::SmokeTests { .. })));
/// let why = &report.reason().expect("rolled back").summary;
/// assert!(why.contains("1 of 4 failed"), "{why}");
/// assert!(why.contains("create-order failed: HTTP 500 from POST /orders"), "{why}");
/// ```
#[derive(Default)]
pub struct SmokeAnswers {
    scripts: Mutex<BTreeMap<String, Arc<SmokeFn>>>,
}

impl std::fmt::Debug for SmokeAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmokeAnswers")
            .field("scripted", &lock(&self.scripts).keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SmokeAnswers {
    /// Every test passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// `name` answers `f(target)`: `Ok(())` passes, `Err(detail)` fails
    /// with `detail` as what was observed.
    pub fn script(
        &self,
        name: &str,
        f: impl Fn(&SmokeTarget) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.scripts).insert(name.into(), Arc::new(f));
        self
    }

    /// `name` fails with `detail` wherever it runs (staging and both colors).
    pub fn fail(&self, name: &str, detail: &str) -> &Self {
        let detail = detail.to_string();
        self.script(name, move |_| Err(detail.clone()))
    }

    /// `name` fails with `detail` when it runs on `color` (`None`: the
    /// staging run of a preflight check) and passes elsewhere.
    pub fn fail_on(&self, name: &str, color: Option<Color>, detail: &str) -> &Self {
        let detail = detail.to_string();
        self.script(name, move |t| {
            if t.color == color {
                Err(detail.clone())
            } else {
                Ok(())
            }
        })
    }

    /// `name` passes everywhere again.
    pub fn pass(&self, name: &str) -> &Self {
        lock(&self.scripts).remove(name);
        self
    }

    /// The answer of `name` on `target`.
    pub fn answer(&self, name: &str, target: &SmokeTarget) -> std::result::Result<(), String> {
        let f = lock(&self.scripts).get(name).cloned();
        f.map_or(Ok(()), |f| f(target))
    }
}

/// A fake smoke test: its verdict comes from a script, and it records every
/// run in the world as a [`Change::Smoke`].
pub struct FakeSmokeTest {
    name: String,
    world: World,
    faults: Arc<Faults>,
    verdict: Arc<SmokeFn>,
}

impl std::fmt::Debug for FakeSmokeTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSmokeTest")
            .field("name", &self.name)
            .finish()
    }
}

impl FakeSmokeTest {
    /// A test that passes when `verdict(target)` is true; a failure's
    /// detail says the verdict said so.
    pub fn new(
        name: &str,
        world: World,
        faults: Arc<Faults>,
        verdict: impl Fn(&SmokeTarget) -> bool + Send + Sync + 'static,
    ) -> Self {
        let test = name.to_string();
        Self::scripted(name, world, faults, move |t| {
            if verdict(t) {
                Ok(())
            } else {
                Err(format!("{test}: the scripted verdict is a failure"))
            }
        })
    }

    /// A test answering `verdict(target)`: `Ok(())` passes, `Err(detail)`
    /// fails with `detail`.
    pub fn scripted(
        name: &str,
        world: World,
        faults: Arc<Faults>,
        verdict: impl Fn(&SmokeTarget) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        FakeSmokeTest {
            name: name.into(),
            world,
            faults,
            verdict: Arc::new(verdict),
        }
    }

    /// A test answering what `answers` says for `name` (a pass unless
    /// configured otherwise): what [`Fakes::builder`](super::Fakes::builder)
    /// registers for every smoke test and staging check of the plan.
    pub fn answering(
        name: &str,
        answers: Arc<SmokeAnswers>,
        world: World,
        faults: Arc<Faults>,
    ) -> Self {
        let test = name.to_string();
        Self::scripted(name, world, faults, move |t| answers.answer(&test, t))
    }

    /// A test that passes when the fake world's color is running healthy
    /// instances. It reads the world that [`FakeCompute`] and
    /// [`FakeRouter`] keep, so it only means something with those two
    /// plugged in: with a real compute provider the world never scales and
    /// this test fails on every color. Prefer [`FakeSmokeTest::answering`].
    pub fn healthy(name: &str, world: World, faults: Arc<Faults>) -> Self {
        let w = world.clone();
        Self::scripted(name, world, faults, move |t| match t.color {
            None => Ok(()),
            Some(c) => {
                let s = w.lock();
                let running = s.running(c);
                if running > 0 && s.colors[&c].healthy.is_none_or(|h| h > 0) {
                    Ok(())
                } else {
                    Err(format!(
                        "the fake world's {c} has {running} running and no healthy instance"
                    ))
                }
            }
        })
    }
}

#[async_trait]
impl SmokeTest for FakeSmokeTest {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome> {
        self.faults.check("smoke.run").await?;
        let verdict = (self.verdict)(target);
        let passed = verdict.is_ok();
        self.world
            .lock()
            .record(Change::Smoke(target.color, self.name.clone(), passed));
        Ok(SmokeOutcome {
            passed,
            duration: Duration::from_millis(12),
            detail: verdict.err().unwrap_or_else(|| "passed".into()),
        })
    }
}

/// Secrets in memory, with their last rotation.
#[derive(Debug, Default)]
pub struct FakeSecrets {
    secrets: Mutex<BTreeMap<String, (SecretValue, Option<Timestamp>)>>,
}

impl FakeSecrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret last rotated at `rotated`.
    pub fn insert(&self, name: &str, value: &str, rotated: Option<Timestamp>) -> &Self {
        lock(&self.secrets).insert(name.into(), (SecretValue::new(value), rotated));
        self
    }
}

#[async_trait]
impl SecretSource for FakeSecrets {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        lock(&self.secrets)
            .get(name)
            .map(|(v, _)| v.clone())
            .ok_or_else(|| Error::not_found(format!("secret {name} does not exist")))
    }

    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        lock(&self.secrets)
            .get(name)
            .map(|(_, r)| SecretMetadata {
                name: name.into(),
                last_rotated: *r,
            })
            .ok_or_else(|| Error::not_found(format!("secret {name} does not exist")))
    }
}

/// An event sink that keeps what it was sent (and can be made to fail).
#[derive(Debug, Default)]
pub struct RecordingEvents {
    sent: Mutex<Vec<Notification>>,
    faults: Arc<Faults>,
}

impl RecordingEvents {
    /// A sink with `faults` on `events.notify`.
    pub fn new(faults: Arc<Faults>) -> Self {
        RecordingEvents {
            sent: Mutex::new(Vec::new()),
            faults,
        }
    }

    /// The notifications received.
    pub fn sent(&self) -> Vec<Notification> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl EventSink for RecordingEvents {
    async fn notify(&self, n: &Notification) -> Result<()> {
        self.faults.check("events.notify").await?;
        lock(&self.sent).push(n.clone());
        Ok(())
    }
}
