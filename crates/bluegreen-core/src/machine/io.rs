use super::*;
use crate::reason::{Effect, Noted};

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
    /// The production URL ([`ProductionChecks`](crate::plan::ProductionChecks)),
    /// after a traffic change or a rollback: recorded apart from the checks
    /// on each color.
    Production,
    /// The release's dependencies, in preflight (`preflight.checks`): no
    /// color and no base URL, each check names its own endpoint.
    Dependencies,
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
    /// `MigrationRunner::status`, read in preflight for the migrations
    /// that must already be applied (`preflight.migrations_applied`).
    ReadMigrationLedger,
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
        /// Periodic, final or baseline.
        kind: MeasurementKind,
        /// The color measured (absent in journals written before it was
        /// recorded: the new color's query).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        color: Option<Color>,
    },
    /// [`Hook::run`](crate::provider::Hook::run) of the plan's hook named
    /// `hook`, with its timeout and retries. Journaled before it runs (the
    /// intent); its [`Reply::Hook`] is the outcome.
    RunHook {
        /// The hook's name.
        hook: String,
        /// What the hook is told (boxed: larger than the other actions).
        context: Box<HookContext>,
    },
    /// Only in journals of format 2, which carried notifications as
    /// commands with id 0; the machine no longer issues it (see
    /// [`Step::notifications`]). Kept so those journals still read.
    Notify {
        /// The notification (boxed: the largest variant by far, it would
        /// make every command as large as a notification).
        notification: Box<Notification>,
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
            Action::ReadMigrationLedger => ("migrations", "status"),
            Action::Backup => ("migrations", "backup"),
            Action::VerifyBackup { .. } => ("migrations", "verify_backup"),
            Action::Migrate { .. } => ("migrations", "apply"),
            Action::VerifyMigrations { .. } => ("migrations", "verify"),
            Action::RevertMigrations { .. } => ("migrations", "revert"),
            Action::Measure { .. } => ("metrics", "query"),
            Action::RunHook { .. } => ("hooks", "run"),
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
                | Action::RunHook { .. }
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
    /// The versions the migration runner's ledger shows applied.
    Ledger {
        /// Applied versions, oldest first.
        applied: Vec<u64>,
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
        /// What its samples stand for, when the source said
        /// ([`NotedAnswer::note`](crate::provider::NotedAnswer::note)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
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
    /// How a lifecycle hook ended (after its retries).
    Hook {
        /// The outcome.
        outcome: HookOutcome,
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
    /// One person's approval of an approval gate (see
    /// [`ApprovalGate`](crate::plan::ApprovalGate)), recorded with who and
    /// when in [`Facts::approvals`]. Refused for a name not on the gate's
    /// lists, a second approval by the same name, a gate already passed,
    /// and during a rollback.
    Approve {
        /// Who approves.
        name: String,
        /// The gate; when absent, the approval gate the deployment holds
        /// at, else the next approval gate not yet passed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate: Option<Gate>,
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
    /// A deployer resumed the deployment from its journal (after a crash or
    /// a takeover) and first waits `wait` for the previous holder's calls
    /// to land: nothing drove the current stage while no deployer ran, so
    /// its progress deadline restarts once the wait is over. Hold timeouts
    /// and the rollback window do not restart. Journal format 3.
    Resumed {
        /// How long the deployer waits before it acts.
        #[serde(default, with = "humantime_serde")]
        wait: Duration,
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

/// Why a deployment rolled back or halted, with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// What it was for, as a kind and its values (`None` in journals of
    /// format 2, which kept the line only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// One line rendered from the cause when the decision was made (see
    /// [`Cause`]'s `Display`), e.g. `automatic rollback: error-rate > 5%
    /// for 5m; last value 7% over 6 samples` (the reference plan with 7%
    /// errors on the new color, six 10-second samples in the last window).
    pub summary: String,
    /// The measurements the decision used.
    pub evidence: Vec<Measurement>,
}

impl Reason {
    /// A reason for `cause`, its line rendered by [`Cause`]'s `Display`.
    pub fn because(cause: Cause) -> Self {
        Reason {
            summary: cause.to_string(),
            cause: Some(cause),
            evidence: Vec::new(),
        }
    }

    /// The same reason with the measurements behind it.
    pub fn with_evidence(mut self, evidence: Vec<Measurement>) -> Self {
        self.evidence = evidence;
        self
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
    /// Approvals of approval gates taken, in order: who and when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<crate::plan::Approval>,
}

impl Facts {
    pub(super) fn irreversible_applied(&self) -> Vec<&MigrationInfo> {
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
        /// The measurement, shared: the journal, the report and every
        /// subscriber get the same one (serialized as the measurement itself).
        measurement: Arc<Measurement>,
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
    /// A lifecycle hook ran (after its retries).
    Hook {
        /// The hook's name.
        hook: String,
        /// Where.
        point: HookPoint,
        /// How it ended.
        outcome: HookOutcome,
        /// Its outcome came after the deployment had left the hook's stage
        /// (a rollback began while it ran): recorded, deciding nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
    },
    /// A dry-run check would have acted.
    DryRun {
        /// What it would have done, rendered from `cause`.
        detail: String,
        /// Why it would have acted (format 4; `None` in older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<Cause>,
    },
    /// A step's note (a retried read-back, a verified backup, a resume).
    Note {
        /// The note, rendered from `cause`.
        text: String,
        /// What was noted, as a kind with its values (format 4; `None` in
        /// older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<Noted>,
    },
    /// A human's instruction took effect or was refused.
    Control {
        /// The instruction.
        control: Control,
        /// What it did, rendered from `kind`.
        effect: String,
        /// What it did, as a kind with its values (format 4; `None` in
        /// older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Effect>,
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
    /// Notifications for the event sinks: fire and forget, never blocking
    /// the deployment; journaled with the step, never replayed.
    pub notifications: Vec<Notification>,
    /// The step only repeated what the journal already says: a held
    /// deployment's poll of its monitors, or a reading with the same verdict
    /// (a check's) or the same counts (target health) as the one before,
    /// with no other event, notification or command. A driver may leave
    /// such steps out of the journal, provided it journals the machine's
    /// [`Checkpoint`](super::Checkpoint) before the next step it does
    /// journal, so a replay goes on from the same state.
    pub repeats: bool,
}
