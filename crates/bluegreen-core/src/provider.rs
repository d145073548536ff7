//! The provider traits and the values they exchange with the engine.
//!
//! # Contract common to every trait
//!
//! * **Idempotent.** Every method may be called again after a crash, a timeout
//!   or a retry, with the same arguments, and must then have the same effect as
//!   one call. A deployer killed at any point resumes by repeating the call
//!   whose result it had not yet recorded.
//! * **Errors say whether to try again.** Return an [`Error`](crate::Error)
//!   whose [`ErrorStatus`](crate::ErrorStatus) is `Temporary` when the same
//!   call may succeed later (throttling, 5xx, a connection reset, a timeout),
//!   and `Permanent` when it will not (not found, permission denied, invalid
//!   input, a resource in a state that forbids the call). The driver retries
//!   temporary errors under its [`RetryPolicy`](crate::RetryPolicy); a
//!   permanent error goes straight to the state machine, which rolls back or
//!   halts.
//! * **Answers must be true.** A provider that cannot make sense of its
//!   backend's answer (a negative count, an unknown color, weights that do not
//!   add up) returns [`ErrorKind::InvalidResponse`](crate::ErrorKind) instead
//!   of guessing.
//! * **No secrets in errors or logs.** Secret values never appear in messages,
//!   `Debug` output or tracing fields.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::Result;
use crate::plan::Release;

// ---------------------------------------------------------------- compute --

/// What a compute provider reports about one color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeStatus {
    /// Instances the color should run.
    pub desired: u32,
    /// Instances running.
    pub running: u32,
    /// Instances starting.
    pub pending: u32,
    /// Instances that failed since the last deploy.
    pub failed: u32,
    /// Instances passing their health check, when the provider knows.
    pub healthy: Option<u32>,
    /// The release version the color runs, when known.
    pub version: Option<String>,
    /// The provider's identity of the release the color runs, where it has
    /// one (ECS: the task-definition ARN of the primary deployment). Compared
    /// with [`PreparedRelease::id`] before the color may take traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// The provider's rollout state.
    pub rollout: Rollout,
}

/// What [`ComputeProvider::prepare`] made ready: the provider's identity of
/// the release, where it has one (ECS: the task-definition ARN it registered
/// or found). The engine checks that the color reports this identity in
/// [`ComputeStatus::release_id`] before it sends the color any traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRelease {
    /// The identity, or `None` when the provider has none (then only the
    /// version is compared).
    pub id: Option<String>,
}

impl PreparedRelease {
    /// A release identified by `id`.
    pub fn with_id(id: impl Into<String>) -> Self {
        PreparedRelease {
            id: Some(id.into()),
        }
    }
}

/// The provider's view of an ongoing rollout on a color.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollout {
    /// One deployment, settled.
    Completed,
    /// A rollout is still going (ECS: more than one deployment, or IN_PROGRESS).
    InProgress,
    /// The rollout failed (ECS: the deployment circuit breaker tripped).
    Failed,
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rollout::Completed => "completed",
            Rollout::InProgress => "in progress",
            Rollout::Failed => "failed",
        })
    }
}

impl fmt::Display for ComputeStatus {
    /// `2 desired, 2 running, 0 pending, 2 healthy, rollout completed, version 2.5.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} desired, {} running, {} pending, {} failed, {} healthy, rollout {}",
            self.desired,
            self.running,
            self.pending,
            self.failed,
            self.healthy.map_or("unknown".into(), |h| h.to_string()),
            self.rollout
        )?;
        if let Some(v) = &self.version {
            write!(f, ", version {v}")?;
        }
        Ok(())
    }
}

impl ComputeStatus {
    /// A settled color running `count` healthy instances of `version`.
    pub fn steady(count: u32, version: Option<String>) -> Self {
        ComputeStatus {
            desired: count,
            running: count,
            pending: 0,
            failed: 0,
            healthy: Some(count),
            version,
            release_id: None,
            rollout: Rollout::Completed,
        }
    }

    /// Stable at `desired`: the desired count is `desired`, that many are
    /// running (and healthy, where known), none pending, and the rollout is complete.
    pub fn is_stable_at(&self, desired: u32) -> bool {
        self.desired == desired
            && self.running == desired
            && self.pending == 0
            && self.healthy.is_none_or(|h| h >= desired)
            && self.rollout == Rollout::Completed
    }

    /// Able to serve at `capacity`: at least that many desired, running and
    /// healthy (where known), and no failed rollout. Unlike
    /// [`is_stable_at`](Self::is_stable_at), a color that something else
    /// scaled above its capacity still serves while the extra instances start.
    pub fn serves_at_least(&self, capacity: u32) -> bool {
        self.desired >= capacity
            && self.running >= capacity
            && self.healthy.is_none_or(|h| h >= capacity)
            && self.rollout != Rollout::Failed
    }
}

/// The Application Auto Scaling state of a color, as found before suspending,
/// so that restoring puts back exactly that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalingState {
    /// Whether the color has a scalable target at all.
    pub registered: bool,
    /// Dynamic scale-in was suspended.
    pub scale_in_suspended: bool,
    /// Dynamic scale-out was suspended.
    pub scale_out_suspended: bool,
    /// Scheduled scaling was suspended.
    pub scheduled_suspended: bool,
}

/// Runs the two colors: prepares a release, scales, reports status.
///
/// Each color is an independent set of instances (an ECS service per color, a
/// group of local processes). All methods are idempotent.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ComputeProvider: Send + Sync {
    /// Makes `release` the release `color` runs from its next scale-up
    /// (registering a task definition, for example) without changing the
    /// number of instances, and returns the provider's identity of it.
    /// Repeating it for the same release must not create a second revision
    /// and must return the same identity.
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease>;

    /// Sets the number of instances of `color` to `count`. Returns once the
    /// request is accepted, not once instances run; the engine polls
    /// [`status`](Self::status) for that.
    async fn scale(&self, color: Color, count: u32) -> Result<()>;

    /// The current status of `color`. Read-only.
    async fn status(&self, color: Color) -> Result<ComputeStatus>;

    /// The statuses of several colors at once. The default asks one by one;
    /// providers whose backend answers several at once (ECS `DescribeServices`)
    /// override it.
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        let mut out = Vec::with_capacity(colors.len());
        for c in colors {
            out.push(self.status(*c).await?);
        }
        Ok(out)
    }

    /// The base URL that reaches `color` directly, for smoke tests, when the
    /// provider knows it (the plan's `colors.<color>.base_url` wins).
    async fn endpoint(&self, color: Color) -> Result<Option<String>> {
        let _ = color;
        Ok(None)
    }

    /// The autoscaling state of `color` now. Read-only. The engine reads and
    /// journals it before it suspends, so a suspend whose reply was lost and
    /// that is sent again can never make the suspended state pass for the
    /// state found. Providers without autoscaling return the default state.
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        let _ = color;
        Ok(AutoscalingState::default())
    }

    /// Suspends dynamic and scheduled scaling of `color` and returns the state
    /// found before, for [`restore_autoscaling`](Self::restore_autoscaling).
    /// Repeating it returns the suspended state, so callers keep the first
    /// answer. Providers without autoscaling return the default state.
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        let _ = color;
        Ok(AutoscalingState::default())
    }

    /// Puts back exactly `previous`, as returned by `suspend_autoscaling`.
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        let _ = (color, previous);
        Ok(())
    }
}

// ---------------------------------------------------------------- traffic --

/// How many of a color's targets pass the router's health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// Targets passing.
    pub healthy: u32,
    /// All registered targets.
    pub total: u32,
}

impl TargetHealth {
    /// The unhealthy fraction, 0–1; a color with no targets is all unhealthy.
    pub fn unhealthy_fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            f64::from(self.total.saturating_sub(self.healthy)) / f64::from(self.total)
        }
    }
}

/// Moves traffic between the colors and reads back what is in force.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// The split in force now, read from the router itself (never from a cache).
    async fn current_split(&self) -> Result<TrafficSplit>;

    /// Requests `split`. Idempotent. The engine confirms it with
    /// [`current_split`](Self::current_split) before it relies on it.
    async fn set_split(&self, split: TrafficSplit) -> Result<()>;

    /// The health of `color`'s targets as the router sees them.
    async fn target_health(&self, color: Color) -> Result<TargetHealth>;

    /// How long the router keeps sending in-flight requests to a color after
    /// its weight went to zero, where it has such a figure (ALB: the target
    /// groups' deregistration delay, the larger of the two). The engine
    /// drains for the larger of this and the plan's `timing.drain` before it
    /// scales a color down or reverts migrations. Read-only.
    async fn drain_period(&self) -> Result<Option<Duration>> {
        Ok(None)
    }
}

// ------------------------------------------------------------- migrations --

/// When a migration runs relative to the traffic switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// Backward-compatible changes, before the new color starts.
    Expand,
    /// Removals, only after the old color is at zero.
    Contract,
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationPhase::Expand => "expand",
            MigrationPhase::Contract => "contract",
        })
    }
}

/// One migration as the runner knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Its version; migrations run in version order.
    pub version: u64,
    /// Its name, e.g. `add_order_metadata`.
    pub name: String,
    /// Expand or contract.
    pub phase: MigrationPhase,
    /// Whether it has a down migration.
    pub reversible: bool,
}

/// Applied and pending migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Applied, oldest first.
    pub applied: Vec<MigrationInfo>,
    /// Not yet applied, in the order they would run.
    pub pending: Vec<MigrationInfo>,
}

/// Who a migration runs for, recorded in the runner's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationContext {
    /// The deployment.
    pub deployment_id: String,
    /// The backup taken before it, if any.
    pub backup_id: Option<String>,
}

/// A verified or unverified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// A stable id for the backup.
    pub id: String,
    /// Where it is (a path or URL; never credentials).
    pub location: String,
    /// Its size in bytes, when known.
    pub bytes: Option<u64>,
    /// When it was taken.
    pub taken_at: Timestamp,
}

/// The result of verifying a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerification {
    /// Entries the backup lists (`pg_restore --list`).
    pub entries: u64,
    /// Whether it met the plan's threshold.
    pub passed: bool,
    /// What was checked.
    pub detail: String,
}

/// One verification check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationCheck {
    /// What was checked, e.g. `column orders.order_metadata exists`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// The observed value or reason.
    pub detail: String,
}

/// Runs schema migrations, backs up the database and verifies both.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait MigrationRunner: Send + Sync {
    /// Applied and pending migrations. Read-only. Fails with
    /// [`ErrorKind::Conflict`](crate::ErrorKind) on a dirty (half-applied)
    /// migration or a changed applied file.
    async fn status(&self) -> Result<MigrationStatus>;

    /// Takes a backup. Repeating it may take another; the engine records the
    /// one it verified.
    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord>;

    /// Verifies `backup` lists at least `min_entries` entries.
    async fn verify_backup(
        &self,
        backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification>;

    /// Applies every pending migration of `phase`, in order, and returns every
    /// migration of `phase` applied under `ctx.deployment_id`, including those
    /// an earlier call of the same deployment applied (so a deployer resumed
    /// after a crash still knows what to revert). Idempotent: applied
    /// migrations are skipped, so a repeat applies nothing twice.
    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>>;

    /// Runs the verification checks of `phase` (user queries, row counts).
    async fn verify(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>>;

    /// Reverts the given applied migrations, newest first. Idempotent: a
    /// migration already reverted is skipped. Fails with
    /// [`ErrorKind::Conflict`](crate::ErrorKind), before changing anything, if
    /// one of them is irreversible.
    async fn revert(&self, versions: &[u64], ctx: &MigrationContext) -> Result<Vec<MigrationInfo>>;
}

// ---------------------------------------------------------------- metrics --

/// One data point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was measured.
    pub at: Timestamp,
    /// Its value. May be NaN or infinite when the backend says so; those
    /// are stored as the strings `"NaN"`, `"inf"` and `"-inf"`, since JSON
    /// has no number for them.
    #[serde(with = "any_f64")]
    pub value: f64,
}

/// Serde for an `f64` that may be NaN or infinite.
pub(crate) mod any_f64 {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    struct AnyF64;

    impl Visitor<'_> for AnyF64 {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, or \"NaN\", \"inf\" or \"-inf\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(AnyF64)
    }

    /// The same for `Option<f64>` (`null` is `None`).
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Wrap(#[serde(with = "super")] f64);

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            v.map(Wrap).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// A metric query, rendered for one color and window.
///
/// The engine renders the check's template with `{color}` (and `{service}`,
/// `{version}`) filled in, and says here which color that was, so a source
/// whose queries are not text templates can select the color's series itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricQuery {
    /// The check it is for.
    pub check: String,
    /// The rendered query text.
    pub query: String,
    /// The window's start.
    pub from: Timestamp,
    /// The window's end.
    pub to: Timestamp,
    /// The color measured: the new color for the check itself, the old
    /// color for a baseline. `None` only for a query built without one (see
    /// [`MetricQuery::new`]) or one recorded before the color was (journals
    /// of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
    /// Whether this is the baseline a check's candidate is compared with
    /// (the old color, or the service before the deploy), not the
    /// candidate itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
}

impl MetricQuery {
    /// A query of `check` over `[from, to]`, for no particular color.
    pub fn new(
        check: impl Into<String>,
        query: impl Into<String>,
        from: Timestamp,
        to: Timestamp,
    ) -> MetricQuery {
        MetricQuery {
            check: check.into(),
            query: query.into(),
            from,
            to,
            color: None,
            baseline: false,
        }
    }

    /// The same query, measuring `color`.
    pub fn for_color(mut self, color: Color) -> MetricQuery {
        self.color = Some(color);
        self
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.to.since(self.from)
    }
}

/// What a metrics source answers: the samples, or a distinct "no data".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MetricAnswer {
    /// The samples the answer is based on (nulls and incomplete points left out).
    Samples {
        /// The samples.
        samples: Vec<Sample>,
    },
    /// No series at all: never zero, never a pass.
    NoData {
        /// Why, as far as the source can tell.
        reason: String,
    },
}

/// An answer with a note on what its samples stand for, in words a reason
/// can quote: e.g. the names of the alarms in ALARM state that a count of
/// alerting alarms counts. The note is journaled with the answer and shown
/// after the measurement and in a rollback trigger's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotedAnswer {
    /// The answer.
    pub answer: MetricAnswer,
    /// What the samples stand for, when the source can say more than the
    /// value does; never secret values.
    pub note: Option<String>,
}

impl From<MetricAnswer> for NotedAnswer {
    fn from(answer: MetricAnswer) -> Self {
        NotedAnswer { answer, note: None }
    }
}

/// Evaluates metric queries over a window.
#[async_trait]
pub trait MetricsSource: Send + Sync {
    /// The samples of `query` in its window. Read-only, so safe to repeat.
    /// An empty result is [`MetricAnswer::NoData`], never zero samples
    /// pretending to be evidence.
    async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer>;

    /// The answer of [`query`](Self::query) with a note naming what its
    /// samples stand for (the driver calls this one). The default has no
    /// note; a source whose value is a count of named things (alerting
    /// monitors, alarms in ALARM state) overrides it so the reason can name
    /// them. The same contract as `query`: read-only, safe to repeat.
    async fn query_noted(&self, query: &MetricQuery) -> Result<NotedAnswer> {
        Ok(self.query(query).await?.into())
    }
}

// A hand-written mock so `query_noted` keeps its default (a mock answers
// `query` only, as before the note existed).
#[cfg(feature = "mocks")]
mockall::mock! {
    /// A mockall mock of [`MetricsSource`]; `query_noted` keeps its default.
    pub MetricsSource {}

    #[async_trait]
    impl MetricsSource for MetricsSource {
        async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer>;
    }
}

// ------------------------------------------------------------ smoke tests --

/// What a smoke test runs against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmokeTarget {
    /// The service.
    pub service: String,
    /// The color, or `None` for staging.
    pub color: Option<Color>,
    /// The base URL, when known.
    pub base_url: Option<String>,
    /// The version the target should run.
    pub version: String,
}

/// The outcome of one smoke test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmokeOutcome {
    /// Whether it passed.
    pub passed: bool,
    /// How long it took.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// What was observed (status, field values); never secret values.
    pub detail: String,
}

/// One named check against an endpoint.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait SmokeTest: Send + Sync {
    /// The test's name, as plans refer to it.
    fn name(&self) -> &str;

    /// Runs the test against `target`. A failed check is `Ok` with
    /// `passed: false`; `Err` is for a test that could not run at all.
    /// Smoke tests must be safe to repeat (use test customers and tokens).
    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome>;
}

// ------------------------------------------------------------------ hooks --

/// What a lifecycle hook is told about the deployment when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookContext {
    /// The deployment.
    pub deployment_id: String,
    /// The service.
    pub service: String,
    /// The release version being deployed.
    pub version: String,
    /// Where in the procedure.
    pub point: crate::plan::HookPoint,
    /// The color that had all traffic at the start, once known.
    pub old: Option<Color>,
    /// The color being deployed, once known.
    pub new: Option<Color>,
    /// The new color's percent in the split last read back, once any was.
    pub new_percent: Option<u8>,
    /// The outcome's name (`succeeded`, `rolled_back`, `halted`) for
    /// `after_rollback` and `on_finish` hooks.
    pub outcome: Option<String>,
}

/// How one run of a lifecycle hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// Whether it succeeded (a command's exit code 0, a webhook's 2xx).
    pub passed: bool,
    /// How long it took (all attempts).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// What ran and how it ended, with the tail of its output or the
    /// response's body; secret values masked.
    pub detail: String,
    /// Attempts made (the engine fills this in).
    #[serde(default)]
    pub attempts: u32,
}

/// A lifecycle hook: a command or a webhook run at a named
/// [`HookPoint`](crate::plan::HookPoint) of the procedure (the plan's
/// [`LifecycleHook`](crate::plan::LifecycleHook) says where, its time limit
/// and retries).
///
/// Contract: `run` makes one attempt; the engine bounds it by the plan's
/// `timeout` and retries it `retries` times when it fails. A hook that ran
/// and failed is `Ok` with `passed: false`; `Err` is for one that could not
/// run at all (its program does not exist, the URL does not resolve); both
/// are failures of the deployment at that point. Unlike the other
/// providers, a hook need **not** be idempotent: the engine journals its
/// intent before running it and never runs it a second time after a crash
/// unless the plan marks it `idempotent`. No secret value in `detail` or
/// errors.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Hook: Send + Sync {
    /// The hook's name, as plans refer to it.
    fn name(&self) -> &str;

    /// Runs the hook once for `context`.
    async fn run(&self, context: &HookContext) -> Result<HookOutcome>;
}

// ----------------------------------------------------------------- events --

/// How serious a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Progress.
    Info,
    /// Completed successfully.
    Success,
    /// Something needs attention (a rollback).
    Warning,
    /// A human is needed now (a halt).
    Error,
    /// A human is needed now and the service may not be serving: a halt with
    /// traffic on a color that could not be verified (e.g. a rollback whose
    /// old color could not be brought back to capacity).
    Critical,
}

/// A notification about a deployment (the reference's Datadog events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The deployment.
    pub deployment_id: String,
    /// The service.
    pub service: String,
    /// The release version.
    pub version: String,
    /// A short title, e.g. `Deployment Start`.
    pub title: String,
    /// The text.
    pub text: String,
    /// How serious.
    pub severity: Severity,
    /// Tags, e.g. `deployment:success`, `version:2.5.0`.
    pub tags: Vec<String>,
    /// For a rollback, a rolled-back or halted deployment: why, as a kind
    /// with values (the text renders it), for sinks that route on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<crate::reason::Cause>,
}

/// Receives notifications. Failures are logged by the engine and never block
/// or fail a deployment, so implementations need not retry forever.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Sends one notification. Duplicates after a crash are acceptable.
    async fn notify(&self, notification: &Notification) -> Result<()>;
}

// ---------------------------------------------------------------- secrets --

/// A secret value that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a secret store knows about a secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMetadata {
    /// The name or ARN asked for.
    pub name: String,
    /// When it was last rotated (or created, if never rotated).
    pub last_rotated: Option<Timestamp>,
}

/// Reads secrets and their metadata.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The current value of `name`. Read-only.
    async fn get(&self, name: &str) -> Result<SecretValue>;

    /// Metadata of `name`, without reading its value. Read-only.
    /// [`ErrorKind::NotFound`](crate::ErrorKind) if it does not exist.
    async fn metadata(&self, name: &str) -> Result<SecretMetadata>;
}
