//! The async driver: runs the [machine](crate::machine) against providers.
//!
//! [`BlueGreen`] executes the machine's commands with a per-call timeout and a
//! [`RetryPolicy`], appends every machine step (input, commands, events) to the
//! [`Journal`] before any command of it runs, holds the service's lease while
//! it works, publishes typed events, and takes [`Control`]s from a
//! [`ControlHandle`]. Time comes from `tokio::time` and an injectable
//! [`Clock`], so under `tokio::time::pause` a one-hour soak takes no real time.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use crate::color::{Color, Timestamp};
use crate::error::{Error, ErrorKind, Result};
use crate::journal::{Journal, JournalEntry, Lease, MemoryJournal, Record};
use crate::machine::{
    Action, Checkpoint, Command, Control, Event, Input, Machine, Outcome, Reply, SecretCheck,
    SmokeResult, SmokeScope, Stage,
};
use crate::plan::{Barrier, Plan};
use crate::provider::Notification;
use crate::provider::{
    ComputeProvider, EventSink, Hook, HookOutcome, MetricQuery, MetricsSource, MigrationContext,
    MigrationRunner, SecretSource, SmokeTarget, SmokeTest, TrafficRouter,
};
use crate::report::Report;
use crate::retry::Operation;

/// A source of wall-clock time for the machine's timestamps.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// Wall time at creation plus `tokio::time` elapsed since: real time normally,
/// virtual time under `tokio::time::pause`.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock starting at the system's wall time.
    pub fn new() -> Self {
        Self::starting_at(Timestamp::from_system_time(SystemTime::now()))
    }

    /// A clock starting at `base` (useful for reproducible simulations).
    pub fn starting_at(base: Timestamp) -> Self {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.base.after(self.start.elapsed())
    }
}

// The retry policy has its own module; these paths stay.
pub use crate::retry::{with_retry, RetryPolicy};

/// A published machine event with its deployment and time.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentEvent {
    /// The deployment (shared by all its events).
    pub deployment_id: Arc<str>,
    /// When.
    pub at: Timestamp,
    /// What.
    pub event: Event,
}

/// Where a deployment is, as its driver last saw it: the machine's state
/// after the latest step (see [`BlueGreen::progress`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Whether the lease is held and the machine has started (or been
    /// rebuilt from the journal).
    pub running: bool,
    /// The current stage ([`Stage::Pending`] before the machine starts);
    /// its [`Display`](std::fmt::Display) is the name reports use, e.g.
    /// `watch_step_0`.
    pub stage: Stage,
    /// The group barrier it holds at, if any.
    pub waiting_at: Option<Barrier>,
    /// Group barriers passed so far.
    pub barriers_passed: usize,
    /// Why it is rolling back, once it is.
    pub rollback_reason: Option<String>,
    /// The outcome, once finished.
    pub outcome: Option<Outcome>,
}

impl Progress {
    /// Whether this already says what `machine` would (compared without
    /// building a new one: most steps change none of it).
    fn is_of(&self, machine: &Machine) -> bool {
        self.running
            && self.stage == *machine.stage()
            && self.waiting_at == machine.waiting_at()
            && self.barriers_passed == machine.barriers_passed()
            && self.rollback_reason.as_deref()
                == machine.rollback_reason().map(|r| r.summary.as_str())
            && self.outcome.as_ref() == machine.outcome()
    }

    fn of(machine: &Machine) -> Progress {
        Progress {
            running: true,
            stage: machine.stage().clone(),
            waiting_at: machine.waiting_at(),
            barriers_passed: machine.barriers_passed(),
            rollback_reason: machine.rollback_reason().map(|r| r.summary.clone()),
            outcome: machine.outcome().cloned(),
        }
    }
}

/// Sends [`Control`]s to a running deployment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    tx: mpsc::UnboundedSender<Control>,
}

impl ControlHandle {
    /// A handle and the receiving end, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn channel() -> (ControlHandle, mpsc::UnboundedReceiver<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ControlHandle { tx }, rx)
    }

    /// Sends a control; `false` if the deployment has finished.
    pub fn send(&self, control: Control) -> bool {
        self.tx.send(control).is_ok()
    }

    /// Holds at the next phase boundary.
    pub fn pause(&self) -> bool {
        self.send(Control::Pause)
    }

    /// Continues after a pause.
    pub fn resume(&self) -> bool {
        self.send(Control::Resume)
    }

    /// Skips the current wait or passes the current gate.
    pub fn promote(&self) -> bool {
        self.send(Control::Promote)
    }

    /// Rolls back.
    pub fn abort(&self, reason: impl Into<String>) -> bool {
        self.send(Control::Abort {
            reason: reason.into(),
        })
    }

    /// One approval by `name` of an approval gate (`None`: the one the
    /// deployment holds at, else the next not yet passed). The deployment
    /// journals it with the time it took it, or refuses it (a name not on
    /// the gate's lists, a second approval by the same name) and journals
    /// why; see [`ApprovalGate`](crate::plan::ApprovalGate).
    pub fn approve(&self, name: impl Into<String>, gate: Option<crate::plan::Gate>) -> bool {
        self.send(Control::Approve {
            name: name.into(),
            gate,
        })
    }
}

/// Events a slow subscriber may fall behind before it misses some.
pub const EVENT_CAPACITY: usize = 256;

/// The metrics source used for checks that do not name one.
pub const DEFAULT_METRICS: &str = "default";

/// Builds a [`BlueGreen`]. Required: the plan, a compute provider and a
/// router; a migration runner when the plan has `migrations`, a secret source
/// when it lists `preflight.required_secrets`, every smoke test and staging
/// check it names, and a metrics source under each name its analysis checks
/// use ([`DEFAULT_METRICS`] for a check without `source`; a plan without
/// analysis checks needs none). The journal defaults to a [`MemoryJournal`]
/// and the clock to a [`TokioClock`] on the system time.
pub struct Builder {
    pub(crate) plan: Plan,
    compute: Option<Arc<dyn ComputeProvider>>,
    router: Option<Arc<dyn TrafficRouter>>,
    migrations: Option<Arc<dyn MigrationRunner>>,
    metrics: BTreeMap<String, Arc<dyn MetricsSource>>,
    smoke: BTreeMap<String, Arc<dyn SmokeTest>>,
    hooks: BTreeMap<String, Arc<dyn Hook>>,
    secrets: Option<Arc<dyn SecretSource>>,
    events: Vec<Arc<dyn EventSink>>,
    pub(crate) journal: Option<Arc<dyn Journal>>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    retry: RetryPolicy,
    call_timeout: Duration,
    pub(crate) deployment_id: Option<String>,
    pub(crate) resume: Option<String>,
    pub(crate) holder: Option<String>,
    holder_detail: Option<String>,
    pub(crate) lease_ttl: Duration,
}

impl Builder {
    /// The compute provider.
    pub fn compute(mut self, p: Arc<dyn ComputeProvider>) -> Self {
        self.compute = Some(p);
        self
    }

    /// The traffic router.
    pub fn router(mut self, r: Arc<dyn TrafficRouter>) -> Self {
        self.router = Some(r);
        self
    }

    /// The migration runner.
    pub fn migrations(mut self, m: Arc<dyn MigrationRunner>) -> Self {
        self.migrations = Some(m);
        self
    }

    /// The default metrics source.
    pub fn metrics(self, m: Arc<dyn MetricsSource>) -> Self {
        self.metrics_named(DEFAULT_METRICS, m)
    }

    /// A metrics source that checks name in their `source` field.
    pub fn metrics_named(mut self, name: impl Into<String>, m: Arc<dyn MetricsSource>) -> Self {
        self.metrics.insert(name.into(), m);
        self
    }

    /// A smoke test, registered under its [`SmokeTest::name`].
    pub fn smoke_test(mut self, t: Arc<dyn SmokeTest>) -> Self {
        self.smoke.insert(t.name().to_string(), t);
        self
    }

    /// A lifecycle hook, registered under its [`Hook::name`]; the plan's
    /// [`hooks`](crate::plan::Plan::hooks) say where it runs.
    pub fn hook(mut self, h: Arc<dyn Hook>) -> Self {
        self.hooks.insert(h.name().to_string(), h);
        self
    }

    /// The secret source for preflight checks.
    pub fn secrets(mut self, s: Arc<dyn SecretSource>) -> Self {
        self.secrets = Some(s);
        self
    }

    /// An event sink; several may be added.
    pub fn events(mut self, e: Arc<dyn EventSink>) -> Self {
        self.events.push(e);
        self
    }

    /// The journal (an in-memory one if not set).
    pub fn journal(mut self, j: Arc<dyn Journal>) -> Self {
        self.journal = Some(j);
        self
    }

    /// The wall clock ([`TokioClock`] if not set).
    pub fn clock(mut self, c: Arc<dyn Clock>) -> Self {
        self.clock = Some(c);
        self
    }

    /// The retry policy for provider calls.
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// The timeout of one provider call attempt (default 60 s; backups,
    /// migrations and smoke tests get their phase deadline).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The deployment id (a random one if not set).
    pub fn deployment_id(mut self, id: impl Into<String>) -> Self {
        self.deployment_id = Some(id.into());
        self
    }

    /// Resume deployment `id` from the journal instead of starting a new one.
    /// The journal's plan must equal this plan.
    pub fn resume(mut self, id: impl Into<String>) -> Self {
        self.resume = Some(id.into());
        self
    }

    /// Who holds the lease (default: the deployment id).
    pub fn holder(mut self, h: impl Into<String>) -> Self {
        self.holder = Some(h.into());
        self
    }

    /// Describes this deployer in the lease it holds, e.g. `user alice on
    /// host build-7, pid 4242`: the holder becomes `<holder> [<detail>]`,
    /// so a deployer refused by the lease can name who holds it. Only the
    /// part before the brackets identifies the holder
    /// ([`holder_identity`](crate::journal::holder_identity)): a resume
    /// from another process is the same holder.
    pub fn holder_detail(mut self, detail: impl Into<String>) -> Self {
        self.holder_detail = Some(detail.into());
        self
    }

    /// The lease's time to live (default 5 minutes; renewed at half).
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d;
        self
    }

    /// Validates the plan and the providers against it.
    pub fn build(self) -> Result<BlueGreen> {
        self.plan.validate()?;
        if self.call_timeout >= self.lease_ttl {
            // A call that outlives the lease could land after another
            // deployer took the service over.
            return Err(Error::invalid_input(format!(
                "call_timeout ({}) must be below lease_ttl ({}): a provider call still running when the lease lapses could land after another deployer took over",
                humantime::format_duration(self.call_timeout),
                humantime::format_duration(self.lease_ttl)
            ))
            .with_operation("build deployment"));
        }
        let missing = |what: &str| {
            Error::invalid_input(format!("{what} is required")).with_operation("build deployment")
        };
        let compute = self.compute.ok_or_else(|| missing("a compute provider"))?;
        let router = self.router.ok_or_else(|| missing("a traffic router"))?;
        if self.plan.migrations.is_some() && self.migrations.is_none() {
            return Err(missing(
                "a migration runner (the plan has a `migrations` section)",
            ));
        }
        if !self.plan.preflight.required_secrets.is_empty() && self.secrets.is_none() {
            return Err(missing(
                "a secret source (the plan lists preflight.required_secrets)",
            ));
        }
        if !self.plan.preflight.migrations_applied.is_empty() && self.migrations.is_none() {
            return Err(missing(
                "a migration runner, whose ledger shows the migrations of preflight.migrations_applied",
            ));
        }
        let all_smoke = self
            .plan
            .smoke_tests
            .iter()
            .map(|n| ("smoke_tests", n))
            .chain(
                self.plan
                    .preflight
                    .staging_checks
                    .iter()
                    .map(|n| ("preflight.staging_checks", n)),
            )
            .chain(
                self.plan
                    .preflight
                    .checks
                    .iter()
                    .map(|n| ("preflight.checks", n)),
            )
            .chain(
                self.plan
                    .production_checks
                    .iter()
                    .flat_map(|p| p.smoke_tests.iter())
                    .map(|n| ("production_checks.smoke_tests", n)),
            );
        for (field, name) in all_smoke {
            if !self.smoke.contains_key(name) {
                let known: Vec<&str> = self.smoke.keys().map(String::as_str).collect();
                return Err(Error::invalid_input(format!(
                    "{field}: smoke test {name:?} is not registered; registered: [{}]",
                    known.join(", ")
                ))
                .with_operation("build deployment"));
            }
        }
        for (i, h) in self.plan.hooks.iter().enumerate() {
            if !self.hooks.contains_key(&h.name) {
                let known: Vec<&str> = self.hooks.keys().map(String::as_str).collect();
                return Err(Error::invalid_input(format!(
                    "hooks[{i}].name: hook {:?} is not registered; registered: [{}]",
                    h.name,
                    known.join(", ")
                ))
                .with_operation("build deployment"));
            }
        }
        for (i, c) in self.plan.analysis.iter().enumerate() {
            let source = c.source.as_deref().unwrap_or(DEFAULT_METRICS);
            if !self.metrics.contains_key(source) {
                return Err(Error::invalid_input(format!(
                    "analysis[{i}].source: metrics source {source:?} is not registered"
                ))
                .with_operation("build deployment"));
            }
        }
        let deployment_id = self
            .resume
            .clone()
            .or(self.deployment_id)
            .unwrap_or_else(new_deployment_id);
        let (tx, rx) = mpsc::unbounded_channel();
        // Subscribers that fall this far behind miss events (they get
        // `Lagged`); the journal has them all. The channel preallocates
        // every slot, so this is kept small for many deployments per process.
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (progress, _) = watch::channel(Progress::default());
        Ok(BlueGreen {
            progress,
            providers: Arc::new(Providers {
                compute,
                router,
                migrations: self.migrations,
                metrics: self.metrics,
                smoke: self.smoke,
                hooks: self.hooks,
                secrets: self.secrets,
                sinks: self.events,
            }),
            plan: Arc::new(self.plan),
            journal: self
                .journal
                .unwrap_or_else(|| Arc::new(MemoryJournal::new())),
            clock: self.clock.unwrap_or_else(|| Arc::new(TokioClock::new())),
            retry: self.retry,
            call_timeout: self.call_timeout,
            holder: {
                let h = self.holder.unwrap_or_else(|| deployment_id.clone());
                match self.holder_detail {
                    Some(d) => format!("{h} [{d}]"),
                    None => h,
                }
            },
            event_id: Arc::from(deployment_id.as_str()),
            deployment_id,
            resume: self.resume.is_some(),
            lease_ttl: self.lease_ttl,
            group_lease: None,
            control_tx: tx,
            control_rx: rx,
            events,
        })
    }
}

fn new_deployment_id() -> String {
    let now = Timestamp::from_system_time(SystemTime::now());
    format!("dep-{}-{:08x}", now.0, rand::random::<u32>())
}

struct Providers {
    compute: Arc<dyn ComputeProvider>,
    router: Arc<dyn TrafficRouter>,
    migrations: Option<Arc<dyn MigrationRunner>>,
    metrics: BTreeMap<String, Arc<dyn MetricsSource>>,
    smoke: BTreeMap<String, Arc<dyn SmokeTest>>,
    hooks: BTreeMap<String, Arc<dyn Hook>>,
    secrets: Option<Arc<dyn SecretSource>>,
    sinks: Vec<Arc<dyn EventSink>>,
}

/// One deployment, ready to run. See the [module docs](self).
pub struct BlueGreen {
    pub(crate) plan: Arc<Plan>,
    providers: Arc<Providers>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    call_timeout: Duration,
    pub(crate) deployment_id: String,
    /// The deployment id its events carry.
    event_id: Arc<str>,
    pub(crate) holder: String,
    pub(crate) resume: bool,
    pub(crate) lease_ttl: Duration,
    /// The lease a group took for this member before starting it: taking it
    /// again supersedes nothing the member must wait for.
    pub(crate) group_lease: Option<Lease>,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    events: broadcast::Sender<DeploymentEvent>,
    progress: watch::Sender<Progress>,
}

type Pending = Pin<Box<dyn Future<Output = (u64, Input)> + Send>>;
type Fire = Pin<Box<dyn Future<Output = ()> + Send>>;

impl BlueGreen {
    /// Starts building a deployment of `plan`.
    pub fn builder(plan: Plan) -> Builder {
        Builder {
            plan,
            compute: None,
            router: None,
            migrations: None,
            metrics: BTreeMap::new(),
            smoke: BTreeMap::new(),
            hooks: BTreeMap::new(),
            secrets: None,
            events: Vec::new(),
            journal: None,
            clock: None,
            retry: RetryPolicy::default(),
            call_timeout: Duration::from_secs(60),
            deployment_id: None,
            resume: None,
            holder: None,
            holder_detail: None,
            lease_ttl: Duration::from_secs(300),
        }
    }

    /// The deployment id.
    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    /// The journal this deployment writes to.
    pub fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    /// A handle to pause, resume, promote or abort while it runs.
    pub fn control(&self) -> ControlHandle {
        ControlHandle {
            tx: self.control_tx.clone(),
        }
    }

    /// A stream of the machine's events as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.events.subscribe()
    }

    /// The deployment's [`Progress`], updated after every machine step. A
    /// coordinator watches this instead of parsing events.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Whether anyone listens to the events: nobody can start to while
    /// none does (a new receiver comes from the deployment, which the run
    /// holds, or from another receiver).
    fn subscribed(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Sends `events` to the subscribers (logged already, see [`log_event`]).
    fn publish_events(&self, at: Timestamp, events: Vec<Event>) {
        for event in events {
            let _ = self.events.send(DeploymentEvent {
                deployment_id: self.event_id.clone(),
                at,
                event,
            });
        }
    }

    fn publish(&self, machine: &Machine) {
        self.progress.send_if_modified(|p| {
            if p.is_of(machine) {
                false
            } else {
                *p = Progress::of(machine);
                true
            }
        });
    }

    /// Runs (or resumes) the deployment to its end and returns its report.
    ///
    /// `Err` means the deployer itself could not go on (the lease is held by
    /// someone else or was taken over, the journal failed, the journal belongs
    /// to another plan); everything recorded until then stays in the journal,
    /// and `resume` continues from it. A deployment that rolled back or halted
    /// is `Ok`, with the outcome in the report.
    pub async fn run(self) -> Result<Report> {
        let span = tracing::info_span!(
            "deployment",
            id = %self.deployment_id,
            service = %self.plan.service,
            version = %self.plan.release.version
        );
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) -> Result<Report> {
        let now = self.clock.now();
        if !self.resume {
            // Outside its window a deployment starts nothing: refused
            // before the lease, the journal or any provider is touched.
            self.check_window(now)?;
        }
        let mut lease = self
            .journal
            .acquire(&self.plan.service, &self.holder, self.lease_ttl, now)
            .await?;
        if let Some(g) = &self.group_lease {
            if lease.superseded == Some(g.expires_at) && lease.token == g.token + 1 {
                // The lease taken over is the one the group took for this
                // member a moment ago: what it superseded is what counts.
                lease.superseded = g.superseded;
            }
        }
        let mut machine = Machine::new(self.plan.clone(), self.deployment_id.clone());
        let mut first: Vec<Command> = Vec::new();
        // Kept as the records are written: the journal is not read back at
        // the end.
        let mut report = Report::default();
        if self.resume {
            let entries = self.journal.read(&self.deployment_id).await?;
            first = replay(&mut machine, &self.plan, &self.deployment_id, &entries)?;
            report = Report::from_entries(&entries);
            tracing::info!(
                records = entries.len(),
                stage = %machine.stage().name(),
                reexecuting = first.len(),
                "resumed from the journal"
            );
        } else {
            let existing = self.journal.read(&self.deployment_id).await?;
            if !existing.is_empty() {
                let _ = self.journal.release(&lease).await;
                return Err(Error::conflict(format!(
                    "deployment {} already has {} journal records: resume it instead",
                    self.deployment_id,
                    existing.len()
                ))
                .with_operation("start"));
            }
            // The same holder may take its lease again only to resume the
            // deployment it holds it for: a new deployment of a service
            // whose last one never finished would take that one's suspended
            // autoscaling (and half-moved traffic) for the state it found.
            let unfinished = self
                .journal
                .deployments(Some(self.plan.service.clone()))
                .await?
                .into_iter()
                .find(|d| d.outcome.is_none() && d.id != self.deployment_id);
            if let Some(d) = unfinished {
                let _ = self.journal.release(&lease).await;
                return Err(Error::conflict(format!(
                    "deployment {} of {} never finished (last record at {}): resume it (and abort it if it should not go on) before starting another",
                    d.id, self.plan.service, d.last_at
                ))
                .with_operation("start"));
            }
            let started = Record::Started {
                plan: Box::new((*self.plan).clone()),
                holder: self.holder.clone(),
                format: crate::journal::JOURNAL_FORMAT,
                engine: crate::journal::ENGINE_VERSION.to_string(),
            };
            self.journal
                .append(&lease, &self.deployment_id, now, &started)
                .await?;
            report.add(&self.deployment_id, now, &started);
        }

        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut notifications: FuturesUnordered<Fire> = FuturesUnordered::new();
        let mut queue: Vec<Input> = Vec::new();
        let mut deferred: Option<Vec<Command>> = None;
        // Steps left out of the journal (they only repeated a held
        // deployment's readings) and the machine's state after the last.
        let mut unjournaled: Option<(u64, Box<Checkpoint>)> = None;
        if machine.outcome().is_none() {
            if self.resume && *machine.stage() != crate::machine::Stage::Pending {
                // Nothing drove the stage while no deployer ran: its
                // progress deadline restarts once the previous holder's
                // calls have landed (journaled with the wait, so a later
                // replay decides the same). The re-executed commands wait.
                let wait = self.previous_holder_wait(&lease);
                queue.push(Input::Resumed { wait });
                deferred = Some(first);
            } else {
                queue.push(Input::Start);
            }
        }
        self.publish(&machine);
        // One timer, reset each turn rather than made anew.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        while machine.outcome().is_none() {
            for input in std::mem::take(&mut queue) {
                let now = self.clock.now();
                if now >= self.renew_at(&lease) {
                    lease = self.journal.renew(&lease, self.lease_ttl, now).await?;
                }
                let step = machine.handle(now, &input);
                if step.commands.is_empty()
                    && step.events.is_empty()
                    && step.notifications.is_empty()
                    && input == Input::Tick
                {
                    continue;
                }
                if step.repeats {
                    // Nothing new: published, dispatched, not journaled. The
                    // state goes to the journal before the next step that is.
                    let skipped = unjournaled.take().map_or(0, |(n, _)| n) + 1;
                    unjournaled = Some((skipped, Box::new(machine.checkpoint())));
                    step.events.iter().for_each(log_event);
                    self.publish_events(now, step.events);
                    for c in step.commands {
                        self.dispatch(&machine, c, &mut inflight);
                    }
                    continue;
                }
                if let Some((skipped, state)) = unjournaled.take() {
                    let record = Record::Checkpoint { skipped, state };
                    self.journal
                        .append(&lease, &self.deployment_id, now, &record)
                        .await?;
                    report.add(&self.deployment_id, now, &record);
                }
                let mutating = step.commands.iter().any(|c| c.action.is_mutating());
                // The journal keeps the record itself (the input, often a
                // reading with its samples, is not copied); what is done
                // once it is journaled gets copies of the commands, the
                // notifications and, when anyone subscribed, the events
                // (which share their measurements). Events are logged as
                // the machine made them.
                step.events.iter().for_each(log_event);
                let commands = step.commands.clone();
                let events = if self.subscribed() {
                    step.events.clone()
                } else {
                    Vec::new()
                };
                let sent = step.notifications.clone();
                let record = Record::Step {
                    input,
                    commands: step.commands,
                    events: step.events,
                    notifications: step.notifications,
                };
                report.add(&self.deployment_id, now, &record);
                self.journal
                    .append_owned(&lease, &self.deployment_id, now, record)
                    .await?;
                self.publish_events(now, events);
                if mutating {
                    // The append above proved the lease current; a mutating
                    // call also needs the lease to outlast it.
                    lease = self.lease_for_mutation(lease).await?;
                }
                for n in sent {
                    self.notify(n, &mut notifications);
                }
                for c in commands {
                    self.dispatch(&machine, c, &mut inflight);
                }
            }
            if let Some(mut first) = deferred.take() {
                // What the resume decided not to re-execute (a hook that
                // is not idempotent) is no longer outstanding.
                let still: Vec<u64> = machine.outstanding().iter().map(|c| c.id).collect();
                first.retain(|c| still.contains(&c.id));
                lease = self.wait_for_previous_holder(lease).await?;
                if first.iter().any(|c| c.action.is_mutating()) {
                    lease = self.lease_for_mutation(lease).await?;
                }
                for c in first {
                    self.dispatch(&machine, c, &mut inflight);
                }
                queue.push(Input::Tick);
                continue;
            }
            self.publish(&machine);
            if machine.outcome().is_some() {
                break;
            }
            // The lease is renewed on its own timer at half its TTL, so a
            // deployment that waits (a gate, a hold) keeps the service.
            let now = self.clock.now();
            let renew_in = self
                .renew_at(&lease)
                .since(now)
                .max(Duration::from_millis(1));
            // At least a millisecond, so a timer the machine has nothing to
            // do for yet can never spin the loop.
            let tick_in = machine
                .next_wakeup()
                .map(|at| at.since(now).max(Duration::from_millis(1)));
            // One timer: the machine's next wake-up, or the renewal when it
            // comes first (a renewal never moves a tick).
            let (sleep_for, tick) = match tick_in {
                Some(t) if t <= renew_in => (t, true),
                _ => (renew_in, false),
            };
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + sleep_for);
            tokio::select! {
                biased;
                Some((_, input)) = inflight.next(), if !inflight.is_empty() => queue.push(input),
                Some(control) = self.control_rx.recv() => queue.push(Input::Control { control }),
                _ = &mut timer => {
                    if tick {
                        queue.push(Input::Tick);
                    } else {
                        lease = self.journal.renew(&lease, self.lease_ttl, self.clock.now()).await?;
                    }
                }
                Some(()) = notifications.next(), if !notifications.is_empty() => {}
            }
        }
        // Give notifications already sent a short moment, never blocking long.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while notifications.next().await.is_some() {}
        })
        .await;
        let _ = self.journal.release(&lease).await;
        Ok(report)
    }

    /// After taking over a lease another run (or this holder's earlier,
    /// perhaps frozen, process) did not release, waits until the superseded
    /// lease's expiry plus the call timeout, renewing its own lease: a call
    /// the previous holder began while its lease was valid has landed by
    /// then (every mutating call starts with at least the call timeout left
    /// on the lease, see [`lease_for_mutation`](Self::lease_for_mutation)).
    /// The machine then reads back what it changes, so a late write of the
    /// previous holder is seen, not assumed away. At most the lease TTL
    /// plus the call timeout.
    /// When `lease` is renewed: once half its TTL is left.
    /// Refuses a start outside the plan's window ([`ErrorKind::Conflict`],
    /// nothing changed), saying when the next window opens; a window that
    /// never opens is [`ErrorKind::InvalidInput`] naming `window`.
    fn check_window(&self, now: Timestamp) -> Result<()> {
        let Some(w) = &self.plan.window else {
            return Ok(());
        };
        match w.check(now) {
            Ok(crate::plan::WindowCheck::Open) => Ok(()),
            Ok(crate::plan::WindowCheck::Closed {
                next_open,
                why,
                next_open_local,
            }) => Err(Error::conflict(format!(
                "outside the deployment window (window): {why}; the next window opens at {next_open_local}, in {} ({next_open})",
                humantime::format_duration(Duration::from_secs(next_open.since(now).as_secs()))
            ))
            .with_operation("start")),
            Err(e) => Err(Error::invalid_input(e.to_string()).with_operation("start")),
        }
    }

    fn renew_at(&self, lease: &Lease) -> Timestamp {
        Timestamp(
            lease
                .expires_at
                .0
                .saturating_sub((self.lease_ttl / 2).as_millis() as u64),
        )
    }

    fn previous_holder_wait(&self, lease: &Lease) -> Duration {
        lease.superseded.map_or(Duration::ZERO, |e| {
            e.after(self.call_timeout).since(self.clock.now())
        })
    }

    async fn wait_for_previous_holder(&self, mut lease: Lease) -> Result<Lease> {
        let Some(expiry) = lease.superseded else {
            return Ok(lease);
        };
        let until = expiry.after(self.call_timeout);
        let now = self.clock.now();
        if until <= now {
            return Ok(lease);
        }
        tracing::info!(
            deployment_id = %self.deployment_id,
            wait = %humantime::format_duration(until.since(now)),
            "took over an unreleased lease: waiting for the previous holder's calls to land before acting"
        );
        loop {
            let now = self.clock.now();
            if now >= until {
                return Ok(lease);
            }
            let renew_at = self.renew_at(&lease);
            let wake = until.min(renew_at);
            tokio::time::sleep(wake.since(now).max(Duration::from_millis(1))).await;
            if self.clock.now() >= renew_at {
                lease = self
                    .journal
                    .renew(&lease, self.lease_ttl, self.clock.now())
                    .await?;
            }
        }
    }

    /// The lease, renewed first when less than the call timeout is left on
    /// it: a mutating call never starts on a lease that could lapse before
    /// the call ends. A superseded lease fails here as
    /// [`Fenced`](crate::ErrorKind::Fenced), before the call.
    async fn lease_for_mutation(&self, lease: Lease) -> Result<Lease> {
        let now = self.clock.now();
        if lease.expires_at.since(now) > self.call_timeout {
            return Ok(lease);
        }
        self.journal.renew(&lease, self.lease_ttl, now).await
    }

    fn timeout_for(&self, action: &Action) -> Duration {
        let d = &self.plan.deadlines;
        match action {
            Action::Backup | Action::VerifyBackup { .. } => d.backup,
            Action::Migrate { .. }
            | Action::VerifyMigrations { .. }
            | Action::RevertMigrations { .. } => d.migrate,
            Action::RunSmokeTests { .. } => d.smoke,
            // Each attempt is bounded by the hook's own timeout (see `execute`).
            Action::RunHook { .. } => Duration::MAX,
            _ => self.call_timeout,
        }
    }

    /// Sends `notification` to every event sink, each bounded by 10 s; a
    /// failure is logged and the deployment goes on.
    fn notify(&self, notification: Notification, notifications: &mut FuturesUnordered<Fire>) {
        for sink in self.providers.sinks.iter() {
            let n = notification.clone();
            let sink = sink.clone();
            notifications.push(Box::pin(async move {
                match tokio::time::timeout(Duration::from_secs(10), sink.notify(&n)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, title = %n.title, "notification failed; the deployment goes on")
                    }
                    Err(_) => {
                        tracing::warn!(title = %n.title, "notification timed out; the deployment goes on")
                    }
                }
            }));
        }
    }

    fn dispatch(
        &self,
        machine: &Machine,
        command: Command,
        inflight: &mut FuturesUnordered<Pending>,
    ) {
        let providers = self.providers.clone();
        let plan = self.plan.clone();
        let retry = self.retry.clone();
        let timeout = self.timeout_for(&command.action);
        let id = command.id;
        // Only the migration runner's calls carry the context.
        let ctx = if command.action.operation().0 == "migrations" {
            MigrationContext {
                deployment_id: self.deployment_id.clone(),
                backup_id: machine.facts().backup.as_ref().map(|b| b.id.clone()),
            }
        } else {
            MigrationContext {
                deployment_id: String::new(),
                backup_id: None,
            }
        };
        inflight.push(Box::pin(async move {
            let operation = command.action.operation();
            let result = execute(&providers, &plan, &retry, timeout, &ctx, command.action).await;
            let input = match result {
                Ok(reply) => Input::Reply { id, reply },
                Err(e) => {
                    tracing::warn!(provider = operation.0, operation = operation.1, error = %e, "provider call failed");
                    Input::Failed {
                        id,
                        error: e.to_record(),
                    }
                }
            };
            (id, input)
        }));
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Stage { stage } => tracing::info!(stage = %stage.name(), "stage"),
        Event::RollbackStarted { reason } => {
            tracing::warn!(reason = %reason.summary, "rollback started")
        }
        Event::Finished { outcome, .. } => tracing::info!(outcome = outcome.name(), "finished"),
        Event::Measured { measurement } => {
            tracing::debug!(measurement = %measurement.describe(), "measured")
        }
        other => tracing::debug!(event = ?other, "event"),
    }
}

/// Rebuilds the machine from journal entries and returns the commands that
/// were issued but never answered.
fn replay(
    machine: &mut Machine,
    plan: &Plan,
    id: &str,
    entries: &[JournalEntry],
) -> Result<Vec<Command>> {
    let mut started = false;
    for e in entries {
        match &e.record {
            Record::Started {
                plan: p,
                format,
                engine,
                ..
            } => {
                if !(crate::journal::OLDEST_RESUMABLE_FORMAT..=crate::journal::JOURNAL_FORMAT)
                    .contains(format)
                {
                    let written = if engine.is_empty() {
                        "an engine before 0.1.0's checks of reality".to_string()
                    } else {
                        format!("bluegreen-core {engine}")
                    };
                    let which = if *format > crate::journal::JOURNAL_FORMAT {
                        "newer"
                    } else {
                        "older"
                    };
                    return Err(Error::invalid_input(format!(
                        "deployment {id} was journaled in format {format} by {written}, {which} than this engine's format {} (bluegreen-core {}, which resumes formats {} to {}): resume it with the engine that started it",
                        crate::journal::JOURNAL_FORMAT,
                        crate::journal::ENGINE_VERSION,
                        crate::journal::OLDEST_RESUMABLE_FORMAT,
                        crate::journal::JOURNAL_FORMAT,
                    ))
                    .with_operation("resume"));
                }
                if **p != *plan {
                    return Err(Error::invalid_input(format!(
                        "deployment {id} was started from a different plan (service {}, version {}); resume it with the plan it started with",
                        p.service, p.release.version
                    ))
                    .with_operation("resume"));
                }
                started = true;
            }
            Record::Checkpoint { state, .. } => machine.restore((**state).clone()),
            Record::Step {
                input,
                commands,
                events,
                ..
            } => {
                let step = machine.handle(e.at, input);
                if !same_decisions(&step.commands, commands) || !same_kinds(&step.events, events) {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "journal record {} of deployment {id} does not replay to the same decisions: the journal was written by a different version or plan",
                            e.seq
                        ),
                    )
                    .with_operation("resume"));
                }
            }
        }
    }
    if !started {
        return Err(
            Error::not_found(format!("no journal records for deployment {id}"))
                .with_operation("resume"),
        );
    }
    Ok(machine.outstanding())
}

/// Commands compared strictly, notifications left out: their text is
/// wording, and they are fire-and-forget.
fn same_decisions(replayed: &[Command], journaled: &[Command]) -> bool {
    let acting = |c: &&Command| !matches!(c.action, Action::Notify { .. });
    let replayed: Vec<&Command> = replayed.iter().filter(acting).collect();
    let journaled: Vec<&Command> = journaled.iter().filter(acting).collect();
    replayed.len() == journaled.len()
        && replayed
            .iter()
            .zip(&journaled)
            .all(|(r, j)| same_command(r, j))
}

/// A measurement journaled before measurements recorded their color is
/// the same decision as one that records it.
fn same_command(replayed: &Command, journaled: &Command) -> bool {
    match (&replayed.action, &journaled.action) {
        (Action::Measure { color: Some(_), .. }, Action::Measure { color: None, .. }) => {
            let mut r = replayed.clone();
            if let Action::Measure { color, .. } = &mut r.action {
                *color = None;
            }
            r == *journaled
        }
        _ => replayed == journaled,
    }
}

/// Events compared by kind only: rewording an event in a patch release must
/// not make an in-flight deployment unresumable.
fn same_kinds(replayed: &[Event], journaled: &[Event]) -> bool {
    replayed.len() == journaled.len()
        && replayed
            .iter()
            .zip(journaled)
            .all(|(a, b)| std::mem::discriminant(a) == std::mem::discriminant(b))
}

async fn execute(
    p: &Providers,
    plan: &Plan,
    retry: &RetryPolicy,
    timeout: Duration,
    ctx: &MigrationContext,
    action: Action,
) -> Result<Reply> {
    let op = action.operation();
    let migrations = || {
        p.migrations
            .clone()
            .ok_or_else(|| Error::invalid_input("the plan migrates but no migration runner is set"))
    };
    let r = retry;
    Ok(match action {
        Action::ReadSplit => Reply::Split {
            split: with_retry(r, timeout, op, || p.router.current_split()).await?,
        },
        Action::SetSplit { split } => {
            with_retry(r, timeout, op, || p.router.set_split(split)).await?;
            Reply::Done
        }
        Action::ReadTargetHealth { color } => Reply::Health {
            health: with_retry(r, timeout, op, || p.router.target_health(color)).await?,
        },
        Action::ReadStatus { colors } => {
            let statuses = with_retry(r, timeout, op, || p.compute.statuses(&colors)).await?;
            if statuses.len() != colors.len() {
                return Err(Error::invalid_response(format!(
                    "asked for {} statuses, got {}",
                    colors.len(),
                    statuses.len()
                ))
                .with_provider(op.0)
                .with_operation(op.1));
            }
            Reply::Statuses { statuses }
        }
        Action::Prepare { color } => Reply::Prepared {
            prepared: with_retry(r, timeout, op, || p.compute.prepare(color, &plan.release))
                .await?,
        },
        Action::ReadDrainPeriod => Reply::DrainPeriod {
            period: with_retry(r, timeout, op, || p.router.drain_period()).await?,
        },
        Action::Scale { color, count } => {
            with_retry(r, timeout, op, || p.compute.scale(color, count)).await?;
            Reply::Done
        }
        Action::ReadAutoscaling { color } => Reply::Autoscaling {
            state: with_retry(r, timeout, op, || p.compute.autoscaling_state(color)).await?,
        },
        Action::SuspendAutoscaling { color } => Reply::Autoscaling {
            state: with_retry(r, timeout, op, || p.compute.suspend_autoscaling(color)).await?,
        },
        Action::RestoreAutoscaling { color, previous } => {
            with_retry(r, timeout, op, || {
                p.compute.restore_autoscaling(color, previous)
            })
            .await?;
            Reply::Done
        }
        Action::CheckSecrets { secrets } => {
            let source = p
                .secrets
                .clone()
                .ok_or_else(|| Error::invalid_input("no secret source is set"))?;
            let mut checks = Vec::with_capacity(secrets.len());
            for s in secrets {
                let res = with_retry(r, timeout, op, || source.metadata(&s.name)).await;
                checks.push(match res {
                    Ok(m) => SecretCheck {
                        name: s.name,
                        metadata: Some(m),
                        error: None,
                    },
                    Err(e) => SecretCheck {
                        name: s.name,
                        metadata: None,
                        error: Some(e.to_record()),
                    },
                });
            }
            Reply::Secrets { checks }
        }
        Action::RunSmokeTests {
            scope,
            tests,
            version,
        } => {
            let (color, base_url) = match scope {
                SmokeScope::Staging => (None, plan.colors.staging_url.clone()),
                SmokeScope::Color(c) => (Some(c), endpoint(p, plan, c).await),
                SmokeScope::Production => {
                    (None, plan.production_checks.as_ref().map(|c| c.url.clone()))
                }
                SmokeScope::Dependencies => (None, None),
            };
            let target = SmokeTarget {
                service: plan.service.clone(),
                color,
                base_url,
                version,
            };
            let mut results = Vec::with_capacity(tests.len());
            for name in tests {
                let Some(test) = p.smoke.get(&name).cloned() else {
                    results.push(SmokeResult {
                        name: name.clone(),
                        outcome: None,
                        error: Some(
                            Error::invalid_input(format!("smoke test {name:?} is not registered"))
                                .to_record(),
                        ),
                    });
                    continue;
                };
                let res = tokio::time::timeout(timeout, test.run(&target)).await;
                results.push(match res {
                    Ok(Ok(outcome)) => SmokeResult {
                        name,
                        outcome: Some(outcome),
                        error: None,
                    },
                    Ok(Err(e)) => SmokeResult {
                        name,
                        outcome: None,
                        error: Some(e.to_record()),
                    },
                    Err(_) => SmokeResult {
                        name,
                        outcome: None,
                        error: Some(
                            Error::timeout(format!(
                                "no result within {}",
                                humantime::format_duration(timeout)
                            ))
                            .to_record(),
                        ),
                    },
                });
            }
            Reply::Smoke { results }
        }
        Action::ReadMigrationLedger => {
            let m = migrations()?;
            let status = with_retry(r, timeout, op, || m.status()).await?;
            Reply::Ledger {
                applied: status.applied.iter().map(|m| m.version).collect(),
            }
        }
        Action::Backup => {
            let m = migrations()?;
            Reply::Backup {
                // A repeat may take a second backup: retried only when throttled.
                backup: with_retry(r, timeout, Operation::non_idempotent(op.0, op.1), || {
                    m.backup(ctx)
                })
                .await?,
            }
        }
        Action::VerifyBackup {
            backup,
            min_entries,
        } => {
            let m = migrations()?;
            Reply::BackupVerified {
                verification: with_retry(r, timeout, op, || m.verify_backup(&backup, min_entries))
                    .await?,
            }
        }
        Action::Migrate { phase } => {
            let m = migrations()?;
            Reply::Migrated {
                applied: with_retry(r, timeout, op, || m.apply(phase, ctx)).await?,
            }
        }
        Action::VerifyMigrations { phase } => {
            let m = migrations()?;
            Reply::Verified {
                checks: with_retry(r, timeout, op, || m.verify(phase, ctx)).await?,
            }
        }
        Action::RevertMigrations { versions } => {
            let m = migrations()?;
            Reply::Reverted {
                reverted: with_retry(r, timeout, op, || m.revert(&versions, ctx)).await?,
            }
        }
        Action::Measure {
            check,
            query,
            from,
            to,
            kind,
            color,
        } => {
            let source_name = plan
                .check(&check)
                .and_then(|c| c.source.as_deref())
                .unwrap_or(DEFAULT_METRICS);
            let source = p.metrics.get(source_name).cloned().ok_or_else(|| {
                Error::invalid_input(format!("metrics source {source_name:?} is not registered"))
            })?;
            let q = MetricQuery {
                check,
                query,
                from,
                to,
                color,
                baseline: kind == crate::analysis::MeasurementKind::Baseline,
            };
            let noted = with_retry(r, timeout, op, || source.query_noted(&q)).await?;
            Reply::Metric {
                answer: noted.answer,
                note: noted.note,
            }
        }
        Action::RunHook { hook, context } => Reply::Hook {
            outcome: run_hook(p, plan, retry, &hook, &context).await,
        },
        // Never issued, so never outstanding: format-2 journals carry it,
        // and replay leaves it out.
        Action::Notify { .. } => Reply::Done,
    })
}

/// How much longer than a hook's `timeout` one attempt may take before the
/// engine stops waiting for it: an implementation that enforces the timeout
/// itself (the command runner kills the process group) reports first, with
/// its own detail.
pub const HOOK_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Runs the plan's hook `name` at `context.point`: attempts until one
/// passes or `retries` are used up, each bounded by its `timeout` (plus
/// [`HOOK_TIMEOUT_GRACE`]), with the retry policy's backoff between them.
/// Never the driver's generic retry: a hook need not be idempotent, so only
/// the plan's `retries` repeat it. A hook that cannot run or does not
/// answer in time is a failed outcome naming the hook and the timeout.
async fn run_hook(
    p: &Providers,
    plan: &Plan,
    retry: &RetryPolicy,
    name: &str,
    context: &crate::provider::HookContext,
) -> HookOutcome {
    let started = tokio::time::Instant::now();
    let spec = plan
        .hooks
        .iter()
        .enumerate()
        .find(|(_, h)| h.name == name && h.point == context.point);
    let (Some((index, spec)), Some(hook)) = (spec, p.hooks.get(name)) else {
        return HookOutcome {
            passed: false,
            duration: Duration::ZERO,
            detail: format!("hook {name:?} is not registered"),
            attempts: 0,
        };
    };
    let attempts = spec.retries.saturating_add(1);
    let mut attempt = 1;
    loop {
        let limit = spec.timeout.saturating_add(HOOK_TIMEOUT_GRACE);
        let mut outcome = match tokio::time::timeout(limit, hook.run(context)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => HookOutcome {
                passed: false,
                duration: started.elapsed(),
                detail: format!("could not run: {e}"),
                attempts: 0,
            },
            Err(_) => HookOutcome {
                passed: false,
                duration: started.elapsed(),
                detail: format!(
                    "no result within its timeout of {} (hooks[{index}].timeout); the engine stopped waiting for it",
                    humantime::format_duration(spec.timeout)
                ),
                attempts: 0,
            },
        };
        if outcome.passed || attempt >= attempts {
            outcome.attempts = attempt;
            outcome.duration = started.elapsed();
            if attempts > 1 && !outcome.passed {
                tracing::warn!(hook = name, point = %context.point, attempts, "hook failed on every attempt");
            }
            return outcome;
        }
        tracing::info!(hook = name, point = %context.point, attempt, detail = %outcome.detail, "hook failed; retrying");
        tokio::time::sleep(retry.backoff(attempt)).await;
        attempt += 1;
    }
}

async fn endpoint(p: &Providers, plan: &Plan, color: Color) -> Option<String> {
    if let Some(u) = &plan.colors.get(color).base_url {
        return Some(u.clone());
    }
    p.compute.endpoint(color).await.ok().flatten()
}
