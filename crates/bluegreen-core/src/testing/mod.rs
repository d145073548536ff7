//! Test support, behind the `testing` feature: conformance suites, in-memory
//! fakes with fault injection, scripted metrics, the reference plan and a
//! simulation helper that runs a whole deployment under paused time.
//!
//! ```
//! use bluegreen_core::testing::{reference_plan, simulate};
//! use bluegreen_core::{Color, Outcome};
//!
//! // The whole reference procedure, one-hour soak included, in milliseconds.
//! let (report, fakes) = simulate(|fakes| {
//!     fakes.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
//!     fakes.builder(reference_plan())
//! });
//! assert_eq!(report.outcome, Some(Outcome::Succeeded));
//! assert_eq!(fakes.world.split().percent(Color::Blue), 100);
//! assert_eq!(fakes.world.desired(Color::Green), 0);
//! ```

pub mod conformance;
mod delegate;
mod fakes;
mod hooks;

pub use delegate::{ComputeDelegate, Delegated, MigrationsDelegate, RouterDelegate};
pub use hooks::{FakeHook, HookAnswers, HookBehaviour};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use fakes::{
    Change, ColorState, FakeCompute, FakeMigrations, FakeRouter, FakeSecrets, FakeSmokeTest, Fault,
    Faults, RecordingEvents, ScriptedMetrics, SmokeAnswers, StageTimeline, World, WorldState,
    OPERATIONS,
};

use crate::color::{Color, Timestamp};
use crate::driver::{BlueGreen, Builder, ControlHandle, DeploymentEvent, RetryPolicy, TokioClock};
use crate::journal::{DeploymentSummary, Journal, JournalEntry, Lease, MemoryJournal, Record};
use crate::machine::{Event, Outcome, Reason};
use crate::plan::{defaults, MigrationSettings, Plan, Preflight, Release, RequiredSecret};
use crate::provider::{MigrationInfo, MigrationPhase};
use crate::reason::Cause;
use crate::report::Report;

/// The time simulations start at: 2026-01-01T00:00:00Z.
pub const SIMULATION_EPOCH: Timestamp = Timestamp(1_767_225_600_000);

/// The reference procedure as a plan: order-api 2.5.0 onto blue while green
/// serves 2.4.0; a staging health check and five required secrets in
/// preflight; a verified backup (at least 100 entries); the four smoke tests;
/// error rate < 1% and p95 < 500 ms over 15 minutes; automatic rollback on
/// error rate > 5% or p95 > 1000 ms for 5 minutes, more than half the targets
/// unhealthy, or a failed smoke test; one hour of soak; three tasks.
pub fn reference_plan() -> Plan {
    let mut release = Release::new("2.5.0", "order-api:2.5.0-abc123");
    release.build = Some("#1234".into());
    release.env.insert("NODE_ENV".into(), "production".into());
    release.env.insert("PORT".into(), "8080".into());
    release
        .secrets
        .insert("DB_PASSWORD".into(), "prod/order-api/db-password".into());
    release.secrets.insert(
        "STRIPE_API_KEY".into(),
        "prod/order-api/stripe-api-key".into(),
    );
    let mut plan = Plan::reference(
        "order-api",
        release,
        "sum:api.errors{service:{service},color:{color}}.as_rate()",
        "p95:api.response_time{service:{service},color:{color}}",
    );
    let days = |d: u64| Some(Duration::from_secs(d * 24 * 3600));
    plan.preflight = Preflight {
        staging_checks: vec!["staging-health".into()],
        required_secrets: vec![
            RequiredSecret {
                name: "prod/order-api/db-password".into(),
                max_age: days(90),
            },
            RequiredSecret {
                name: "prod/order-api/redis-password".into(),
                max_age: days(90),
            },
            RequiredSecret {
                name: "prod/order-api/stripe-api-key".into(),
                max_age: days(180),
            },
            RequiredSecret {
                name: "prod/order-api/stripe-webhook-secret".into(),
                max_age: None,
            },
            RequiredSecret {
                name: "prod/order-api/datadog-api-key".into(),
                max_age: days(180),
            },
        ],
        ..Preflight::default()
    };
    plan.migrations = Some(MigrationSettings {
        backup: true,
        backup_min_entries: 100,
    });
    plan.smoke_tests = vec![
        "health-check".into(),
        "create-order".into(),
        "retrieve-order".into(),
        "db-connectivity".into(),
    ];
    plan
}

/// The fakes of one simulated world, wired together.
#[derive(Debug, Clone)]
pub struct Fakes {
    /// The shared truth.
    pub world: World,
    /// Scripted faults for every fake.
    pub faults: Arc<Faults>,
    /// Compute.
    pub compute: Arc<FakeCompute>,
    /// Router.
    pub router: Arc<FakeRouter>,
    /// Migrations: 25 `add_order_metadata` (expand, reversible) and
    /// 26 `drop_legacy_status` (contract, irreversible).
    pub migrations: Arc<FakeMigrations>,
    /// Scripted metrics.
    pub metrics: Arc<ScriptedMetrics>,
    /// What the fake smoke tests answer: every one passes until told
    /// otherwise (`fakes.smoke.fail_on("create-order", Some(Color::Blue), "HTTP 500")`).
    pub smoke: Arc<SmokeAnswers>,
    /// What the fake lifecycle hooks do (every one passes until told
    /// otherwise) and the record of their runs.
    pub hooks: Arc<HookAnswers>,
    /// The reference's five secrets, all rotated a day before the epoch.
    pub secrets: Arc<FakeSecrets>,
    /// Notifications received.
    pub events: Arc<RecordingEvents>,
    /// The journal.
    pub journal: Arc<MemoryJournal>,
    /// The simulation clock, shared by every deployment built from these fakes
    /// (so a resumed deployment continues in the same time line).
    pub clock: Arc<TokioClock>,
    /// The stages the deployment went through, with their times, for
    /// metric schedules keyed by stage ([`ScriptedMetrics::after_switch`],
    /// [`ScriptedMetrics::during_soak`]). [`simulate`] and [`simulation`]
    /// keep it; in a runtime of your own, call [`Fakes::follow`].
    pub stages: Arc<StageTimeline>,
    /// How many builders were made, for unique deployment ids.
    builders: Arc<AtomicUsize>,
}

impl Fakes {
    /// Green serves three instances of 2.4.0; scaling settles in 30 s.
    /// Must be called inside a tokio runtime (the fakes use its clock).
    pub fn new() -> Fakes {
        let world = World::new(
            Color::Green,
            defaults::REPLICAS,
            "2.4.0",
            Duration::from_secs(30),
        );
        world.lock().migrations = vec![
            MigrationInfo {
                version: 25,
                name: "add_order_metadata".into(),
                phase: MigrationPhase::Expand,
                reversible: true,
            },
            MigrationInfo {
                version: 26,
                name: "drop_legacy_status".into(),
                phase: MigrationPhase::Contract,
                reversible: false,
            },
        ];
        let faults = Arc::new(Faults::new());
        faults.attach(world.clone());
        let stages = Arc::new(StageTimeline::new());
        let secrets = FakeSecrets::new();
        let day_before = Timestamp(SIMULATION_EPOCH.0 - 24 * 3600 * 1000);
        for name in [
            "prod/order-api/db-password",
            "prod/order-api/redis-password",
            "prod/order-api/stripe-api-key",
            "prod/order-api/stripe-webhook-secret",
            "prod/order-api/datadog-api-key",
        ] {
            secrets.insert(name, "s3cr3t-value", Some(day_before));
        }
        Fakes {
            compute: Arc::new(FakeCompute::new(world.clone(), faults.clone())),
            router: Arc::new(FakeRouter::new(world.clone(), faults.clone())),
            migrations: Arc::new(FakeMigrations::new(world.clone(), faults.clone())),
            metrics: Arc::new(ScriptedMetrics::new(faults.clone()).following(stages.clone())),
            stages,
            smoke: Arc::new(SmokeAnswers::new()),
            hooks: Arc::new(HookAnswers::new()),
            secrets: Arc::new(secrets),
            events: Arc::new(RecordingEvents::new(faults.clone())),
            journal: Arc::new(MemoryJournal::new()),
            clock: Arc::new(TokioClock::starting_at(SIMULATION_EPOCH)),
            builders: Arc::new(AtomicUsize::new(0)),
            world,
            faults,
        }
    }

    /// A smoke test named `name` answering what [`Fakes::smoke`] says (a
    /// pass unless configured otherwise). Its verdict depends on nothing
    /// else, so it holds with a real compute provider plugged in.
    pub fn smoke_test(&self, name: &str) -> Arc<FakeSmokeTest> {
        Arc::new(FakeSmokeTest::answering(
            name,
            self.smoke.clone(),
            self.world.clone(),
            self.faults.clone(),
        ))
    }

    /// Keeps [`Fakes::stages`] up to date with `deployment`'s events, for a
    /// deployment run in a runtime of your own ([`simulate`] does it
    /// itself). Call it before `run`; the task ends with the deployment.
    pub fn follow(&self, deployment: &BlueGreen) {
        let mut events = deployment.subscribe();
        let stages = self.stages.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                stages.record(ev.at, &ev.event);
            }
        });
    }

    /// A builder with every fake wired in, a smoke test answering
    /// [`Fakes::smoke`] for each smoke test, staging check and production
    /// check the plan names, a [`FakeHook`] answering [`Fakes::hooks`] for
    /// each of its hooks, the simulation clock, quick retries and a deployment id
    /// unique to these fakes: `sim-1` for the first builder, `sim-2` for the
    /// next, and so on (`resume` and `deployment_id` on the builder override it).
    pub fn builder(&self, plan: Plan) -> Builder {
        let n = self.builders.fetch_add(1, Ordering::SeqCst) + 1;
        let mut names = plan.smoke_tests.clone();
        names.extend(plan.preflight.staging_checks.iter().cloned());
        names.extend(plan.preflight.checks.iter().cloned());
        if let Some(p) = &plan.production_checks {
            names.extend(p.smoke_tests.iter().cloned());
        }
        let hooks: Vec<String> = plan.hooks.iter().map(|h| h.name.clone()).collect();
        let mut b = BlueGreen::builder(plan)
            .compute(self.compute.clone())
            .router(self.router.clone())
            .migrations(self.migrations.clone())
            .metrics(self.metrics.clone())
            .secrets(self.secrets.clone())
            .events(self.events.clone())
            .journal(self.journal.clone())
            .clock(self.clock.clone())
            .retry(RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                jitter: false,
            })
            .call_timeout(Duration::from_secs(30))
            .deployment_id(format!("sim-{n}"));
        for n in names {
            b = b.smoke_test(self.smoke_test(&n));
        }
        for n in hooks {
            b = b.hook(Arc::new(FakeHook::new(&n, self.hooks.clone())));
        }
        b
    }
}

/// Runs one deployment to its end on a fresh current-thread runtime under
/// paused time, and returns its report and the fakes. `build` scripts the
/// fakes and returns the builder (usually `fakes.builder(plan)`). To stop
/// after a stretch of virtual time, see [`simulate_for`]; to act on events,
/// [`simulation`].
///
/// # Panics
/// If the builder is invalid or the driver fails (lease, journal): a
/// simulation is a test.
pub fn simulate(build: impl FnOnce(&Fakes) -> Builder) -> (Report, Fakes) {
    simulation(build).run()
}

/// Like [`simulate`], but stops after `limit` of virtual time and returns
/// the report so far: rebuilt from the journal, with `outcome` `None` when
/// the deployment had not finished. The deployer stops as if killed at that
/// moment (its lease is not released).
///
/// ```
/// use std::time::Duration;
/// use bluegreen_core::testing::{reference_plan, simulate_for, SIMULATION_EPOCH};
/// use bluegreen_core::Color;
///
/// // Ten virtual minutes of a deployment whose soak alone lasts an hour.
/// let (report, fakes) = simulate_for(Duration::from_secs(600), |f| {
///     f.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
///     f.builder(reference_plan())
/// });
/// assert_eq!(report.outcome, None, "not finished");
/// let last = report.stages.last().expect("the stages so far");
/// assert!(last.started_at <= SIMULATION_EPOCH.after(Duration::from_secs(600)));
/// assert_eq!(fakes.world.desired(Color::Green), 3, "nothing scaled down yet");
/// ```
///
/// # Panics
/// As [`simulate`].
pub fn simulate_for(limit: Duration, build: impl FnOnce(&Fakes) -> Builder) -> (Report, Fakes) {
    simulation(build).for_at_most(limit).run()
}

/// Like [`simulate`], calling `on_event` with every event as it happens and a
/// handle to pause, resume, promote or abort: a human, scripted. For the
/// event's time and the fakes as well, use [`simulation`] and
/// [`Simulation::on_event`].
pub fn simulate_with(
    build: impl FnOnce(&Fakes) -> Builder,
    mut on_event: impl FnMut(&Event, &ControlHandle),
) -> (Report, Fakes) {
    simulation(build)
        .on_event(|m| on_event(m.event, m.control))
        .run()
}

/// One event of a simulated deployment, as [`Simulation::on_event`] sees it.
#[derive(Debug)]
pub struct Moment<'a> {
    /// When it happened, on the simulation clock.
    pub at: Timestamp,
    /// What happened.
    pub event: &'a Event,
    /// Pause, resume, promote or abort the deployment.
    pub control: &'a ControlHandle,
    /// The fakes, to change the world right then (kill instances, break a
    /// metric, inject a fault).
    pub fakes: &'a Fakes,
}

impl Moment<'_> {
    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.at.since(SIMULATION_EPOCH)
    }
}

type OnEvent<'a> = Box<dyn FnMut(&Moment<'_>) + 'a>;

/// A simulated deployment, set up step by step and run by
/// [`Simulation::run`]: an optional virtual-time limit and an event callback
/// that sees each event's time and the fakes.
///
/// ```
/// use std::time::Duration;
/// use bluegreen_core::machine::{Event, Stage};
/// use bluegreen_core::testing::{reference_plan, simulation};
/// use bluegreen_core::{Cause, Color};
///
/// let (report, fakes) = simulation(|f| {
///     f.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
///     f.builder(reference_plan())
/// })
/// .on_event(|m| {
///     // Ten minutes into the soak, two of blue's three targets fail.
///     if let Event::Stage { stage: Stage::Soak { .. } } = m.event {
///         m.fakes.world.lock().colors.get_mut(&Color::Blue).unwrap().healthy = Some(1);
///     }
/// })
/// .for_at_most(Duration::from_secs(3 * 3600))
/// .run();
/// assert!(matches!(report.rolled_back(), Some(Cause::UnhealthyTargets { .. })));
/// assert_eq!(fakes.world.desired(Color::Blue), 0);
/// ```
pub struct Simulation<'a> {
    build: Box<dyn FnOnce(&Fakes) -> Builder + 'a>,
    limit: Option<Duration>,
    on_event: OnEvent<'a>,
}

impl std::fmt::Debug for Simulation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// A [`Simulation`] of the deployment `build` returns (usually
/// `fakes.builder(plan)` after scripting the fakes).
pub fn simulation<'a>(build: impl FnOnce(&Fakes) -> Builder + 'a) -> Simulation<'a> {
    Simulation {
        build: Box::new(build),
        limit: None,
        on_event: Box::new(|_| {}),
    }
}

impl<'a> Simulation<'a> {
    /// Stops after `limit` of virtual time: [`run`](Self::run) then returns
    /// the report so far (see [`simulate_for`]).
    pub fn for_at_most(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Calls `on_event` with every event as it happens, its time, a control
    /// handle and the fakes. It runs between the deployment's steps and
    /// cannot wait; to hold for a while, see the guide's "Held for a while".
    pub fn on_event(mut self, on_event: impl FnMut(&Moment<'_>) + 'a) -> Self {
        self.on_event = Box::new(on_event);
        self
    }

    /// Runs the deployment on a fresh current-thread runtime under paused
    /// time, to its end or to the limit, and returns the report and the fakes.
    ///
    /// # Panics
    /// If the builder is invalid or the driver fails (lease, journal): a
    /// simulation is a test.
    pub fn run(self) -> (Report, Fakes) {
        let Simulation {
            build,
            limit,
            mut on_event,
        } = self;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        rt.block_on(async {
            let fakes = Fakes::new();
            let deployment = build(&fakes).build().expect("a valid simulation");
            let id = deployment.deployment_id().to_string();
            let control = deployment.control();
            let mut events = deployment.subscribe();
            let mut seen = |ev: DeploymentEvent, fakes: &Fakes| {
                fakes.stages.record(ev.at, &ev.event);
                on_event(&Moment {
                    at: ev.at,
                    event: &ev.event,
                    control: &control,
                    fakes,
                });
            };
            let run = deployment.run();
            tokio::pin!(run);
            let deadline = tokio::time::sleep(limit.unwrap_or(Duration::MAX / 4));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    ev = events.recv() => {
                        if let Ok(ev) = ev {
                            seen(ev, &fakes);
                        }
                    }
                    report = &mut run => {
                        while let Ok(ev) = events.try_recv() {
                            seen(ev, &fakes);
                        }
                        return (report.expect("the driver runs to the end"), fakes);
                    }
                    () = &mut deadline => {
                        while let Ok(ev) = events.try_recv() {
                            seen(ev, &fakes);
                        }
                        let entries = fakes
                            .journal
                            .read(&id)
                            .await
                            .expect("the memory journal reads");
                        return (Report::from_entries(&entries), fakes);
                    }
                }
            }
        })
    }
}

/// Test helpers on a report: what it ended with, in one call.
impl Report {
    /// The cause when the deployment rolled back, `None` otherwise (or when
    /// a journal of format 2 kept the line only). See [`Report::reason`]
    /// for the line and the evidence.
    pub fn rolled_back(&self) -> Option<&Cause> {
        match &self.outcome {
            Some(Outcome::RolledBack { reason }) => reason.cause.as_ref(),
            _ => None,
        }
    }

    /// The cause when the deployment halted, `None` otherwise.
    pub fn halted(&self) -> Option<&Cause> {
        match &self.outcome {
            Some(Outcome::Halted { reason }) => reason.cause.as_ref(),
            _ => None,
        }
    }

    /// Whether the deployment succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == Some(Outcome::Succeeded)
    }

    /// The reason of a rollback or halt (its cause, one-line summary and
    /// evidence), `None` for a success or an unfinished deployment.
    pub fn reason(&self) -> Option<&Reason> {
        match &self.outcome {
            Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) => Some(reason),
            _ => None,
        }
    }
}

impl Default for Fakes {
    fn default() -> Self {
        Self::new()
    }
}

/// A journal that "kills the deployer" after `allowed` appends: every later
/// append fails, as if the process had died right there, and releasing a
/// lease does nothing (a dead process releases nothing). Resume from the
/// inner journal to test crash safety:
///
/// ```
/// use std::sync::Arc;
/// use bluegreen_core::testing::{reference_plan, CrashingJournal, Fakes};
/// use bluegreen_core::Outcome;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// let f = Fakes::new();
/// f.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
/// let dying = Arc::new(CrashingJournal::new(f.journal.clone(), 100));
/// assert!(f.builder(reference_plan()).journal(dying).build().unwrap().run().await.is_err());
/// let report = f.builder(reference_plan()).resume("sim-1").build().unwrap().run().await.unwrap();
/// assert_eq!(report.outcome, Some(Outcome::Succeeded));
/// # });
/// ```
pub struct CrashingJournal {
    inner: Arc<dyn Journal>,
    allowed: AtomicUsize,
}

impl CrashingJournal {
    /// Passes `allowed` appends to `inner`, then fails every one.
    pub fn new(inner: Arc<dyn Journal>, allowed: usize) -> Self {
        CrashingJournal {
            inner,
            allowed: AtomicUsize::new(allowed),
        }
    }
}

#[async_trait]
impl Journal for CrashingJournal {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> crate::Result<Lease> {
        self.inner.acquire(service, holder, ttl, now).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> crate::Result<Lease> {
        self.inner.renew(lease, ttl, now).await
    }

    async fn release(&self, _lease: &Lease) -> crate::Result<()> {
        Ok(())
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> crate::Result<u64> {
        if self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(crate::Error::unavailable("the deployer was killed here"));
        }
        self.inner.append(lease, deployment_id, at, record).await
    }

    async fn read(&self, deployment_id: &str) -> crate::Result<Vec<JournalEntry>> {
        self.inner.read(deployment_id).await
    }

    async fn deployments(&self, service: Option<String>) -> crate::Result<Vec<DeploymentSummary>> {
        self.inner.deployments(service).await
    }
}
