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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{measure, BreachRun, Measurement, MeasurementKind, Verdict};
use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::ErrorRecord;
use crate::plan::{
    render_template, Barrier, CapacityPolicy, Gate, HoldTimeoutPolicy, InconclusivePolicy, Plan,
    RequiredSecret, RollbackTrigger, TrafficStep,
};
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeStatus, MetricAnswer, MigrationInfo,
    MigrationPhase, Notification, PreparedRelease, Rollout, SecretMetadata, Severity, SmokeOutcome,
    TargetHealth, VerificationCheck,
};

/// The longest wait between two read-backs of a split that disagrees.
pub const READ_BACK_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A command id, unique within one deployment.
pub type CommandId = u64;

/// What the driver must do; each has an id its reply refers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The id the reply carries. Notifications have id 0 and get no reply.
    pub id: CommandId,
    /// What to do.
    pub action: Action,
}

/// Where smoke tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmokeScope {
    /// The staging environment (preflight).
    Staging,
    /// One color.
    Color(Color),
}

/// The provider calls the machine asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `TrafficRouter::current_split`.
    ReadSplit,
    /// `TrafficRouter::set_split`.
    SetSplit {
        /// The split to set.
        split: TrafficSplit,
    },
    /// `TrafficRouter::target_health`.
    ReadTargetHealth {
        /// The color.
        color: Color,
    },
    /// `TrafficRouter::drain_period`.
    ReadDrainPeriod,
    /// `ComputeProvider::statuses`.
    ReadStatus {
        /// The colors.
        colors: Vec<Color>,
    },
    /// `ComputeProvider::prepare` with the plan's release.
    Prepare {
        /// The color.
        color: Color,
    },
    /// `ComputeProvider::scale`.
    Scale {
        /// The color.
        color: Color,
        /// The count.
        count: u32,
    },
    /// `ComputeProvider::autoscaling_state`, read and journaled before the
    /// suspension.
    ReadAutoscaling {
        /// The color.
        color: Color,
    },
    /// `ComputeProvider::suspend_autoscaling`.
    SuspendAutoscaling {
        /// The color.
        color: Color,
    },
    /// `ComputeProvider::restore_autoscaling`.
    RestoreAutoscaling {
        /// The color.
        color: Color,
        /// The state to put back.
        previous: AutoscalingState,
    },
    /// `SecretSource::metadata` for each secret.
    CheckSecrets {
        /// The secrets.
        secrets: Vec<RequiredSecret>,
    },
    /// Runs smoke tests by name.
    RunSmokeTests {
        /// Where.
        scope: SmokeScope,
        /// Which, in order.
        tests: Vec<String>,
        /// The version the target should run: the release for staging and
        /// the new color, the version the old color reported at preflight for
        /// the old color (empty when its provider did not say).
        version: String,
    },
    /// `MigrationRunner::backup`.
    Backup,
    /// `MigrationRunner::verify_backup`.
    VerifyBackup {
        /// The backup.
        backup: BackupRecord,
        /// The plan's threshold.
        min_entries: u64,
    },
    /// `MigrationRunner::apply`.
    Migrate {
        /// The phase.
        phase: MigrationPhase,
    },
    /// `MigrationRunner::verify`.
    VerifyMigrations {
        /// The phase.
        phase: MigrationPhase,
    },
    /// `MigrationRunner::revert`.
    RevertMigrations {
        /// Versions, newest first.
        versions: Vec<u64>,
    },
    /// `MetricsSource::query`.
    Measure {
        /// The check.
        check: String,
        /// The rendered query.
        query: String,
        /// The window's start.
        from: Timestamp,
        /// The window's end.
        to: Timestamp,
        /// Periodic or final.
        kind: MeasurementKind,
    },
    /// `EventSink::notify`; fire and forget, never blocks the deployment.
    Notify {
        /// The notification.
        notification: Notification,
    },
}

impl Action {
    /// The provider and operation, e.g. `("router", "set_split")`.
    pub fn operation(&self) -> (&'static str, &'static str) {
        match self {
            Action::ReadSplit => ("router", "current_split"),
            Action::SetSplit { .. } => ("router", "set_split"),
            Action::ReadTargetHealth { .. } => ("router", "target_health"),
            Action::ReadDrainPeriod => ("router", "drain_period"),
            Action::ReadStatus { .. } => ("compute", "status"),
            Action::Prepare { .. } => ("compute", "prepare"),
            Action::Scale { .. } => ("compute", "scale"),
            Action::ReadAutoscaling { .. } => ("compute", "autoscaling_state"),
            Action::SuspendAutoscaling { .. } => ("compute", "suspend_autoscaling"),
            Action::RestoreAutoscaling { .. } => ("compute", "restore_autoscaling"),
            Action::CheckSecrets { .. } => ("secrets", "metadata"),
            Action::RunSmokeTests { .. } => ("smoke", "run"),
            Action::Backup => ("migrations", "backup"),
            Action::VerifyBackup { .. } => ("migrations", "verify_backup"),
            Action::Migrate { .. } => ("migrations", "apply"),
            Action::VerifyMigrations { .. } => ("migrations", "verify"),
            Action::RevertMigrations { .. } => ("migrations", "revert"),
            Action::Measure { .. } => ("metrics", "query"),
            Action::Notify { .. } => ("events", "notify"),
        }
    }

    /// Whether the action changes the world (and so must be journaled before it runs).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Action::SetSplit { .. }
                | Action::Prepare { .. }
                | Action::Scale { .. }
                | Action::SuspendAutoscaling { .. }
                | Action::RestoreAutoscaling { .. }
                | Action::Backup
                | Action::Migrate { .. }
                | Action::RevertMigrations { .. }
        )
    }
}

/// A secret's metadata, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretCheck {
    /// The secret.
    pub name: String,
    /// Its metadata, when found.
    pub metadata: Option<SecretMetadata>,
    /// The error, when not.
    pub error: Option<ErrorRecord>,
}

/// One smoke test's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeResult {
    /// The test.
    pub name: String,
    /// Its outcome, when it ran.
    pub outcome: Option<SmokeOutcome>,
    /// Why it could not run.
    pub error: Option<ErrorRecord>,
}

impl SmokeResult {
    /// Ran and passed.
    pub fn passed(&self) -> bool {
        self.outcome.as_ref().is_some_and(|o| o.passed)
    }
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done, nothing to report.
    Done,
    /// The split read back.
    Split {
        /// The split.
        split: TrafficSplit,
    },
    /// Statuses, in the order asked.
    Statuses {
        /// The statuses.
        statuses: Vec<ComputeStatus>,
    },
    /// The autoscaling state found before suspending.
    Autoscaling {
        /// The state.
        state: AutoscalingState,
    },
    /// Secret metadata.
    Secrets {
        /// One per secret.
        checks: Vec<SecretCheck>,
    },
    /// Smoke test results.
    Smoke {
        /// One per test.
        results: Vec<SmokeResult>,
    },
    /// A backup.
    Backup {
        /// The backup.
        backup: BackupRecord,
    },
    /// A backup verification.
    BackupVerified {
        /// The verification.
        verification: BackupVerification,
    },
    /// Migrations applied by the call.
    Migrated {
        /// The migrations.
        applied: Vec<MigrationInfo>,
    },
    /// Verification checks.
    Verified {
        /// The checks.
        checks: Vec<VerificationCheck>,
    },
    /// Migrations reverted.
    Reverted {
        /// The migrations.
        reverted: Vec<MigrationInfo>,
    },
    /// A metric answer.
    Metric {
        /// The answer.
        answer: MetricAnswer,
    },
    /// Target health.
    Health {
        /// The health.
        health: TargetHealth,
    },
    /// What `prepare` made ready.
    Prepared {
        /// The provider's identity of the release.
        prepared: PreparedRelease,
    },
    /// The router's drain figure.
    DrainPeriod {
        /// The period, when the router has one.
        #[serde(default, with = "humantime_serde")]
        period: Option<Duration>,
    },
}

/// A human's instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub enum Control {
    /// Hold at the next phase boundary (rollbacks are never paused).
    Pause,
    /// Continue after a pause.
    Resume,
    /// Skip the current wait or pass the current gate.
    Promote,
    /// Roll back.
    Abort {
        /// Why.
        reason: String,
    },
    /// Pass a group [`Barrier`]: sent by the group coordinator once every
    /// member has reached it. Refused unless the deployment waits there.
    Proceed {
        /// The barrier.
        barrier: Barrier,
    },
}

/// One input to the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// Begin the deployment.
    Start,
    /// Time passed; the machine checks its timers.
    Tick,
    /// A command succeeded.
    Reply {
        /// The command.
        id: CommandId,
        /// Its answer.
        reply: Reply,
    },
    /// A command failed after the driver's retries.
    Failed {
        /// The command.
        id: CommandId,
        /// The error.
        error: ErrorRecord,
    },
    /// A human's instruction.
    Control {
        /// The instruction.
        control: Control,
    },
}

/// Why the deployment is holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hold", rename_all = "snake_case")]
pub enum HoldReason {
    /// A manual gate from the plan.
    Gate {
        /// The gate.
        gate: Gate,
    },
    /// The analysis was inconclusive and the policy is to pause.
    Inconclusive {
        /// What was missing.
        detail: String,
    },
    /// A human paused it.
    Paused,
    /// A member of a coordinated group, waiting until every member has
    /// reached `barrier`.
    Group {
        /// The barrier.
        barrier: Barrier,
    },
}

/// Where the success of the new color is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalPoint {
    /// At the end of a traffic step's wait.
    Step {
        /// The step index.
        step: usize,
    },
    /// At the end of the analysis window.
    Analysis,
    /// At the end of the soak.
    Soak,
}

/// Where the deployment is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Not started.
    Pending,
    /// Reading the current state, staging health and secrets.
    Preflight,
    /// Suspending autoscaling on both colors.
    SuspendAutoscaling,
    /// Reading the old color's desired count now that autoscaling is
    /// suspended, and choosing the new color's capacity from it.
    ReadCapacity,
    /// Taking a backup.
    Backup,
    /// Verifying the backup.
    VerifyBackup,
    /// Applying migrations of a phase.
    Migrate {
        /// The phase.
        phase: MigrationPhase,
    },
    /// Verifying migrations of a phase.
    VerifyMigrations {
        /// The phase.
        phase: MigrationPhase,
    },
    /// Preparing the release on the new color.
    Prepare,
    /// Scaling the new color up.
    ScaleUp,
    /// Waiting for the new color to be stable.
    WaitStable,
    /// Smoke tests on the new color.
    SmokeTests,
    /// Setting a traffic step and reading it back.
    Shift {
        /// The step index.
        step: usize,
        /// The new color's percent.
        percent: u8,
        /// Whether the set is done and a read-back is pending.
        confirming: bool,
    },
    /// Watching a traffic step.
    Watch {
        /// The step index.
        step: usize,
        /// When the wait ends.
        until: Timestamp,
    },
    /// Evaluating success.
    Evaluate {
        /// Where.
        point: EvalPoint,
        /// The window's start.
        from: Timestamp,
    },
    /// The analysis window with all traffic on the new color.
    Analysis {
        /// When it ends.
        until: Timestamp,
    },
    /// The soak.
    Soak {
        /// When it ends.
        until: Timestamp,
    },
    /// The scale-down delay.
    ScaleDownDelay {
        /// When it ends.
        until: Timestamp,
    },
    /// Reading back that the old color holds no traffic, and that the new
    /// color still runs the prepared release at its capacity.
    ConfirmDrained,
    /// Letting a color that a read-back showed at 0% drain (load balancer
    /// propagation, requests in flight) before it is scaled down or
    /// migrations are reverted.
    Drain {
        /// When the drain period ends.
        until: Timestamp,
    },
    /// Scaling the old color to zero and waiting until it is.
    ScaleDownOld {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Restoring autoscaling at the end.
    RestoreAutoscaling,
    /// Waiting for a human.
    Hold {
        /// Why.
        reason: HoldReason,
        /// Where to go on promote/resume.
        then: Box<Stage>,
    },
    /// Rollback: reading the old color's status and target health before
    /// any traffic returns to it.
    CheckOld,
    /// Rollback: the old color was found below its capacity; scaling it back
    /// and waiting until it is stable there, before traffic returns.
    RestoreOld {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Rollback: traffic back to the old color.
    RestoreTraffic {
        /// Whether the set is done and a read-back is pending.
        confirming: bool,
    },
    /// Rollback: smoke tests on the old color.
    VerifyOld,
    /// Rollback: reverting reversible migrations.
    RevertMigrations,
    /// Rollback: scaling the new color down.
    ScaleDownNew {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Rollback: restoring autoscaling.
    RollbackRestoreAutoscaling,
    /// Halting: restoring autoscaling on the color(s) holding traffic, so
    /// that the service can still scale while it waits for a human.
    HaltRestoreAutoscaling,
    /// Finished.
    Done,
}

impl Stage {
    /// A short name, e.g. `wait_stable`.
    pub fn name(&self) -> String {
        match self {
            Stage::Pending => "pending".into(),
            Stage::Preflight => "preflight".into(),
            Stage::SuspendAutoscaling => "suspend_autoscaling".into(),
            Stage::ReadCapacity => "read_capacity".into(),
            Stage::Backup => "backup".into(),
            Stage::VerifyBackup => "verify_backup".into(),
            Stage::Migrate { phase } => format!("migrate_{phase}"),
            Stage::VerifyMigrations { phase } => format!("verify_{phase}"),
            Stage::Prepare => "prepare".into(),
            Stage::ScaleUp => "scale_up".into(),
            Stage::WaitStable => "wait_stable".into(),
            Stage::SmokeTests => "smoke_tests".into(),
            Stage::Shift {
                percent,
                confirming: false,
                ..
            } => format!("shift_{percent}"),
            Stage::Shift { percent, .. } => format!("confirm_shift_{percent}"),
            Stage::Watch { step, .. } => format!("watch_step_{step}"),
            Stage::Evaluate { point, .. } => match point {
                EvalPoint::Step { step } => format!("evaluate_step_{step}"),
                EvalPoint::Analysis => "evaluate_analysis".into(),
                EvalPoint::Soak => "evaluate_soak".into(),
            },
            Stage::Analysis { .. } => "analysis".into(),
            Stage::Soak { .. } => "soak".into(),
            Stage::ScaleDownDelay { .. } => "scale_down_delay".into(),
            Stage::ConfirmDrained => "confirm_drained".into(),
            Stage::Drain { .. } => "drain".into(),
            Stage::CheckOld => "rollback_check_old".into(),
            Stage::RestoreOld { .. } => "rollback_restore_old".into(),
            Stage::HaltRestoreAutoscaling => "halt_restore_autoscaling".into(),
            Stage::ScaleDownOld { .. } => "scale_down_old".into(),
            Stage::RestoreAutoscaling => "restore_autoscaling".into(),
            Stage::Hold { .. } => "hold".into(),
            Stage::RestoreTraffic { .. } => "rollback_restore_traffic".into(),
            Stage::VerifyOld => "rollback_verify_old".into(),
            Stage::RevertMigrations => "rollback_revert_migrations".into(),
            Stage::ScaleDownNew { .. } => "rollback_scale_down_new".into(),
            Stage::RollbackRestoreAutoscaling => "rollback_restore_autoscaling".into(),
            Stage::Done => "done".into(),
        }
    }

    fn deadline_group(&self) -> Option<&'static str> {
        Some(match self {
            Stage::Preflight | Stage::SuspendAutoscaling | Stage::ReadCapacity => "preflight",
            Stage::Backup | Stage::VerifyBackup => "backup",
            Stage::Migrate { .. } | Stage::VerifyMigrations { .. } => "migrate",
            Stage::Prepare | Stage::ScaleUp | Stage::WaitStable => "deploy",
            Stage::SmokeTests => "smoke",
            Stage::Shift { .. } | Stage::ConfirmDrained => "traffic",
            Stage::ScaleDownOld { .. } | Stage::RestoreAutoscaling => "scale_down",
            Stage::CheckOld | Stage::RestoreOld { .. } => "restore_old",
            _ => return None,
        })
    }

    /// Whether traffic may still go back to the old color from here.
    fn old_color_serving(&self) -> bool {
        !matches!(
            self,
            Stage::ScaleDownOld { .. }
                | Stage::Migrate {
                    phase: MigrationPhase::Contract
                }
                | Stage::VerifyMigrations {
                    phase: MigrationPhase::Contract
                }
                | Stage::RestoreAutoscaling
                | Stage::Done
        )
    }
}

/// Why a deployment rolled back or halted, with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// One line, e.g. `error-rate > 0.05 for 5m: 0.0712 over 5m`.
    pub summary: String,
    /// The measurements the decision used.
    pub evidence: Vec<Measurement>,
}

impl Reason {
    fn new(summary: impl Into<String>) -> Self {
        Reason {
            summary: summary.into(),
            evidence: Vec::new(),
        }
    }
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// All traffic on the new release, the old color at zero.
    Succeeded,
    /// Traffic back on the old release, the new color at zero.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// Stopped for a human, with the state recorded in [`Facts`].
    Halted {
        /// Why.
        reason: Reason,
    },
}

impl Outcome {
    /// `"succeeded"`, `"rolled_back"` or `"halted"`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack { .. } => "rolled_back",
            Outcome::Halted { .. } => "halted",
        }
    }
}

/// What the machine knows to be true of the world: the consistent recorded
/// state a halted deployment hands to a human.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The color that had all traffic at the start.
    pub old: Option<Color>,
    /// The color being deployed.
    pub new: Option<Color>,
    /// The old color's desired count at the start: its serving capacity.
    pub old_capacity: Option<u32>,
    /// The version the old color ran at the start, when its provider said.
    pub old_version: Option<String>,
    /// The split last confirmed by read-back.
    pub confirmed_split: Option<TrafficSplit>,
    /// Whether any split was requested by this deployment.
    pub traffic_touched: bool,
    /// The count last requested for the new color.
    pub new_count: Option<u32>,
    /// The count last requested for the old color.
    pub old_count: Option<u32>,
    /// Autoscaling states found before suspending, per color.
    pub autoscaling: BTreeMap<Color, AutoscalingState>,
    /// Whether autoscaling has been restored.
    pub autoscaling_restored: bool,
    /// The backup, once taken.
    pub backup: Option<BackupRecord>,
    /// The backup verification.
    pub backup_verification: Option<BackupVerification>,
    /// Migrations applied by this deployment, in order.
    pub applied: Vec<MigrationInfo>,
    /// Migrations reverted by this deployment.
    pub reverted: Vec<MigrationInfo>,
    /// Whether the new color passed its smoke tests.
    pub smoke_passed: bool,
    /// The new color's serving capacity, chosen once autoscaling was
    /// suspended (see [`CapacityPolicy`]).
    #[serde(default)]
    pub capacity: Option<u32>,
    /// The provider's identity of the prepared release (ECS: the task
    /// definition ARN), which the new color must report before traffic.
    #[serde(default)]
    pub prepared_id: Option<String>,
    /// The router's own drain figure (ALB: deregistration delay).
    #[serde(default, with = "humantime_serde")]
    pub router_drain: Option<Duration>,
    /// The colors whose autoscaling was put back as found; a color in
    /// [`autoscaling`](Self::autoscaling) and not here was left suspended.
    #[serde(default)]
    pub autoscaling_restored_on: BTreeSet<Color>,
}

impl Facts {
    fn irreversible_applied(&self) -> Vec<&MigrationInfo> {
        self.applied.iter().filter(|m| !m.reversible).collect()
    }
}

/// What the machine tells the world; the driver journals and publishes these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Entered a stage.
    Stage {
        /// The stage.
        stage: Stage,
    },
    /// The colors were determined.
    Colors {
        /// Serving now.
        old: Color,
        /// Being deployed.
        new: Color,
    },
    /// The new color's capacity was chosen.
    Capacity {
        /// The plan's `replicas`.
        replicas: u32,
        /// The old color's desired count, read once autoscaling was suspended.
        old_desired: u32,
        /// The count the new color gets.
        count: u32,
        /// The rule that chose it.
        policy: CapacityPolicy,
    },
    /// A color was found running the release it should.
    ReleaseVerified {
        /// The color.
        color: Color,
        /// The version it reports.
        version: String,
        /// The provider's identity of the release, where it has one.
        id: Option<String>,
    },
    /// In a rollback, the old color's state before traffic returns to it.
    OldColorChecked {
        /// Its status.
        status: ComputeStatus,
        /// Its targets' health as the router sees it.
        health: TargetHealth,
        /// Its recorded serving capacity.
        capacity: u32,
        /// Whether it can take the traffic as it is.
        serving: bool,
    },
    /// A split was confirmed by read-back.
    TrafficConfirmed {
        /// The split.
        split: TrafficSplit,
    },
    /// A measurement was taken.
    Measured {
        /// The measurement (boxed: events are queued per subscriber).
        measurement: Box<Measurement>,
    },
    /// Target health was read.
    TargetHealth {
        /// The color.
        color: Color,
        /// The reading.
        health: TargetHealth,
    },
    /// Smoke tests ran.
    SmokeTests {
        /// Where.
        scope: SmokeScope,
        /// The results.
        results: Vec<SmokeResult>,
    },
    /// A dry-run check would have acted.
    DryRun {
        /// What it would have done.
        detail: String,
    },
    /// A step's note (a skipped phase, a retried read-back).
    Note {
        /// The note.
        text: String,
    },
    /// A human's instruction took effect or was refused.
    Control {
        /// The instruction.
        control: Control,
        /// What it did.
        effect: String,
    },
    /// The rollback started.
    RollbackStarted {
        /// Why.
        reason: Reason,
    },
    /// The deployment finished.
    Finished {
        /// How.
        outcome: Outcome,
        /// The recorded state (boxed: events are queued per subscriber).
        facts: Box<Facts>,
    },
}

/// What one input produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Commands to execute.
    pub commands: Vec<Command>,
    /// Events to journal and publish.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Stage,
    Monitor(Monitor),
}

#[derive(Debug, Clone, PartialEq)]
enum Monitor {
    Check(usize),
    Health,
}

/// The deployment state machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Machine {
    plan: Arc<Plan>,
    deployment_id: String,
    steps: Vec<TrafficStep>,
    stage: Stage,
    now: Timestamp,
    started_at: Option<Timestamp>,
    next_id: CommandId,
    pending: BTreeMap<CommandId, (Pending, Action)>,
    facts: Facts,
    deadline: Option<(Timestamp, &'static str, Duration)>,
    next_poll: Option<Timestamp>,
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
    /// The rollback window's end, once a rollback started.
    rollback_deadline: Option<Timestamp>,
    /// A hold's timeout and next reminder.
    hold_until: Option<Timestamp>,
    next_reminder: Option<Timestamp>,
    held_since: Option<Timestamp>,
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
    /// Why the deployment halts, while it restores autoscaling first.
    halt_reason: Option<Reason>,
    /// The halt needs a human now (critical notification).
    critical: bool,
    outcome: Option<Outcome>,
    step: Step,
}

impl Machine {
    /// A machine for `plan`, which must be valid ([`Plan::validate`]).
    pub fn new(plan: Arc<Plan>, deployment_id: impl Into<String>) -> Machine {
        let steps = plan.strategy.steps();
        let checks = plan.analysis.len();
        let triggers = plan.rollback_triggers.len();
        Machine {
            plan,
            deployment_id: deployment_id.into(),
            steps,
            stage: Stage::Pending,
            now: Timestamp(0),
            started_at: None,
            next_id: 1,
            pending: BTreeMap::new(),
            facts: Facts::default(),
            deadline: None,
            next_poll: None,
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
            rollback_deadline: None,
            hold_until: None,
            next_reminder: None,
            held_since: None,
            traffic_left_at: None,
            requested_split: None,
            read_back_attempts: 0,
            old_status: None,
            old_health: None,
            halt_reason: None,
            critical: false,
            outcome: None,
            step: Step::default(),
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
        consider(self.deadline.map(|d| d.0));
        consider(self.rollback_deadline);
        consider(self.hold_until);
        consider(self.next_reminder);
        if !self.stage_pending() {
            consider(self.next_poll);
        }
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
    /// what to do.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Step {
        self.now = self.now.max(now);
        if self.outcome.is_some() {
            return Step::default();
        }
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
            Input::Reply { id, reply } => self.on_reply(id, reply),
            Input::Failed { id, error } => self.on_failed(id, error),
            Input::Control { control } => self.on_control(control),
        }
        std::mem::take(&mut self.step)
    }

    // ------------------------------------------------------------ plumbing --

    fn issue(&mut self, action: Action) -> CommandId {
        self.issue_as(Pending::Stage, action)
    }

    fn issue_as(&mut self, kind: Pending, action: Action) -> CommandId {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, (kind, action.clone()));
        self.step.commands.push(Command { id, action });
        id
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

    fn note(&mut self, text: impl Into<String>) {
        self.event(Event::Note { text: text.into() });
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
        };
        self.step.commands.push(Command {
            id: 0,
            action: Action::Notify { notification },
        });
    }

    fn old(&self) -> Color {
        self.facts.old.unwrap_or(Color::Green)
    }

    fn new_color(&self) -> Color {
        self.old().other()
    }

    /// Drops the current stage's outstanding commands (their late replies are ignored).
    fn abandon_stage(&mut self) {
        self.pending.retain(|_, (k, _)| *k != Pending::Stage);
    }

    fn gate_before(&self, stage: &Stage) -> Option<Gate> {
        let candidates: &[Gate] = match stage {
            Stage::Shift {
                step: 0,
                percent: 100,
                confirming: false,
            } => &[Gate::BeforeShift, Gate::BeforeFullTraffic],
            Stage::Shift {
                step: 0,
                confirming: false,
                ..
            } => &[Gate::BeforeShift],
            Stage::Shift {
                percent: 100,
                confirming: false,
                ..
            } => &[Gate::BeforeFullTraffic],
            Stage::ConfirmDrained => &[Gate::BeforeScaleDown],
            Stage::Migrate {
                phase: MigrationPhase::Contract,
            } => &[Gate::BeforeContract],
            _ => &[],
        };
        candidates
            .iter()
            .copied()
            .find(|g| self.plan.gates.contains(g) && !self.gates_passed.contains(g))
    }

    fn barrier_before(&self, stage: &Stage) -> Option<Barrier> {
        self.plan.group.as_ref()?;
        let barrier = match stage {
            Stage::Shift {
                step,
                confirming: false,
                ..
            } => Barrier::Shift { step: *step },
            Stage::ConfirmDrained => Barrier::ScaleDown,
            _ => return None,
        };
        (!self.barriers_passed.contains(&barrier)).then_some(barrier)
    }

    /// Moves to `stage`, honouring gates, group barriers and pause, and
    /// issues its commands.
    fn enter(&mut self, stage: Stage) {
        if !self.rolling_back() && self.halt_reason.is_none() {
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
        let group = stage.deadline_group();
        match group {
            Some(g) if self.deadline.is_some_and(|d| d.1 == g) => {}
            Some(g) => {
                let d = self.group_deadline(g);
                self.deadline = Some((self.now.after(d), g, d));
            }
            None => self.deadline = None,
        }
        self.next_poll = None;
        self.hold_until = None;
        self.next_reminder = None;
        self.held_since = None;
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

    fn group_deadline(&self, g: &str) -> Duration {
        let d = &self.plan.deadlines;
        match g {
            "preflight" => d.preflight,
            "backup" => d.backup,
            "migrate" => d.migrate,
            "deploy" => d.deploy,
            "smoke" => d.smoke,
            "traffic" => d.traffic,
            "restore_old" => d.restore_old,
            _ => d.scale_down,
        }
    }

    fn hold(&mut self, reason: HoldReason, then: Stage) {
        self.deadline = None;
        self.next_poll = None;
        let t = &self.plan.timing;
        self.held_since = Some(self.now);
        self.hold_until = Some(self.now.after(t.hold_timeout));
        self.next_reminder = Some(self.now.after(t.hold_reminder));
        let stage = Stage::Hold {
            reason,
            then: Box::new(then),
        };
        self.stage = stage.clone();
        self.event(Event::Stage { stage });
    }

    /// Issues the commands of a stage just entered.
    fn begin(&mut self, stage: Stage) {
        let new = self.new_color();
        let old = self.old();
        match stage {
            Stage::Pending | Stage::Hold { .. } => {}
            Stage::Preflight => {
                self.issue(Action::ReadSplit);
                self.issue(Action::ReadStatus {
                    colors: Color::ALL.to_vec(),
                });
                self.issue(Action::ReadDrainPeriod);
                if !self.plan.preflight.required_secrets.is_empty() {
                    self.issue(Action::CheckSecrets {
                        secrets: self.plan.preflight.required_secrets.clone(),
                    });
                }
                if !self.plan.preflight.staging_checks.is_empty() {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Staging,
                        tests: self.plan.preflight.staging_checks.clone(),
                        version: self.plan.release.version.clone(),
                    });
                }
            }
            Stage::SuspendAutoscaling => {
                // Read first, journaled, then suspend: the state to restore
                // never comes from a call that changes it.
                for c in Color::ALL {
                    self.issue(Action::ReadAutoscaling { color: c });
                }
            }
            Stage::ReadCapacity => {
                self.issue(Action::ReadStatus { colors: vec![old] });
            }
            Stage::Backup => {
                self.issue(Action::Backup);
            }
            Stage::VerifyBackup => {
                let backup = self.facts.backup.clone().expect("backup taken");
                let min_entries = self
                    .plan
                    .migrations
                    .as_ref()
                    .map_or(1, |m| m.backup_min_entries);
                self.issue(Action::VerifyBackup {
                    backup,
                    min_entries,
                });
            }
            Stage::Migrate { phase } => {
                self.issue(Action::Migrate { phase });
            }
            Stage::VerifyMigrations { phase } => {
                self.issue(Action::VerifyMigrations { phase });
            }
            Stage::Prepare => {
                self.issue(Action::Prepare { color: new });
            }
            Stage::ScaleUp => {
                let count = self.capacity();
                self.facts.new_count = Some(count);
                self.issue(Action::Scale { color: new, count });
            }
            Stage::WaitStable => {
                self.issue(Action::ReadStatus { colors: vec![new] });
            }
            Stage::SmokeTests => {
                if self.plan.smoke_tests.is_empty() {
                    self.note("no smoke tests in the plan");
                    self.facts.smoke_passed = true;
                    self.advance();
                } else {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Color(new),
                        tests: self.plan.smoke_tests.clone(),
                        version: self.plan.release.version.clone(),
                    });
                }
            }
            Stage::Shift {
                percent,
                confirming,
                ..
            } => {
                if confirming {
                    self.issue(Action::ReadSplit);
                } else {
                    self.facts.traffic_touched = true;
                    let split = TrafficSplit::with_percent(new, percent);
                    self.requested_split = Some(split);
                    self.issue(Action::SetSplit { split });
                }
            }
            Stage::Watch { .. }
            | Stage::Analysis { .. }
            | Stage::Soak { .. }
            | Stage::ScaleDownDelay { .. }
            | Stage::Drain { .. } => {}
            Stage::Evaluate { from, .. } => {
                self.final_results.clear();
                // The window is the phase's own: data no earlier evaluation
                // used. A wait cut short by a human still covers at least
                // `timing.min_evidence` (see `on_control`).
                let to = self.now;
                for i in 0..self.plan.analysis.len() {
                    let query = self.render_query(i);
                    self.issue(Action::Measure {
                        check: self.plan.analysis[i].name.clone(),
                        query,
                        from,
                        to,
                        kind: MeasurementKind::Final,
                    });
                }
            }
            Stage::ConfirmDrained => {
                self.issue(Action::ReadSplit);
                self.issue(Action::ReadStatus { colors: vec![new] });
            }
            Stage::CheckOld | Stage::RestoreOld { polling: true } => {
                self.old_status = None;
                self.old_health = None;
                self.issue(Action::ReadStatus { colors: vec![old] });
                self.issue(Action::ReadTargetHealth { color: old });
            }
            Stage::RestoreOld { polling: false } => {
                // Up to its capacity, never down from a larger count that
                // something else set while it holds traffic.
                let count = self
                    .facts
                    .old_capacity
                    .unwrap_or(self.plan.replicas)
                    .max(self.old_status.as_ref().map_or(0, |s| s.desired));
                self.facts.old_count = Some(count);
                self.issue(Action::Scale { color: old, count });
            }
            Stage::HaltRestoreAutoscaling => {
                let serving = self.colors_holding_traffic();
                let todo: Vec<(Color, AutoscalingState)> = self
                    .facts
                    .autoscaling
                    .iter()
                    .filter(|(c, _)| {
                        serving.contains(c) && !self.facts.autoscaling_restored_on.contains(c)
                    })
                    .map(|(c, s)| (*c, *s))
                    .collect();
                if todo.is_empty() {
                    self.advance();
                } else {
                    for (color, previous) in todo {
                        self.issue(Action::RestoreAutoscaling { color, previous });
                    }
                }
            }
            Stage::ScaleDownOld { polling } => {
                if polling {
                    self.issue(Action::ReadStatus { colors: vec![old] });
                } else {
                    self.monitoring_since = None;
                    self.facts.old_count = Some(0);
                    self.issue(Action::Scale {
                        color: old,
                        count: 0,
                    });
                }
            }
            Stage::RestoreAutoscaling | Stage::RollbackRestoreAutoscaling => {
                let states: Vec<(Color, AutoscalingState)> = self
                    .facts
                    .autoscaling
                    .iter()
                    .map(|(c, s)| (*c, *s))
                    .collect();
                if states.is_empty() || self.facts.autoscaling_restored {
                    self.advance();
                } else {
                    for (color, previous) in states {
                        self.issue(Action::RestoreAutoscaling { color, previous });
                    }
                }
            }
            Stage::RestoreTraffic { confirming } => {
                if confirming {
                    self.issue(Action::ReadSplit);
                } else {
                    let split = TrafficSplit::all_on(old);
                    self.requested_split = Some(split);
                    self.issue(Action::SetSplit { split });
                }
            }
            Stage::VerifyOld => {
                if self.plan.smoke_tests.is_empty() {
                    self.advance();
                } else {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Color(old),
                        tests: self.plan.smoke_tests.clone(),
                        version: self.facts.old_version.clone().unwrap_or_default(),
                    });
                }
            }
            Stage::RevertMigrations => {
                let irreversible = self.facts.irreversible_applied();
                if !irreversible.is_empty() {
                    let names: Vec<String> = irreversible
                        .iter()
                        .map(|m| format!("{} {} ({})", m.version, m.name, m.phase))
                        .collect();
                    let mut r = Reason::new(format!(
                        "irreversible migration(s) applied: {}; the schema cannot be returned to its state before the deployment, so the rollback stops here with traffic on the old color",
                        names.join(", ")
                    ));
                    if let Some(rb) = &self.rollback_reason {
                        r.summary = format!("{}; rollback was for: {}", r.summary, rb.summary);
                    }
                    self.halt(r);
                    return;
                }
                let reverted: BTreeSet<u64> =
                    self.facts.reverted.iter().map(|m| m.version).collect();
                let mut versions: Vec<u64> = self
                    .facts
                    .applied
                    .iter()
                    .map(|m| m.version)
                    .filter(|v| !reverted.contains(v))
                    .collect();
                versions.sort_unstable_by(|a, b| b.cmp(a));
                if versions.is_empty() {
                    self.advance();
                } else {
                    self.issue(Action::RevertMigrations { versions });
                }
            }
            Stage::ScaleDownNew { polling } => {
                if polling {
                    self.issue(Action::ReadStatus { colors: vec![new] });
                } else if self.facts.new_count.is_none() {
                    // The new color was never scaled: nothing to scale down.
                    self.enter(Stage::RollbackRestoreAutoscaling);
                } else {
                    self.facts.new_count = Some(0);
                    self.issue(Action::Scale {
                        color: new,
                        count: 0,
                    });
                }
            }
            Stage::Done => {}
        }
    }

    fn render_query(&self, check: usize) -> String {
        let c = &self.plan.analysis[check];
        let color = self.new_color();
        let p = &self.plan;
        render_template(&c.query, |name| match name {
            "service" => Some(p.service.as_str()),
            "color" => Some(color.as_str()),
            "version" => Some(p.release.version.as_str()),
            _ => None,
        })
        .unwrap_or_else(|_| c.query.clone())
    }

    /// The stage after the current one on the forward or rollback path.
    fn next_stage(&self) -> Stage {
        let migrations = self.plan.migrations.as_ref();
        let now = self.now;
        match &self.stage {
            Stage::Pending => Stage::Preflight,
            Stage::Preflight => Stage::SuspendAutoscaling,
            Stage::SuspendAutoscaling => Stage::ReadCapacity,
            Stage::ReadCapacity => match migrations {
                Some(m) if m.backup => Stage::Backup,
                Some(_) => Stage::Migrate {
                    phase: MigrationPhase::Expand,
                },
                None => Stage::Prepare,
            },
            Stage::Backup => Stage::VerifyBackup,
            Stage::VerifyBackup => Stage::Migrate {
                phase: MigrationPhase::Expand,
            },
            Stage::Migrate { phase } => Stage::VerifyMigrations { phase: *phase },
            Stage::VerifyMigrations {
                phase: MigrationPhase::Expand,
            } => Stage::Prepare,
            Stage::VerifyMigrations {
                phase: MigrationPhase::Contract,
            } => Stage::RestoreAutoscaling,
            Stage::Prepare => Stage::ScaleUp,
            Stage::ScaleUp => Stage::WaitStable,
            Stage::WaitStable => Stage::SmokeTests,
            Stage::SmokeTests => self.shift(0),
            Stage::Shift {
                step,
                confirming: false,
                percent,
            } => Stage::Shift {
                step: *step,
                percent: *percent,
                confirming: true,
            },
            Stage::Shift {
                step,
                confirming: true,
                ..
            } => {
                let s = self.steps[*step];
                if s.percent >= 100 {
                    Stage::Analysis {
                        until: now.after(self.plan.timing.analysis_window),
                    }
                } else {
                    Stage::Watch {
                        step: *step,
                        until: now.after(s.wait),
                    }
                }
            }
            Stage::Watch { step, .. } => Stage::Evaluate {
                point: EvalPoint::Step { step: *step },
                from: self.window_start,
            },
            Stage::Analysis { .. } => Stage::Evaluate {
                point: EvalPoint::Analysis,
                from: self.window_start,
            },
            Stage::Evaluate { point, .. } => match point {
                EvalPoint::Step { step } => self.shift(step + 1),
                EvalPoint::Analysis => {
                    if self.plan.timing.soak.is_zero() {
                        self.after_soak()
                    } else {
                        Stage::Soak {
                            until: now.after(self.plan.timing.soak),
                        }
                    }
                }
                EvalPoint::Soak => self.after_soak(),
            },
            Stage::Soak { .. } => Stage::Evaluate {
                point: EvalPoint::Soak,
                from: self.window_start,
            },
            Stage::ScaleDownDelay { .. } => Stage::ConfirmDrained,
            Stage::ConfirmDrained => self.drain(),
            Stage::Drain { .. } if self.rolling_back() => Stage::RevertMigrations,
            Stage::Drain { .. } => Stage::ScaleDownOld { polling: false },
            Stage::ScaleDownOld { polling: false } => Stage::ScaleDownOld { polling: true },
            Stage::ScaleDownOld { polling: true } => match migrations {
                Some(_) => Stage::Migrate {
                    phase: MigrationPhase::Contract,
                },
                None => Stage::RestoreAutoscaling,
            },
            Stage::RestoreAutoscaling => Stage::Done,
            Stage::Hold { then, .. } => (**then).clone(),
            Stage::RestoreTraffic { confirming: false } => {
                Stage::RestoreTraffic { confirming: true }
            }
            Stage::CheckOld => Stage::RestoreTraffic { confirming: false },
            Stage::RestoreOld { polling: false } => Stage::RestoreOld { polling: true },
            Stage::RestoreOld { polling: true } => Stage::RestoreTraffic { confirming: false },
            Stage::RestoreTraffic { confirming: true } => Stage::VerifyOld,
            Stage::VerifyOld => self.drain(),
            Stage::RevertMigrations => Stage::ScaleDownNew { polling: false },
            Stage::ScaleDownNew { polling: false } => Stage::ScaleDownNew { polling: true },
            Stage::ScaleDownNew { polling: true } => Stage::RollbackRestoreAutoscaling,
            Stage::RollbackRestoreAutoscaling => Stage::Done,
            Stage::HaltRestoreAutoscaling => Stage::Done,
            Stage::Done => Stage::Done,
        }
    }

    /// The drain after a read-back showed the color to be scaled down at 0%:
    /// until the larger of `timing.drain` and the router's own figure has
    /// passed since that read-back.
    fn drain(&self) -> Stage {
        let period = self
            .plan
            .timing
            .drain
            .max(self.facts.router_drain.unwrap_or_default());
        let since = self.traffic_left_at.unwrap_or(self.now);
        Stage::Drain {
            until: since.after(period).max(self.now),
        }
    }

    /// The new color's serving capacity.
    fn capacity(&self) -> u32 {
        self.facts.capacity.unwrap_or(self.plan.replicas)
    }

    /// The colors that hold traffic or may: those with weight in the split
    /// last confirmed and, when a later split was requested, in that one.
    fn colors_holding_traffic(&self) -> BTreeSet<Color> {
        let mut out = BTreeSet::new();
        let confirmed = self
            .facts
            .confirmed_split
            .unwrap_or_else(|| TrafficSplit::all_on(self.old()));
        for split in [Some(confirmed), self.requested_split]
            .into_iter()
            .flatten()
        {
            for c in Color::ALL {
                if split.percent(c) > 0 {
                    out.insert(c);
                }
            }
        }
        out
    }

    /// Why `status` is not the release the new color should run, or `None`
    /// when it is: the plan's version and, where `prepare` returned one, the
    /// provider's identity (ECS: a circuit-breaker rollback puts the old task
    /// definition back as the primary deployment, COMPLETED).
    fn release_mismatch(&self, status: &ComputeStatus) -> Option<String> {
        let want_version = &self.plan.release.version;
        let want_id = self.facts.prepared_id.as_ref();
        let version_ok = status.version.as_ref() == Some(want_version);
        let id_ok = want_id.is_none_or(|id| status.release_id.as_ref() == Some(id));
        if version_ok && id_ok {
            return None;
        }
        let show = |v: Option<&String>, id: Option<&String>| {
            let mut out = match v {
                Some(v) => format!("version {v}"),
                None => "an unreported version".to_string(),
            };
            if let Some(id) = id {
                out.push_str(&format!(" ({id})"));
            }
            out
        };
        Some(format!(
            "expected {}, found {}",
            show(Some(want_version), want_id),
            show(status.version.as_ref(), status.release_id.as_ref())
        ))
    }

    /// Whether the old color can take traffic back as it is: at least its
    /// recorded capacity desired, running and healthy (by the provider and
    /// by the router), nothing pending, its rollout settled, and the version
    /// it ran at the start.
    fn old_color_problem(&self) -> Option<String> {
        let (Some(s), Some(h)) = (&self.old_status, &self.old_health) else {
            return Some("its status or target health could not be read".into());
        };
        let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
        let mut problems = Vec::new();
        if !s.serves_at_least(cap) {
            problems.push(format!(
                "{} desired, {} running, {} pending, {} healthy, rollout {:?}, against its capacity of {cap}",
                s.desired,
                s.running,
                s.pending,
                s.healthy.map_or("unknown".into(), |x| x.to_string()),
                s.rollout
            ));
        }
        if h.healthy < cap {
            problems.push(format!(
                "{} of {} targets healthy at the router",
                h.healthy, h.total
            ));
        }
        if let Some(v) = &self.facts.old_version {
            if s.version.as_ref() != Some(v) {
                problems.push(format!(
                    "it runs {} instead of version {v}",
                    s.version
                        .as_deref()
                        .map_or("an unreported version".to_string(), |x| format!(
                            "version {x}"
                        ))
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    fn shift(&self, step: usize) -> Stage {
        Stage::Shift {
            step,
            percent: self.steps[step].percent,
            confirming: false,
        }
    }

    fn after_soak(&self) -> Stage {
        Stage::ScaleDownDelay {
            until: self.now.after(self.plan.timing.scale_down_delay),
        }
    }

    /// The current stage is complete: go on.
    fn advance(&mut self) {
        let next = self.next_stage();
        match (&self.stage, &next) {
            (Stage::RestoreAutoscaling, Stage::Done) => {
                self.facts.autoscaling_restored = true;
                self.finish(Outcome::Succeeded);
            }
            (Stage::HaltRestoreAutoscaling, Stage::Done) => {
                let reason = self
                    .halt_reason
                    .clone()
                    .unwrap_or_else(|| Reason::new("halted"));
                self.finish(Outcome::Halted { reason });
            }
            (Stage::RollbackRestoreAutoscaling, Stage::Done) => {
                self.facts.autoscaling_restored = !self.facts.autoscaling.is_empty();
                let outcome = Outcome::RolledBack {
                    reason: self
                        .rollback_reason
                        .clone()
                        .unwrap_or_else(|| Reason::new("rolled back")),
                };
                self.finish(outcome);
            }
            _ => self.enter(next),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.abandon_stage();
        self.pending.clear();
        self.deadline = None;
        self.rollback_deadline = None;
        self.hold_until = None;
        self.next_reminder = None;
        self.next_poll = None;
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
            self.note(format!(
                "autoscaling could not be restored before the halt: {}",
                reason.summary
            ));
            self.finish(Outcome::Halted { reason: halting });
            return;
        }
        if self.rolling_back() {
            let summary = format!(
                "rollback could not complete: {}; rollback was for: {}",
                reason.summary,
                self.rollback_reason
                    .as_ref()
                    .map(|r| r.summary.as_str())
                    .unwrap_or("")
            );
            self.halt(Reason {
                summary,
                evidence: reason.evidence,
            });
            return;
        }
        let serving = match &self.stage {
            Stage::Hold { then, .. } => then.old_color_serving(),
            s => s.old_color_serving(),
        };
        if !serving {
            let summary = format!(
                "{}; the old color is being or has been scaled down, so traffic cannot return to it",
                reason.summary
            );
            self.halt(Reason {
                summary,
                evidence: reason.evidence,
            });
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
        self.next_poll = None;
        self.rollback_deadline = None;
        self.halt_reason = Some(reason);
        self.enter(Stage::HaltRestoreAutoscaling);
    }

    fn start_rollback(&mut self, reason: Reason) {
        self.abandon_stage();
        self.monitoring_since = None;
        self.next_poll = None;
        self.notify(
            "Deployment Rollback",
            format!(
                "{} {} rolling back: {}",
                self.plan.service, self.plan.release.version, reason.summary
            ),
            Severity::Warning,
            &["deployment:rollback"],
        );
        self.rollback_reason = Some(reason.clone());
        self.event(Event::RollbackStarted { reason });
        self.rollback_deadline = Some(self.now.after(self.plan.timing.rollback_window));
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
        if let Some((at, group, d)) = self.deadline {
            if now >= at && self.outcome.is_none() {
                if group == "restore_old" {
                    self.critical = true;
                    let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
                    let problem = self
                        .old_color_problem()
                        .unwrap_or_else(|| "it did not settle".into());
                    let reason = Reason::new(format!(
                        "the old color {} could not be brought back to its capacity of {cap} within {} ({problem}), so traffic was not moved back to it; traffic stays as last read back ({})",
                        self.old(),
                        humantime::format_duration(d),
                        self.facts
                            .confirmed_split
                            .map_or("unknown".to_string(), |s| s.to_string()),
                    ));
                    let summary = format!(
                        "{}; rollback was for: {}",
                        reason.summary,
                        self.rollback_reason
                            .as_ref()
                            .map(|r| r.summary.as_str())
                            .unwrap_or("")
                    );
                    self.halt(Reason::new(summary));
                    return;
                }
                let reason = Reason::new(format!(
                    "progress deadline of {} exceeded in {} (stage {})",
                    humantime::format_duration(d),
                    group,
                    self.stage.name()
                ));
                self.fail(reason);
                return;
            }
        }
        if let Some(at) = self.rollback_deadline {
            if now >= at && self.outcome.is_none() && self.halt_reason.is_none() {
                let d = self.plan.timing.rollback_window;
                self.fail(Reason::new(format!(
                    "progress deadline of {} exceeded in rollback (stage {})",
                    humantime::format_duration(d),
                    self.stage.name()
                )));
                return;
            }
        }
        if let Stage::Hold { reason, .. } = self.stage.clone() {
            if self.hold_until.is_some_and(|t| now >= t) {
                self.hold_timed_out(&reason);
                return;
            }
            if let Some(at) = self.next_reminder.filter(|t| now >= *t) {
                self.next_reminder = Some(at.after(self.plan.timing.hold_reminder));
                let since = self.held_since.unwrap_or(now);
                let left = self.hold_until.map_or(Duration::ZERO, |t| t.since(now));
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
        if let Some(at) = self.next_poll {
            if now >= at && !self.stage_pending() {
                self.next_poll = None;
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

    fn schedule_monitors(&mut self) {
        let Some(_) = self.monitoring_since else {
            return;
        };
        if self.rolling_back() || self.outcome.is_some() {
            return;
        }
        let now = self.now;
        let new = self.new_color();
        for i in 0..self.plan.analysis.len() {
            if !self.has_metric_trigger(i)
                || now < self.next_measure[i]
                || self.monitor_pending(&Monitor::Check(i))
            {
                continue;
            }
            let c = &self.plan.analysis[i];
            let window = c.measurement_window();
            self.next_measure[i] = now.after(c.interval);
            let query = self.render_query(i);
            let check = c.name.clone();
            self.issue_as(
                Pending::Monitor(Monitor::Check(i)),
                Action::Measure {
                    check,
                    query,
                    from: now.since_start(window),
                    to: now,
                    kind: MeasurementKind::Periodic,
                },
            );
        }
        if self.has_health_trigger()
            && self.next_health.is_some_and(|t| now >= t)
            && !self.monitor_pending(&Monitor::Health)
        {
            self.next_health = Some(now.after(self.plan.timing.health_interval));
            self.issue_as(
                Pending::Monitor(Monitor::Health),
                Action::ReadTargetHealth { color: new },
            );
        }
    }

    fn has_metric_trigger(&self, check: usize) -> bool {
        let name = &self.plan.analysis[check].name;
        self.plan
            .rollback_triggers
            .iter()
            .any(|t| matches!(t, RollbackTrigger::Metric { check, .. } if check == name))
    }

    fn has_health_trigger(&self) -> bool {
        self.plan
            .rollback_triggers
            .iter()
            .any(|t| matches!(t, RollbackTrigger::UnhealthyTargets { .. }))
    }

    fn start_monitoring(&mut self) {
        if self.monitoring_since.is_none() {
            let now = self.now;
            self.monitoring_since = Some(now);
            for (i, c) in self.plan.analysis.iter().enumerate() {
                self.next_measure[i] = now.after(c.measurement_window());
            }
            self.next_health = Some(now);
            self.schedule_monitors();
        }
    }

    fn hold_timed_out(&mut self, reason: &HoldReason) {
        let (policy, act) = match self.plan.on_hold_timeout {
            HoldTimeoutPolicy::Rollback => ("rollback", true),
            HoldTimeoutPolicy::Halt => ("halt", false),
        };
        let summary = format!(
            "held for {} ({}) without a decision; on_hold_timeout is {policy}",
            humantime::format_duration(self.plan.timing.hold_timeout),
            describe_hold(reason)
        );
        if act {
            self.fail(Reason::new(summary));
        } else {
            self.halt(Reason::new(summary));
        }
    }

    fn on_control(&mut self, control: Control) {
        let effect: String = match &control {
            Control::Pause if self.rolling_back() => "refused: a rollback is never paused".into(),
            Control::Pause => {
                self.paused = true;
                "paused: the deployment holds at the next phase boundary; monitoring and rollback triggers stay active".into()
            }
            Control::Resume => {
                self.paused = false;
                if let Stage::Hold {
                    reason: HoldReason::Paused,
                    then,
                } = &self.stage
                {
                    let then = (**then).clone();
                    self.event(Event::Control {
                        control: control.clone(),
                        effect: "resumed".into(),
                    });
                    self.enter(then);
                    return;
                }
                "resumed".into()
            }
            Control::Promote if self.rolling_back() => {
                "refused: the deployment is rolling back".into()
            }
            Control::Promote => match self.stage.clone() {
                Stage::Hold {
                    reason: HoldReason::Paused,
                    ..
                } => "refused: the deployment is paused; resume it first".into(),
                Stage::Hold {
                    reason: HoldReason::Group { barrier },
                    ..
                } => format!(
                    "refused: waiting for the rest of its group at {barrier}; the group moves on when every member is there"
                ),
                Stage::Hold { reason, then } => {
                    if let HoldReason::Gate { gate } = &reason {
                        self.gates_passed.insert(*gate);
                    }
                    self.event(Event::Control {
                        control: control.clone(),
                        effect: format!("promoted past {} by a human", describe_hold(&reason)),
                    });
                    self.enter(*then);
                    return;
                }
                Stage::Watch { .. } | Stage::Analysis { .. } | Stage::Soak { .. } => {
                    // Promote skips a wait, never the evidence: the
                    // evaluation covers at least `min_evidence` of fresh data.
                    let ready_at = self.window_start.after(self.plan.timing.min_evidence);
                    if self.now >= ready_at {
                        self.event(Event::Control {
                            control: control.clone(),
                            effect: format!(
                                "wait of {} skipped by a human; success is still evaluated",
                                self.stage.name()
                            ),
                        });
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
                        self.event(Event::Control {
                            control: control.clone(),
                            effect: format!(
                                "wait of {} shortened by a human to end at {ready_at}: an evaluation needs at least {} of evidence no earlier evaluation used",
                                self.stage.name(),
                                humantime::format_duration(self.plan.timing.min_evidence)
                            ),
                        });
                    }
                    return;
                }
                Stage::ScaleDownDelay { .. } => {
                    self.event(Event::Control {
                        control: control.clone(),
                        effect: format!("wait of {} skipped by a human", self.stage.name()),
                    });
                    self.advance();
                    return;
                }
                s => format!("refused: nothing to promote in stage {}", s.name()),
            },
            Control::Proceed { barrier } if self.rolling_back() => {
                format!("refused at {barrier}: the deployment is rolling back")
            }
            Control::Proceed { barrier } => match self.stage.clone() {
                Stage::Hold {
                    reason: HoldReason::Group { barrier: at },
                    then,
                } if at == *barrier => {
                    self.barriers_passed.insert(at);
                    self.event(Event::Control {
                        control: control.clone(),
                        effect: format!("the whole group reached {at}: proceeding"),
                    });
                    self.enter(*then);
                    return;
                }
                _ => format!("refused: not waiting at {barrier}"),
            },
            Control::Abort { reason } => {
                if self.rolling_back() {
                    "refused: already rolling back".into()
                } else {
                    let reason = Reason::new(format!("manual abort: {reason}"));
                    self.event(Event::Control {
                        control: control.clone(),
                        effect: "rolling back".into(),
                    });
                    self.fail(reason);
                    return;
                }
            }
        };
        self.event(Event::Control { control, effect });
    }

    fn on_failed(&mut self, id: CommandId, error: ErrorRecord) {
        let Some((kind, action)) = self.pending.remove(&id) else {
            return;
        };
        let (provider, op) = action.operation();
        match kind {
            Pending::Monitor(Monitor::Check(i)) => {
                // A failed periodic measurement is no evidence either way.
                let name = self.plan.analysis[i].name.clone();
                self.note(format!("measurement of {name} failed: {error}"));
            }
            Pending::Monitor(Monitor::Health) => {
                self.note(format!("target health read failed: {error}"));
            }
            Pending::Stage => {
                if let Action::Measure {
                    check,
                    query,
                    from,
                    to,
                    kind,
                } = action
                {
                    // A failed final measurement is missing evidence: inconclusive.
                    let Some(c) = self.plan.check(&check).cloned() else {
                        return;
                    };
                    let answer = MetricAnswer::NoData {
                        reason: format!("the query failed: {}", error.message),
                    };
                    let m = measure(&c, kind, query, from, to, &answer);
                    self.event(Event::Measured {
                        measurement: Box::new(m.clone()),
                    });
                    self.final_results.push(m);
                    if !self.stage_pending() {
                        self.stage_complete();
                    }
                    return;
                }
                self.fail(Reason::new(format!(
                    "{provider} {op} failed in stage {}: {}",
                    self.stage.name(),
                    error.message
                )));
            }
        }
    }

    fn bad_reply(&mut self, what: &str) {
        self.fail(Reason::new(format!(
            "provider answered nonsense in stage {}: {what}",
            self.stage.name()
        )));
    }

    fn on_reply(&mut self, id: CommandId, reply: Reply) {
        let Some((kind, action)) = self.pending.remove(&id) else {
            return;
        };
        match kind {
            Pending::Monitor(m) => self.on_monitor_reply(m, action, reply),
            Pending::Stage => {
                self.on_stage_reply(action, reply);
                if self.outcome.is_none() && !self.stage_pending() && self.next_poll.is_none() {
                    self.stage_complete();
                }
            }
        }
    }

    /// Called when the current stage has no outstanding command and no poll
    /// scheduled: decide whether it is done.
    fn stage_complete(&mut self) {
        match &self.stage {
            Stage::Evaluate { point, .. } => {
                let point = *point;
                self.decide_evaluation(point);
            }
            Stage::Preflight => self.finish_preflight(),
            Stage::CheckOld => match self.old_color_problem() {
                None => self.advance(),
                Some(problem) => {
                    let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
                    self.note(format!(
                        "the old color {} is below its capacity ({problem}): scaling it back to {cap} and waiting until it is stable before any traffic returns",
                        self.old()
                    ));
                    self.enter(Stage::RestoreOld { polling: false });
                }
            },
            Stage::RestoreOld { polling: true } => {
                if self.old_color_problem().is_none() {
                    self.advance();
                } else {
                    self.next_poll = Some(self.now.after(self.plan.timing.poll_interval));
                }
            }
            Stage::Hold { .. } | Stage::Done => {}
            _ => self.advance(),
        }
    }

    fn on_stage_reply(&mut self, action: Action, reply: Reply) {
        match (action, reply) {
            (Action::ReadSplit, Reply::Split { split }) => self.on_split(split),
            (Action::ReadStatus { colors }, Reply::Statuses { statuses }) => {
                if statuses.len() != colors.len() {
                    return self.bad_reply(&format!(
                        "asked for {} statuses, got {}",
                        colors.len(),
                        statuses.len()
                    ));
                }
                self.on_statuses(&colors, &statuses);
            }
            (Action::ReadAutoscaling { color }, Reply::Autoscaling { state }) => {
                self.facts.autoscaling.entry(color).or_insert(state);
                self.issue(Action::SuspendAutoscaling { color });
            }
            (Action::SuspendAutoscaling { color }, Reply::Autoscaling { state }) => {
                // The read above is the state to restore. A provider that
                // does not implement `autoscaling_state` reads "no scalable
                // target"; then the suspend's own answer is the only one.
                let read = self.facts.autoscaling.entry(color).or_insert(state);
                if !read.registered && state.registered {
                    *read = state;
                }
            }
            (Action::CheckSecrets { secrets }, Reply::Secrets { checks }) => {
                self.on_secrets(&secrets, &checks)
            }
            (Action::RunSmokeTests { scope, .. }, Reply::Smoke { results }) => {
                self.on_smoke(scope, results)
            }
            (Action::Backup, Reply::Backup { backup }) => self.facts.backup = Some(backup),
            (Action::VerifyBackup { min_entries, .. }, Reply::BackupVerified { verification }) => {
                let ok = verification.passed && verification.entries >= min_entries;
                let detail = format!(
                    "backup lists {} entries (at least {min_entries} required): {}",
                    verification.entries, verification.detail
                );
                self.facts.backup_verification = Some(verification);
                if !ok {
                    self.fail(Reason::new(format!("backup verification failed: {detail}")));
                } else {
                    self.note(detail);
                }
            }
            (Action::Migrate { .. }, Reply::Migrated { applied }) => {
                for m in applied {
                    if !self.facts.applied.iter().any(|a| a.version == m.version) {
                        self.facts.applied.push(m);
                    }
                }
            }
            (Action::VerifyMigrations { phase }, Reply::Verified { checks }) => {
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                if !failed.is_empty() {
                    self.fail(Reason::new(format!(
                        "{phase} migration verification failed: {}",
                        failed.join("; ")
                    )));
                }
            }
            (Action::RevertMigrations { .. }, Reply::Reverted { reverted }) => {
                self.facts.reverted.extend(reverted);
            }
            (Action::Prepare { .. }, Reply::Prepared { prepared }) => {
                self.facts.prepared_id = prepared.id;
            }
            (Action::ReadDrainPeriod, Reply::DrainPeriod { period }) => {
                self.facts.router_drain = period;
            }
            (Action::RestoreAutoscaling { color, .. }, Reply::Done) => {
                self.facts.autoscaling_restored_on.insert(color);
            }
            (Action::SetSplit { .. }, Reply::Done) | (Action::Prepare { .. }, Reply::Done) => {}
            (Action::Scale { .. }, Reply::Done) => {}
            (Action::ReadTargetHealth { color }, Reply::Health { health }) => {
                if health.healthy > health.total {
                    return self.bad_reply(&format!(
                        "{} healthy targets of {}",
                        health.healthy, health.total
                    ));
                }
                self.event(Event::TargetHealth { color, health });
                self.old_health = Some(health);
                self.old_checked();
            }
            (
                Action::Measure {
                    check,
                    query,
                    from,
                    to,
                    kind,
                },
                Reply::Metric { answer },
            ) => {
                let Some(c) = self.plan.check(&check).cloned() else {
                    return;
                };
                let m = measure(&c, kind, query, from, to, &answer);
                self.event(Event::Measured {
                    measurement: Box::new(m.clone()),
                });
                self.final_results.push(m);
            }
            (action, reply) => {
                let (p, o) = action.operation();
                self.bad_reply(&format!("{p} {o} got an unexpected reply {reply:?}"))
            }
        }
    }

    fn on_split(&mut self, split: TrafficSplit) {
        match self.stage.clone() {
            Stage::Preflight => match split.live_color() {
                Some(old) => {
                    self.facts.old = Some(old);
                    self.facts.new = Some(old.other());
                    self.facts.confirmed_split = Some(split);
                    self.event(Event::Colors {
                        old,
                        new: old.other(),
                    });
                }
                None => self.fail(Reason::new(format!(
                    "traffic is split ({split}): finish or roll back the deployment in progress first"
                ))),
            },
            Stage::Shift { percent, step, .. } => {
                let want = TrafficSplit::with_percent(self.new_color(), percent);
                if split == want {
                    self.facts.confirmed_split = Some(split);
                    if split.percent(self.old()) == 0 {
                        self.traffic_left_at = Some(self.now);
                    }
                    self.event(Event::TrafficConfirmed { split });
                    self.notify(
                        "Deployment Step",
                        format!(
                            "{} {}: {}% of traffic on {} (step {} of {})",
                            self.plan.service,
                            self.plan.release.version,
                            percent,
                            self.new_color(),
                            step + 1,
                            self.steps.len()
                        ),
                        Severity::Info,
                        &["deployment:step"],
                    );
                    self.start_monitoring();
                } else {
                    let wait = self.read_back_backoff();
                    self.note(format!(
                        "read-back shows {split}, expected {want}; reading again in {}",
                        humantime::format_duration(wait)
                    ));
                    self.next_poll = Some(self.now.after(wait));
                }
            }
            Stage::ConfirmDrained => {
                if split.percent(self.old()) == 0 {
                    self.facts.confirmed_split = Some(split);
                    self.traffic_left_at.get_or_insert(self.now);
                    self.event(Event::TrafficConfirmed { split });
                } else {
                    self.fail(Reason::new(format!(
                        "read-back before scale-down shows {split}: the old color {} still holds traffic",
                        self.old()
                    )));
                }
            }
            Stage::RestoreTraffic { .. } => {
                let want = TrafficSplit::all_on(self.old());
                if split == want {
                    self.facts.confirmed_split = Some(split);
                    self.traffic_left_at = Some(self.now);
                    self.event(Event::TrafficConfirmed { split });
                } else {
                    // Read again after a backoff; send the write again only
                    // when a backed-off read still disagrees.
                    let resend = self.read_back_attempts % 2 == 1;
                    let wait = self.read_back_backoff();
                    self.note(format!(
                        "rollback read-back shows {split}, expected {want}; {} in {}",
                        if resend { "setting again" } else { "reading again" },
                        humantime::format_duration(wait)
                    ));
                    if resend {
                        self.stage = Stage::RestoreTraffic { confirming: false };
                    }
                    self.next_poll = Some(self.now.after(wait));
                }
            }
            _ => {}
        }
    }

    /// The wait before the next read-back after a disagreeing one:
    /// exponential from a quarter of `timing.poll_interval` (at least
    /// 100 ms), doubling per disagreement up to [`READ_BACK_MAX_BACKOFF`],
    /// with jitter in `[wait/2, wait]` drawn from the deployment id and the
    /// attempt, so replaying the journal gives the same waits.
    fn read_back_backoff(&mut self) -> Duration {
        let attempt = self.read_back_attempts;
        self.read_back_attempts = self.read_back_attempts.saturating_add(1);
        let base = (self.plan.timing.poll_interval / 4).max(Duration::from_millis(100));
        let full = base
            .saturating_mul(1u32 << attempt.min(16))
            .min(READ_BACK_MAX_BACKOFF.max(base));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.deployment_id.bytes().chain(attempt.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let fraction = 0.5 + (h % 1000) as f64 / 2000.0;
        full.mul_f64(fraction)
    }

    fn on_statuses(&mut self, colors: &[Color], statuses: &[ComputeStatus]) {
        match self.stage.clone() {
            Stage::Preflight => {
                // Both colors; which one is old is known once the split is read.
                self.preflight_statuses = colors
                    .iter()
                    .copied()
                    .zip(statuses.iter().cloned())
                    .collect();
            }
            Stage::ReadCapacity => {
                let s = &statuses[0];
                let old = self.old();
                if s.desired == 0 {
                    return self.fail(Reason::new(format!(
                        "the old color {old} holds all traffic but its desired count is 0 now that autoscaling is suspended: something else is scaling it"
                    )));
                }
                let count = match self.plan.capacity {
                    CapacityPolicy::AtLeastOld => self.plan.replicas.max(s.desired),
                    CapacityPolicy::Fixed => self.plan.replicas,
                };
                self.facts.old_capacity = Some(s.desired);
                self.facts.old_count = Some(s.desired);
                self.facts.capacity = Some(count);
                self.event(Event::Capacity {
                    replicas: self.plan.replicas,
                    old_desired: s.desired,
                    count,
                    policy: self.plan.capacity,
                });
            }
            Stage::WaitStable => {
                let s = &statuses[0];
                let cap = self.capacity();
                if s.rollout == Rollout::Failed {
                    self.fail(Reason::new(format!(
                        "the new color's rollout failed (desired {}, running {}, failed {})",
                        s.desired, s.running, s.failed
                    )));
                } else if !s.is_stable_at(cap) {
                    self.next_poll = Some(self.now.after(self.plan.timing.poll_interval));
                } else if let Some(mismatch) = self.release_mismatch(s) {
                    self.fail(Reason::new(format!(
                        "the new color {} is stable at {cap} but does not run the prepared release: {mismatch}",
                        self.new_color()
                    )));
                } else {
                    self.event(Event::ReleaseVerified {
                        color: self.new_color(),
                        version: self.plan.release.version.clone(),
                        id: s.release_id.clone(),
                    });
                }
            }
            Stage::ConfirmDrained => {
                let s = &statuses[0];
                let cap = self.capacity();
                let problem = if !s.serves_at_least(cap) {
                    Some(format!(
                        "it is not stable at its capacity {cap} (desired {}, running {}, pending {}, rollout {:?})",
                        s.desired, s.running, s.pending, s.rollout
                    ))
                } else {
                    self.release_mismatch(s)
                };
                match problem {
                    Some(p) => self.fail(Reason::new(format!(
                        "before scaling the old color down, the new color {} was checked again: {p}",
                        self.new_color()
                    ))),
                    None => self.event(Event::ReleaseVerified {
                        color: self.new_color(),
                        version: self.plan.release.version.clone(),
                        id: s.release_id.clone(),
                    }),
                }
            }
            Stage::CheckOld | Stage::RestoreOld { polling: true } => {
                self.old_status = Some(statuses[0].clone());
                self.old_checked();
            }
            Stage::ScaleDownOld { polling: true } | Stage::ScaleDownNew { polling: true } => {
                let s = &statuses[0];
                if !(s.desired == 0 && s.running == 0 && s.pending == 0) {
                    self.next_poll = Some(self.now.after(self.plan.timing.poll_interval));
                }
            }
            _ => {}
        }
    }
}

impl Machine {
    /// Records the old color's check once both its status and its target
    /// health are in.
    fn old_checked(&mut self) {
        let (Some(status), Some(health)) = (self.old_status.clone(), self.old_health) else {
            return;
        };
        if !matches!(self.stage, Stage::CheckOld | Stage::RestoreOld { .. }) {
            return;
        }
        let serving = self.old_color_problem().is_none();
        self.event(Event::OldColorChecked {
            status,
            health,
            capacity: self.facts.old_capacity.unwrap_or(self.plan.replicas),
            serving,
        });
    }

    fn finish_preflight(&mut self) {
        let Some(old) = self.facts.old else {
            return self.fail(Reason::new("preflight did not determine the live color"));
        };
        let Some((_, status)) = self.preflight_statuses.iter().find(|(c, _)| *c == old) else {
            return self.fail(Reason::new(format!("no status for the old color {old}")));
        };
        if status.desired == 0 || !status.is_stable_at(status.desired) {
            let s = status.clone();
            return self.fail(Reason::new(format!(
                "the old color {old} holds all traffic but is not stable (desired {}, running {}, pending {}, healthy {:?}): there would be nothing safe to roll back to",
                s.desired, s.running, s.pending, s.healthy
            )));
        }
        self.facts.old_capacity = Some(status.desired);
        self.facts.old_version = status.version.clone();
        self.facts.old_count = Some(status.desired);
        self.advance();
    }

    fn on_secrets(&mut self, secrets: &[RequiredSecret], checks: &[SecretCheck]) {
        let mut problems = Vec::new();
        for s in secrets {
            match checks.iter().find(|c| c.name == s.name) {
                None => problems.push(format!("{}: not checked", s.name)),
                Some(SecretCheck { error: Some(e), .. }) => {
                    problems.push(format!("{}: {}", s.name, e.message))
                }
                Some(SecretCheck {
                    metadata: Some(m), ..
                }) => {
                    if let Some(max) = s.max_age {
                        match m.last_rotated {
                            None => problems.push(format!(
                                "{}: its last rotation is unknown; the policy is every {}",
                                s.name,
                                days(max)
                            )),
                            Some(at) => {
                                let age = self.now.since(at);
                                if age > max {
                                    problems.push(format!(
                                        "{}: last rotated {} ago, the policy is every {}",
                                        s.name,
                                        days(age),
                                        days(max)
                                    ));
                                }
                            }
                        }
                    }
                }
                Some(_) => problems.push(format!("{}: no metadata returned", s.name)),
            }
        }
        if !problems.is_empty() {
            self.fail(Reason::new(format!(
                "required secrets failed preflight: {}",
                problems.join("; ")
            )));
        }
    }

    fn on_smoke(&mut self, scope: SmokeScope, results: Vec<SmokeResult>) {
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| match (&r.outcome, &r.error) {
                (_, Some(e)) => format!("{} could not run: {}", r.name, e.message),
                (Some(o), _) => format!("{} failed: {}", r.name, o.detail),
                (None, None) => format!("{} gave no result", r.name),
            })
            .collect();
        self.event(Event::SmokeTests {
            scope,
            results: results.clone(),
        });
        if failed.is_empty() {
            if scope == SmokeScope::Color(self.new_color()) {
                self.facts.smoke_passed = true;
            }
            return;
        }
        let what = match scope {
            SmokeScope::Staging => "staging health check".to_string(),
            SmokeScope::Color(c) if Some(c) == self.facts.new => {
                format!("smoke tests on the new color {c}")
            }
            SmokeScope::Color(c) => {
                format!("smoke tests on the old color {c} after restoring traffic")
            }
        };
        self.fail(Reason::new(format!(
            "{what}: {} of {} failed: {}",
            failed.len(),
            results.len(),
            failed.join("; ")
        )));
    }

    fn on_monitor_reply(&mut self, m: Monitor, action: Action, reply: Reply) {
        if self.rolling_back() || self.outcome.is_some() {
            return;
        }
        match (m, action, reply) {
            (
                Monitor::Check(i),
                Action::Measure {
                    query,
                    from,
                    to,
                    kind,
                    ..
                },
                Reply::Metric { answer },
            ) => {
                let check = self.plan.analysis[i].clone();
                let mut meas = measure(&check, kind, query, from, to, &answer);
                let mut fired: Option<(usize, String)> = None;
                if let Some(value) = meas.value.filter(|_| meas.verdict != Verdict::Inconclusive) {
                    for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                        let RollbackTrigger::Metric {
                            check: name,
                            breach,
                            for_duration,
                            consecutive,
                        } = trigger
                        else {
                            continue;
                        };
                        if *name != check.name {
                            continue;
                        }
                        let breached = breach.holds(value);
                        meas.breach |= breached;
                        self.breach_runs[t].record(to, breached);
                        if !breached {
                            self.run_evidence[t].clear();
                        }
                        if breached
                            && self.breach_runs[t].fires(
                                check.measurement_window(),
                                *for_duration,
                                *consecutive,
                            )
                            && fired.is_none()
                        {
                            fired = Some((t, trigger.describe()));
                        }
                    }
                }
                for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                    if matches!(trigger, RollbackTrigger::Metric { check: n, .. } if *n == check.name)
                        && meas.breach
                    {
                        self.run_evidence[t].push(meas.clone());
                    }
                }
                self.event(Event::Measured {
                    measurement: Box::new(meas.clone()),
                });
                if let Some((t, describe)) = fired {
                    let evidence = std::mem::take(&mut self.run_evidence[t]);
                    self.breach_runs[t] = BreachRun::default();
                    let summary = format!(
                        "automatic rollback: {describe}; last value {:.4} over {} samples",
                        meas.value.unwrap_or(f64::NAN),
                        meas.samples.len()
                    );
                    if check.dry_run {
                        self.event(Event::DryRun {
                            detail: format!("dry run, not acted on: {summary}"),
                        });
                    } else {
                        self.fail(Reason { summary, evidence });
                    }
                }
            }
            (Monitor::Health, Action::ReadTargetHealth { color }, Reply::Health { health }) => {
                if health.healthy > health.total {
                    return self.bad_reply(&format!(
                        "{} healthy targets of {}",
                        health.healthy, health.total
                    ));
                }
                self.event(Event::TargetHealth { color, health });
                let frac = health.unhealthy_fraction();
                let now = self.now;
                let mut fired = None;
                for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                    if let RollbackTrigger::UnhealthyTargets { above, consecutive } = trigger {
                        let breached = frac > *above;
                        self.breach_runs[t].record(now, breached);
                        if self.breach_runs[t].fires(
                            Duration::ZERO,
                            None,
                            Some(consecutive.unwrap_or(1)),
                        ) && fired.is_none()
                        {
                            fired = Some(trigger.describe());
                        }
                    }
                }
                if let Some(describe) = fired {
                    self.fail(Reason::new(format!(
                        "automatic rollback: {describe}: {} of {} targets of {color} unhealthy",
                        health.total - health.healthy,
                        health.total
                    )));
                }
            }
            (_, action, reply) => {
                let (p, o) = action.operation();
                self.bad_reply(&format!("{p} {o} got an unexpected reply {reply:?}"))
            }
        }
    }

    fn decide_evaluation(&mut self, point: EvalPoint) {
        let results = std::mem::take(&mut self.final_results);
        let acted: Vec<&Measurement> = results.iter().filter(|m| !m.dry_run).collect();
        for m in results
            .iter()
            .filter(|m| m.dry_run && m.verdict != Verdict::Pass)
        {
            self.event(Event::DryRun {
                detail: format!("dry run, not acted on: {}", m.describe()),
            });
        }
        let where_ = match point {
            EvalPoint::Step { step } => {
                format!("traffic step {} ({}%)", step + 1, self.steps[step].percent)
            }
            EvalPoint::Analysis => "the analysis window".into(),
            EvalPoint::Soak => "the soak".into(),
        };
        let failed: Vec<String> = acted
            .iter()
            .filter(|m| m.verdict == Verdict::Fail)
            .map(|m| m.describe())
            .collect();
        if !failed.is_empty() {
            let evidence = acted.iter().map(|m| (*m).clone()).collect();
            return self.fail(Reason {
                summary: format!(
                    "analysis failed at the end of {where_}: {}",
                    failed.join("; ")
                ),
                evidence,
            });
        }
        let inconclusive: Vec<String> = acted
            .iter()
            .filter(|m| m.verdict == Verdict::Inconclusive)
            .map(|m| m.describe())
            .collect();
        if !inconclusive.is_empty() {
            let detail = format!(
                "analysis inconclusive at the end of {where_}: {}",
                inconclusive.join("; ")
            );
            match self.plan.on_inconclusive {
                InconclusivePolicy::Rollback => {
                    let evidence = acted.iter().map(|m| (*m).clone()).collect();
                    return self.fail(Reason {
                        summary: detail,
                        evidence,
                    });
                }
                InconclusivePolicy::Pause => {
                    let then = self.next_stage();
                    self.notify(
                        "Deployment Paused",
                        format!(
                            "{} {}: {detail}",
                            self.plan.service, self.plan.release.version
                        ),
                        Severity::Warning,
                        &["deployment:paused"],
                    );
                    self.hold(HoldReason::Inconclusive { detail }, then);
                    return;
                }
            }
        }
        self.advance();
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
        assert!(matches!(actions[0], Action::Notify { .. }));
        assert_eq!(actions[1], &Action::ReadSplit);
        assert_eq!(
            actions[2],
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
