//! The commands of the `bluegreen` binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::dry_run::{DryRun, HealthyProviders};
use bluegreen_core::{Control, Error, ErrorKind, Journal, Outcome, Report, Timestamp};
use clap::{Parser, Subcommand};

use crate::acceptance;
use crate::group::{self, LoadedGroup};
use crate::journal;
use crate::output::{
    describe_control, exit_code, follow, refused, units_of, wait_real, CONTROL_CONFIRM_POLL,
    CONTROL_CONFIRM_POLLS,
};
use crate::providers;
use crate::spec::{Format, JournalKind, LoadedSpec, SpecError, TargetKind};

// The exit codes and output formats live in `output`, which `group` and
// `watch` use too; their paths under `cli` stay.
pub use crate::output::{
    OutputFormat, ReportFormat, EXIT_BAD_SPEC, EXIT_ERROR, EXIT_HALTED, EXIT_REFUSED,
    EXIT_ROLLED_BACK, EXIT_SUCCEEDED,
};

/// Runs blue-green deployments from a spec file.
#[derive(Debug, Parser)]
#[command(name = "bluegreen", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Output: human-readable text, or JSON for machines.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
    /// The journal file (default: the spec's `[journal] path`).
    #[arg(long, global = true)]
    pub journal: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks a spec and prints what it deploys.
    Validate {
        /// The spec file (TOML, or YAML by extension).
        spec: PathBuf,
    },
    /// A dry run: prints each step and the provider calls it would make; changes nothing.
    Plan {
        /// The spec file.
        spec: PathBuf,
        /// Rehearse the rollback instead: a failure at every stage, what the
        /// rollback does, how long it takes at the plan's timings and where
        /// it halts. Touches nothing.
        #[arg(long)]
        rehearse: bool,
    },
    /// Runs the deployment to its end.
    Deploy {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id (a new one if absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Shows the latest (or the given) deployment of the spec's service.
    Status {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Continues an interrupted deployment from its journal.
    Resume {
        /// The spec file (must be the one the deployment started with).
        spec: PathBuf,
        /// The deployment id (the latest unfinished one if absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Asks the running deployment to roll back.
    Abort {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id (the latest unfinished one if absent).
        #[arg(long)]
        id: Option<String>,
        /// Why.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
    /// Passes the current gate or skips the current wait of the running deployment.
    Promote {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id (the latest unfinished one if absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Prints a deployment's report from the journal.
    Report {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id (the latest if absent).
        #[arg(long)]
        id: Option<String>,
        /// Markdown or JSON.
        #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
        format: ReportFormat,
    },
    /// Approves an approval gate of the running deployment as NAME (journaled
    /// with the time the deployer took it). Refused (exit 4) for a name not on
    /// the gate's lists or a second approval by the same name.
    Approve {
        /// The spec file.
        spec: PathBuf,
        /// Who approves: a name on the gate's `approvals[].groups[].names`.
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        /// The gate, e.g. `before-shift` (the one the deployment holds at,
        /// else the next one with approvals pending, if absent).
        #[arg(long)]
        gate: Option<String>,
        /// The deployment id (the latest unfinished one if absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Follows a running deployment live from its journal: stage, split, checks, time left.
    Watch {
        /// The spec file.
        spec: PathBuf,
        /// The deployment id (the latest unfinished one, else the latest, if absent).
        #[arg(long)]
        id: Option<String>,
        /// How often the journal is read, e.g. `500ms`.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Appended plain lines, even on a terminal (the default when stdout is not one).
        #[arg(long)]
        plain: bool,
    },
}

/// Parses the command line and runs it; returns the exit code.
pub fn main() -> i32 {
    bluegreen_local::demo::run_if_requested();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_BAD_SPEC } else { 0 };
        }
    };
    crate::logging::init(cli.output);
    run(cli)
}

fn spec_of(cmd: &Command) -> &Path {
    match cmd {
        Command::Validate { spec }
        | Command::Plan { spec, .. }
        | Command::Approve { spec, .. }
        | Command::Deploy { spec, .. }
        | Command::Status { spec, .. }
        | Command::Resume { spec, .. }
        | Command::Abort { spec, .. }
        | Command::Promote { spec, .. }
        | Command::Report { spec, .. }
        | Command::Watch { spec, .. } => spec,
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> i32 {
    let path = spec_of(&cli.command);
    // Read once, refused unless a regular file within the limits.
    let text = match crate::specfile::read(path) {
        Ok(t) => t,
        Err(e) => return bad_spec(&cli, &e),
    };
    if group::is_group(&text, Format::of(&path.display().to_string())) {
        return match LoadedGroup::parse(&text, path) {
            Ok(g) => {
                for m in g.members() {
                    crate::logging::redact_spec_secrets(&m);
                }
                run_group(cli, g)
            }
            Err(e) => bad_spec(&cli, &e),
        };
    }
    let loaded = match LoadedSpec::from_text(path, text) {
        Ok(l) => l,
        Err(e) => return bad_spec(&cli, &e),
    };
    crate::logging::redact_spec_secrets(&loaded);
    if let Command::Watch {
        id,
        interval,
        plain,
        ..
    } = &cli.command
    {
        let path = cli.journal.clone().unwrap_or_else(|| loaded.journal_path());
        let (id, interval, plain) = (id.clone(), *interval, *plain);
        let opts = crate::watch::WatchOptions {
            id,
            interval,
            plain,
        };
        return crate::watch::run(&loaded, &path, opts, exit_code);
    }
    let paused = loaded
        .spec
        .target
        .fake
        .as_ref()
        .is_some_and(|f| f.paused_time);
    let rt = match runtime(paused) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluegreen: cannot start the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let journal_path = cli.journal.clone().unwrap_or_else(|| loaded.journal_path());
    let out = cli.output;
    rt.block_on(async move {
        let r = match cli.command {
            Command::Validate { .. } => validate(&loaded, out),
            Command::Plan { rehearse: true, .. } => rehearse(&loaded, out),
            Command::Plan { .. } => dry_run(&loaded, out),
            Command::Approve { name, gate, id, .. } => {
                approve(&loaded, &journal_path, id, name, gate, out).await
            }
            Command::Deploy { id, .. } => deploy(&loaded, &journal_path, id, None, out).await,
            Command::Resume { id, .. } => resume(&loaded, &journal_path, id, out).await,
            Command::Status { id, .. } => status(&loaded, &journal_path, id, out).await,
            Command::Abort { id, reason, .. } => {
                control(&loaded, &journal_path, id, Control::Abort { reason }, out).await
            }
            Command::Promote { id, .. } => {
                control(&loaded, &journal_path, id, Control::Promote, out).await
            }
            Command::Report { id, format, .. } => report(&loaded, &journal_path, id, format).await,
            // Run above, on a real-time runtime of its own.
            Command::Watch { .. } => Ok(EXIT_SUCCEEDED),
        };
        finish(r, out)
    })
}

fn runtime(paused: bool) -> std::io::Result<tokio::runtime::Runtime> {
    // Paused time is the fake target's (a `testing` build's); a release
    // build refuses that target before it gets here.
    #[cfg(feature = "testing")]
    if paused {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build();
    }
    #[cfg(not(feature = "testing"))]
    let _ = paused;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run_group(cli: Cli, g: LoadedGroup) -> i32 {
    let rt = match runtime(g.paused_time()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluegreen: cannot start the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let path = cli.journal.clone().unwrap_or_else(|| g.journal_path());
    let out = cli.output;
    rt.block_on(async move {
        let r = match cli.command {
            Command::Validate { .. } => validate_group(&g, out),
            Command::Plan { rehearse: true, .. } => Err(Error::invalid_input(
                "plan --rehearse rehearses one service's rollback: run it with that member's spec",
            )),
            Command::Plan { .. } => plan_group(&g, out),
            Command::Approve { .. } => Err(Error::invalid_input(
                "approve acts on one service's deployment: run it with that member's spec",
            )),
            Command::Deploy { id, .. } => group::deploy(&g, &path, id, None, out).await,
            Command::Resume { id, .. } => group::resume(&g, &path, id, out).await,
            Command::Status { id, .. } => group::status(&g, &path, id, out).await,
            Command::Abort { id, reason, .. } => {
                group::control(&g, &path, id, Control::Abort { reason }, out).await
            }
            Command::Promote { id, .. } => {
                group::control(&g, &path, id, Control::Promote, out).await
            }
            Command::Report { id, format, .. } => group::report(&g, &path, id, format).await,
            Command::Watch { .. } => Err(Error::invalid_input(
                "watch follows one service's deployment: run it with that member's spec",
            )),
        };
        finish(r, out)
    })
}

/// `validate` of a group: each member, then how they are coordinated.
fn validate_group(g: &LoadedGroup, out: OutputFormat) -> Result<i32, Error> {
    let members = g.members();
    if out == OutputFormat::Text {
        println!(
            "group {}: {} services [{}], barrier timeout {}",
            g.spec.group.name,
            members.len(),
            g.services().join(", "),
            humantime::format_duration(g.spec.group.barrier_timeout)
        );
    }
    for m in &members {
        validate(m, out)?;
    }
    if out == OutputFormat::Text {
        println!("{}", group::coordination(g));
    }
    Ok(EXIT_SUCCEEDED)
}

/// `plan` of a group: each member's dry run, then the coordination.
fn plan_group(g: &LoadedGroup, out: OutputFormat) -> Result<i32, Error> {
    for m in g.members() {
        if out == OutputFormat::Text {
            println!("## {}", m.spec.scope.service);
        }
        dry_run(&m, out)?;
    }
    if out == OutputFormat::Text {
        println!("{}", group::coordination(g));
    }
    Ok(EXIT_SUCCEEDED)
}

fn finish(r: Result<i32, Error>, out: OutputFormat) -> i32 {
    match r {
        Ok(code) => code,
        // Another deployer holds the lease, or an unfinished deployment
        // must be resumed first: refused before anything changed.
        Err(e) if matches!(e.kind(), ErrorKind::LeaseHeld | ErrorKind::Conflict) => {
            refused(&e, out)
        }
        Err(e) => {
            if out == OutputFormat::Json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "kind": e.kind().as_str()})
                );
            } else {
                eprintln!("bluegreen: {e}");
            }
            EXIT_ERROR
        }
    }
}

fn bad_spec(cli: &Cli, e: &SpecError) -> i32 {
    if cli.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({
                "error": e.message, "file": e.file, "line": e.line,
                "column": e.column, "field": e.field
            })
        );
    } else {
        eprintln!("bluegreen: bad spec: {e}");
    }
    EXIT_BAD_SPEC
}

/// A path the spec names, as the CLI uses it: relative to the spec's
/// directory, whatever the working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecPath {
    /// The spec's field, e.g. `migrations.directory`.
    pub field: &'static str,
    /// The path resolved against the spec's directory.
    pub path: PathBuf,
    /// Whether it leaves the spec's directory (`..` or absolute).
    pub outside: bool,
}

impl SpecPath {
    /// How `validate` and `plan` print it: in full (absolute, `..`
    /// resolved) when it leaves the spec's directory, so a reviewer sees
    /// where it goes.
    pub fn shown(&self) -> String {
        if self.outside {
            format!(
                "{} (outside the spec's directory)",
                full_path(&self.path).display()
            )
        } else {
            self.path.display().to_string()
        }
    }
}

/// `p` absolute, with `.` and `..` resolved without touching the disk.
pub fn full_path(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `p`, as written in a spec, leaves the spec's directory.
fn leaves(p: &Path) -> bool {
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            std::path::Component::CurDir => {}
            // Absolute (a root or a prefix).
            _ => return true,
        }
    }
    false
}

/// The journal file, the migrations directory and the backup directory the
/// spec names, resolved against its directory.
pub fn spec_paths(l: &LoadedSpec) -> Vec<SpecPath> {
    let s = &l.spec;
    let mut v = vec![SpecPath {
        field: "journal.path",
        path: l.journal_path(),
        outside: s.journal.path.as_deref().is_some_and(leaves),
    }];
    if let Some(m) = &s.migrations {
        for (field, p) in [
            ("migrations.directory", &m.directory),
            ("migrations.backup_dir", &m.backup_dir),
        ] {
            if let Some(p) = p {
                v.push(SpecPath {
                    field,
                    path: l.resolve(p),
                    outside: leaves(p),
                });
            }
        }
    }
    v
}

pub(crate) fn validate(l: &LoadedSpec, out: OutputFormat) -> Result<i32, Error> {
    // Expand migrations that would break the old color: each finding. The
    // files are input as the spec is, so a finding exits as a bad spec.
    if let Err(e) = crate::lint::check_migrations(l) {
        if out == OutputFormat::Json {
            println!(
                "{}",
                serde_json::json!({"error": e.to_string(), "kind": e.kind().as_str(), "field": "migrations.directory"})
            );
        } else {
            eprintln!("bluegreen: bad migrations: {e}");
        }
        return Ok(EXIT_BAD_SPEC);
    }
    let s = &l.spec;
    let paths = spec_paths(l);
    let target = match s.target_kind() {
        TargetKind::Local => "local",
        TargetKind::EcsAlb => "ecs+alb",
        TargetKind::Fake => "fake",
    };
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"valid": true, "service": s.scope.service,
                "version": s.scope.version, "target": target,
                "journal": l.journal_path(),
                "paths": paths.iter().map(|p| serde_json::json!({
                    "field": p.field,
                    "path": if p.outside { full_path(&p.path) } else { p.path.clone() },
                    "outside_spec_dir": p.outside,
                })).collect::<Vec<_>>()})
        );
    } else {
        println!(
            "{}: valid — {} {} to {target}, {} smoke tests, {} checks, {} rollback triggers, {} acceptance criteria; journal {}",
            l.path.display(),
            s.scope.service,
            s.scope.version,
            s.smoke_tests.len(),
            s.monitoring.checks.len(),
            s.rollback_triggers.len(),
            s.acceptance.len(),
            paths[0].shown()
        );
        for p in &paths[1..] {
            println!("  {}: {}", p.field, p.shown());
        }
    }
    Ok(EXIT_SUCCEEDED)
}

fn provider_label(l: &LoadedSpec, provider: &str) -> String {
    let s = &l.spec;
    let kind = s.target_kind();
    match provider {
        "compute" => match (&s.target.ecs, kind) {
            (Some(e), _) => format!(
                "ECS {} ({}: blue {}, green {})",
                e.cluster,
                e.region
                    .as_deref()
                    .unwrap_or("region of the AWS configuration"),
                e.services.blue,
                e.services.green
            ),
            (_, TargetKind::Local) => "local processes".into(),
            _ => "fake compute".into(),
        },
        "router" => match &s.target.alb {
            Some(a) => format!(
                "ALB {}",
                a.rule_arn
                    .as_deref()
                    .or(a.listener_arn.as_deref())
                    .unwrap_or("")
            ),
            None if kind == TargetKind::Local => "local proxy".into(),
            None => "fake router".into(),
        },
        "migrations" => s.migrations.as_ref().map_or("migrations".into(), |m| {
            match m.runner {
                crate::spec::MigrationRunnerKind::Postgres => "postgres runner",
                crate::spec::MigrationRunnerKind::Fake => "fake runner",
            }
            .into()
        }),
        "metrics" => match s.monitoring.provider {
            crate::spec::MetricsKind::Datadog => "datadog metrics",
            crate::spec::MetricsKind::Prometheus => "prometheus metrics",
            crate::spec::MetricsKind::Local => "local metrics",
            crate::spec::MetricsKind::Fake => "fake metrics",
            crate::spec::MetricsKind::Cloudwatch => "CloudWatch metrics",
        }
        .into(),
        "smoke" => "HTTP checks".into(),
        "secrets" => match kind {
            TargetKind::EcsAlb => "Secrets Manager".into(),
            _ => "secret store".into(),
        },
        other => other.to_string(),
    }
}

pub(crate) fn dry_run(l: &LoadedSpec, out: OutputFormat) -> Result<i32, Error> {
    let plan = l
        .spec
        .plan()
        .map_err(|e| Error::invalid_input(e.to_string()))?;
    // The state machine itself, driven to its end with the replies of
    // healthy providers, in virtual time: no provider, no runtime, nothing
    // outside this process touched. Every hold is promoted, and the
    // migrations listed below apply in their phase.
    let migrations = migrations_to_run(l)?.unwrap_or_default();
    let responder = HealthyProviders::new(&plan).migrations(migrations);
    let report = DryRun::new(plan.clone())
        .map_err(|e| Error::invalid_input(e.to_string()))?
        .run(&mut { responder });
    if out == OutputFormat::Json {
        // The simulated report, with the plan's hooks as declared beside the
        // runs it recorded (`hooks`).
        // (Serializing these plain records cannot fail.)
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        if let Some(o) = json.as_object_mut() {
            o.insert(
                "planned_hooks".to_string(),
                serde_json::to_value(&plan.hooks).unwrap_or_default(),
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
        return Ok(EXIT_SUCCEEDED);
    }
    println!(
        "Dry run of {} {} ({}): nothing is changed. Assumes green serves now; the deployment reads the real split first.\n",
        plan.service,
        plan.release.version,
        l.path.display()
    );
    let paths = spec_paths(l);
    for p in &paths {
        println!("{}: {}", p.field, p.shown());
    }
    if let Some(listed) = migrations_to_run(l)? {
        println!(
            "\nMigrations that would run (those the database has not applied yet, in this order):"
        );
        if listed.is_empty() {
            println!("  none: the directory holds no migration");
        }
        for m in listed {
            println!(
                "  {} {} ({}{})",
                m.version,
                m.name,
                m.phase,
                if m.reversible { "" } else { ", irreversible" }
            );
        }
    }
    if !plan.hooks.is_empty() {
        println!("\nHooks (in the order of their points; a failure before the old color is scaled down rolls back):");
        let mut hooks: Vec<_> = plan.hooks.iter().collect();
        hooks.sort_by_key(|h| h.point);
        for h in hooks {
            println!(
                "  {} at {}: timeout {}, {} retr{}, {}",
                h.name,
                h.point,
                humantime::format_duration(h.timeout),
                h.retries,
                if h.retries == 1 { "y" } else { "ies" },
                if h.idempotent {
                    "idempotent (run again on resume)"
                } else {
                    "not idempotent (a resume halts rather than run it twice)"
                }
            );
        }
    }
    println!();
    // A stage re-entered at once (a poll's second round) is one step.
    let mut stages: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    stages.dedup();
    println!("Steps: {}\n", stages.join(" -> "));
    println!("Provider calls (repeated polls folded; each periodic metric query is one line):");
    for line in fold_calls(l, &report) {
        println!("{line}");
    }
    println!(
        "\nSimulated outcome on healthy providers: {}.",
        report.outcome_name()
    );
    Ok(EXIT_SUCCEEDED)
}

/// The dry run's provider calls as lines: a call repeated at once is one
/// line with its count, and every periodic metric query of one series (the
/// same check and query) is one line, wherever the others fall between.
fn fold_calls(l: &LoadedSpec, report: &Report) -> Vec<String> {
    struct Folded {
        line: String,
        periodic: bool,
        n: u32,
        first: Timestamp,
        last: Timestamp,
    }
    let mut folded: Vec<Folded> = Vec::new();
    // The line of the call just before, so other calls fold only when
    // repeated at once.
    let mut previous: Option<String> = None;
    for a in &report.actions {
        let (prov, op) = a
            .operation
            .split_once([' ', '.'])
            .unwrap_or((&a.operation, ""));
        let line = format!("{prov}.{op} [{}] {}", provider_label(l, prov), a.detail);
        let periodic = prov == "metrics";
        let same = if periodic {
            folded.iter_mut().find(|f| f.periodic && f.line == line)
        } else if previous.as_ref() == Some(&line) {
            folded.iter_mut().rev().find(|f| f.line == line)
        } else {
            None
        };
        previous = Some(line.clone());
        match same {
            Some(f) => {
                f.n += 1;
                f.last = a.at;
            }
            None => folded.push(Folded {
                line,
                periodic,
                n: 1,
                first: a.at,
                last: a.at,
            }),
        }
    }
    let start = report.started_at;
    let at = |t: Timestamp| {
        humantime::format_duration(Duration::from_secs(t.since(start).as_secs())).to_string()
    };
    folded
        .iter()
        .map(|f| {
            let times = match f.n {
                1 => String::new(),
                n if f.periodic => format!("  (x{n}, until +{})", at(f.last)),
                n => format!("  (x{n})"),
            };
            format!("+{:>8}  {}{times}", at(f.first), f.line)
        })
        .collect()
}

/// The migrations the spec's runner knows, in the order they run (expand
/// before contract), or `None` without a `[migrations]` section.
fn migrations_to_run(
    l: &LoadedSpec,
) -> Result<Option<Vec<bluegreen_core::provider::MigrationInfo>>, Error> {
    let Some(m) = &l.spec.migrations else {
        return Ok(None);
    };
    let mut list: Vec<bluegreen_core::provider::MigrationInfo> = match m.runner {
        crate::spec::MigrationRunnerKind::Postgres => {
            let Some(dir) = &m.directory else {
                return Ok(Some(Vec::new()));
            };
            let dir = l.resolve(dir);
            bluegreen_postgres::MigrationSource::from_dir(&dir)
                .map_err(|e| {
                    Error::invalid_input(format!(
                        "migrations.directory {}: {}",
                        dir.display(),
                        e.message()
                    ))
                })?
                .migrations()
                .iter()
                .map(|m| m.info())
                .collect()
        }
        crate::spec::MigrationRunnerKind::Fake => l
            .spec
            .target
            .fake
            .iter()
            .flat_map(|f| &f.migrations)
            .map(|f| bluegreen_core::provider::MigrationInfo {
                version: f.version,
                name: f.name.clone(),
                phase: f.phase,
                reversible: f.reversible,
            })
            .collect(),
    };
    list.sort_by_key(|m| {
        (
            m.phase == bluegreen_core::provider::MigrationPhase::Contract,
            m.version,
        )
    });
    Ok(Some(list))
}

async fn open_journal(l: &LoadedSpec, path: &Path) -> Result<Arc<dyn Journal>, Error> {
    journal::open_for(l, path).await
}

/// The deployment to act on: `id`, or the service's latest (unfinished, if `unfinished`).
async fn pick(
    path: &Path,
    l: &LoadedSpec,
    id: Option<String>,
    unfinished: bool,
) -> Result<String, Error> {
    if let Some(id) = id {
        return Ok(id);
    }
    if l.spec.journal.kind == JournalKind::File && !path.exists() {
        return Err(Error::not_found(format!(
            "no journal at {}: nothing has been deployed with this spec",
            path.display()
        )));
    }
    let j = open_journal(l, path).await?;
    let mut all = j.deployments(Some(l.spec.scope.service.clone())).await?;
    all.sort_by_key(|d| d.started_at);
    let found = all
        .iter()
        .rev()
        .find(|d| !unfinished || d.outcome.is_none())
        .map(|d| d.id.clone());
    found.ok_or_else(|| {
        Error::not_found(format!(
            "no {}deployment of {} in {}",
            if unfinished { "unfinished " } else { "" },
            l.spec.scope.service,
            path.display()
        ))
    })
}

async fn deploy(
    l: &LoadedSpec,
    journal_path: &Path,
    id: Option<String>,
    resume: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    // Refused before anything changes when an expand migration would break
    // the old color (a resumed deployment runs the files it started with).
    if resume.is_none() {
        if let Err(e) = crate::lint::check_migrations(l) {
            return Ok(refused(&e, out));
        }
    }
    let plan = l
        .spec
        .plan()
        .map_err(|e| Error::invalid_input(e.to_string()))?;
    // An emulator endpoint that cannot be reached fails every call: said
    // at once, naming it, rather than after the retries of preflight.
    if let Some(url) = l
        .spec
        .target
        .ecs
        .as_ref()
        .and_then(|e| e.endpoint_url.as_deref())
    {
        if let Err(e) = crate::aws::reachable(url).await {
            return Ok(refused(&e, out));
        }
    }
    // Who the deployment runs as, before anything changes; credentials
    // that resolve to nobody refuse it.
    let mut aws_identity = None;
    if let Some(e) = l.spec.target.ecs.as_ref() {
        match crate::aws::identity(e).await {
            Ok(id) => {
                crate::aws::announce(&id, out == OutputFormat::Json);
                aws_identity = Some(id);
            }
            Err(e) => return Ok(refused(&e, out)),
        }
    }
    let journal = open_journal(l, journal_path).await?;
    let assembled = providers::assemble(l).await?;
    let mut b =
        crate::spec::driver_settings(assembled.builder(plan), &l.spec.deployment, &l.spec.journal)
            .journal(journal)
            .holder_detail(crate::aws::with_identity(
                deployer_description(),
                aws_identity.as_ref(),
            ));
    if let Some(r) = &resume {
        b = b.resume(r.clone());
    } else if let Some(id) = id {
        b = b.deployment_id(id);
    }
    let dep = match b.build() {
        Ok(d) => d,
        Err(e) => {
            assembled.shutdown().await;
            return Err(e);
        }
    };
    let id = dep.deployment_id().to_string();
    // Human controls sent while no deployer ran are applied first, then
    // every later one as it comes (one read of the control file for both).
    let (sent, from) = match journal::control_snapshot(journal_path, &id) {
        Ok(s) => s,
        Err(e) => {
            assembled.shutdown().await;
            return Err(e);
        }
    };
    if resume.is_some() {
        let entries = dep.journal().read(&id).await?;
        for c in sent.into_iter().skip(journal::controls_taken(&entries)) {
            match out {
                OutputFormat::Text => println!(
                    "applying {} sent while no deployer ran",
                    describe_control(&c)
                ),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"deployment_id": id, "applying_pending_control": c})
                ),
            }
            dep.control().send(c);
        }
    }
    let handle = dep.control();
    let forward = journal::forward_with_from(journal_path, from, id.clone(), move |c| {
        handle.send(c);
    });
    let events = dep.subscribe();
    let verb = if resume.is_some() {
        "resuming"
    } else {
        "deploying"
    };
    let first = format!(
        "{verb} {} {} as {id} (journal {})",
        l.spec.scope.service,
        l.spec.scope.version,
        journal_path.display()
    );
    let result = follow(dep.run(), events, out, first, units_of([&l.spec])).await;
    forward.abort();
    assembled.shutdown().await;
    let report = result?;
    let criteria = acceptance::evaluate(&l.spec, &report);
    match out {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "deployment_id": report.deployment_id,
                "outcome": report.outcome_name(),
                "acceptance": criteria,
                "report": report,
            })
        ),
        OutputFormat::Text => {
            println!("\n{id}: {}", report.outcome_name());
            if let Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) =
                &report.outcome
            {
                println!("reason: {}", reason.summary);
            }
            if !criteria.is_empty() {
                print!("{}", acceptance::to_markdown(&criteria));
            }
        }
    }
    Ok(exit_code(&report))
}

async fn resume(
    l: &LoadedSpec,
    path: &Path,
    id: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    // The latest unfinished deployment, as documented: a newer finished
    // one does not hide an older one whose deployer died. With none
    // unfinished, the latest is reported as finished.
    let id = match id {
        Some(id) => id,
        None => match pick(path, l, None, true).await {
            Ok(id) => id,
            Err(e) if e.kind() == bluegreen_core::ErrorKind::NotFound => {
                pick(path, l, None, false).await?
            }
            Err(e) => return Err(e),
        },
    };
    let r = read_report(l, path, &id).await?;
    if r.outcome.is_none() {
        if l.spec.target_kind() == TargetKind::Local {
            stop_local_leftovers(l, path, &id, out).await?;
        }
        return deploy(l, path, None, Some(id), out).await;
    }
    // Finished already (its deployer died after the last record): nothing
    // is left to do but tell.
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"deployment_id": id, "outcome": r.outcome_name(), "already_finished": true})
        );
    } else {
        println!("{id} already finished: {}", r.outcome_name());
    }
    Ok(exit_code(&r))
}

/// A local deployment cannot continue where its deployer stopped: its
/// proxy and instances lived in (and under) that process. Before `resume`
/// finishes the record on a fresh local target, the instances the killed
/// deployer left running are found by the deployer's pid in their
/// environment ([`bluegreen_local::DEPLOYER_PID_ENV`], the pid named by the
/// journal's lease holder) and stopped, so no fresh proxy starts beside
/// them. Refused while that deployer still runs, or when the journal does
/// not name its pid.
async fn stop_local_leftovers(
    l: &LoadedSpec,
    path: &Path,
    id: &str,
    out: OutputFormat,
) -> Result<(), Error> {
    let entries = open_journal(l, path).await?.read(id).await?;
    let holder = entries.iter().find_map(|e| match &e.record {
        bluegreen_core::journal::Record::Started { holder, .. } => Some(holder.clone()),
        _ => None,
    });
    let pid = holder.as_deref().and_then(|h| {
        let (_, rest) = h.rsplit_once("pid ")?;
        rest.trim_end_matches(']').trim().parse::<u32>().ok()
    });
    let Some(pid) = pid else {
        return Err(Error::conflict(format!(
            "deployment {id} is local: its proxy and instances lived in its deployer's process, and the journal does not name that process, so its instances cannot be found; stop them (they have BLUEGREEN_COLOR in their environment), then resume to finish the record"
        )));
    };
    if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::conflict(format!(
            "deployment {id} is local and its deployer (pid {pid}) still runs: steer it with `bluegreen abort` or `promote`, or stop that process first"
        )));
    }
    let needle = format!("{}={pid}", bluegreen_local::DEPLOYER_PID_ENV);
    let leftovers: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                })
                .collect()
        })
        .unwrap_or_default();
    let signal = |sig| {
        for p in &leftovers {
            if let Some(p) = rustix::process::Pid::from_raw(*p) {
                let _ = rustix::process::kill_process_group(p, sig);
            }
        }
    };
    signal(rustix::process::Signal::TERM);
    let alive = || {
        leftovers
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    };
    for _ in 0..50 {
        if !alive() {
            break;
        }
        wait_real(Duration::from_millis(100));
    }
    if alive() {
        signal(rustix::process::Signal::KILL);
    }
    let pids: Vec<String> = leftovers.iter().map(|p| p.to_string()).collect();
    match out {
        OutputFormat::Text => println!(
            "{id} is a local deployment, which cannot resume where it stopped: its proxy and instances lived in its deployer (pid {pid}), which is gone. Stopped the {} instance(s) it left running{}; finishing the record on a fresh local target, which rolls back.",
            pids.len(),
            if pids.is_empty() { String::new() } else { format!(" (pids {})", pids.join(", ")) }
        ),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({"deployment_id": id, "local_cannot_resume": true, "deployer_pid": pid, "stopped_instances": leftovers})
        ),
    }
    Ok(())
}

async fn read_report(l: &LoadedSpec, path: &Path, id: &str) -> Result<Report, Error> {
    let j = open_journal(l, path).await?;
    let entries = j.read(id).await?;
    if entries.is_empty() {
        return Err(Error::not_found(format!(
            "no records of deployment {id} in {}",
            path.display()
        )));
    }
    Ok(Report::from_entries(&entries))
}

async fn status(
    l: &LoadedSpec,
    path: &Path,
    id: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    let id = pick(path, l, id, false).await?;
    let r = read_report(l, path, &id).await?;
    let stage = r
        .stages
        .last()
        .map_or("pending".into(), |s| s.stage.clone());
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"deployment_id": id, "service": r.service, "version": r.version,
                "outcome": r.outcome_name(), "stage": stage, "records": r.records,
                "started_at": r.started_at, "finished_at": r.finished_at})
        );
    } else {
        println!(
            "{id}: {} {} — {} (stage {stage}, {} journal records)",
            r.service,
            r.version,
            r.outcome_name(),
            r.records
        );
        if r.outcome.is_none() {
            println!(
                "not finished: if its deployer is gone, run `bluegreen resume {}`",
                l.path.display()
            );
        }
    }
    Ok(match r.outcome {
        None => EXIT_SUCCEEDED,
        Some(_) => exit_code(&r),
    })
}

/// The rollback rehearsal of the spec's plan (see
/// [`bluegreen_core::plan::rehearsal`]): the migrations from the spec's
/// migration files, and for an ALB the AWS default deregistration delay of
/// 300 s as the router's drain (the real one is read at deploy time).
pub(crate) fn rehearse(l: &LoadedSpec, out: OutputFormat) -> Result<i32, Error> {
    let plan = l
        .spec
        .plan()
        .map_err(|e| Error::invalid_input(e.to_string()))?;
    let options = bluegreen_core::plan::RehearsalOptions {
        migrations: migrations_to_run(l)?.unwrap_or_default(),
        router_drain: l
            .spec
            .target
            .alb
            .is_some()
            .then_some(ALB_DEFAULT_DEREGISTRATION_DELAY),
        scale_settle: None,
    };
    let r = plan.rehearse(&options)?;
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        if l.spec.target.alb.is_some() {
            println!(
                "Assumes the ALB target groups' deregistration delay is AWS's default, 300 s (a deployment reads the real one)."
            );
        }
        print!("{}", r.to_text());
    }
    Ok(EXIT_SUCCEEDED)
}

/// An ALB target group's deregistration delay unless it was changed
/// (AWS's documented default, 300 seconds).
const ALB_DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(300);

/// Sends one approval; a name on no list of the spec's approval gates (or
/// of the named gate) is refused here, naming the gate, before anything is
/// sent. A refusal by the deployer exits [`EXIT_REFUSED`].
async fn approve(
    l: &LoadedSpec,
    path: &Path,
    id: Option<String>,
    name: String,
    gate: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    let gate: Option<bluegreen_core::plan::Gate> = match gate {
        None => None,
        Some(g) => Some(
            serde_json::from_value(serde_json::Value::String(g.clone())).map_err(|_| {
                Error::invalid_input(format!(
                    "--gate {g:?} is not a gate: before-shift, before-full-traffic, before-scale-down or before-contract"
                ))
            })?,
        ),
    };
    let gates: Vec<&bluegreen_core::plan::ApprovalGate> = l
        .spec
        .approvals
        .iter()
        .filter(|a| gate.is_none_or(|g| a.gate == g))
        .collect();
    if gates.is_empty() {
        return Ok(refused(
            &Error::invalid_input(match gate {
                Some(g) => format!("approvals: the spec gives the gate {g} no approvers"),
                None => "approvals: the spec has no approval gate".to_string(),
            }),
            out,
        ));
    }
    if !gates.iter().any(|a| a.group_of(&name).is_some()) {
        let which: Vec<String> = gates
            .iter()
            .map(|a| {
                let names: Vec<&str> = a
                    .groups
                    .iter()
                    .flat_map(|g| g.names.iter().map(String::as_str))
                    .collect();
                format!("gate {} (approvers: {})", a.gate, names.join(", "))
            })
            .collect();
        return Ok(refused(
            &Error::invalid_input(format!(
                "approvals: {name:?} is not an approver of {}",
                which.join("; ")
            )),
            out,
        ));
    }
    control(l, path, id, Control::Approve { name, gate }, out).await
}

async fn control(
    l: &LoadedSpec,
    path: &Path,
    id: Option<String>,
    c: Control,
    out: OutputFormat,
) -> Result<i32, Error> {
    let id = pick(path, l, id, true).await?;
    let j = open_journal(l, path).await?;
    let before = journal::last_seq(&j.read(&id).await?);
    journal::send_control(path, &id, c.clone())?;
    // A live deployer polls the control file every 200 ms and journals what
    // it takes; wait a few seconds for that record.
    let mut taken = None;
    for _ in 0..CONTROL_CONFIRM_POLLS {
        wait_real(CONTROL_CONFIRM_POLL);
        taken = journal::took_control(&j.read(&id).await?, before, &c);
        if taken.is_some() {
            break;
        }
    }
    let what = describe_control(&c);
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"deployment_id": id, "sent": c, "taken": taken.is_some(), "effect": taken})
        );
    } else {
        match &taken {
            Some(effect)
                if effect.starts_with("refused") && matches!(c, Control::Approve { .. }) =>
            {
                eprintln!("{id}: its deployer refused {what}: {effect}");
                return Ok(EXIT_REFUSED);
            }
            Some(effect) => println!("{id}: its deployer took {what}: {effect}"),
            None => println!(
                "{id}: no running deployer took {what} within {} s; it is recorded and applies when the deployment is resumed (`bluegreen resume`)",
                CONTROL_CONFIRM_POLLS / 5
            ),
        }
    }
    Ok(EXIT_SUCCEEDED)
}

/// This deployer, as the lease names it to a deployer it refuses: `user
/// alice on host build-7, pid 4242`.
pub(crate) fn deployer_description() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    format!("user {user} on host {host}, pid {}", std::process::id())
}

async fn report(
    l: &LoadedSpec,
    path: &Path,
    id: Option<String>,
    format: ReportFormat,
) -> Result<i32, Error> {
    let id = pick(path, l, id, false).await?;
    let r = read_report(l, path, &id).await?;
    let criteria = acceptance::evaluate(&l.spec, &r);
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::json!({"report": r, "acceptance": criteria})
        ),
        ReportFormat::Markdown => {
            print!("{}", r.to_markdown());
            if !criteria.is_empty() {
                print!("{}", acceptance::to_markdown(&criteria));
            }
        }
        ReportFormat::Html => print!("{}", r.to_html_with(&acceptance::to_html(&criteria))),
    }
    Ok(EXIT_SUCCEEDED)
}
