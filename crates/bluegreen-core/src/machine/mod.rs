//! The deployment state machine: pure, synchronous, with no clock and no I/O.
//!
//! `(state, input) -> (state, commands, events)`, in the sans-IO style of
//! quinn-proto. The driver feeds it timestamped [`Input`]s and executes the
//! [`Command`]s it returns; every decision of a deployment is made here, so
//! every transition can be tested in microseconds.
//!
//! Forward path: preflight, autoscaling suspended, backup and its
//! verification, expand migrations and their verification, the new color
//! prepared, scaled and stable, smoke tests, the traffic shift step by step with
//! read-back, analysis, soak, scale-down delay, a read-back confirming the old
//! color holds no traffic, the old color scaled to zero, contract migrations,
//! autoscaling restored, Succeeded.
//!
//! Rollback path: traffic back to the old color first and read back, smoke
//! tests on the old color, reversible migrations reverted (or a halt if an
//! irreversible one ran), the new color scaled to zero, autoscaling restored,
//! RolledBack.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{measure, BreachRun, Measurement, MeasurementKind, Verdict};
use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::ErrorRecord;
use crate::plan::{
    render_template, Barrier, CapacityPolicy, Gate, HoldTimeoutPolicy, HookPoint,
    InconclusivePolicy, Plan, RequiredSecret, RollbackTrigger, TrafficStep,
};
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeStatus, HookContext, HookOutcome,
    MetricAnswer, MigrationInfo, MigrationPhase, Notification, PreparedRelease, Rollout,
    SecretMetadata, Severity, SmokeOutcome, TargetHealth, VerificationCheck,
};
use crate::reason::{Cause, Effect, Noted, Refusal};

mod hooks;
mod io;
mod monitor;
mod replies;
mod stage;
mod timers;
mod verdict;

pub use io::*;
use monitor::Monitor;
pub use stage::Stage;
use timers::Timers;

/// The longest wait between two read-backs of a split that disagrees.
pub const READ_BACK_MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Pending {
    Stage,
    Monitor(Monitor),
    /// A mutating call of a stage the deployment left (a rollback began
    /// while it ran): its answer decides nothing, but until it returns its
    /// write may still land, so the next mutating call waits for it.
    Abandoned,
    /// A hook that was running when the deployment left its stage (a
    /// rollback began): its outcome is recorded when it comes, decides
    /// nothing and holds nothing back (a hook's write is not the router's
    /// or the compute's), and it is never run again.
    Detached,
}

/// Defines [`Machine`] from its fixed parts (the plan and what is derived
/// from it) and its state, and [`Checkpoint`] from the state alone, from one
/// list of fields, so a field added to the machine cannot be left out of
/// its checkpoint.
macro_rules! machine {
    (
        fixed { $($(#[$fm:meta])* $fixed:ident: $fty:ty,)* }
        state { $($(#[$sm:meta])* $field:ident: $ty:ty,)* }
        added { $($(#[$am:meta])* $added:ident: $aty:ty,)* }
    ) => {
        /// The deployment state machine. See the [module docs](self).
        #[derive(Debug, Clone)]
        pub struct Machine {
            $($(#[$fm])* $fixed: $fty,)*
            $($(#[$sm])* $field: $ty,)*
            $($(#[$am])* $added: $aty,)*
        }

        /// The whole state of a [`Machine`] between two inputs, without its
        /// plan: what [`Record::Checkpoint`](crate::journal::Record::Checkpoint)
        /// journals where steps that only repeated a held deployment's
        /// verdicts were left out, so a replay goes on from exactly where the
        /// deployer was. Opaque: its fields follow the machine's and change
        /// with the journal format.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct Checkpoint {
            $($field: $ty,)*
            $(#[serde(default)] $added: $aty,)*
        }

        impl Machine {
            /// Its state now, for a [`Checkpoint`] record.
            pub fn checkpoint(&self) -> Checkpoint {
                Checkpoint {
                    $($field: self.$field.clone(),)*
                    $($added: self.$added.clone(),)*
                }
            }

            /// Puts the machine in the state `checkpoint` recorded (of a
            /// machine of the same plan).
            pub fn restore(&mut self, checkpoint: Checkpoint) {
                $(self.$field = checkpoint.$field;)*
                $(self.$added = checkpoint.$added;)*
            }
        }
    };
}

machine! {
    fixed {
        plan: Arc<Plan>,
        deployment_id: String,
        steps: Vec<TrafficStep>,
        /// What the input being handled produced (empty between inputs).
        step: Step,
        /// A monitor read something other than it last did while the
        /// input was handled (false between inputs).
        fresh_reading: bool,
        /// Each check's query, rendered for each color as the new one.
        queries: Vec<(Color, Vec<String>)>,
        /// Whether a metric rollback trigger watches each check, and
        /// whether a trigger watches target health: asked on every input.
        triggers: monitor::Watched,
    }
    state {
        stage: Stage,
        now: Timestamp,
        started_at: Option<Timestamp>,
        next_id: CommandId,
        pending: BTreeMap<CommandId, (Pending, Action)>,
        facts: Facts,
        timers: Timers,
        paused: bool,
        gates_passed: BTreeSet<Gate>,
        barriers_passed: BTreeSet<Barrier>,
        monitoring_since: Option<Timestamp>,
        next_measure: Vec<Timestamp>,
        next_health: Option<Timestamp>,
        breach_runs: Vec<BreachRun>,
        run_evidence: Vec<Vec<Measurement>>,
        preflight_statuses: Vec<(Color, ComputeStatus)>,
        window_start: Timestamp,
        final_results: Vec<Measurement>,
        rollback_reason: Option<Reason>,
        /// When a read-back last confirmed that the color to be drained holds
        /// no traffic.
        traffic_left_at: Option<Timestamp>,
        /// The split last requested (confirmed or not).
        requested_split: Option<TrafficSplit>,
        /// Disagreeing read-backs in the current stage.
        read_back_attempts: u32,
        /// The old color as read in a rollback.
        old_status: Option<ComputeStatus>,
        old_health: Option<TargetHealth>,
        /// The old color was read again after its smoke tests failed once
        /// traffic had returned to it.
        old_rechecked: bool,
        /// Why the deployment halts, while it restores autoscaling first.
        halt_reason: Option<Reason>,
        /// The halt needs a human now (critical notification).
        critical: bool,
        outcome: Option<Outcome>,
        /// Mutating commands issued while an abandoned mutating call was
        /// still in flight: held back (pending, not yet sent) until it
        /// returns, so a late write of the forward path can never land
        /// after the rollback's.
        deferred: Vec<CommandId>,
        /// The last reading of each monitor (a check's verdict, a color's
        /// target health), to tell a held deployment's repeated readings.
        last_readings: Vec<(ReadingOf, Reading)>,
    }
    // State added since checkpoints were first journaled: a checkpoint
    // without it reads as its default.
    added {
        /// The production checks and hook points begun, each with the
        /// traffic step it belongs to (0 where none), so that entering the
        /// stage they precede again does not repeat them.
        begun: BTreeSet<(Due, usize)>,
        /// The outcome decided while `after_rollback` and `on_finish`
        /// hooks run.
        concluding: Option<Outcome>,
    }
}

/// What runs before a stage is entered: the production checks, or the
/// hooks of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Due {
    Production,
    Hooks(HookPoint),
}

/// Whose reading: a check's (by index in the plan) or a color's target
/// health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ReadingOf {
    Check(usize),
    Health(Color),
}

/// What a monitor last read, as far as a repeat is concerned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Reading {
    /// A check's verdict and whether it breached a rollback trigger.
    Check { verdict: Verdict, breach: bool },
    /// A color's target health.
    Health { healthy: u32, total: u32 },
}

impl Machine {
    /// A machine for `plan`, which must be valid ([`Plan::validate`]).
    pub fn new(plan: Arc<Plan>, deployment_id: impl Into<String>) -> Machine {
        let steps = plan.strategy.steps();
        let checks = plan.analysis.len();
        let triggers = plan.rollback_triggers.len();
        let queries = [Color::Blue, Color::Green]
            .into_iter()
            .map(|c| {
                let q = (0..checks)
                    .map(|i| monitor::render_query(&plan, i, c))
                    .collect();
                (c, q)
            })
            .collect();
        Machine {
            deployment_id: deployment_id.into(),
            steps,
            stage: Stage::Pending,
            now: Timestamp(0),
            started_at: None,
            next_id: 1,
            pending: BTreeMap::new(),
            facts: Facts::default(),
            timers: Timers::default(),
            paused: false,
            gates_passed: BTreeSet::new(),
            barriers_passed: BTreeSet::new(),
            monitoring_since: None,
            next_measure: vec![Timestamp(0); checks],
            next_health: None,
            breach_runs: vec![BreachRun::default(); triggers],
            run_evidence: vec![Vec::new(); triggers],
            preflight_statuses: Vec::new(),
            window_start: Timestamp(0),
            final_results: Vec::new(),
            rollback_reason: None,
            traffic_left_at: None,
            requested_split: None,
            read_back_attempts: 0,
            old_status: None,
            old_health: None,
            old_rechecked: false,
            halt_reason: None,
            critical: false,
            outcome: None,
            last_readings: Vec::new(),
            deferred: Vec::new(),
            begun: BTreeSet::new(),
            concluding: None,
            step: Step::default(),
            fresh_reading: false,
            triggers: monitor::Watched::of(&plan),
            plan,
            queries,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The deployment id.
    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    /// The current stage.
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// What is known of the world.
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Whether the deployment is rolling back (or has rolled back).
    pub fn rolling_back(&self) -> bool {
        self.rollback_reason.is_some()
    }

    /// Whether a human paused it.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Why it is rolling back (or rolled back or halted), once it is.
    pub fn rollback_reason(&self) -> Option<&Reason> {
        self.rollback_reason.as_ref()
    }

    /// The group barrier the deployment is holding at, if any.
    pub fn waiting_at(&self) -> Option<Barrier> {
        match &self.stage {
            Stage::Hold {
                reason: HoldReason::Group { barrier },
                ..
            } => Some(*barrier),
            _ => None,
        }
    }

    /// How many group barriers the deployment has passed (they are passed
    /// in order, see [`Barrier::position`]).
    pub fn barriers_passed(&self) -> usize {
        self.barriers_passed.len()
    }

    /// Commands issued and not yet answered, in id order. After a resume the
    /// driver executes these again (every provider call is idempotent).
    pub fn outstanding(&self) -> Vec<Command> {
        self.pending
            .iter()
            .filter(|(_, (k, _))| !matches!(k, Pending::Abandoned | Pending::Detached))
            .map(|(id, (_, action))| Command {
                id: *id,
                action: action.clone(),
            })
            .collect()
    }

    /// The earliest time at which a [`Input::Tick`] has something to do.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if self.outcome.is_some() {
            return None;
        }
        let mut t: Option<Timestamp> = None;
        let mut consider = |x: Option<Timestamp>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.timers.earliest(!self.stage_pending()));
        match &self.stage {
            Stage::Watch { until, .. }
            | Stage::Analysis { until }
            | Stage::Soak { until }
            | Stage::ScaleDownDelay { until }
            | Stage::Drain { until } => consider(Some(*until)),
            _ => {}
        }
        if self.monitoring_since.is_some() && !self.rolling_back() {
            for (i, at) in self.next_measure.iter().enumerate() {
                if self.has_metric_trigger(i) && !self.monitor_pending(&Monitor::Check(i)) {
                    consider(Some(*at));
                }
            }
            if self.has_health_trigger() && !self.monitor_pending(&Monitor::Health) {
                consider(self.next_health);
            }
        }
        t
    }

    /// Feeds one input at time `now` (which never goes backwards) and returns
    /// what to do. The input may be lent (`&input`): the machine copies only
    /// what it keeps of it, so a driver that journals the input after the
    /// step need not clone it first.
    pub fn handle(&mut self, now: Timestamp, input: impl Borrow<Input>) -> Step {
        self.handle_input(now, input.borrow())
    }

    fn handle_input(&mut self, now: Timestamp, input: &Input) -> Step {
        self.now = self.now.max(now);
        if self.outcome.is_some() {
            return Step::default();
        }
        let held = matches!(self.stage, Stage::Hold { .. })
            && matches!(input, Input::Tick | Input::Reply { .. });
        let before = held.then(|| self.stage.clone());
        self.fresh_reading = false;
        match input {
            Input::Start => {
                if self.stage == Stage::Pending {
                    self.started_at = Some(self.now);
                    self.notify(
                        "Deployment Start",
                        format!(
                            "{} {} deployment starting",
                            self.plan.service, self.plan.release.version
                        ),
                        Severity::Info,
                        &["deployment:start"],
                    );
                    self.enter(Stage::Preflight);
                }
            }
            Input::Tick => self.on_tick(),
            Input::Reply { id, reply } => self.on_reply(*id, reply),
            Input::Failed { id, error } => self.on_failed(*id, error.clone()),
            Input::Control { control } => self.on_control(control.clone()),
            Input::Resumed { wait } => self.on_resumed(*wait),
        }
        let mut step = std::mem::take(&mut self.step);
        step.repeats = before.is_some_and(|b| b == self.stage)
            && !self.fresh_reading
            && step.notifications.is_empty()
            && step.commands.iter().all(|c| {
                matches!(
                    c.action,
                    Action::Measure { .. } | Action::ReadTargetHealth { .. }
                )
            })
            && step
                .events
                .iter()
                .all(|e| matches!(e, Event::Measured { .. } | Event::TargetHealth { .. }));
        step
    }

    /// Records a monitor's reading under `key`, noting when it differs from
    /// the one before.
    fn reading(&mut self, key: ReadingOf, reading: Reading) {
        match self.last_readings.iter_mut().find(|(k, _)| *k == key) {
            Some((_, last)) if *last == reading => {}
            Some((_, last)) => {
                self.fresh_reading = true;
                *last = reading;
            }
            None => {
                self.fresh_reading = true;
                self.last_readings.push((key, reading));
            }
        }
    }

    // ------------------------------------------------------------ plumbing --

    fn issue(&mut self, action: Action) -> CommandId {
        self.issue_as(Pending::Stage, action)
    }

    fn issue_as(&mut self, kind: Pending, action: Action) -> CommandId {
        let id = self.next_id;
        self.next_id += 1;
        let hold_back =
            action.is_mutating() && self.pending.values().any(|(k, _)| *k == Pending::Abandoned);
        self.pending.insert(id, (kind, action.clone()));
        if hold_back {
            self.deferred.push(id);
        } else {
            self.step.commands.push(Command { id, action });
        }
        id
    }

    /// Sends the held-back mutating commands once no abandoned mutating
    /// call is in flight any more.
    fn release_deferred(&mut self) {
        if self.pending.values().any(|(k, _)| *k == Pending::Abandoned) {
            return;
        }
        for id in std::mem::take(&mut self.deferred) {
            if let Some((_, action)) = self.pending.get(&id) {
                self.step.commands.push(Command {
                    id,
                    action: action.clone(),
                });
            }
        }
    }

    fn stage_pending(&self) -> bool {
        self.pending.values().any(|(k, _)| *k == Pending::Stage)
    }

    fn monitor_pending(&self, m: &Monitor) -> bool {
        self.pending
            .values()
            .any(|(k, _)| matches!(k, Pending::Monitor(x) if x == m))
    }

    fn event(&mut self, e: Event) {
        self.step.events.push(e);
    }

    fn note(&mut self, noted: Noted) {
        self.event(Event::Note {
            text: noted.to_string(),
            cause: Some(noted),
        });
    }

    fn control_event(&mut self, control: Control, effect: Effect) {
        self.event(Event::Control {
            control,
            effect: effect.to_string(),
            kind: Some(effect),
        });
    }

    fn notify(&mut self, title: &str, text: String, severity: Severity, tags: &[&str]) {
        let mut all: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        if severity == Severity::Critical {
            all.push("severity:critical".into());
        }
        all.push(format!("version:{}", self.plan.release.version));
        all.push(format!("service:{}", self.plan.service));
        let notification = Notification {
            deployment_id: self.deployment_id.clone(),
            service: self.plan.service.clone(),
            version: self.plan.release.version.clone(),
            title: title.into(),
            text,
            severity,
            tags: all,
            cause: None,
        };
        self.step.notifications.push(notification);
    }

    fn old(&self) -> Color {
        self.facts.old.unwrap_or(Color::Green)
    }

    fn new_color(&self) -> Color {
        self.old().other()
    }

    /// Drops the current stage's outstanding commands (their late replies are ignored).
    /// Forgets the current stage's calls. A mutating one already sent is
    /// kept as abandoned until it returns (its write may still land); one
    /// held back and never sent is dropped.
    fn abandon_stage(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        self.pending
            .retain(|id, (k, _)| *k != Pending::Stage || !deferred.contains(id));
        self.deferred = deferred
            .into_iter()
            .filter(|id| self.pending.contains_key(id))
            .collect();
        self.pending.retain(|_, (k, a)| {
            if *k == Pending::Stage && matches!(a, Action::RunHook { .. }) {
                *k = Pending::Detached;
            } else if *k == Pending::Stage && a.is_mutating() {
                *k = Pending::Abandoned;
            }
            *k != Pending::Stage
        });
    }

    /// Moves to `stage`, honouring gates, group barriers and pause, and
    /// issues its commands.
    fn enter(&mut self, stage: Stage) {
        if !self.rolling_back() && self.halt_reason.is_none() && self.concluding.is_none() {
            if let Some(gate) = self.gate_before(&stage) {
                self.hold(HoldReason::Gate { gate }, stage);
                return;
            }
            if let Some(barrier) = self.barrier_before(&stage) {
                self.hold(HoldReason::Group { barrier }, stage);
                return;
            }
            if self.paused && !matches!(stage, Stage::Done) {
                self.hold(HoldReason::Paused, stage);
                return;
            }
        }
        let stage = self.due_before(stage);
        self.timers.enter(&stage, self.now, &self.plan.deadlines);
        if !matches!(
            stage,
            Stage::Shift {
                confirming: true,
                ..
            } | Stage::RestoreTraffic { confirming: true }
        ) {
            // The backoff grows across the set/read-back pairs of one change.
            self.read_back_attempts = 0;
        }
        if matches!(
            stage,
            Stage::Watch { .. } | Stage::Analysis { .. } | Stage::Soak { .. }
        ) {
            self.window_start = self.now;
        }
        self.stage = stage.clone();
        self.event(Event::Stage {
            stage: stage.clone(),
        });
        self.begin(stage);
    }

    fn hold(&mut self, reason: HoldReason, then: Stage) {
        let t = &self.plan.timing;
        self.timers.hold(self.now, t.hold_timeout, t.hold_reminder);
        let stage = Stage::Hold {
            reason,
            then: Box::new(then),
        };
        self.stage = stage.clone();
        self.event(Event::Stage { stage });
    }

    fn finish(&mut self, outcome: Outcome) {
        self.abandon_stage();
        self.pending.clear();
        self.timers = Timers::default();
        self.monitoring_since = None;
        let (title, severity, tag) = match &outcome {
            Outcome::Succeeded => (
                "Deployment Complete",
                Severity::Success,
                "deployment:success",
            ),
            Outcome::RolledBack { .. } => (
                "Deployment Rolled Back",
                Severity::Warning,
                "deployment:rolled_back",
            ),
            Outcome::Halted { .. } if self.critical => {
                ("Deployment Halted", Severity::Critical, "deployment:halted")
            }
            Outcome::Halted { .. } => ("Deployment Halted", Severity::Error, "deployment:halted"),
        };
        let text = match &outcome {
            Outcome::Succeeded => format!(
                "{} {} deployed successfully",
                self.plan.service, self.plan.release.version
            ),
            Outcome::RolledBack { reason } | Outcome::Halted { reason } => reason.summary.clone(),
        };
        self.notify(title, text, severity, &[tag]);
        if let (Some(n), Outcome::RolledBack { reason } | Outcome::Halted { reason }) =
            (self.step.notifications.last_mut(), &outcome)
        {
            n.cause = reason.cause.clone();
        }
        self.stage = Stage::Done;
        self.event(Event::Stage { stage: Stage::Done });
        self.event(Event::Finished {
            outcome: outcome.clone(),
            facts: Box::new(self.facts.clone()),
        });
        self.outcome = Some(outcome);
    }

    /// Something went wrong on the forward path: roll back, or halt if the
    /// old color can no longer take traffic.
    fn fail(&mut self, reason: Reason) {
        if self.outcome.is_some() {
            return;
        }
        if let Some(halting) = self.halt_reason.clone() {
            // Restoring autoscaling on the way to a halt failed: halt as
            // decided, the failure on record.
            self.note(Noted::AutoscalingNotRestored {
                reason: reason.summary.clone(),
            });
            self.conclude(Outcome::Halted { reason: halting });
            return;
        }
        if self.rolling_back() {
            let rollback_for = self
                .rollback_reason
                .as_ref()
                .map(|r| r.summary.clone())
                .unwrap_or_default();
            self.halt(
                Reason::because(Cause::RollbackIncomplete {
                    failure: reason.summary,
                    rollback_for,
                })
                .with_evidence(reason.evidence),
            );
            return;
        }
        let serving = match &self.stage {
            Stage::Hold { then, .. } => then.old_color_serving(),
            s => s.old_color_serving(),
        } && self.concluding.is_none();
        if !serving {
            self.halt(
                Reason::because(Cause::PastPointOfNoReturn {
                    failure: reason.summary,
                })
                .with_evidence(reason.evidence),
            );
            return;
        }
        self.start_rollback(reason);
    }

    /// Stops for a human: first puts autoscaling back on the color(s)
    /// holding traffic (so the service can still scale), then finishes
    /// Halted with `reason`. Nothing else is touched.
    fn halt(&mut self, reason: Reason) {
        if self.outcome.is_some() || self.halt_reason.is_some() {
            return;
        }
        self.abandon_stage();
        self.monitoring_since = None;
        self.timers.poll = None;
        self.timers.rollback = None;
        self.halt_reason = Some(reason);
        self.enter(Stage::HaltRestoreAutoscaling);
    }

    fn start_rollback(&mut self, reason: Reason) {
        self.abandon_stage();
        self.monitoring_since = None;
        self.timers.poll = None;
        self.notify(
            "Deployment Rollback",
            format!(
                "{} {} rolling back: {}",
                self.plan.service, self.plan.release.version, reason.summary
            ),
            Severity::Warning,
            &["deployment:rollback"],
        );
        if let Some(n) = self.step.notifications.last_mut() {
            n.cause = reason.cause.clone();
        }
        self.rollback_reason = Some(reason.clone());
        self.event(Event::RollbackStarted { reason });
        self.timers.rollback = Some(self.now.after(self.plan.timing.rollback_window));
        if self.facts.old.is_none() {
            // Nothing is known, so nothing was changed.
            self.enter(Stage::RollbackRestoreAutoscaling);
        } else if self.facts.traffic_touched {
            // Invariant 1 in the other direction: traffic goes back only to
            // an old color confirmed at its capacity.
            self.enter(Stage::CheckOld);
        } else {
            self.enter(Stage::RevertMigrations);
        }
    }

    // -------------------------------------------------------------- inputs --

    fn on_tick(&mut self) {
        let now = self.now;
        if let Some(timers::Deadline {
            at,
            group,
            length: d,
        }) = self.timers.deadline
        {
            if now >= at && self.outcome.is_none() {
                if group == timers::DeadlineGroup::RestoreOld {
                    self.critical = true;
                    let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
                    let problem = self
                        .old_color_problem()
                        .unwrap_or_else(|| "it did not settle".into());
                    self.halt(Reason::because(Cause::OldColorCannotReturn {
                        color: self.old(),
                        capacity: cap,
                        within: d,
                        problem,
                        split: self.facts.confirmed_split,
                        rollback_for: self
                            .rollback_reason
                            .as_ref()
                            .map(|r| r.summary.clone())
                            .unwrap_or_default(),
                    }));
                    return;
                }
                self.fail(Reason::because(Cause::ProgressDeadline {
                    deadline: d,
                    group: group.name().to_string(),
                    stage: self.stage.name(),
                }));
                return;
            }
        }
        if let Some(at) = self.timers.rollback {
            if now >= at && self.outcome.is_none() && self.halt_reason.is_none() {
                let d = self.plan.timing.rollback_window;
                self.fail(Reason::because(Cause::ProgressDeadline {
                    deadline: d,
                    group: "rollback".into(),
                    stage: self.stage.name(),
                }));
                return;
            }
        }
        if let Stage::Hold { reason, .. } = self.stage.clone() {
            if self.timers.hold.is_some_and(|t| now >= t) {
                self.hold_timed_out(&reason);
                return;
            }
            if let Some(at) = self.timers.reminder.filter(|t| now >= *t) {
                self.timers.reminder = Some(at.after(self.plan.timing.hold_reminder));
                let since = self.timers.held_since.unwrap_or(now);
                let left = self.timers.hold.map_or(Duration::ZERO, |t| t.since(now));
                let action = match self.plan.on_hold_timeout {
                    HoldTimeoutPolicy::Rollback => "rolls back",
                    HoldTimeoutPolicy::Halt => "halts",
                };
                self.notify(
                    "Deployment Held",
                    format!(
                        "{} {} has been held for {} ({}); it {action} in {} unless a human decides",
                        self.plan.service,
                        self.plan.release.version,
                        humantime::format_duration(now.since(since)),
                        describe_hold(&reason),
                        humantime::format_duration(left)
                    ),
                    Severity::Warning,
                    &["deployment:held"],
                );
            }
        }
        if let Some(at) = self.timers.poll {
            if now >= at && !self.stage_pending() {
                self.timers.poll = None;
                let stage = self.stage.clone();
                self.begin(stage);
            }
        }
        let expired = match &self.stage {
            Stage::Watch { until, .. }
            | Stage::Analysis { until }
            | Stage::Soak { until }
            | Stage::ScaleDownDelay { until }
            | Stage::Drain { until } => now >= *until,
            _ => false,
        };
        if expired {
            self.advance();
        }
        self.schedule_monitors();
    }

    fn hold_timed_out(&mut self, reason: &HoldReason) {
        let (policy, act) = match self.plan.on_hold_timeout {
            HoldTimeoutPolicy::Rollback => ("rollback", true),
            HoldTimeoutPolicy::Halt => ("halt", false),
        };
        let reason = Reason::because(Cause::HoldTimedOut {
            after: self.plan.timing.hold_timeout,
            hold: describe_hold(reason),
            policy: policy.into(),
        });
        if act {
            self.fail(reason);
        } else {
            self.halt(reason);
        }
    }

    /// Restarts the current stage's progress deadline once the resumed
    /// deployer's `wait` is over (see [`Input::Resumed`]).
    fn on_resumed(&mut self, wait: Duration) {
        // The previous deployer's calls died with it (the driver waits out
        // their call timeout before it acts); what it held back is sent
        // again now as outstanding.
        self.pending.retain(|_, (k, _)| *k != Pending::Abandoned);
        self.deferred.clear();
        let restart = self.timers.restart_deadline(self.now.after(wait));
        if restart.is_some() || !wait.is_zero() {
            self.note(Noted::Resumed {
                wait,
                deadline: restart.map(|d| d.group.name().to_string()),
                length: restart.map(|d| d.length),
            });
        }
        self.resume_hooks();
    }

    fn on_control(&mut self, control: Control) {
        let effect: Effect = match &control {
            Control::Pause if self.rolling_back() => Effect::Refused {
                why: Refusal::RollbackNotPaused,
            },
            Control::Pause => {
                self.paused = true;
                Effect::Paused
            }
            Control::Resume => {
                self.paused = false;
                if let Stage::Hold {
                    reason: HoldReason::Paused,
                    then,
                } = &self.stage
                {
                    let then = (**then).clone();
                    self.control_event(control.clone(), Effect::Resumed);
                    self.enter(then);
                    return;
                }
                Effect::Resumed
            }
            Control::Promote if self.rolling_back() => Effect::Refused {
                why: Refusal::RollingBack,
            },
            Control::Promote => match self.stage.clone() {
                Stage::Hold {
                    reason: HoldReason::Paused,
                    ..
                } => Effect::Refused {
                    why: Refusal::Paused,
                },
                Stage::Hold {
                    reason: HoldReason::Group { barrier },
                    ..
                } => Effect::Refused {
                    why: Refusal::WaitingForGroup { barrier },
                },
                Stage::Hold {
                    reason: HoldReason::Gate { gate },
                    ..
                } if self.plan.approval_gate(gate).is_some() => Effect::Refused {
                    why: Refusal::NeedsApprovals {
                        gate,
                        missing: self.approvals_missing(gate),
                    },
                },
                Stage::Hold { reason, then } => {
                    if let HoldReason::Gate { gate } = &reason {
                        self.gates_passed.insert(*gate);
                    }
                    self.control_event(
                        control.clone(),
                        Effect::Promoted {
                            hold: describe_hold(&reason),
                        },
                    );
                    self.enter(*then);
                    return;
                }
                Stage::Watch { .. } | Stage::Analysis { .. } | Stage::Soak { .. } => {
                    // Promote skips a wait, never the evidence: the
                    // evaluation covers at least `min_evidence` of fresh data.
                    let ready_at = self.window_start.after(self.plan.timing.min_evidence);
                    if self.now >= ready_at {
                        self.control_event(
                            control.clone(),
                            Effect::WaitSkipped {
                                stage: self.stage.name(),
                                evaluated: true,
                            },
                        );
                        self.advance();
                    } else {
                        let stage = match self.stage.clone() {
                            Stage::Watch { step, until } => Stage::Watch {
                                step,
                                until: until.min(ready_at),
                            },
                            Stage::Analysis { until } => Stage::Analysis {
                                until: until.min(ready_at),
                            },
                            Stage::Soak { until } => Stage::Soak {
                                until: until.min(ready_at),
                            },
                            s => s,
                        };
                        self.stage = stage;
                        self.control_event(
                            control.clone(),
                            Effect::WaitShortened {
                                stage: self.stage.name(),
                                until: ready_at,
                                min_evidence: self.plan.timing.min_evidence,
                            },
                        );
                    }
                    return;
                }
                Stage::ScaleDownDelay { .. } => {
                    self.control_event(
                        control.clone(),
                        Effect::WaitSkipped {
                            stage: self.stage.name(),
                            evaluated: false,
                        },
                    );
                    self.advance();
                    return;
                }
                s => Effect::Refused {
                    why: Refusal::NothingToPromote { stage: s.name() },
                },
            },
            Control::Proceed { barrier } if self.rolling_back() => Effect::Refused {
                why: Refusal::NotWaitingAt {
                    barrier: *barrier,
                    rolling_back: true,
                },
            },
            Control::Proceed { barrier } => match self.stage.clone() {
                Stage::Hold {
                    reason: HoldReason::Group { barrier: at },
                    then,
                } if at == *barrier => {
                    self.barriers_passed.insert(at);
                    self.control_event(control.clone(), Effect::GroupProceeds { barrier: at });
                    self.enter(*then);
                    return;
                }
                _ => Effect::Refused {
                    why: Refusal::NotWaitingAt {
                        barrier: *barrier,
                        rolling_back: false,
                    },
                },
            },
            Control::Approve { .. } if self.rolling_back() => Effect::Refused {
                why: Refusal::RollingBack,
            },
            Control::Approve { name, gate } => {
                // Taken or refused, `on_approve` records which.
                self.on_approve(&control, name, *gate);
                return;
            }
            Control::Abort { reason } => {
                if self.rolling_back() {
                    Effect::Refused {
                        why: Refusal::AlreadyRollingBack,
                    }
                } else {
                    let reason = Reason::because(Cause::ManualAbort {
                        reason: reason.clone(),
                    });
                    self.control_event(control.clone(), Effect::RollingBack);
                    self.fail(reason);
                    return;
                }
            }
        };
        self.control_event(control, effect);
    }

    /// What the approval gate `gate` still needs.
    fn approvals_missing(&self, gate: Gate) -> Vec<String> {
        self.plan
            .approval_gate(gate)
            .map(|a| a.missing(&self.facts.approvals))
            .unwrap_or_default()
    }

    /// Takes or refuses one approval and records which; passes the gate
    /// held at once its approvals are complete. Returns whether taken.
    fn on_approve(&mut self, control: &Control, name: &str, gate: Option<Gate>) -> bool {
        let held_at = match &self.stage {
            Stage::Hold {
                reason: HoldReason::Gate { gate },
                ..
            } if self.plan.approval_gate(*gate).is_some() => Some(*gate),
            _ => None,
        };
        let pending =
            |g: Gate| !self.gates_passed.contains(&g) && !self.approvals_missing(g).is_empty();
        let target = gate.or(held_at).or_else(|| {
            self.plan
                .approvals
                .iter()
                .map(|a| a.gate)
                .find(|g| pending(*g))
        });
        let refuse = |m: &mut Machine, why: Refusal| {
            m.control_event(control.clone(), Effect::Refused { why });
            false
        };
        let Some(g) = target else {
            return refuse(self, Refusal::NoApprovalPending { gate: None });
        };
        let Some(a) = self.plan.approval_gate(g).cloned() else {
            return refuse(self, Refusal::NoApprovalPending { gate: Some(g) });
        };
        let Some(group) = a.group_of(name) else {
            let approvers = a.groups.iter().flat_map(|g| g.names.clone()).collect();
            return refuse(
                self,
                Refusal::NotAnApprover {
                    gate: g,
                    name: name.to_string(),
                    approvers,
                },
            );
        };
        if let Some(first) = self
            .facts
            .approvals
            .iter()
            .find(|x| x.gate == g && x.name == name)
        {
            let at = first.at;
            return refuse(
                self,
                Refusal::AlreadyApproved {
                    gate: g,
                    name: name.to_string(),
                    at,
                },
            );
        }
        if !pending(g) {
            return refuse(self, Refusal::NoApprovalPending { gate: Some(g) });
        }
        let role = group.role.clone();
        self.facts.approvals.push(crate::plan::Approval {
            gate: g,
            name: name.to_string(),
            role: role.clone(),
            at: self.now,
        });
        let missing = self.approvals_missing(g);
        let complete = missing.is_empty();
        self.control_event(
            control.clone(),
            Effect::Approved {
                gate: g,
                name: name.to_string(),
                role,
                missing,
            },
        );
        if complete && held_at == Some(g) {
            if let Stage::Hold { then, .. } = self.stage.clone() {
                self.gates_passed.insert(g);
                self.enter(*then);
            }
        }
        true
    }

    fn on_failed(&mut self, id: CommandId, error: ErrorRecord) {
        let Some((kind, action)) = self.pending.remove(&id) else {
            return;
        };
        let (provider, op) = action.operation();
        match kind {
            Pending::Abandoned => self.release_deferred(),
            Pending::Detached => {}
            Pending::Monitor(Monitor::Check(i)) => {
                // A failed periodic measurement is no evidence either way.
                let name = self.plan.analysis[i].name.clone();
                self.note(Noted::MeasurementFailed {
                    check: name,
                    error: error.to_string(),
                });
            }
            Pending::Monitor(Monitor::Health) => {
                self.note(Noted::TargetHealthFailed {
                    error: error.to_string(),
                });
            }
            Pending::Stage => {
                if let Action::Measure {
                    check,
                    query,
                    from,
                    to,
                    kind,
                    ..
                } = action
                {
                    // A failed final measurement is missing evidence: inconclusive.
                    let Some(c) = self.plan.check(&check).cloned() else {
                        return;
                    };
                    let answer = MetricAnswer::NoData {
                        reason: format!("the query failed: {}", error.message),
                    };
                    self.final_measured(measure(&c, kind, query, from, to, &answer));
                    if !self.stage_pending() {
                        self.stage_complete();
                    }
                    return;
                }
                self.fail(Reason::because(Cause::ProviderFailed {
                    provider: provider.to_string(),
                    operation: op.to_string(),
                    stage: self.stage.name(),
                    error: error.message.clone(),
                }));
            }
        }
    }

    fn bad_reply(&mut self, what: &str) {
        self.fail(Reason::because(Cause::Nonsense {
            stage: self.stage.name(),
            what: what.to_string(),
        }));
    }

    fn on_reply(&mut self, id: CommandId, reply: &Reply) {
        let Some((kind, action)) = self.pending.remove(&id) else {
            return;
        };
        match kind {
            Pending::Abandoned => self.release_deferred(),
            Pending::Detached => self.on_detached_hook(action, reply),
            Pending::Monitor(m) => self.on_monitor_reply(m, action, reply),
            Pending::Stage => {
                self.on_stage_reply(action, reply.clone());
                if self.outcome.is_none() && !self.stage_pending() && self.timers.poll.is_none() {
                    self.stage_complete();
                }
            }
        }
    }
}

/// A hold in words, e.g. `the gate before-shift`.
fn describe_hold(reason: &HoldReason) -> String {
    match reason {
        HoldReason::Gate { gate } => format!(
            "the gate {}",
            serde_json::to_value(gate)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        HoldReason::Inconclusive { detail } => detail.clone(),
        HoldReason::Paused => "paused by a human".into(),
        HoldReason::Group { barrier } => format!("waiting for its group at {barrier}"),
    }
}

/// A duration in whole days (or hours below a day), for rotation policies.
fn days(d: Duration) -> String {
    let h = d.as_secs() / 3600;
    if h >= 24 {
        format!("{} days", h / 24)
    } else {
        format!("{h} hours")
    }
}

/// Helpers on timestamps used only by the machine.
trait WindowStart {
    fn since_start(self, window: Duration) -> Timestamp;
}

impl WindowStart for Timestamp {
    fn since_start(self, window: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(window.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, Release};

    fn plan() -> Arc<Plan> {
        let mut p = Plan::reference("svc", Release::new("2.0.0", "svc:2"), "errors", "p95");
        p.gates = vec![Gate::BeforeShift];
        Arc::new(p)
    }

    fn reply(m: &mut Machine, at: u64, id: CommandId, reply: Reply) -> Step {
        m.handle(Timestamp(at), Input::Reply { id, reply })
    }

    #[test]
    fn start_reads_the_split_and_both_colors_before_changing_anything() {
        let mut m = Machine::new(plan(), "d");
        let step = m.handle(Timestamp(0), Input::Start);
        let actions: Vec<&Action> = step.commands.iter().map(|c| &c.action).collect();
        assert_eq!(step.notifications.len(), 1, "the start is announced");
        assert_eq!(step.notifications[0].title, "Deployment Start");
        assert!(step.commands.iter().all(|c| c.id != 0), "no sentinel ids");
        assert_eq!(actions[0], &Action::ReadSplit);
        assert_eq!(
            actions[1],
            &Action::ReadStatus {
                colors: vec![Color::Blue, Color::Green]
            }
        );
        assert!(actions.iter().all(|a| !a.is_mutating()));
        assert_eq!(m.stage(), &Stage::Preflight);
    }

    #[test]
    fn preflight_picks_the_live_color_as_old_and_suspends_autoscaling_next() {
        let mut m = Machine::new(plan(), "d");
        m.handle(Timestamp(0), Input::Start);
        reply(
            &mut m,
            1,
            1,
            Reply::Split {
                split: TrafficSplit::all_on(Color::Blue),
            },
        );
        reply(&mut m, 2, 3, Reply::DrainPeriod { period: None });
        let step = reply(
            &mut m,
            2,
            2,
            Reply::Statuses {
                statuses: vec![
                    ComputeStatus::steady(3, Some("1.0".into())),
                    ComputeStatus::steady(0, None),
                ],
            },
        );
        assert_eq!(m.facts().old, Some(Color::Blue));
        assert_eq!(m.facts().new, Some(Color::Green));
        assert_eq!(m.facts().old_capacity, Some(3));
        assert_eq!(m.stage(), &Stage::SuspendAutoscaling);
        // The autoscaling state of each color is read before anything is suspended.
        let actions: Vec<&Action> = step.commands.iter().map(|c| &c.action).collect();
        assert_eq!(
            actions,
            vec![
                &Action::ReadAutoscaling { color: Color::Blue },
                &Action::ReadAutoscaling {
                    color: Color::Green
                }
            ]
        );
    }

    #[test]
    fn an_unstable_old_color_fails_preflight_with_nothing_to_undo() {
        let mut m = Machine::new(plan(), "d");
        m.handle(Timestamp(0), Input::Start);
        reply(
            &mut m,
            1,
            1,
            Reply::Split {
                split: TrafficSplit::all_on(Color::Green),
            },
        );
        let mut unstable = ComputeStatus::steady(3, None);
        unstable.running = 1;
        reply(&mut m, 2, 3, Reply::DrainPeriod { period: None });
        let step = reply(
            &mut m,
            2,
            2,
            Reply::Statuses {
                statuses: vec![ComputeStatus::steady(0, None), unstable],
            },
        );
        let Some(Outcome::RolledBack { reason }) = m.outcome() else {
            panic!("{:?}", m.outcome())
        };
        assert!(reason.summary.contains("not stable"), "{}", reason.summary);
        assert!(step.commands.iter().all(|c| !c.action.is_mutating()));
    }

    #[test]
    fn a_late_reply_to_an_abandoned_command_is_ignored() {
        let mut m = Machine::new(plan(), "d");
        m.handle(Timestamp(0), Input::Start);
        m.handle(
            Timestamp(1),
            Input::Control {
                control: Control::Abort { reason: "x".into() },
            },
        );
        assert!(m.outcome().is_some());
        let step = reply(
            &mut m,
            2,
            1,
            Reply::Split {
                split: TrafficSplit::all_on(Color::Blue),
            },
        );
        assert_eq!(step, Step::default());
    }

    #[test]
    fn a_wrong_reply_kind_is_nonsense_and_rolls_back() {
        let mut m = Machine::new(plan(), "d");
        m.handle(Timestamp(0), Input::Start);
        reply(&mut m, 1, 1, Reply::Done);
        let Some(Outcome::RolledBack { reason }) = m.outcome() else {
            panic!("{:?}", m.outcome())
        };
        assert!(reason.summary.contains("nonsense"), "{}", reason.summary);
    }

    #[test]
    fn next_wakeup_is_the_earliest_timer_and_none_when_done() {
        let mut m = Machine::new(plan(), "d");
        m.handle(Timestamp(0), Input::Start);
        // The preflight deadline is the only timer.
        assert_eq!(m.next_wakeup(), Some(Timestamp(5 * 60 * 1000)));
        m.handle(Timestamp(1), Input::Tick);
        m.handle(Timestamp(5 * 60 * 1000), Input::Tick);
        assert!(m.outcome().is_some(), "the deadline rolled it back");
        assert_eq!(m.next_wakeup(), None);
    }
}
