//! The deployment spec file: every section of a hand-written deployment
//! procedure (scope, target, migrations, smoke tests, monitoring and rollback
//! triggers, soak, secrets, notifications, acceptance criteria) as TOML or
//! YAML, loaded into a validated [`Spec`] and converted into a core [`Plan`].
//!
//! Loading never panics. Every error is a [`SpecError`] with the file, line
//! and column, the field and what was expected; an unknown key comes with a
//! "did you mean" suggestion.
//!
//! ```
//! use bluegreen_cli::spec::Spec;
//!
//! let text = r#"
//! [scope]
//! service = "demo-app"
//! version = "2.0.0"
//! image = "bluegreen-demo-app"
//!
//! [target.fake]
//! state = "world.json"
//!
//! [monitoring]
//! provider = "fake"
//! fake = { values = { error-rate = 0.001 } }
//!
//! [[monitoring.checks]]
//! name = "error-rate"
//! query = "errors:{color}"
//! unit = "ratio"
//! success = "< 0.01"
//! "#;
//! let spec = Spec::from_str(text, "demo.toml").unwrap();
//! assert_eq!(spec.plan().unwrap().service, "demo-app");
//!
//! let err = Spec::from_str(&text.replace("[scope]", "[scope]\nverison = \"x\""), "demo.toml").unwrap_err();
//! assert!(err.to_string().contains("did you mean `version`"), "{err}");
//! assert_eq!(err.line, 3);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::command::{CommandSpec, HookRun, HookSpec, SmokeTestSpec};
use bluegreen_core::plan::{
    ApprovalGate, CapacityPolicy, ColorTarget, ColorTargets, Deadlines, DeployWindow, Gate,
    HoldTimeoutPolicy, InconclusivePolicy, MigrationSettings, Preflight, RequiredSecret,
    RollbackTargets, RollbackTrigger, Strategy, Timing,
};
use bluegreen_core::provider::MigrationPhase;
use bluegreen_core::{Plan, Release};
use bluegreen_http::HttpCheck;
use serde::{Deserialize, Serialize};

/// A bad spec: where, which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when the file could not be read).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, dotted (`timing.soak`, `monitoring.checks[0].success`), or
    /// empty when the error is about the file as a whole.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecError {}

/// A reference to a secret: its name in the secret store, or an environment
/// variable of the deploying process. Never the value itself.
///
/// Written `{ secret = "prod/order-api/db-password" }`, `{ env = "DD_API_KEY" }`,
/// `"secret:prod/order-api/db-password"` or `"env:DD_API_KEY"`. Any other
/// string is refused as a secret written as plain text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SecretRefRepr", into = "SecretRefRepr")]
pub enum SecretRef {
    /// A secret in the secret store, by name or ARN.
    Store(String),
    /// An environment variable of the deploying process.
    Env(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Store(n) => write!(f, "secret:{n}"),
            SecretRef::Env(n) => write!(f, "env:{n}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SecretRefRepr {
    Text(String),
    Table(SecretRefTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRefTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
}

/// The message for a secret written where a reference is required.
pub const PLAIN_TEXT_SECRET: &str = "a secret written as plain text where a reference is required: write { secret = \"name-in-the-secret-store\" } or { env = \"VARIABLE\" } (or \"secret:...\" / \"env:...\")";

impl TryFrom<SecretRefRepr> for SecretRef {
    type Error = String;
    fn try_from(r: SecretRefRepr) -> Result<Self, String> {
        let non_empty = |s: String, what: &str| {
            if s.trim().is_empty() {
                Err(format!(
                    "the {what} of a secret reference must not be empty"
                ))
            } else {
                Ok(s)
            }
        };
        match r {
            SecretRefRepr::Text(t) => {
                if let Some(n) = t.strip_prefix("secret:") {
                    Ok(SecretRef::Store(non_empty(n.to_string(), "name")?))
                } else if let Some(n) = t.strip_prefix("env:") {
                    Ok(SecretRef::Env(non_empty(n.to_string(), "variable")?))
                } else {
                    Err(PLAIN_TEXT_SECRET.to_string())
                }
            }
            SecretRefRepr::Table(SecretRefTable {
                secret: Some(s),
                env: None,
            }) => Ok(SecretRef::Store(non_empty(s, "name")?)),
            SecretRefRepr::Table(SecretRefTable {
                secret: None,
                env: Some(e),
            }) => Ok(SecretRef::Env(non_empty(e, "variable")?)),
            SecretRefRepr::Table(_) => {
                Err("a secret reference has exactly one of `secret` and `env`".into())
            }
        }
    }
}

impl From<SecretRef> for SecretRefRepr {
    fn from(r: SecretRef) -> Self {
        match r {
            SecretRef::Store(s) => SecretRefRepr::Table(SecretRefTable {
                secret: Some(s),
                env: None,
            }),
            SecretRef::Env(e) => SecretRefRepr::Table(SecretRefTable {
                secret: None,
                env: Some(e),
            }),
        }
    }
}

/// A whole deployment spec. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What is deployed.
    pub scope: Scope,
    /// Where it runs: `local`, `ecs` plus `alb`, or `fake`.
    pub target: Target,
    /// Replicas, strategy, gates, endpoints.
    #[serde(default)]
    pub deployment: Deployment,
    /// Plain environment variables of the new release.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets the release needs, with their rotation policy.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// Backup and database migrations.
    #[serde(default)]
    pub migrations: Option<Migrations>,
    /// HTTP checks against staging before anything changes.
    #[serde(default)]
    pub staging_checks: Vec<HttpCheck>,
    /// Smoke tests on the new color before it gets traffic: HTTP checks,
    /// or commands (an entry with `command = [...]`).
    #[serde(default)]
    pub smoke_tests: Vec<SmokeTestSpec>,
    /// Lifecycle hooks: commands or webhooks at named points (`[[hooks]]`,
    /// see [`HookSpec`]).
    #[serde(default)]
    pub hooks: Vec<HookSpec>,
    /// Smoke tests (by name, from `[[smoke_tests]]`) run through the
    /// production URL after each traffic change and after a rollback
    /// (`[production_checks]`), recorded apart from the checks on each color.
    #[serde(default)]
    pub production_checks: Option<bluegreen_core::plan::ProductionChecks>,
    /// Metrics provider and the checks that decide promotion.
    pub monitoring: Monitoring,
    /// What rolls back without a human.
    #[serde(default)]
    pub rollback_triggers: Vec<RollbackTrigger>,
    /// Soak, scale-down delay and windows.
    #[serde(default)]
    pub timing: Timing,
    /// Progress deadlines per phase.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// When a deployment may start: weekly windows and blackouts in a time
    /// zone (`[window]`); any time when absent.
    #[serde(default)]
    pub window: Option<DeployWindow>,
    /// Gates that pass on approvals from named people (`[[approvals]]`),
    /// given with `bluegreen approve --as NAME`.
    #[serde(default)]
    pub approvals: Vec<ApprovalGate>,
    /// What must be in place before anything changes (`[preflight]`).
    #[serde(default)]
    pub preflight: PreflightSpec,
    /// The rollback-time targets the report sets the measured times
    /// against (`[rollback_targets]`; the reference's by default).
    #[serde(default)]
    pub rollback_targets: RollbackTargets,
    /// Datadog events and Slack messages.
    #[serde(default)]
    pub notifications: Notifications,
    /// Criteria evaluated pass or fail from the report at the end.
    #[serde(default)]
    pub acceptance: Vec<Criterion>,
    /// Where the deployment journal is kept.
    #[serde(default)]
    pub journal: JournalSpec,
}

/// What is deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// The service, e.g. `order-api`.
    pub service: String,
    /// The version, e.g. `2.5.0`.
    pub version: String,
    /// The image, e.g. `order-api:2.5.0-abc123`.
    pub image: String,
    /// The source repository.
    #[serde(default)]
    pub repository: Option<String>,
    /// The tag or branch.
    #[serde(default)]
    pub tag: Option<String>,
    /// The CI build.
    #[serde(default)]
    pub build: Option<String>,
    /// The environment's name, e.g. `production`.
    #[serde(default)]
    pub environment: Option<String>,
    /// What this release changes.
    #[serde(default)]
    pub description: Option<String>,
}

/// Where the service runs. Exactly one of `local`, `fake`, or `ecs` with `alb`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Local child processes behind an in-process proxy.
    #[serde(default)]
    pub local: Option<LocalTarget>,
    /// ECS services, one per color.
    #[serde(default)]
    pub ecs: Option<EcsTarget>,
    /// The ALB listener or rule that splits traffic.
    #[serde(default)]
    pub alb: Option<AlbTarget>,
    /// A simulated world kept in a file (tests, rehearsals).
    #[serde(default)]
    pub fake: Option<FakeTarget>,
}

/// Why a spec with the fake target is refused by a binary built without
/// the `testing` feature (the release build).
pub const FAKE_NOT_BUILT: &str = "the fake target kind is a test double, and this bluegreen binary was built without it (without the `testing` feature of bluegreen-cli); use [target.local] or [target.ecs] with [target.alb], or build with `cargo install --path crates/bluegreen-cli --features testing` for tests";

/// The error of a fake provider asked of a binary built without the
/// `testing` feature (the spec check refuses such a spec first).
#[cfg(not(feature = "testing"))]
pub(crate) fn fake_not_built() -> bluegreen_core::Error {
    bluegreen_core::Error::invalid_input(format!("target.fake: {FAKE_NOT_BUILT}"))
}

/// The target kinds, as the spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `[target.local]`.
    Local,
    /// `[target.ecs]` and `[target.alb]`.
    EcsAlb,
    /// `[target.fake]`.
    Fake,
}

/// `[target.local]`: the local provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTarget {
    /// The program and arguments of one instance; the built-in demo app if absent.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The proxy's address, e.g. `127.0.0.1:8080` (a free port if absent).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The version the serving color runs before the deployment.
    #[serde(default = "default_initial_version")]
    pub initial_version: String,
    /// Environment of the serving color before the deployment.
    #[serde(default)]
    pub initial_env: BTreeMap<String, String>,
    /// The path instances answer health checks on.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Clients sending load through the proxy during the deployment (the
    /// proxy's metrics need traffic to measure).
    #[serde(default = "default_load_workers")]
    pub load_workers: usize,
    /// Variables of the deployer's environment passed through to the
    /// instances by name, e.g. `["TZ", "LANG"]` (default none). Instances
    /// get no other variable of the deployer's but `PATH`.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Keep the instances' log directory after the deployment (default
    /// false: it is removed when the local target shuts down).
    #[serde(default)]
    pub keep_logs: bool,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_initial_version() -> String {
    "1.0.0".into()
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_load_workers() -> usize {
    4
}

/// Per-color names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerColor {
    /// Blue's.
    pub blue: String,
    /// Green's.
    pub green: String,
}

/// `[target.ecs]`: one ECS service per color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsTarget {
    /// The cluster, e.g. `production`.
    pub cluster: String,
    /// The region, e.g. `us-east-1`; if absent, the AWS configuration's
    /// (`AWS_REGION`, the profile's, the instance's).
    #[serde(default)]
    pub region: Option<String>,
    /// The service of each color.
    pub services: PerColor,
    /// The container whose image is replaced (the first if absent).
    #[serde(default)]
    pub container: Option<String>,
    /// Replica regions, for the record.
    #[serde(default)]
    pub replica_regions: Vec<String>,
    /// An endpoint override (an emulator).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The profile of the shared AWS config and credentials files (else
    /// `AWS_PROFILE`, else `default`).
    #[serde(default)]
    pub profile: Option<String>,
    /// An IAM role to assume with the resolved credentials, e.g.
    /// `arn:aws:iam::123456789012:role/deployer`.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires (with `role_arn`).
    #[serde(default)]
    pub external_id: Option<String>,
    /// The assumed role's session name (with `role_arn`; default
    /// `bluegreen`), shown in CloudTrail and the caller's ARN.
    #[serde(default)]
    pub session_name: Option<String>,
}

/// `[target.alb]`: the weighted forward of a listener or rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlbTarget {
    /// The load balancer's name, for the record.
    #[serde(default)]
    pub name: Option<String>,
    /// The listener ARN (give this or `rule_arn`).
    #[serde(default)]
    pub listener_arn: Option<String>,
    /// The rule ARN.
    #[serde(default)]
    pub rule_arn: Option<String>,
    /// The target group ARN of each color.
    pub target_groups: PerColor,
}

/// `[target.fake]`: a simulated world in a JSON file, shared by every process
/// that opens it (the crash tests kill and resume deployers against it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeTarget {
    /// The world's state file (relative to the spec's directory).
    pub state: PathBuf,
    /// The version the serving color runs in a new world.
    #[serde(default = "default_initial_version")]
    pub initial_version: String,
    /// Run under paused (virtual) time: waits take no real time.
    #[serde(default)]
    pub paused_time: bool,
    /// The migrations the fake runner knows.
    #[serde(default)]
    pub migrations: Vec<FakeMigration>,
}

/// One migration of the fake runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeMigration {
    /// Its version.
    pub version: u64,
    /// Its name.
    pub name: String,
    /// Expand or contract.
    #[serde(default = "expand")]
    pub phase: MigrationPhase,
    /// Whether it has a down migration.
    #[serde(default = "yes")]
    pub reversible: bool,
    /// Already applied when the world is created (by no deployment), so a
    /// spec's `[preflight] migrations_applied` can name it.
    #[serde(default)]
    pub applied: bool,
}

fn expand() -> MigrationPhase {
    MigrationPhase::Expand
}
fn yes() -> bool {
    true
}

/// `[preflight]`: the release's dependencies, checked before anything
/// changes; a failure refuses the deployment (exit 4) naming the field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightSpec {
    /// Migration versions the database must already have applied, read
    /// from the migration runner's ledger (the reference: "Database
    /// migration 024 (must be applied)").
    #[serde(default)]
    pub migrations_applied: Vec<u64>,
    /// HTTP checks that must pass; each names its own endpoint (no base
    /// URL is filled in).
    #[serde(default)]
    pub checks: Vec<HttpCheck>,
}

/// `[deployment]`: replicas, strategy, gates and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Instances of the new color: the least, unless `capacity` is `fixed`.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// `at-least-old` (the default: the larger of `replicas` and the old
    /// color's live desired count) or `fixed`.
    #[serde(default)]
    pub capacity: CapacityPolicy,
    /// How traffic moves.
    #[serde(default)]
    pub strategy: Strategy,
    /// Where a human must promote.
    #[serde(default)]
    pub gates: Vec<Gate>,
    /// What inconclusive evidence does.
    #[serde(default)]
    pub on_inconclusive: InconclusivePolicy,
    /// What a hold lasting `timing.hold_timeout` does: `rollback` or `halt`.
    #[serde(default)]
    pub on_hold_timeout: HoldTimeoutPolicy,
    /// Blue's base URL for smoke tests (the compute provider's if absent).
    #[serde(default)]
    pub blue_url: Option<String>,
    /// Green's base URL.
    #[serde(default)]
    pub green_url: Option<String>,
    /// Staging's base URL, for the staging checks.
    #[serde(default)]
    pub staging_url: Option<String>,
    /// The bound on each provider call, e.g. `"30s"` (default 60 s). Must be
    /// below `journal.lease_ttl`: a resumed deployer waits out the previous
    /// one's lease plus this before its first change.
    #[serde(default, with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
}

fn default_replicas() -> u32 {
    bluegreen_core::plan::defaults::REPLICAS
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            replicas: default_replicas(),
            capacity: CapacityPolicy::default(),
            strategy: Strategy::default(),
            gates: Vec::new(),
            on_inconclusive: InconclusivePolicy::default(),
            on_hold_timeout: HoldTimeoutPolicy::default(),
            blue_url: None,
            green_url: None,
            staging_url: None,
            call_timeout: None,
        }
    }
}

/// `[[secrets]]`: a secret the release needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Its name in the secret store, e.g. `prod/order-api/db-password`.
    pub name: String,
    /// The environment variable the release receives it in, if any.
    #[serde(default)]
    pub env: Option<String>,
    /// How often it must be rotated: a duration (`"90d"`) or `"on-compromise"`.
    pub rotation: Rotation,
    /// What it is, for the record.
    #[serde(default)]
    pub description: Option<String>,
    /// Never allowed: present only to refuse a value written in the spec.
    #[serde(default, skip_serializing)]
    pub value: Option<serde_json::Value>,
}

/// A rotation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Rotation {
    /// Rotated at least this often.
    Every(Duration),
    /// Rotated only when compromised: no age limit.
    OnCompromise,
}

impl TryFrom<String> for Rotation {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim() == "on-compromise" {
            return Ok(Rotation::OnCompromise);
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Ok(Rotation::Every(d)),
            _ => Err(format!(
                "rotation {s:?}: expected a positive duration such as \"90d\" or \"180d\", or \"on-compromise\""
            )),
        }
    }
}

impl From<Rotation> for String {
    fn from(r: Rotation) -> String {
        match r {
            Rotation::Every(d) => humantime::format_duration(d).to_string(),
            Rotation::OnCompromise => "on-compromise".into(),
        }
    }
}

/// `[migrations]`: backup and migrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migrations {
    /// The runner: `postgres`, or `fake` with the fake target.
    pub runner: MigrationRunnerKind,
    /// The database URL, as a reference (it holds a password). TLS is
    /// required and verified unless the URL says `sslmode=disable`; give a
    /// private CA with `sslrootcert=/path/ca.pem` in the URL.
    #[serde(default)]
    pub database_url: Option<SecretRef>,
    /// Allow `sslmode=disable` to a host that is not loopback (default
    /// false: the password would cross the network in plaintext).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Run a pending migration whose version is below the highest applied
    /// one of its phase, with a warning (default false: refused, naming both
    /// versions and checksums, as it was written against an older schema).
    #[serde(default)]
    pub allow_out_of_order: bool,
    /// The directory of migration files (relative to the spec).
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Take and verify a backup first.
    #[serde(default = "yes")]
    pub backup: bool,
    /// The fewest entries the backup must list.
    #[serde(default = "default_backup_entries")]
    pub backup_min_entries: u64,
    /// Where backups go (relative to the spec).
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// Tables whose row counts must not change, checked after each phase.
    #[serde(default)]
    pub unchanged_row_counts: Vec<String>,
}

fn default_backup_entries() -> u64 {
    bluegreen_core::plan::defaults::BACKUP_MIN_ENTRIES
}

/// Which migration runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationRunnerKind {
    /// `bluegreen-postgres`.
    Postgres,
    /// The fake target's runner.
    Fake,
}

/// `[monitoring]`: the metrics provider and the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Which provider answers the checks.
    pub provider: MetricsKind,
    /// Datadog settings.
    #[serde(default)]
    pub datadog: Option<DatadogSettings>,
    /// Prometheus settings.
    #[serde(default)]
    pub prometheus: Option<PrometheusSettings>,
    /// Fake values (for the fake target).
    #[serde(default)]
    pub fake: Option<FakeMetrics>,
    /// A dashboard link, for the record.
    #[serde(default)]
    pub dashboard: Option<String>,
    /// The checks that decide promotion.
    #[serde(default)]
    pub checks: Vec<bluegreen_core::plan::AnalysisCheck>,
    /// Commands that print a number, each a metrics source a check names
    /// as its `source`.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    /// More metrics sources a check names as its `source`
    /// (`[[monitoring.sources]]`): CloudWatch metrics, logs counts and
    /// alarms, Datadog logs counts and monitors.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

/// `[[monitoring.sources]]`: a named metrics source, e.g.
/// `{ name = "app-logs", kind = "cloudwatch-logs" }`. The CloudWatch kinds
/// use `[target.ecs]`'s AWS configuration (and `[target.alb]`'s target
/// groups for `target_group={color}`); the Datadog kinds use
/// `[monitoring.datadog]`'s keys; `kind = "postgres"` gives its own
/// `database_url` reference (and optionally `statement_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The name checks give as `source`.
    pub name: String,
    /// What answers.
    pub kind: SourceKind,
    /// `kind = "postgres"` only: the database URL, as a reference (it holds
    /// a password), with the rules of `migrations.database_url`: TLS
    /// required and verified unless the URL says `sslmode=disable`, a
    /// private CA as `sslrootcert=/path/ca.pem`; never printed.
    #[serde(default)]
    pub database_url: Option<SecretRef>,
    /// `kind = "postgres"` only: allow `sslmode=disable` to a host that is
    /// not loopback (default false).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// `kind = "postgres"` only: each check's statement is cancelled after
    /// this long, e.g. `"2s"` (default 5 s,
    /// `bluegreen_postgres::PostgresMetrics::DEFAULT_STATEMENT_TIMEOUT`).
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
}

/// The kinds of `[[monitoring.sources]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// CloudWatch metrics (`bluegreen_cloudwatch::CloudWatchMetrics`): presets
    /// `alb-error-rate`, `alb-p95-ms`, `ecs-cpu`, `ecs-memory`, `metric`, `math`.
    Cloudwatch,
    /// Count of a filter pattern in CloudWatch Logs
    /// (`logs group=G stream_prefix=P pattern=F`).
    CloudwatchLogs,
    /// CloudWatch alarms in ALARM state (`alarms names="A,B"` or `alarms prefix=P`).
    CloudwatchAlarms,
    /// Count of a Datadog Logs query (`SCOPE | MATCH`).
    DatadogLogs,
    /// Datadog monitors with the given tags in Alert state (`service:x,severity:critical`).
    DatadogMonitors,
    /// PostgreSQL (`bluegreen_postgres::PostgresMetrics`): SQL returning one
    /// number, e.g. the connection pool's use
    /// `select count(*)::float8 / current_setting('max_connections')::float8 from pg_stat_activity`,
    /// or `pg_stat_statements [top N]`, the slow-query regression (1.0 = as
    /// fast as at the snapshot taken when the deployer starts).
    Postgres,
}

impl SourceKind {
    /// Whether it reads CloudWatch (and so needs `[target.ecs]`).
    pub fn is_cloudwatch(self) -> bool {
        matches!(
            self,
            SourceKind::Cloudwatch | SourceKind::CloudwatchLogs | SourceKind::CloudwatchAlarms
        )
    }
}

/// The metrics providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsKind {
    /// `bluegreen-datadog`.
    Datadog,
    /// `bluegreen-prometheus`.
    Prometheus,
    /// The local proxy's own metrics (`error_rate:{color}`, `p95_ms:{color}`).
    Local,
    /// Constant values from `[monitoring.fake]`.
    Fake,
    /// CloudWatch metrics (`bluegreen-cloudwatch`), with `[target.ecs]`'s AWS
    /// configuration.
    Cloudwatch,
}

/// Datadog settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogSettings {
    /// The site, e.g. `datadoghq.com`.
    #[serde(default = "default_site")]
    pub site: String,
    /// The API key, as a reference.
    pub api_key: SecretRef,
    /// The application key (needed for queries), as a reference.
    #[serde(default)]
    pub app_key: Option<SecretRef>,
}

fn default_site() -> String {
    "datadoghq.com".into()
}

/// Prometheus settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSettings {
    /// The server's base URL.
    pub url: String,
}

/// Constant fake metric values, by check name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeMetrics {
    /// Value of each check.
    pub values: BTreeMap<String, f64>,
}

/// `[notifications]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    /// Post Datadog events (uses `[monitoring.datadog]`'s keys unless given here).
    #[serde(default)]
    pub datadog: Option<DatadogEvents>,
    /// Post to a Slack incoming webhook.
    #[serde(default)]
    pub slack: Option<SlackSettings>,
    /// Page through PagerDuty (Events API v2): trigger on a rollback or a
    /// halt, resolve on success.
    #[serde(default)]
    pub pagerduty: Option<PagerDutySettings>,
}

/// `[notifications.pagerduty]`: an alert per deployment (its id is the
/// `dedup_key`), triggered on a rollback or a halt and resolved on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    /// The Events API v2 integration (routing) key, as a reference: it is
    /// a credential.
    pub routing_key: SecretRef,
    /// `critical`, `error`, `warning` or `info` for every trigger; the
    /// notification's own if absent (a rollback `warning`, a halt `error`,
    /// or `critical` after an irreversible migration).
    #[serde(default)]
    pub severity: Option<bluegreen_http::pagerduty::PagerDutySeverity>,
    /// `payload.source`: where the problem is (the service if absent).
    #[serde(default)]
    pub source: Option<String>,
    /// The Events API endpoint, `https` only (default
    /// `https://events.pagerduty.com/v2/enqueue`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Datadog events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogEvents {
    /// Post events.
    #[serde(default = "yes")]
    pub events: bool,
    /// Extra tags on every event.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The site, if not `[monitoring.datadog]`'s.
    #[serde(default)]
    pub site: Option<String>,
    /// The API key, if not `[monitoring.datadog]`'s.
    #[serde(default)]
    pub api_key: Option<SecretRef>,
}

/// A Slack incoming webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// The webhook URL, as a reference (the URL is a credential).
    pub webhook_url: SecretRef,
    /// The channel, for the record (a webhook posts to its own channel).
    #[serde(default)]
    pub channel: Option<String>,
}

/// One acceptance criterion, evaluated from the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// As the procedure words it, e.g. "Blue environment deployed and stable (3 tasks running)".
    pub name: String,
    /// What is checked.
    pub expect: Expectation,
    /// For `check-passed`: the check's name.
    #[serde(default)]
    pub check: Option<String>,
    /// For `new-color-running`: the count (the deployment's replicas if absent).
    #[serde(default)]
    pub count: Option<u32>,
}

/// What an acceptance criterion checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expectation {
    /// The deployment succeeded.
    Succeeded,
    /// The staging checks and secret checks passed (the deployment got past preflight).
    PreflightPassed,
    /// A backup was taken and verified.
    BackupVerified,
    /// Migrations were applied and not reverted.
    MigrationsApplied,
    /// The new color ran `count` instances.
    NewColorRunning,
    /// Every smoke test passed on the new color.
    SmokeTestsPassed,
    /// All traffic is on the new color, confirmed by read-back.
    TrafficOnNewColor,
    /// Every measurement of `check` passed.
    CheckPassed,
    /// The old color was scaled to zero after the soak.
    OldColorScaledDown,
    /// No rollback trigger fired.
    NoRollback,
}

/// `[journal]`: a file (the default) or a PostgreSQL database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSpec {
    /// Where the journal is kept: `file` (the default) or `postgres`.
    #[serde(default)]
    pub kind: JournalKind,
    /// The journal file (relative to the spec); `.bluegreen/<service>.journal`
    /// beside the spec if absent. With the Postgres journal, the control file
    /// of `abort` and `promote` is kept beside this path.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The Postgres journal's database URL, as an environment variable
    /// reference (`{ env = "BLUEGREEN_JOURNAL_URL" }`): the journal opens
    /// before any secret store does.
    #[serde(default)]
    pub url: Option<SecretRef>,
    /// Allow `sslmode=disable` in the journal URL for a host that is not
    /// loopback (default false: the password would cross the network in
    /// plaintext).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How long the deployer's lease on the service lasts unless renewed
    /// (it renews at half), e.g. `"2m"` (default 5 min). A deployer that
    /// resumes after a crash waits up to this plus `deployment.call_timeout`
    /// before its first change, so a write of the dead one cannot land
    /// after its own.
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
}

/// Applies the spec's `deployment.call_timeout` and `journal.lease_ttl`
/// (where set) to a deployment's builder.
pub fn driver_settings(
    mut b: bluegreen_core::Builder,
    deployment: &Deployment,
    journal: &JournalSpec,
) -> bluegreen_core::Builder {
    if let Some(d) = deployment.call_timeout {
        b = b.call_timeout(d);
    }
    if let Some(d) = journal.lease_ttl {
        b = b.lease_ttl(d);
    }
    b
}

/// Which journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalKind {
    /// A file (`bluegreen_core::FileJournal`).
    #[default]
    File,
    /// A PostgreSQL database (`bluegreen_postgres::PostgresJournal`).
    Postgres,
}

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML.
    Toml,
    /// YAML.
    Yaml,
}

impl Format {
    /// By the file's extension: `.yaml`/`.yml` is YAML, anything else TOML.
    pub fn of(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Toml
        }
    }
}

/// A spec and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    /// The spec.
    pub spec: Spec,
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

impl LoadedSpec {
    /// Reads and validates the spec at `path`; refused unless it is a
    /// regular file within the limits of [`crate::specfile::read`].
    pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
        Self::from_text(path, crate::specfile::read(path)?)
    }

    /// Validates `text`, read from the spec at `path`.
    pub fn from_text(path: &Path, text: String) -> Result<LoadedSpec, SpecError> {
        let file = path.display().to_string();
        let spec = Spec::from_str(&text, &file)?;
        let loaded = LoadedSpec {
            spec,
            path: path.to_path_buf(),
            text,
        };
        loaded.check_paths(&file)?;
        crate::command::check_programs(&loaded).map_err(|(field, message)| {
            let (line, column) = locate(&loaded.text, &field);
            SpecError {
                file: file.clone(),
                line,
                column,
                field,
                message,
            }
        })?;
        Ok(loaded)
    }

    /// The paths the spec reads from must exist: `migrations.directory`
    /// is a directory (a missing one would otherwise pass `validate` and
    /// `plan` and fail only when the deployment runs).
    fn check_paths(&self, file: &str) -> Result<(), SpecError> {
        let Some(dir) = self
            .spec
            .migrations
            .as_ref()
            .and_then(|m| m.directory.as_ref())
        else {
            return Ok(());
        };
        let full = self.resolve(dir);
        let problem = match std::fs::metadata(&full) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => "is not a directory",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
            Err(_) => "cannot be read",
        };
        let field = "migrations.directory";
        let (line, column) = locate(&self.text, field);
        Err(SpecError {
            file: file.into(),
            line,
            column,
            field: field.into(),
            message: format!(
                "{} {problem}: the directory of migration files, relative to the spec's directory",
                std::path::absolute(&full).unwrap_or(full).display()
            ),
        })
    }

    /// A path from the spec, relative to the spec's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| p.to_path_buf(), |d| d.join(p))
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        match &self.spec.journal.path {
            Some(p) => self.resolve(p),
            None => self.resolve(Path::new(&format!(
                ".bluegreen/{}.journal",
                self.spec.scope.service
            ))),
        }
    }
}

impl Spec {
    /// Parses `text` (TOML, or YAML when `file` ends in `.yaml`/`.yml`) and
    /// validates it. `file` names the source in errors.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file: &str) -> Result<Spec, SpecError> {
        Self::parse(text, file, Format::of(file))
    }

    /// Parses `text` in `format` and validates it.
    pub fn parse(text: &str, file: &str, format: Format) -> Result<Spec, SpecError> {
        let spec: Spec = deserialize(text, file, format)?;
        spec.validate().map_err(|(field, message)| {
            let (line, column) = locate(text, &field);
            SpecError {
                file: file.into(),
                line,
                column,
                field,
                message,
            }
        })?;
        Ok(spec)
    }

    /// The target kind.
    pub fn target_kind(&self) -> TargetKind {
        if self.target.local.is_some() {
            TargetKind::Local
        } else if self.target.fake.is_some() {
            TargetKind::Fake
        } else {
            TargetKind::EcsAlb
        }
    }

    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        let t = &self.target;
        #[cfg(not(feature = "testing"))]
        if t.fake.is_some() {
            return err("target.fake", FAKE_NOT_BUILT.into());
        }
        match (&t.local, &t.fake, &t.ecs, &t.alb) {
            (Some(_), None, None, None) | (None, Some(_), None, None) => {}
            (None, None, Some(_), Some(_)) => {}
            (None, None, Some(_), None) => {
                return err("target.ecs", "an `ecs` target needs an `alb` section to route traffic: add [target.alb] with target_groups".into())
            }
            (None, None, None, Some(_)) => {
                return err("target.alb", "an `alb` target needs an `ecs` section for compute: add [target.ecs]".into())
            }
            (None, None, None, None) => {
                return err("target", "missing: expected one of [target.local], [target.ecs] with [target.alb], or [target.fake]".into())
            }
            _ => {
                return err("target", "give one target only: [target.local], [target.ecs] with [target.alb], or [target.fake]".into())
            }
        }
        if let Some(ecs) = &t.ecs {
            for (f, v) in [
                ("target.ecs.cluster", &ecs.cluster),
                ("target.ecs.services.blue", &ecs.services.blue),
                ("target.ecs.services.green", &ecs.services.green),
            ] {
                if v.trim().is_empty() {
                    return err(f, "must not be empty".into());
                }
            }
            crate::aws::validate_target(ecs)?;
        }
        if let Some(alb) = &t.alb {
            for (f, v) in [
                (
                    "target.alb.target_groups.blue",
                    Some(&alb.target_groups.blue),
                ),
                (
                    "target.alb.target_groups.green",
                    Some(&alb.target_groups.green),
                ),
                ("target.alb.listener_arn", alb.listener_arn.as_ref()),
                ("target.alb.rule_arn", alb.rule_arn.as_ref()),
            ] {
                if v.is_some_and(|v| v.trim().is_empty()) {
                    return err(f, "must not be empty: give the ARN".into());
                }
            }
            if alb.listener_arn.is_some() == alb.rule_arn.is_some() {
                return err(
                    "target.alb",
                    "give exactly one of `listener_arn` and `rule_arn`".into(),
                );
            }
        }
        if let Some(l) = &t.local {
            if let Some(c) = &l.command {
                if c.is_empty() || c[0].trim().is_empty() {
                    return err("target.local.command", "must name a program, e.g. [\"./my-app\", \"--port\", \"$PORT\"]; leave it out for the built-in demo app".into());
                }
            }
            if l.listen.parse::<std::net::SocketAddr>().is_err() {
                return err(
                    "target.local.listen",
                    format!(
                        "{:?} is not an address: expected e.g. \"127.0.0.1:8080\"",
                        l.listen
                    ),
                );
            }
        }
        for (k, v) in &self.env {
            if looks_secret(k) {
                return err(&format!("env.{k}"), format!("{k} looks like a secret, and {PLAIN_TEXT_SECRET}; list it under [[secrets]] with `env = \"{k}\"`"));
            }
            if holds_password(v) {
                return err(&format!("env.{k}"), format!("{k} holds a password (a URL with user:password@), and {PLAIN_TEXT_SECRET}; keep the URL in the secret store and list it under [[secrets]] with `env = \"{k}\"`"));
            }
        }
        if let Some(l) = &t.local {
            for (k, v) in &l.initial_env {
                if looks_secret(k) || holds_password(v) {
                    return err(
                        &format!("target.local.initial_env.{k}"),
                        format!("{k} holds a secret, and {PLAIN_TEXT_SECRET}"),
                    );
                }
            }
        }
        for (i, c) in self
            .staging_checks
            .iter()
            .map(Some)
            .chain(self.smoke_tests.iter().map(SmokeTestSpec::http))
            .enumerate()
        {
            let Some(c) = c else { continue };
            let section = if i < self.staging_checks.len() {
                format!("staging_checks[{i}]")
            } else {
                format!("smoke_tests[{}]", i - self.staging_checks.len())
            };
            for (name, value) in &c.headers {
                if let bluegreen_http::HeaderValueSpec::Value(v) = value {
                    if credential_header(name) || looks_secret(name) || holds_password(v) {
                        return err(&format!("{section}.headers.{name}"), format!("the {name} header carries a credential, and {PLAIN_TEXT_SECRET}: write {name} = {{ secret = \"name-in-the-secret-store\", format = \"Bearer {{secret}}\" }}"));
                    }
                }
            }
        }
        for (i, s) in self.secrets.iter().enumerate() {
            if s.value.is_some() {
                return err(
                    &format!("secrets[{i}].value"),
                    format!(
                        "{PLAIN_TEXT_SECRET}; the spec names the secret (`name`), never its value"
                    ),
                );
            }
        }
        if let Some(m) = &self.migrations {
            match m.runner {
                MigrationRunnerKind::Postgres => {
                    if m.database_url.is_none() {
                        return err("migrations.database_url", "missing: the postgres runner needs a database URL reference, e.g. { secret = \"prod/order-api/database-url\" }".into());
                    }
                    if m.directory.is_none() {
                        return err(
                            "migrations.directory",
                            "missing: the directory of migration files".into(),
                        );
                    }
                }
                MigrationRunnerKind::Fake if self.target.fake.is_none() => {
                    return err(
                        "migrations.runner",
                        "the fake runner works with [target.fake] only".into(),
                    );
                }
                MigrationRunnerKind::Fake => {}
            }
        }
        match (&self.journal.kind, &self.journal.url) {
            (JournalKind::Postgres, None) => {
                return err("journal.url", "missing: the postgres journal needs a database URL reference, e.g. { env = \"BLUEGREEN_JOURNAL_URL\" }".into());
            }
            (JournalKind::Postgres, Some(SecretRef::Store(_))) => {
                return err("journal.url", "the journal opens before the secret store: refer to an environment variable, e.g. { env = \"BLUEGREEN_JOURNAL_URL\" }".into());
            }
            (JournalKind::File, Some(_)) => {
                return err(
                    "journal.url",
                    "only the postgres journal has a URL: add kind = \"postgres\"".into(),
                );
            }
            _ => {}
        }
        let mon = &self.monitoring;
        match mon.provider {
            MetricsKind::Datadog if mon.datadog.is_none() => {
                return err("monitoring.datadog", "missing: provider = \"datadog\" needs [monitoring.datadog] with api_key and app_key references".into())
            }
            MetricsKind::Datadog
                if mon.datadog.as_ref().is_some_and(|d| d.app_key.is_none()) =>
            {
                return err("monitoring.datadog.app_key", "missing: metric queries need an application key reference".into());
            }
            MetricsKind::Prometheus if mon.prometheus.is_none() => {
                return err("monitoring.prometheus", "missing: provider = \"prometheus\" needs [monitoring.prometheus] with url".into())
            }
            MetricsKind::Cloudwatch if self.target.ecs.is_none() => {
                return err("monitoring.provider", "\"cloudwatch\" uses [target.ecs]'s AWS configuration: add [target.ecs], or name a [[monitoring.sources]] entry".into())
            }
            MetricsKind::Local if self.target.local.is_none() => {
                return err("monitoring.provider", "\"local\" measures the local proxy and works with [target.local] only".into())
            }
            MetricsKind::Fake => {
                if self.target.fake.is_none() {
                    return err("monitoring.provider", "\"fake\" works with [target.fake] only".into());
                }
                let values = mon.fake.as_ref().map(|f| &f.values);
                for (i, c) in mon.checks.iter().enumerate() {
                    let by_command = mon.commands.iter().any(|m| Some(&m.0.name) == c.source.as_ref())
                        || mon.sources.iter().any(|m| Some(&m.name) == c.source.as_ref());
                    if !by_command && values.is_none_or(|v| !v.contains_key(&c.name)) {
                        return err(&format!("monitoring.checks[{i}].name"), format!("the fake provider has no value for {:?}: add it to [monitoring.fake] values", c.name));
                    }
                }
            }
            _ => {}
        }
        if let Some(d) = &self.notifications.datadog {
            if d.api_key.is_none() && mon.datadog.is_none() {
                return err(
                    "notifications.datadog.api_key",
                    "missing: give an api_key reference here or in [monitoring.datadog]".into(),
                );
            }
        }
        if let Some(e) = self
            .notifications
            .pagerduty
            .as_ref()
            .and_then(|p| p.endpoint.as_ref())
        {
            if !e.starts_with("https://") {
                return err(
                    "notifications.pagerduty.endpoint",
                    "must be an https URL: the routing key is sent in the request body".into(),
                );
            }
        }
        let known_checks: Vec<&str> = mon.checks.iter().map(|c| c.name.as_str()).collect();
        for (i, c) in self.acceptance.iter().enumerate() {
            if c.name.trim().is_empty() {
                return err(&format!("acceptance[{i}].name"), "must not be empty".into());
            }
            match (c.expect, &c.check) {
                (Expectation::CheckPassed, None) => {
                    return err(
                        &format!("acceptance[{i}].check"),
                        format!(
                            "missing: `check-passed` names a check, one of: {}",
                            known_checks.join(", ")
                        ),
                    )
                }
                (Expectation::CheckPassed, Some(n)) if !known_checks.contains(&n.as_str()) => {
                    return err(
                        &format!("acceptance[{i}].check"),
                        format!(
                            "no check named {n:?}{}; known checks: {}",
                            suggest(n, &known_checks),
                            known_checks.join(", ")
                        ),
                    )
                }
                _ => {}
            }
        }
        for (i, c) in self
            .staging_checks
            .iter()
            .map(Some)
            .chain(self.smoke_tests.iter().map(SmokeTestSpec::http))
            .enumerate()
        {
            let Some(c) = c else { continue };
            let section = if i < self.staging_checks.len() {
                format!("staging_checks[{i}]")
            } else {
                format!("smoke_tests[{}]", i - self.staging_checks.len())
            };
            c.validate().map_err(|m| (section, m))?;
        }
        for (i, c) in self.smoke_tests.iter().enumerate() {
            if let SmokeTestSpec::Command(c) = c {
                c.validate(
                    &format!("smoke_tests[{i}]"),
                    &bluegreen_local::command::SMOKE_VARIABLES,
                )?;
            }
        }
        for (i, c) in self.monitoring.commands.iter().enumerate() {
            c.validate(
                &format!("monitoring.commands[{i}]"),
                &bluegreen_local::command::METRIC_VARIABLES,
            )?;
        }
        for (i, h) in self.hooks.iter().enumerate() {
            match &h.run {
                HookRun::Command(c) => c.validate(
                    &format!("hooks[{i}]"),
                    &bluegreen_local::command::HOOK_VARIABLES,
                )?,
                HookRun::Webhook(w) => w.validate().map_err(|m| match m.split_once(": ") {
                    Some((f, m)) => (format!("hooks[{i}].{f}"), m.to_string()),
                    None => (format!("hooks[{i}]"), m),
                })?,
            }
        }
        if let Some(p) = &self.production_checks {
            for (i, n) in p.smoke_tests.iter().enumerate() {
                if !self.smoke_tests.iter().any(|t| t.name() == n) {
                    let known: Vec<&str> = self.smoke_tests.iter().map(|t| t.name()).collect();
                    return Err((
                        format!("production_checks.smoke_tests[{i}]"),
                        format!(
                            "no [[smoke_tests]] entry is named {n:?}; named: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, s) in self.monitoring.sources.iter().enumerate() {
            let field = format!("monitoring.sources[{i}]");
            if s.name.trim().is_empty() || s.name == bluegreen_core::driver::DEFAULT_METRICS {
                return err(
                    &format!("{field}.name"),
                    format!(
                        "{:?} cannot name a source: give it a name of its own",
                        s.name
                    ),
                );
            }
            let taken = self.monitoring.commands.iter().any(|c| c.0.name == s.name)
                || self.monitoring.sources[..i]
                    .iter()
                    .any(|o| o.name == s.name);
            if taken {
                return err(
                    &format!("{field}.name"),
                    format!("{:?} names two metrics sources", s.name),
                );
            }
            if s.kind != SourceKind::Postgres {
                let stray = [
                    ("database_url", s.database_url.is_some()),
                    ("allow_plaintext", s.allow_plaintext),
                    ("statement_timeout", s.statement_timeout.is_some()),
                ];
                if let Some((f, _)) = stray.iter().find(|(_, set)| *set) {
                    return err(
                        &format!("{field}.{f}"),
                        format!("only a kind = \"postgres\" source takes {f}"),
                    );
                }
            }
            if s.kind == SourceKind::Postgres {
                if s.database_url.is_none() {
                    return err(&format!("{field}.database_url"), "missing: a postgres source needs a database URL reference, e.g. { secret = \"prod/order-api/database-url\" }".into());
                }
                if s.statement_timeout
                    .is_some_and(|t| t < Duration::from_millis(1))
                {
                    return err(
                        &format!("{field}.statement_timeout"),
                        "must be at least 1ms".into(),
                    );
                }
                continue;
            }
            if s.kind.is_cloudwatch() && self.target.ecs.is_none() {
                return err(
                    &format!("{field}.kind"),
                    "the CloudWatch sources use [target.ecs]'s AWS configuration: add [target.ecs]"
                        .into(),
                );
            }
            if !s.kind.is_cloudwatch()
                && self
                    .monitoring
                    .datadog
                    .as_ref()
                    .is_none_or(|d| d.app_key.is_none())
            {
                return err(&format!("{field}.kind"), "the Datadog sources need [monitoring.datadog] with api_key and app_key references".into());
            }
        }
        let sources: Vec<&str> = self
            .monitoring
            .commands
            .iter()
            .map(|c| c.0.name.as_str())
            .chain(self.monitoring.sources.iter().map(|s| s.name.as_str()))
            .collect();
        for (i, c) in self.monitoring.checks.iter().enumerate() {
            if let Some(n) = c
                .source
                .as_deref()
                .filter(|n| *n != bluegreen_core::driver::DEFAULT_METRICS && !sources.contains(n))
            {
                return err(&format!("monitoring.checks[{i}].source"), format!("no metrics source named {n:?}: name a [[monitoring.commands]] or [[monitoring.sources]] entry ({}), or leave it out for the monitoring provider", sources.join(", ")));
            }
        }
        self.plan_unchecked()
            .validate()
            .map_err(|e| (spec_field(&e.field), e.message))
    }

    /// The core plan this spec describes, validated.
    pub fn plan(&self) -> Result<Plan, SpecError> {
        let plan = self.plan_unchecked();
        plan.validate().map_err(|e| SpecError {
            file: String::new(),
            line: 0,
            column: 0,
            field: spec_field(&e.field),
            message: e.message,
        })?;
        Ok(plan)
    }

    fn plan_unchecked(&self) -> Plan {
        let mut release = Release::new(&self.scope.version, &self.scope.image);
        release.build = self.scope.build.clone();
        release.env = self.env.clone();
        for s in &self.secrets {
            if let Some(var) = &s.env {
                release.secrets.insert(var.clone(), s.name.clone());
            }
        }
        let d = &self.deployment;
        Plan {
            service: self.scope.service.clone(),
            release,
            colors: ColorTargets {
                blue: ColorTarget {
                    base_url: d.blue_url.clone(),
                },
                green: ColorTarget {
                    base_url: d.green_url.clone(),
                },
                staging_url: d.staging_url.clone(),
            },
            replicas: d.replicas,
            capacity: d.capacity,
            strategy: d.strategy.clone(),
            preflight: Preflight {
                migrations_applied: self.preflight.migrations_applied.clone(),
                checks: self
                    .preflight
                    .checks
                    .iter()
                    .map(|c| c.name.clone())
                    .collect(),
                staging_checks: self.staging_checks.iter().map(|c| c.name.clone()).collect(),
                required_secrets: self
                    .secrets
                    .iter()
                    .map(|s| RequiredSecret {
                        name: s.name.clone(),
                        max_age: match s.rotation {
                            Rotation::Every(d) => Some(d),
                            Rotation::OnCompromise => None,
                        },
                    })
                    .collect(),
            },
            migrations: self.migrations.as_ref().map(|m| MigrationSettings {
                backup: m.backup,
                backup_min_entries: m.backup_min_entries,
            }),
            smoke_tests: self
                .smoke_tests
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            analysis: self.monitoring.checks.clone(),
            rollback_triggers: self.rollback_triggers.clone(),
            timing: self.timing.clone(),
            gates: d.gates.clone(),
            approvals: self.approvals.clone(),
            window: self.window.clone(),
            rollback_targets: self.rollback_targets.clone(),
            deadlines: self.deadlines.clone(),
            on_inconclusive: d.on_inconclusive,
            on_hold_timeout: d.on_hold_timeout,
            group: None,
            hooks: self.hooks.iter().map(|h| h.hook.clone()).collect(),
            production_checks: self.production_checks.clone(),
        }
    }
}

/// Deserializes `text` in `format` into `T`; errors name the file, line,
/// column and field, with a suggestion for a misspelt key.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    format: Format,
) -> Result<T, SpecError> {
    let value = match format {
        Format::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let (line, column) = match inner.span() {
                    Some(span) => line_col(text, span.start),
                    None => locate(text, &field),
                };
                SpecError {
                    file: file.into(),
                    line,
                    column,
                    field: clean_path(&field),
                    message: explain(inner.message()),
                }
            })?
        }
        Format::Yaml => {
            crate::specfile::check_yaml_depth(text, file)?;
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let (line, column) = match inner.location() {
                    Some(l) => (l.line(), l.column()),
                    None => locate(text, &field),
                };
                let mut msg = inner.to_string();
                // serde_norway appends " at line L column C"; we print it ourselves.
                if let Some(i) = msg.find(" at line ") {
                    msg.truncate(i);
                }
                // ... and may start with its own path ("scope: ...").
                if let Some((head, rest)) = msg.split_once(": ") {
                    if !head.contains(' ') {
                        msg = rest.to_string();
                    }
                }
                SpecError {
                    file: file.into(),
                    line,
                    column,
                    field: clean_path(&field),
                    message: explain(&msg),
                }
            })?
        }
    };
    Ok(value)
}

/// Environment variable names that hold secrets by convention.
fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Headers that carry credentials whatever their value looks like.
fn credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "x-api-key" | "x-auth-token"
    )
}

/// Whether `value` holds a URL with a password (`scheme://user:password@host`)
/// or a connection string with `password=`.
fn holds_password(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if lower.contains("password=") {
        return true;
    }
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let authority = after.split(['/', '?', '#']).next().unwrap_or("");
        if let Some(at) = authority.rfind('@') {
            if let Some((_, password)) = authority[..at].split_once(':') {
                if !password.is_empty() {
                    return true;
                }
            }
        }
        rest = after;
    }
    false
}

/// Maps a core plan field to the spec's field.
fn spec_field(plan_field: &str) -> String {
    const MAP: [(&str, &str); 12] = [
        ("service", "scope.service"),
        ("release.version", "scope.version"),
        ("release.image", "scope.image"),
        ("release.secrets", "secrets"),
        ("release.env", "env"),
        ("replicas", "deployment.replicas"),
        ("strategy", "deployment.strategy"),
        ("gates", "deployment.gates"),
        ("analysis", "monitoring.checks"),
        ("preflight.required_secrets", "secrets"),
        ("preflight.staging_checks", "staging_checks"),
        ("colors", "deployment"),
    ];
    for (from, to) in MAP {
        if let Some(rest) = plan_field.strip_prefix(from) {
            if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
                return format!("{to}{rest}");
            }
        }
    }
    plan_field.to_string()
}

/// `a.b[0].c` as serde_path_to_error prints it, without the `?` it gives
/// untagged/`try_from` levels.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.replace(".?", "").replace('?', "")
    }
}

/// Improves serde's messages: suggestions for unknown keys and variants,
/// "section" wording for missing tables, a hint for durations.
fn explain(msg: &str) -> String {
    let msg = msg.trim().trim_end_matches('\n');
    let first = msg.lines().next().unwrap_or(msg).to_string();
    if first.is_empty() {
        // The TOML parser says nothing for some cut-off files (`0=`).
        return "the file does not parse here: a value is missing or cut off".into();
    }
    if let Some(rest) = first
        .strip_prefix("unknown field `")
        .or_else(|| first.strip_prefix("unknown variant `"))
    {
        if let Some(end) = rest.find('`') {
            let got = &rest[..end];
            let expected: Vec<&str> = rest[end..]
                .split('`')
                .skip(2)
                .step_by(2)
                .filter(|s| !s.is_empty())
                .collect();
            return format!("{first}{}", suggest(got, &expected));
        }
    }
    if let Some(rest) = first.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        return format!("missing required key or section `{name}`");
    }
    let lower = first.to_ascii_lowercase();
    if lower.contains("time unit")
        || lower.contains("duration")
        || lower.contains("number is expected")
    {
        return format!(
            "{first}: expected a duration such as \"90s\", \"5m\", \"1h\" or \"1h 30m\""
        );
    }
    first
}

/// `"; did you mean `x`?"` when one of `candidates` is close to `got`.
pub fn suggest(got: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(got, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

/// 1-based line and column of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Best-effort location of a dotted field in TOML or YAML text: each segment
/// is looked for as a key or table header after the previous one.
pub fn locate(text: &str, field: &str) -> (usize, usize) {
    let mut pos = 0usize;
    let mut found = (1, 1);
    for seg in field.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match seg.find('[') {
            Some(i) => (
                &seg[..i],
                seg[i + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (seg, None),
        };
        let mut hits = 0usize;
        let mut offset = pos;
        let mut matched = None;
        for line in text[pos..].split_inclusive('\n') {
            let t = line.trim_start();
            let t = t.trim_start_matches("- ");
            let header = t.trim_start_matches('[').trim_end();
            let is_key =
                t.starts_with(name) && t[name.len()..].trim_start().starts_with(['=', ':']);
            // `[target.alb]` holds both `target` and `alb`; an element of
            // an array of tables (`services[1]`) is counted by its own
            // headers (`[[services]]`), not by its sub-tables'.
            let mut parts = header.trim_end_matches(']').split('.').map(str::trim);
            let is_header = t.starts_with('[')
                && if index.is_some() {
                    parts.next_back() == Some(name)
                } else {
                    parts.any(|h| h == name)
                };
            let is_quoted_key = t.starts_with(&format!("\"{name}\""));
            if is_key || is_header || is_quoted_key {
                if hits == index.unwrap_or(0) {
                    matched = Some(offset + (line.len() - line.trim_start().len()));
                    break;
                }
                hits += 1;
            }
            offset += line.len();
        }
        match matched {
            Some(m) => {
                found = line_col(text, m);
                pos = m;
            }
            None => break,
        }
    }
    found
}
