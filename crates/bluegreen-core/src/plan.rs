//! The plan: a validated, serializable description of one deployment.
//!
//! Every default here is a number from the reference procedure, defined once
//! in [`defaults`]. [`Plan::validate`] checks a plan and names the offending
//! field in its error; [`Plan::from_json`] parses and validates in one step and
//! never panics.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::error::PlanError;

mod approval;
pub mod rehearsal;
mod window;

pub use approval::{Approval, ApprovalGate, ApproverGroup};
pub use rehearsal::{Rehearsal, RehearsalOptions, RehearsedFailure};
pub use window::{
    AllowedWindow, Blackout, DeployWindow, Weekday, WindowCheck, WINDOW_HORIZON_DAYS,
};

/// The reference procedure's numbers, each defined once.
pub mod defaults {
    use std::time::Duration;

    /// A lifecycle hook's time limit per attempt unless the plan gives one
    /// (not from the reference, which names no hooks: CodeDeploy's default
    /// lifecycle-hook timeout is an hour; five minutes keeps a hung hook
    /// within the deploy deadline's order of magnitude).
    pub const HOOK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// Tasks per color ("Blue environment deployed and stable (3 tasks running)").
    pub const REPLICAS: u32 = 3;
    /// Success: error rate below 1%.
    pub const ERROR_RATE_SUCCESS: f64 = 0.01;
    /// Automatic rollback: error rate above 5% ...
    pub const ERROR_RATE_ROLLBACK: f64 = 0.05;
    /// Success: p95 latency below 500 ms.
    pub const P95_SUCCESS_MS: f64 = 500.0;
    /// Automatic rollback: p95 latency above 1000 ms ...
    pub const P95_ROLLBACK_MS: f64 = 1000.0;
    /// ... for 5 consecutive minutes.
    pub const SUSTAINED: Duration = Duration::from_secs(5 * 60);
    /// Automatic rollback: more than 50% of the new color's targets unhealthy.
    pub const UNHEALTHY_FRACTION: f64 = 0.5;
    /// "Error rate < 1% for 15 minutes post-deployment".
    pub const ANALYSIS_WINDOW: Duration = Duration::from_secs(15 * 60);
    /// "Old version (Green) scaled down after 1 hour soak time".
    pub const SOAK: Duration = Duration::from_secs(60 * 60);
    /// No extra delay after the soak unless the plan asks for one.
    pub const SCALE_DOWN_DELAY: Duration = Duration::ZERO;
    /// "Rollback must be executed within 30 minutes".
    pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(30 * 60);
    /// How often a check is measured.
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
    /// How often compute status is polled while waiting for stability.
    pub const POLL_INTERVAL: Duration = Duration::from_secs(15);
    /// How often the new color's target health is read while it holds traffic
    /// (an ALB checks its targets every 30 s by default; reading more often
    /// feeds the decision nothing new).
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
    /// The fewest samples a measurement needs before it counts as evidence,
    /// unless the check sets `min_samples`: half the points its window
    /// should hold at the check's interval, rounded up, and at least one
    /// (a 15-minute window at 1 minute needs 8). See
    /// [`AnalysisCheck::required_samples`](super::AnalysisCheck::required_samples).
    pub const MIN_SAMPLES_FRACTION: f64 = 0.5;
    /// How long a color is left to drain after a read-back confirmed it holds
    /// no traffic, before it is scaled down or migrations are reverted: load
    /// balancer propagation and requests in flight. The router's own figure
    /// (an ALB's deregistration delay) wins when larger.
    pub const DRAIN: Duration = Duration::from_secs(30);
    /// The longest a deployment holds (inconclusive analysis, a gate, a
    /// pause, a group barrier) before `on_hold_timeout` acts: the reference's
    /// 30-minute rollback window.
    pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// How often a held deployment reminds its humans.
    pub const HOLD_REMINDER: Duration = Duration::from_secs(10 * 60);
    /// The least fresh evidence an evaluation covers: data no earlier
    /// evaluation used. A human's promote shortens a wait to this, never less.
    pub const MIN_EVIDENCE: Duration = Duration::from_secs(5 * 60);
    /// Rollback-time target: "Traffic switch: < 1 minute" (the reference's
    /// rollback time estimate).
    pub const TARGET_TRAFFIC_SWITCH: Duration = Duration::from_secs(60);
    /// Rollback-time target: "Full rollback (with DB): < 5 minutes".
    pub const TARGET_FULL_ROLLBACK: Duration = Duration::from_secs(5 * 60);
    /// Rollback-time target: "Verification: < 10 minutes".
    pub const TARGET_VERIFICATION: Duration = Duration::from_secs(10 * 60);
    /// Backup verification: the fewest entries `pg_restore --list` must show.
    pub const BACKUP_MIN_ENTRIES: u64 = 1;
    /// Progress deadline: preflight checks.
    pub const DEADLINE_PREFLIGHT: Duration = Duration::from_secs(5 * 60);
    /// Progress deadline: backup and its verification.
    pub const DEADLINE_BACKUP: Duration = Duration::from_secs(30 * 60);
    /// Progress deadline: migrations and their verification.
    pub const DEADLINE_MIGRATE: Duration = Duration::from_secs(30 * 60);
    /// Progress deadline: deploying the new color until stable ("5-10 minutes").
    pub const DEADLINE_DEPLOY: Duration = Duration::from_secs(10 * 60);
    /// Progress deadline: smoke tests.
    pub const DEADLINE_SMOKE: Duration = Duration::from_secs(5 * 60);
    /// Progress deadline: one traffic change and its read-back ("< 1 minute").
    pub const DEADLINE_TRAFFIC: Duration = Duration::from_secs(60);
    /// Progress deadline: scaling the old color down.
    pub const DEADLINE_SCALE_DOWN: Duration = Duration::from_secs(10 * 60);
    /// Progress deadline: in a rollback, bringing an old color found below
    /// its capacity back to it before traffic returns ("5-10 minutes", as a
    /// deploy).
    pub const DEADLINE_RESTORE_OLD: Duration = Duration::from_secs(10 * 60);
}

/// One deployment of one service: everything the engine needs to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The service being deployed, e.g. `order-api`. The lease is per service.
    pub service: String,
    /// What is being deployed.
    pub release: Release,
    /// Per-color endpoints for smoke tests and analysis templates.
    #[serde(default)]
    pub colors: ColorTargets,
    /// Instances of the new color to run ("3 tasks"): the least, unless
    /// `capacity` is `fixed` (see [`CapacityPolicy`]).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Whether the new color follows the live old color's count.
    #[serde(default)]
    pub capacity: CapacityPolicy,
    /// How traffic moves to the new color.
    #[serde(default)]
    pub strategy: Strategy,
    /// Checks before anything is changed.
    #[serde(default)]
    pub preflight: Preflight,
    /// Database backup and migrations; absent when the release has none.
    #[serde(default)]
    pub migrations: Option<MigrationSettings>,
    /// Names of the smoke tests run on the new color before it gets traffic,
    /// and on the old color after a rollback.
    #[serde(default)]
    pub smoke_tests: Vec<String>,
    /// The checks that decide promotion. At least one is required.
    #[serde(default)]
    pub analysis: Vec<AnalysisCheck>,
    /// What rolls back automatically.
    #[serde(default)]
    pub rollback_triggers: Vec<RollbackTrigger>,
    /// Soak, scale-down delay, analysis window and rollback window.
    #[serde(default)]
    pub timing: Timing,
    /// Points at which the deployment waits for a human to promote.
    #[serde(default)]
    pub gates: Vec<Gate>,
    /// Gates that pass on approvals from named people instead of a
    /// promote ("approved by 2+ engineers", "product owner approved").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalGate>,
    /// When a deployment may start; any time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DeployWindow>,
    /// The reference's rollback-time targets, set against the measured
    /// times in the report.
    #[serde(default, skip_serializing_if = "RollbackTargets::is_reference")]
    pub rollback_targets: RollbackTargets,
    /// The longest each phase may take before the deployment gives up on it.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// What to do when the evidence is inconclusive.
    #[serde(default)]
    pub on_inconclusive: InconclusivePolicy,
    /// What to do when a hold lasts `timing.hold_timeout`.
    #[serde(default)]
    pub on_hold_timeout: HoldTimeoutPolicy,
    /// The coordinated group this deployment belongs to, if any. Set by
    /// [`Group`](crate::group::Group), not by hand: a member holds at every
    /// [`Barrier`] until the whole group has reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupMembership>,
    /// Lifecycle hooks: commands or webhooks run at named points (see
    /// [`LifecycleHook`]), each registered by name with the deployment
    /// ([`Builder::hook`](crate::driver::Builder::hook)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<LifecycleHook>,
    /// Smoke tests through the production URL after each traffic change
    /// and after a rollback, recorded apart from the checks on each color.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_checks: Option<ProductionChecks>,
}

/// A named point of the procedure where [`LifecycleHook`]s run.
///
/// In the order a deployment meets them: `before_scale_up` (the release is
/// prepared on the new color, before it is scaled up), `after_scale_up`
/// (the new color is stable at its capacity, before its smoke tests),
/// `before_traffic` (smoke tests passed and the `before-shift` gate, if
/// any, was passed; before the first traffic change), `after_traffic_step`
/// (after each traffic change is read back, and its production checks),
/// `after_traffic` (after the change to 100% and its `after_traffic_step`
/// hooks), `before_scale_down` (the old color read back at 0% and drained,
/// before it is scaled to zero), `after_rollback` (a rollback completed:
/// traffic on the old color, the new one at zero, autoscaling restored) and
/// `on_finish` (last, whatever the outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before the new color is scaled up.
    BeforeScaleUp,
    /// Once the new color is stable, before its smoke tests.
    AfterScaleUp,
    /// Before the first traffic change.
    BeforeTraffic,
    /// After each traffic change is read back.
    AfterTrafficStep,
    /// After all traffic is on the new color.
    AfterTraffic,
    /// Before the old color is scaled down.
    BeforeScaleDown,
    /// After a rollback completed.
    AfterRollback,
    /// At the end, whatever the outcome.
    OnFinish,
}

impl HookPoint {
    /// Every point, in the order a deployment meets them.
    pub const ALL: [HookPoint; 8] = [
        HookPoint::BeforeScaleUp,
        HookPoint::AfterScaleUp,
        HookPoint::BeforeTraffic,
        HookPoint::AfterTrafficStep,
        HookPoint::AfterTraffic,
        HookPoint::BeforeScaleDown,
        HookPoint::AfterRollback,
        HookPoint::OnFinish,
    ];

    /// Its name as plans and specs write it, e.g. `before_traffic`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::BeforeScaleUp => "before_scale_up",
            HookPoint::AfterScaleUp => "after_scale_up",
            HookPoint::BeforeTraffic => "before_traffic",
            HookPoint::AfterTrafficStep => "after_traffic_step",
            HookPoint::AfterTraffic => "after_traffic",
            HookPoint::BeforeScaleDown => "before_scale_down",
            HookPoint::AfterRollback => "after_rollback",
            HookPoint::OnFinish => "on_finish",
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HookPoint {
    type Err = String;

    /// `before_traffic` (or `before-traffic`); the error lists the points.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().replace('-', "_");
        HookPoint::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| {
                let all: Vec<&str> = HookPoint::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown hook point {s:?}; expected one of {}",
                    all.join(", ")
                )
            })
    }
}

/// A lifecycle hook of the plan: which registered [`Hook`](crate::provider::Hook)
/// runs at which point, with its time limit and retries.
///
/// A hook's failure (it reports a failure, cannot run, or passes its
/// `timeout` on every attempt) is a failure of the deployment at that
/// point: a rollback while traffic can still return to the old color, a
/// halt past the point of no return (an `on_finish` hook of a deployment
/// that succeeded) or during a rollback. An `on_finish` hook of a halted
/// deployment that fails is recorded only.
///
/// Hooks are journaled effects: the intent (the command issued) is written
/// before the hook runs and its outcome after. A deployer that resumes a
/// deployment whose hook has an intent and no outcome runs it again only
/// when it is `idempotent`; otherwise it halts, naming the hook, for a
/// human to find out whether it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleHook {
    /// The registered hook's name.
    pub name: String,
    /// Where it runs.
    pub point: HookPoint,
    /// The time limit of one attempt.
    #[serde(default = "d_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts after a failed first one.
    #[serde(default)]
    pub retries: u32,
    /// Whether it is safe to run again after a crash left its outcome
    /// unknown.
    #[serde(default)]
    pub idempotent: bool,
}

impl LifecycleHook {
    /// A hook named `name` at `point` with the default timeout
    /// ([`defaults::HOOK_TIMEOUT`]), no retries, not idempotent.
    pub fn new(name: impl Into<String>, point: HookPoint) -> Self {
        LifecycleHook {
            name: name.into(),
            point,
            timeout: defaults::HOOK_TIMEOUT,
            retries: 0,
            idempotent: false,
        }
    }

    /// The longest all its attempts may take: `timeout` times the attempts.
    pub fn budget(&self) -> Duration {
        self.timeout.saturating_mul(self.retries.saturating_add(1))
    }
}

fn d_hook_timeout() -> Duration {
    defaults::HOOK_TIMEOUT
}

/// Smoke tests through the production URL ("After switching traffic, run
/// smoke tests against production"; "the rollback ends with smoke tests
/// through the public URL"): run after each traffic change is read back and
/// after a rollback has put traffic back on the old color. A failure after
/// a traffic change rolls back; a failure after a rollback halts for a
/// human (the old color, serving again, fails through the public URL).
/// Their results are recorded with [`SmokeScope::Production`](crate::machine::SmokeScope::Production),
/// apart from the checks on each color.
///
/// While traffic is split, the production URL reaches either color: these
/// tests should not assert a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductionChecks {
    /// The public URL, e.g. `https://order-api.example.com`.
    pub url: String,
    /// Names of registered smoke tests, run in order.
    pub smoke_tests: Vec<String>,
}

/// Membership of a coordinated group of deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMembership {
    /// The group's name, e.g. `checkout`.
    pub name: String,
    /// The group's id; member deployment ids are `<id>/<service>`.
    pub id: String,
    /// Every member's service, in lease order (sorted).
    pub members: Vec<String>,
}

/// A point where every member of a coordinated group waits until the whole
/// group has reached it: before each traffic step, and before the old color
/// is scaled down (after which traffic can no longer go back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "barrier", rename_all = "snake_case")]
pub enum Barrier {
    /// Before traffic step `step` (0-based) is set.
    Shift {
        /// The step index.
        step: usize,
    },
    /// Before the old color is scaled down.
    ScaleDown,
}

impl Barrier {
    /// The barrier's position in a plan with `steps` traffic steps: barriers
    /// are passed in this order.
    pub fn position(&self, steps: usize) -> usize {
        match self {
            Barrier::Shift { step } => *step,
            Barrier::ScaleDown => steps,
        }
    }
}

impl std::fmt::Display for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Barrier::Shift { step } => write!(f, "traffic step {step}"),
            Barrier::ScaleDown => f.write_str("the old color's scale-down"),
        }
    }
}

fn default_replicas() -> u32 {
    defaults::REPLICAS
}

/// What is being deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The version, e.g. `2.5.0`.
    pub version: String,
    /// The image or artifact, e.g. `order-api:2.5.0-abc123`.
    pub image: String,
    /// The CI build, e.g. `#1234`.
    #[serde(default)]
    pub build: Option<String>,
    /// Plain environment variables for the new color.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secrets, by reference (a secret
    /// name or ARN), never by value.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

impl Release {
    /// A release of `version` from `image`, with no build, environment or secrets.
    pub fn new(version: impl Into<String>, image: impl Into<String>) -> Self {
        Release {
            version: version.into(),
            image: image.into(),
            build: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }
}

/// Where each color and staging can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorTargets {
    /// The blue color.
    #[serde(default)]
    pub blue: ColorTarget,
    /// The green color.
    #[serde(default)]
    pub green: ColorTarget,
    /// The staging environment's base URL, for the staging health check.
    #[serde(default)]
    pub staging_url: Option<String>,
}

impl ColorTargets {
    /// The target of `color`.
    pub fn get(&self, color: Color) -> &ColorTarget {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

/// One color's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorTarget {
    /// The base URL that reaches this color directly, e.g. `https://blue.order-api.internal`.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// How traffic moves from the old color to the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Strategy {
    /// Everything at once, then the analysis window.
    #[default]
    AllAtOnce,
    /// Equal steps of `step_percent`, waiting `step_wait` after each.
    Linear {
        /// The percent added at each step; must divide 100.
        step_percent: u8,
        /// How long to watch each step before the next.
        #[serde(with = "humantime_serde")]
        step_wait: Duration,
    },
    /// `percent` first, watched for `wait`, then everything.
    Canary {
        /// The canary's share, 1–99.
        percent: u8,
        /// How long to watch the canary.
        #[serde(with = "humantime_serde")]
        wait: Duration,
    },
    /// Explicit steps; percents strictly increase and the last is 100.
    Steps {
        /// The steps in order.
        steps: Vec<TrafficStep>,
    },
}

/// One step of a traffic shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficStep {
    /// The new color's percent at this step.
    pub percent: u8,
    /// How long to watch this step before the next (zero for the last).
    #[serde(with = "humantime_serde", default)]
    pub wait: Duration,
}

impl Strategy {
    /// The steps this strategy takes; the last is always 100%.
    pub fn steps(&self) -> Vec<TrafficStep> {
        match self {
            Strategy::AllAtOnce => vec![TrafficStep {
                percent: 100,
                wait: Duration::ZERO,
            }],
            Strategy::Linear {
                step_percent,
                step_wait,
            } => {
                let step = (*step_percent).max(1);
                let mut out = Vec::new();
                let mut p = step;
                while p < 100 {
                    out.push(TrafficStep {
                        percent: p,
                        wait: *step_wait,
                    });
                    p = p.saturating_add(step);
                }
                out.push(TrafficStep {
                    percent: 100,
                    wait: Duration::ZERO,
                });
                out
            }
            Strategy::Canary { percent, wait } => vec![
                TrafficStep {
                    percent: *percent,
                    wait: *wait,
                },
                TrafficStep {
                    percent: 100,
                    wait: Duration::ZERO,
                },
            ],
            Strategy::Steps { steps } => steps.clone(),
        }
    }
}

/// Checks run before anything is changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preflight {
    /// Smoke tests (by name) run against staging, e.g. the reference's
    /// `curl https://staging-api.example.com/health`.
    #[serde(default)]
    pub staging_checks: Vec<String>,
    /// Secrets that must exist and be fresh.
    #[serde(default)]
    pub required_secrets: Vec<RequiredSecret>,
    /// Migration versions the database must already have applied, read
    /// from the migration runner's ledger before anything changes (the
    /// reference: "Database migration 024 (must be applied)").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations_applied: Vec<u64>,
    /// Checks (registered smoke tests, by name) that must pass before
    /// anything changes: the dependencies the release needs. They run with
    /// no color and no base URL, so each names its own endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

/// A secret the release needs, with its rotation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredSecret {
    /// The secret's name or ARN, e.g. `prod/order-api/db-password`.
    pub name: String,
    /// The longest time since the last rotation; `None` means rotated only on
    /// compromise (the reference's policy for webhook secrets).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// Backup and migration settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSettings {
    /// Take and verify a backup before migrating (the reference does).
    #[serde(default = "yes")]
    pub backup: bool,
    /// Backup verification: the fewest entries the backup must list.
    #[serde(default = "default_backup_entries")]
    pub backup_min_entries: u64,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            backup: true,
            backup_min_entries: defaults::BACKUP_MIN_ENTRIES,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_backup_entries() -> u64 {
    defaults::BACKUP_MIN_ENTRIES
}

/// A comparison against a threshold, written `"< 0.01"`, `">= 3"` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Condition {
    /// The comparison.
    pub op: Comparison,
    /// The threshold.
    pub threshold: f64,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Condition {
    /// `value < threshold`.
    pub fn lt(threshold: f64) -> Self {
        Condition {
            op: Comparison::Lt,
            threshold,
        }
    }

    /// `value > threshold`.
    pub fn gt(threshold: f64) -> Self {
        Condition {
            op: Comparison::Gt,
            threshold,
        }
    }

    /// Whether `value` satisfies the condition. NaN satisfies nothing.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Comparison::Lt => value < self.threshold,
            Comparison::Le => value <= self.threshold,
            Comparison::Gt => value > self.threshold,
            Comparison::Ge => value >= self.threshold,
        }
    }
}

impl Condition {
    /// The condition with its threshold in `unit`, e.g. `< 1%` for a
    /// ratio of 0.01, `< 500 ms`.
    pub fn in_unit(&self, unit: Unit) -> String {
        format!("{} {}", self.op_str(), unit.format(self.threshold))
    }

    fn op_str(&self) -> &'static str {
        match self.op {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op_str(), self.threshold)
    }
}

impl FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (op, rest) = if let Some(r) = s.strip_prefix("<=") {
            (Comparison::Le, r)
        } else if let Some(r) = s.strip_prefix(">=") {
            (Comparison::Ge, r)
        } else if let Some(r) = s.strip_prefix('<') {
            (Comparison::Lt, r)
        } else if let Some(r) = s.strip_prefix('>') {
            (Comparison::Gt, r)
        } else {
            return Err(format!(
                "condition {s:?} must start with <, <=, > or >=, e.g. \"< 0.01\""
            ));
        };
        let threshold: f64 = rest
            .trim()
            .parse()
            .map_err(|_| format!("condition {s:?}: {:?} is not a number", rest.trim()))?;
        if !threshold.is_finite() {
            return Err(format!("condition {s:?}: the threshold must be finite"));
        }
        Ok(Condition { op, threshold })
    }
}

impl TryFrom<String> for Condition {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Condition> for String {
    fn from(c: Condition) -> String {
        c.to_string()
    }
}

/// How the samples of one measurement become one value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The arithmetic mean.
    #[default]
    Mean,
    /// The largest sample.
    Max,
    /// The smallest sample.
    Min,
    /// The newest sample.
    Last,
    /// The sum of the samples.
    Sum,
}

/// The unit of a check's value, used to range-check its thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A fraction between 0 and 1 (an error rate of 1% is 0.01).
    Ratio,
    /// A percentage between 0 and 100.
    Percent,
    /// Milliseconds, zero or more.
    Milliseconds,
    /// Any number.
    #[default]
    Number,
}

impl Unit {
    /// `v` as a person reads it in this unit: a ratio in percent
    /// (`0.0123` is `1.23%`), percent with `%`, milliseconds with `ms`, a
    /// number as it is; at most four significant decimals, no trailing
    /// zeros.
    ///
    /// ```
    /// use bluegreen_core::plan::Unit;
    /// assert_eq!(Unit::Ratio.format(0.0123), "1.23%");
    /// assert_eq!(Unit::Milliseconds.format(180.0), "180 ms");
    /// assert_eq!(Unit::Percent.format(99.5), "99.5%");
    /// assert_eq!(Unit::Number.format(0.25), "0.25");
    /// ```
    pub fn format(self, v: f64) -> String {
        let short = |x: f64| {
            let s = format!("{x:.4}");
            let s = if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            };
            if s == "-0" {
                "0".to_string()
            } else {
                s
            }
        };
        match self {
            Unit::Ratio => format!("{}%", short(v * 100.0)),
            Unit::Percent => format!("{}%", short(v)),
            Unit::Milliseconds => format!("{} ms", short(v)),
            Unit::Number => short(v),
        }
    }

    fn check(self, v: f64) -> Result<(), String> {
        let ok = match self {
            Unit::Ratio => (0.0..=1.0).contains(&v),
            Unit::Percent => (0.0..=100.0).contains(&v),
            Unit::Milliseconds => v >= 0.0,
            Unit::Number => true,
        };
        if ok {
            Ok(())
        } else {
            let range = match self {
                Unit::Ratio => "between 0 and 1 (1% is 0.01)",
                Unit::Percent => "between 0 and 100",
                _ => "zero or more",
            };
            Err(format!("threshold {v} is out of range: expected {range}"))
        }
    }
}

/// One metric check: how it is queried, how often, and what passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisCheck {
    /// The check's name, referred to by rollback triggers and reports.
    pub name: String,
    /// The query template; `{service}`, `{color}` and `{version}` are filled in.
    pub query: String,
    /// Which registered metrics source answers it; the default source if absent.
    #[serde(default)]
    pub source: Option<String>,
    /// How samples become one value.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// The unit of the value.
    #[serde(default)]
    pub unit: Unit,
    /// The success condition over the analysis window, e.g. `"< 0.01"`.
    pub success: Condition,
    /// How often the check is measured while traffic is on the new color.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The window each periodic measurement covers (the interval if absent).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// The fewest samples a measurement needs to count as evidence; when
    /// absent, half the points the measurement's window should hold at
    /// `interval` (see [`AnalysisCheck::required_samples`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// Evaluate and record, but never act on the result.
    #[serde(default)]
    pub dry_run: bool,
    /// Conditions relative to a baseline, judged at each success
    /// evaluation besides `success` (rollback triggers stay absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

fn default_interval() -> Duration {
    defaults::CHECK_INTERVAL
}

/// Conditions on a check relative to a baseline, e.g. "p95 at most 20%
/// above the old color's" or "throughput at least 50% of before the
/// deploy". At least one of `max_increase`, `min_ratio` and `judge` is
/// given. A baseline with no data, or too few samples for the check, is
/// inconclusive, never a pass.
///
/// ```toml
/// baseline = { of = "old-color", max_increase = 0.2, judge = { significance = 0.05, min_effect = 0.1 } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Whose samples the candidate is compared with.
    pub of: BaselineOf,
    /// The candidate's value at most this fraction above the baseline's:
    /// 0.2 is "at most 20% above" (the reference's "no regression" in p95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
    /// The candidate's value at least this fraction of the baseline's: 0.5
    /// is "at least 50% of" (the reference's throughput "baseline 100
    /// req/min, alert < 50").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ratio: Option<f64>,
    /// A Mann–Whitney U test on the two sample sets, as Kayenta's judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<MannWhitney>,
}

/// Whose samples a check's baseline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineOf {
    /// The old color over the same window: its query is the check's, with
    /// `{color}` the old color (a source that is not templated reads
    /// [`MetricQuery::color`](crate::provider::MetricQuery::color)).
    OldColor,
    /// The service before the deploy: the check's query for the old color
    /// (which then held all traffic) over a window of the same length
    /// ending when the deployment started.
    BeforeDeploy,
}

impl fmt::Display for BaselineOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaselineOf::OldColor => "old-color",
            BaselineOf::BeforeDeploy => "before-deploy",
        })
    }
}

/// Which way a change is a regression, for the U test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is worse (latency, errors): a one-sided test for an increase.
    #[default]
    Increase,
    /// Lower is worse (throughput): a one-sided test for a decrease.
    Decrease,
    /// Either way is a regression: a two-sided test.
    Either,
}

/// The Mann–Whitney U judge's settings (Kayenta's classifier: a
/// significance level and a minimum effect size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MannWhitney {
    /// The significance level: a shift with a p-value below it is real.
    #[serde(default = "MannWhitney::default_significance")]
    pub significance: f64,
    /// The smallest change of the mean that fails, as a fraction of the
    /// baseline's mean: 0.1 fails a significant increase of 10% or more.
    #[serde(default = "MannWhitney::default_min_effect")]
    pub min_effect: f64,
    /// Which way is a regression.
    #[serde(default)]
    pub direction: Direction,
    /// The fewest samples each color needs; fewer is inconclusive.
    #[serde(default = "MannWhitney::default_min_samples")]
    pub min_samples: u32,
}

impl MannWhitney {
    /// 0.05, the conventional level.
    pub const SIGNIFICANCE: f64 = 0.05;
    /// 10% of the baseline's mean.
    pub const MIN_EFFECT: f64 = 0.1;
    /// 8 per color: below it scipy's `mannwhitneyu` uses the exact
    /// distribution rather than the normal approximation this judge uses.
    pub const MIN_SAMPLES: u32 = 8;

    fn default_significance() -> f64 {
        Self::SIGNIFICANCE
    }
    fn default_min_effect() -> f64 {
        Self::MIN_EFFECT
    }
    fn default_min_samples() -> u32 {
        Self::MIN_SAMPLES
    }
}

impl Default for MannWhitney {
    fn default() -> Self {
        MannWhitney {
            significance: Self::SIGNIFICANCE,
            min_effect: Self::MIN_EFFECT,
            direction: Direction::Increase,
            min_samples: Self::MIN_SAMPLES,
        }
    }
}

impl Baseline {
    fn validate(&self, field: &str) -> Result<(), PlanError> {
        let f = |name: &str| format!("{field}.{name}");
        if self.max_increase.is_none() && self.min_ratio.is_none() && self.judge.is_none() {
            return Err(PlanError::new(
                field,
                "needs max_increase, min_ratio or judge: a baseline with no condition judges nothing",
            ));
        }
        if let Some(v) = self.max_increase {
            if !(v.is_finite() && v >= 0.0) {
                return Err(PlanError::new(
                    f("max_increase"),
                    format!("{v} must be a fraction of zero or more (20% is 0.2)"),
                ));
            }
        }
        if let Some(v) = self.min_ratio {
            if !(v.is_finite() && v > 0.0) {
                return Err(PlanError::new(
                    f("min_ratio"),
                    format!("{v} must be a fraction above zero (50% is 0.5)"),
                ));
            }
        }
        if let Some(j) = &self.judge {
            if !(j.significance > 0.0 && j.significance < 1.0) {
                return Err(PlanError::new(
                    f("judge.significance"),
                    format!("{} must be between 0 and 1 (e.g. 0.05)", j.significance),
                ));
            }
            if !(j.min_effect.is_finite() && j.min_effect >= 0.0) {
                return Err(PlanError::new(
                    f("judge.min_effect"),
                    format!(
                        "{} must be a fraction of zero or more (10% is 0.1)",
                        j.min_effect
                    ),
                ));
            }
            if j.min_samples < 2 {
                return Err(PlanError::new(
                    f("judge.min_samples"),
                    "must be at least 2: one sample has no rank to compare",
                ));
            }
        }
        Ok(())
    }
}

impl AnalysisCheck {
    /// A check named `name` on `query` that passes when `success` holds,
    /// with the default interval and sample count.
    pub fn new(name: impl Into<String>, query: impl Into<String>, success: Condition) -> Self {
        AnalysisCheck {
            name: name.into(),
            query: query.into(),
            source: None,
            aggregation: Aggregation::Mean,
            unit: Unit::Number,
            success,
            interval: defaults::CHECK_INTERVAL,
            window: None,
            min_samples: None,
            dry_run: false,
            baseline: None,
        }
    }

    /// The reference's error-rate check: a ratio, passing below 1%.
    pub fn error_rate(query: impl Into<String>) -> Self {
        AnalysisCheck {
            unit: Unit::Ratio,
            ..Self::new(
                "error-rate",
                query,
                Condition::lt(defaults::ERROR_RATE_SUCCESS),
            )
        }
    }

    /// The reference's p95 latency check: milliseconds, passing below 500.
    pub fn p95_latency(query: impl Into<String>) -> Self {
        AnalysisCheck {
            unit: Unit::Milliseconds,
            aggregation: Aggregation::Max,
            ..Self::new(
                "p95-latency",
                query,
                Condition::lt(defaults::P95_SUCCESS_MS),
            )
        }
    }

    /// The window one periodic measurement covers.
    pub fn measurement_window(&self) -> Duration {
        self.window.unwrap_or(self.interval)
    }

    /// The fewest samples a measurement over `window` needs to count as
    /// evidence: `min_samples` when set, else half the points the window
    /// should hold at `interval` ([`defaults::MIN_SAMPLES_FRACTION`]),
    /// rounded up, at least 1. One sample in a 15-minute window at 1-minute
    /// intervals is no evidence; eight is.
    pub fn required_samples(&self, window: Duration) -> u32 {
        if let Some(n) = self.min_samples {
            return n;
        }
        let points = window.as_secs_f64() / self.interval.as_secs_f64().max(0.001);
        let n = (points * defaults::MIN_SAMPLES_FRACTION).ceil();
        if n.is_finite() && n >= 1.0 {
            n.min(f64::from(u32::MAX)) as u32
        } else {
            1
        }
    }
}

/// What rolls the deployment back without a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RollbackTrigger {
    /// A check's measurements breach `breach` for a duration or a count.
    Metric {
        /// The name of an analysis check.
        check: String,
        /// The breach condition, e.g. `"> 0.05"`.
        breach: Condition,
        /// Breached for this long ("for 5 consecutive minutes").
        #[serde(default, rename = "for", with = "humantime_serde")]
        for_duration: Option<Duration>,
        /// Or breached this many measurements in a row.
        #[serde(default)]
        consecutive: Option<u32>,
    },
    /// More than `above` of the new color's targets are unhealthy.
    UnhealthyTargets {
        /// The unhealthy fraction that triggers, 0–1 (the reference: 0.5).
        above: f64,
        /// How many readings in a row (1 if absent).
        #[serde(default)]
        consecutive: Option<u32>,
    },
    /// Any smoke test fails. Always in force; listing it documents it.
    SmokeTestFailed,
}

impl RollbackTrigger {
    /// "`check` above `threshold` for 5 consecutive minutes".
    pub fn sustained_above(check: impl Into<String>, threshold: f64) -> Self {
        RollbackTrigger::Metric {
            check: check.into(),
            breach: Condition::gt(threshold),
            for_duration: Some(defaults::SUSTAINED),
            consecutive: None,
        }
    }

    /// A short description, e.g. `error-rate > 0.05 for 5m`; see
    /// [`describe_in`](Self::describe_in) for the threshold in its check's
    /// unit.
    pub fn describe(&self) -> String {
        self.describe_in(Unit::Number)
    }

    /// A short description with a metric trigger's threshold in `unit` (its
    /// check's), e.g. `error-rate > 5% for 5m` for a ratio of 0.05,
    /// `latency-p99 > 500 ms for 3 measurements in a row`. The unhealthy
    /// targets' fraction reads as a percent whatever `unit` is.
    pub fn describe_in(&self, unit: Unit) -> String {
        match self {
            RollbackTrigger::Metric {
                check,
                breach,
                for_duration,
                consecutive,
            } => {
                let breach = match unit {
                    Unit::Number => breach.to_string(),
                    unit => breach.in_unit(unit),
                };
                match (for_duration, consecutive) {
                    (Some(d), _) => {
                        format!("{check} {breach} for {}", humantime::format_duration(*d))
                    }
                    (None, Some(n)) => format!("{check} {breach} for {n} measurements in a row"),
                    (None, None) => format!("{check} {breach}"),
                }
            }
            RollbackTrigger::UnhealthyTargets { above, .. } => {
                format!(
                    "more than {} of the new color's targets unhealthy",
                    Unit::Ratio.format(*above)
                )
            }
            RollbackTrigger::SmokeTestFailed => "any smoke test fails".into(),
        }
    }
}

/// Soak, scale-down delay and windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// How long success is measured after all traffic is on the new color.
    #[serde(default = "d_analysis", with = "humantime_serde")]
    pub analysis_window: Duration,
    /// How long the new color runs with the old still up, after analysis.
    #[serde(default = "d_soak", with = "humantime_serde")]
    pub soak: Duration,
    /// How long to wait after the soak before scaling the old color down.
    #[serde(default = "d_scale_down", with = "humantime_serde")]
    pub scale_down_delay: Duration,
    /// The longest a rollback may take before it halts for a human.
    #[serde(default = "d_rollback", with = "humantime_serde")]
    pub rollback_window: Duration,
    /// How often compute status is polled while waiting for stability.
    #[serde(default = "d_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often target health is read while the new color holds traffic.
    #[serde(default = "d_health", with = "humantime_serde")]
    pub health_interval: Duration,
    /// The least drain after a read-back confirmed a color holds no traffic,
    /// before it is scaled down or migrations are reverted; the router's own
    /// figure (ALB deregistration delay) wins when larger.
    #[serde(default = "d_drain", with = "humantime_serde")]
    pub drain: Duration,
    /// The longest a deployment holds before `on_hold_timeout` acts.
    #[serde(default = "d_hold_timeout", with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// How often a held deployment sends a reminder.
    #[serde(default = "d_hold_reminder", with = "humantime_serde")]
    pub hold_reminder: Duration,
    /// The least fresh data an evaluation covers (promote never cuts below it).
    #[serde(default = "d_min_evidence", with = "humantime_serde")]
    pub min_evidence: Duration,
}

fn d_analysis() -> Duration {
    defaults::ANALYSIS_WINDOW
}
fn d_soak() -> Duration {
    defaults::SOAK
}
fn d_scale_down() -> Duration {
    defaults::SCALE_DOWN_DELAY
}
fn d_rollback() -> Duration {
    defaults::ROLLBACK_WINDOW
}
fn d_poll() -> Duration {
    defaults::POLL_INTERVAL
}
fn d_health() -> Duration {
    defaults::HEALTH_INTERVAL
}
fn d_drain() -> Duration {
    defaults::DRAIN
}
fn d_hold_timeout() -> Duration {
    defaults::HOLD_TIMEOUT
}
fn d_hold_reminder() -> Duration {
    defaults::HOLD_REMINDER
}
fn d_min_evidence() -> Duration {
    defaults::MIN_EVIDENCE
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            analysis_window: defaults::ANALYSIS_WINDOW,
            soak: defaults::SOAK,
            scale_down_delay: defaults::SCALE_DOWN_DELAY,
            rollback_window: defaults::ROLLBACK_WINDOW,
            poll_interval: defaults::POLL_INTERVAL,
            health_interval: defaults::HEALTH_INTERVAL,
            drain: defaults::DRAIN,
            hold_timeout: defaults::HOLD_TIMEOUT,
            hold_reminder: defaults::HOLD_REMINDER,
            min_evidence: defaults::MIN_EVIDENCE,
        }
    }
}

/// The reference's rollback-time estimate ("Traffic switch: < 1 minute;
/// Full rollback (with DB): < 5 minutes; Verification: < 10 minutes"), as
/// targets the report sets the measured times against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackTargets {
    /// From the rollback's start until a read-back shows all traffic on the
    /// old color.
    #[serde(default = "t_switch", with = "humantime_serde")]
    pub traffic_switch: Duration,
    /// From the rollback's start until it finished (migrations reverted,
    /// the new color at zero, autoscaling restored).
    #[serde(default = "t_full", with = "humantime_serde")]
    pub full_rollback: Duration,
    /// The smoke tests on the old color once traffic is back on it.
    #[serde(default = "t_verify", with = "humantime_serde")]
    pub verification: Duration,
}

fn t_switch() -> Duration {
    defaults::TARGET_TRAFFIC_SWITCH
}
fn t_full() -> Duration {
    defaults::TARGET_FULL_ROLLBACK
}
fn t_verify() -> Duration {
    defaults::TARGET_VERIFICATION
}

impl Default for RollbackTargets {
    fn default() -> Self {
        RollbackTargets {
            traffic_switch: defaults::TARGET_TRAFFIC_SWITCH,
            full_rollback: defaults::TARGET_FULL_ROLLBACK,
            verification: defaults::TARGET_VERIFICATION,
        }
    }
}

impl RollbackTargets {
    /// Whether these are the reference's figures (left out of a
    /// serialized plan, so plans journaled before the field read the same).
    pub fn is_reference(&self) -> bool {
        *self == RollbackTargets::default()
    }
}

/// A point where the deployment waits for `promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// After smoke tests, before the new color gets any traffic.
    BeforeShift,
    /// Before the last traffic step (100% on the new color).
    BeforeFullTraffic,
    /// After the soak, before the old color is scaled down.
    BeforeScaleDown,
    /// Before contract migrations, which cannot be undone.
    BeforeContract,
}

/// Progress deadlines per phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// Preflight checks.
    #[serde(default = "dl_preflight", with = "humantime_serde")]
    pub preflight: Duration,
    /// Backup and its verification.
    #[serde(default = "dl_backup", with = "humantime_serde")]
    pub backup: Duration,
    /// Each migration phase and its verification.
    #[serde(default = "dl_migrate", with = "humantime_serde")]
    pub migrate: Duration,
    /// Preparing and scaling the new color until it is stable.
    #[serde(default = "dl_deploy", with = "humantime_serde")]
    pub deploy: Duration,
    /// Smoke tests.
    #[serde(default = "dl_smoke", with = "humantime_serde")]
    pub smoke: Duration,
    /// One traffic change and its read-back.
    #[serde(default = "dl_traffic", with = "humantime_serde")]
    pub traffic: Duration,
    /// Scaling the old color down.
    #[serde(default = "dl_scale_down", with = "humantime_serde")]
    pub scale_down: Duration,
    /// In a rollback, bringing an old color found below its capacity back
    /// to it; past this the deployment halts with nothing else touched.
    #[serde(default = "dl_restore_old", with = "humantime_serde")]
    pub restore_old: Duration,
}

fn dl_preflight() -> Duration {
    defaults::DEADLINE_PREFLIGHT
}
fn dl_backup() -> Duration {
    defaults::DEADLINE_BACKUP
}
fn dl_migrate() -> Duration {
    defaults::DEADLINE_MIGRATE
}
fn dl_deploy() -> Duration {
    defaults::DEADLINE_DEPLOY
}
fn dl_smoke() -> Duration {
    defaults::DEADLINE_SMOKE
}
fn dl_traffic() -> Duration {
    defaults::DEADLINE_TRAFFIC
}
fn dl_scale_down() -> Duration {
    defaults::DEADLINE_SCALE_DOWN
}
fn dl_restore_old() -> Duration {
    defaults::DEADLINE_RESTORE_OLD
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            preflight: defaults::DEADLINE_PREFLIGHT,
            backup: defaults::DEADLINE_BACKUP,
            migrate: defaults::DEADLINE_MIGRATE,
            deploy: defaults::DEADLINE_DEPLOY,
            smoke: defaults::DEADLINE_SMOKE,
            traffic: defaults::DEADLINE_TRAFFIC,
            scale_down: defaults::DEADLINE_SCALE_DOWN,
            restore_old: defaults::DEADLINE_RESTORE_OLD,
        }
    }
}

/// What an inconclusive analysis (no data, too few samples) does. It never promotes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InconclusivePolicy {
    /// Wait for a human to promote or abort.
    #[default]
    Pause,
    /// Roll back.
    Rollback,
}

/// How many instances the new color runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityPolicy {
    /// The larger of `replicas` and the old color's desired count as read
    /// once autoscaling is suspended: an autoscaler that holds the old color
    /// at 5 gets a new color of 5, not the plan's 3.
    #[default]
    AtLeastOld,
    /// Exactly `replicas`, whatever the old color runs.
    Fixed,
}

/// What a hold that lasts `timing.hold_timeout` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldTimeoutPolicy {
    /// Roll back (or halt, when traffic can no longer return to the old color).
    #[default]
    Rollback,
    /// Halt for a human, traffic left where it is and autoscaling restored
    /// on the color that holds it.
    Halt,
}

impl Plan {
    /// A plan with the reference procedure's numbers: three replicas,
    /// all-at-once, error rate < 1% and p95 < 500 ms over 15 minutes, automatic
    /// rollback on error rate > 5% or p95 > 1000 ms for 5 minutes, on more than
    /// half of the targets unhealthy and on any failed smoke test, an hour of
    /// soak and a 30-minute rollback window.
    ///
    /// `error_rate_query` and `p95_query` are the metric queries for the
    /// default metrics source, with `{service}`, `{color}`, `{version}` templates.
    pub fn reference(
        service: impl Into<String>,
        release: Release,
        error_rate_query: impl Into<String>,
        p95_query: impl Into<String>,
    ) -> Plan {
        Plan {
            service: service.into(),
            release,
            colors: ColorTargets::default(),
            replicas: defaults::REPLICAS,
            capacity: CapacityPolicy::AtLeastOld,
            strategy: Strategy::AllAtOnce,
            preflight: Preflight::default(),
            migrations: None,
            smoke_tests: Vec::new(),
            analysis: vec![
                AnalysisCheck::error_rate(error_rate_query),
                AnalysisCheck::p95_latency(p95_query),
            ],
            rollback_triggers: vec![
                RollbackTrigger::sustained_above("error-rate", defaults::ERROR_RATE_ROLLBACK),
                RollbackTrigger::sustained_above("p95-latency", defaults::P95_ROLLBACK_MS),
                RollbackTrigger::UnhealthyTargets {
                    above: defaults::UNHEALTHY_FRACTION,
                    consecutive: None,
                },
                RollbackTrigger::SmokeTestFailed,
            ],
            timing: Timing::default(),
            gates: Vec::new(),
            approvals: Vec::new(),
            window: None,
            rollback_targets: RollbackTargets::default(),
            deadlines: Deadlines::default(),
            on_inconclusive: InconclusivePolicy::Pause,
            on_hold_timeout: HoldTimeoutPolicy::Rollback,
            group: None,
            hooks: Vec::new(),
            production_checks: None,
        }
    }

    /// Parses a plan from JSON and validates it. Errors name the field.
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let plan: Plan = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "plan".to_string()
            } else {
                path
            };
            PlanError::new(field, e.into_inner().to_string())
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&AnalysisCheck> {
        self.analysis.iter().find(|c| c.name == name)
    }

    /// Checks every rule a plan must follow; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PlanError> {
        non_empty("service", &self.service)?;
        non_empty("release.version", &self.release.version)?;
        non_empty("release.image", &self.release.image)?;
        for (k, v) in &self.release.secrets {
            non_empty(&format!("release.secrets.{k}"), v)?;
        }
        if self.replicas == 0 {
            return Err(PlanError::new(
                "replicas",
                "must be at least 1: the new color needs serving capacity",
            ));
        }
        self.validate_strategy()?;
        for (i, s) in self.preflight.required_secrets.iter().enumerate() {
            non_empty(&format!("preflight.required_secrets[{i}].name"), &s.name)?;
            if let Some(age) = s.max_age {
                positive(&format!("preflight.required_secrets[{i}].max_age"), age)?;
            }
        }
        if let Some(m) = &self.migrations {
            if m.backup && m.backup_min_entries == 0 {
                return Err(PlanError::new(
                    "migrations.backup_min_entries",
                    "must be at least 1, or a backup with nothing in it would pass",
                ));
            }
        }
        unique("smoke_tests", self.smoke_tests.iter().map(String::as_str))?;
        for (i, n) in self.smoke_tests.iter().enumerate() {
            non_empty(&format!("smoke_tests[{i}]"), n)?;
        }
        if self.analysis.is_empty() {
            return Err(PlanError::new(
                "analysis",
                "at least one check is required: a deployment is never promoted without evidence",
            ));
        }
        unique("analysis", self.analysis.iter().map(|c| c.name.as_str()))?;
        for (i, c) in self.analysis.iter().enumerate() {
            let f = |name: &str| format!("analysis[{i}].{name}");
            non_empty(&f("name"), &c.name)?;
            non_empty(&f("query"), &c.query)?;
            positive(&f("interval"), c.interval)?;
            if let Some(w) = c.window {
                positive(&f("window"), w)?;
            }
            if c.min_samples == Some(0) {
                return Err(PlanError::new(
                    f("min_samples"),
                    "must be at least 1: no samples is no evidence",
                ));
            }
            c.unit
                .check(c.success.threshold)
                .map_err(|m| PlanError::new(f("success"), m))?;
            check_template(&f("query"), &c.query)?;
            if let Some(b) = &c.baseline {
                b.validate(&f("baseline"))?;
            }
        }
        for (i, t) in self.rollback_triggers.iter().enumerate() {
            let f = |name: &str| format!("rollback_triggers[{i}].{name}");
            match t {
                RollbackTrigger::Metric {
                    check,
                    breach,
                    for_duration,
                    consecutive,
                } => {
                    let Some(c) = self.check(check) else {
                        let known: Vec<&str> =
                            self.analysis.iter().map(|c| c.name.as_str()).collect();
                        return Err(PlanError::new(
                            f("check"),
                            format!(
                                "refers to check {check:?}, which does not exist; known checks: {}",
                                known.join(", ")
                            ),
                        ));
                    };
                    c.unit
                        .check(breach.threshold)
                        .map_err(|m| PlanError::new(f("breach"), m))?;
                    match (for_duration, consecutive) {
                        (Some(d), None) => positive(&f("for"), *d)?,
                        (None, Some(0)) => {
                            return Err(PlanError::new(f("consecutive"), "must be at least 1"))
                        }
                        (None, Some(_)) => {}
                        _ => return Err(PlanError::new(
                            f("for"),
                            "give exactly one of `for` (a duration) and `consecutive` (a count)",
                        )),
                    }
                }
                RollbackTrigger::UnhealthyTargets { above, consecutive } => {
                    if !(above.is_finite() && *above >= 0.0 && *above < 1.0) {
                        return Err(PlanError::new(
                            f("above"),
                            format!("{above} is out of range: expected a fraction from 0 up to (not including) 1"),
                        ));
                    }
                    if *consecutive == Some(0) {
                        return Err(PlanError::new(f("consecutive"), "must be at least 1"));
                    }
                }
                RollbackTrigger::SmokeTestFailed => {}
            }
        }
        if let Some(g) = &self.group {
            non_empty("group.name", &g.name)?;
            non_empty("group.id", &g.id)?;
            if !g.members.contains(&self.service) {
                return Err(PlanError::new(
                    "group.members",
                    format!("does not list this plan's service {:?}", self.service),
                ));
            }
            unique("group.members", g.members.iter().map(String::as_str))?;
        }
        let t = &self.timing;
        positive("timing.analysis_window", t.analysis_window)?;
        positive("timing.rollback_window", t.rollback_window)?;
        positive("timing.poll_interval", t.poll_interval)?;
        positive("timing.health_interval", t.health_interval)?;
        positive("timing.hold_timeout", t.hold_timeout)?;
        positive("timing.hold_reminder", t.hold_reminder)?;
        positive("timing.min_evidence", t.min_evidence)?;
        let d = &self.deadlines;
        for (name, v) in [
            ("deadlines.preflight", d.preflight),
            ("deadlines.backup", d.backup),
            ("deadlines.migrate", d.migrate),
            ("deadlines.deploy", d.deploy),
            ("deadlines.smoke", d.smoke),
            ("deadlines.traffic", d.traffic),
            ("deadlines.scale_down", d.scale_down),
            ("deadlines.restore_old", d.restore_old),
        ] {
            positive(name, v)?;
        }
        self.validate_hooks()?;
        let mut seen = BTreeSet::new();
        for (i, g) in self.gates.iter().enumerate() {
            if !seen.insert(*g) {
                return Err(PlanError::new(format!("gates[{i}]"), "listed twice"));
            }
        }
        self.validate_schedule()?;
        Ok(())
    }

    fn validate_hooks(&self) -> Result<(), PlanError> {
        let mut seen = BTreeSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let f = |name: &str| format!("hooks[{i}].{name}");
            non_empty(&f("name"), &h.name)?;
            positive(&f("timeout"), h.timeout)?;
            if !seen.insert((h.name.as_str(), h.point)) {
                return Err(PlanError::new(
                    f("name"),
                    format!("hook {:?} is listed twice at {}", h.name, h.point),
                ));
            }
        }
        if let Some(p) = &self.production_checks {
            non_empty("production_checks.url", &p.url)?;
            if p.smoke_tests.is_empty() {
                return Err(PlanError::new(
                    "production_checks.smoke_tests",
                    "name at least one smoke test, or leave production_checks out",
                ));
            }
            unique(
                "production_checks.smoke_tests",
                p.smoke_tests.iter().map(String::as_str),
            )?;
            for (i, n) in p.smoke_tests.iter().enumerate() {
                non_empty(&format!("production_checks.smoke_tests[{i}]"), n)?;
            }
        }
        Ok(())
    }

    /// The hooks of the plan at `point`, in plan order, with their index.
    pub fn hooks_at(&self, point: HookPoint) -> impl Iterator<Item = (usize, &LifecycleHook)> {
        self.hooks
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.point == point)
    }

    /// Approvals, the window, preflight dependencies and rollback targets.
    fn validate_schedule(&self) -> Result<(), PlanError> {
        let mut seen = BTreeSet::new();
        for (i, a) in self.approvals.iter().enumerate() {
            if !seen.insert(a.gate) {
                return Err(PlanError::new(
                    format!("approvals[{i}].gate"),
                    "this gate already has approvals listed: one entry per gate",
                ));
            }
            a.validate(&format!("approvals[{i}]"))?;
        }
        if let Some(w) = &self.window {
            w.validate("window")?;
        }
        unique(
            "preflight.checks",
            self.preflight.checks.iter().map(String::as_str),
        )?;
        for (i, n) in self.preflight.checks.iter().enumerate() {
            non_empty(&format!("preflight.checks[{i}]"), n)?;
        }
        let mut versions = BTreeSet::new();
        for (i, v) in self.preflight.migrations_applied.iter().enumerate() {
            if !versions.insert(*v) {
                return Err(PlanError::new(
                    format!("preflight.migrations_applied[{i}]"),
                    format!("{v} is listed twice"),
                ));
            }
        }
        let t = &self.rollback_targets;
        positive("rollback_targets.traffic_switch", t.traffic_switch)?;
        positive("rollback_targets.full_rollback", t.full_rollback)?;
        positive("rollback_targets.verification", t.verification)?;
        Ok(())
    }

    /// The approval gate of `gate`, if the plan has one.
    pub fn approval_gate(&self, gate: Gate) -> Option<&ApprovalGate> {
        self.approvals.iter().find(|a| a.gate == gate)
    }

    fn validate_strategy(&self) -> Result<(), PlanError> {
        match &self.strategy {
            Strategy::AllAtOnce => Ok(()),
            Strategy::Linear {
                step_percent,
                step_wait,
            } => {
                if *step_percent == 0 || *step_percent > 100 || 100 % *step_percent != 0 {
                    return Err(PlanError::new(
                        "strategy.step_percent",
                        format!("{step_percent} does not add up to 100 in equal steps: use a divisor of 100 such as 10, 20, 25 or 50"),
                    ));
                }
                positive("strategy.step_wait", *step_wait)
            }
            Strategy::Canary { percent, wait } => {
                if *percent == 0 || *percent >= 100 {
                    return Err(PlanError::new(
                        "strategy.percent",
                        format!("{percent} is out of range: a canary takes 1 to 99 percent"),
                    ));
                }
                positive("strategy.wait", *wait)
            }
            Strategy::Steps { steps } => {
                if steps.is_empty() {
                    return Err(PlanError::new("strategy.steps", "needs at least one step"));
                }
                let mut prev = 0u8;
                for (i, s) in steps.iter().enumerate() {
                    if s.percent <= prev || s.percent > 100 {
                        return Err(PlanError::new(
                            format!("strategy.steps[{i}].percent"),
                            format!(
                                "{}% must be greater than the step before ({prev}%) and at most 100%: the percents are cumulative (the share of traffic on the new color after each step)",
                                s.percent
                            ),
                        ));
                    }
                    prev = s.percent;
                }
                // Checked before the waits: a list ending short of 100 is
                // the real problem of `[10 (1s), 60]`, not the last wait.
                if prev != 100 {
                    return Err(PlanError::new(
                        format!("strategy.steps[{}].percent", steps.len() - 1),
                        format!("the steps end at {prev}%; the percents are cumulative: the last step must be 100%"),
                    ));
                }
                for (i, s) in steps.iter().enumerate() {
                    if s.percent < 100 {
                        positive(&format!("strategy.steps[{i}].wait"), s.wait)?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), PlanError> {
    if v.trim().is_empty() {
        Err(PlanError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

fn positive(field: &str, d: Duration) -> Result<(), PlanError> {
    if d.is_zero() {
        Err(PlanError::new(
            field,
            "must be a positive duration, e.g. \"5m\"",
        ))
    } else {
        Ok(())
    }
}

fn unique<'a>(field: &str, names: impl Iterator<Item = &'a str>) -> Result<(), PlanError> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            return Err(PlanError::new(
                format!("{field}[{i}]"),
                format!("{n:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// The variables a query template may name.
pub const TEMPLATE_VARIABLES: [&str; 3] = ["service", "color", "version"];

fn check_template(field: &str, template: &str) -> Result<(), PlanError> {
    render_template(template, |_| Some(""))
        .map(|_| ())
        .map_err(|m| PlanError::new(field, m))
}

/// Fills `{name}` placeholders from `lookup`.
///
/// Datadog scopes use braces too (`{service:order-api}`): only a brace group
/// that is exactly a variable-like name (letters, digits, `_`, `-`) is a
/// placeholder; any other brace is kept as written. A variable-like name that
/// `lookup` does not know is an error naming it.
pub fn render_template<'a>(
    template: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(['{', '}']);
        match end {
            Some(end) if after.as_bytes()[end] == b'}' && is_variable_name(&after[..end]) => {
                let name = &after[..end];
                match lookup(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        return Err(format!(
                            "unknown template variable {{{name}}}: expected one of {}",
                            TEMPLATE_VARIABLES.map(|v| format!("{{{v}}}")).join(", ")
                        ))
                    }
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Plan {
        Plan::reference(
            "order-api",
            Release::new("2.5.0", "order-api:2.5.0-abc123"),
            "sum:api.errors{service:{service},color:{color}}.as_rate()",
            "p95:api.response_time{service:{service},color:{color}}",
        )
    }

    #[test]
    fn the_reference_plan_is_valid_and_carries_the_reference_numbers() {
        let p = reference();
        p.validate().unwrap();
        assert_eq!(p.replicas, 3);
        assert_eq!(p.timing.soak, Duration::from_secs(3600));
        assert_eq!(p.check("error-rate").unwrap().success, Condition::lt(0.01));
        assert_eq!(
            p.check("p95-latency").unwrap().success,
            Condition::lt(500.0)
        );
        assert_eq!(
            p.rollback_triggers[0].describe(),
            "error-rate > 0.05 for 5m"
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(Plan::from_json(&json).unwrap(), p);
    }

    fn field_of(json: serde_json::Value) -> String {
        Plan::from_json(&json.to_string()).unwrap_err().field
    }

    fn reference_json() -> serde_json::Value {
        serde_json::to_value(reference()).unwrap()
    }

    #[test]
    fn an_unknown_field_is_named() {
        let mut v = reference_json();
        v["timing"]["soak_time"] = "1h".into();
        let err = Plan::from_json(&v.to_string()).unwrap_err();
        assert_eq!(err.field, "timing.soak_time");
        assert!(err.message.contains("soak_time"), "{err}");
    }

    #[test]
    fn a_zero_duration_is_refused_where_it_must_be_positive() {
        let mut v = reference_json();
        v["analysis"][1]["interval"] = "0s".into();
        assert_eq!(field_of(v), "analysis[1].interval");
        let mut v = reference_json();
        v["timing"]["rollback_window"] = "0s".into();
        assert_eq!(field_of(v), "timing.rollback_window");
    }

    #[test]
    fn a_negative_duration_does_not_parse_and_names_the_field() {
        let mut v = reference_json();
        v["timing"]["soak"] = "-5m".into();
        assert_eq!(field_of(v), "timing.soak");
    }

    #[test]
    fn steps_must_add_up_to_100() {
        let mut v = reference_json();
        v["strategy"] =
            serde_json::json!({"type": "linear", "step_percent": 30, "step_wait": "1m"});
        assert_eq!(field_of(v), "strategy.step_percent");
        let mut v = reference_json();
        v["strategy"] = serde_json::json!({"type": "steps", "steps": [
            {"percent": 10, "wait": "1m"}, {"percent": 50, "wait": "1m"}]});
        assert_eq!(field_of(v), "strategy.steps[1].percent");
    }

    #[test]
    fn a_threshold_out_of_range_is_refused() {
        let mut v = reference_json();
        v["analysis"][0]["success"] = "< 5".into();
        let err = Plan::from_json(&v.to_string()).unwrap_err();
        assert_eq!(err.field, "analysis[0].success");
        assert!(err.message.contains("1% is 0.01"), "{err}");
        let mut v = reference_json();
        v["rollback_triggers"][2]["above"] = 1.5.into();
        assert_eq!(field_of(v), "rollback_triggers[2].above");
    }

    #[test]
    fn a_trigger_naming_a_missing_check_is_refused() {
        let mut v = reference_json();
        v["rollback_triggers"][0]["check"] = "errors".into();
        let err = Plan::from_json(&v.to_string()).unwrap_err();
        assert_eq!(err.field, "rollback_triggers[0].check");
        assert!(err.message.contains("error-rate, p95-latency"), "{err}");
    }

    #[test]
    fn a_plan_without_evidence_is_refused() {
        let mut v = reference_json();
        v["analysis"] = serde_json::json!([]);
        v["rollback_triggers"] = serde_json::json!([]);
        assert_eq!(field_of(v), "analysis");
    }

    #[test]
    fn strategies_expand_to_steps_ending_at_100() {
        let linear = Strategy::Linear {
            step_percent: 25,
            step_wait: Duration::from_secs(60),
        };
        let p: Vec<u8> = linear.steps().iter().map(|s| s.percent).collect();
        assert_eq!(p, [25, 50, 75, 100]);
        let canary = Strategy::Canary {
            percent: 10,
            wait: Duration::from_secs(300),
        };
        assert_eq!(canary.steps().len(), 2);
        assert_eq!(Strategy::AllAtOnce.steps()[0].percent, 100);
    }

    #[test]
    fn templates_fill_known_variables_and_keep_datadog_scopes() {
        let r = render_template("avg:x{service:{service},color:{color}}", |n| match n {
            "service" => Some("order-api"),
            "color" => Some("blue"),
            _ => None,
        })
        .unwrap();
        assert_eq!(r, "avg:x{service:order-api,color:blue}");
        let err = render_template("{region}", |_| None).unwrap_err();
        assert!(err.contains("{region}"), "{err}");
    }
}
