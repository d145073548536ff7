//! Coordinated deployments from one spec file: a `[group]` section and a list
//! of `[[services]]`, each a whole deployment spec (the same sections as a
//! single-service spec, without `[journal]`, which the group shares).
//!
//! ```toml
//! [group]
//! name = "checkout"
//! barrier_timeout = "30m"   # optional
//!
//! [[services]]
//! [services.scope]
//! service = "order-api"
//! # ... every other section of a spec ...
//!
//! [[services]]
//! [services.scope]
//! service = "payment-api"
//! # ...
//!
//! [journal]                 # optional, shared by every member
//! path = ".bluegreen/checkout.journal"
//! ```
//!
//! The members' traffic moves together: no member gets traffic until every
//! member is deployed, stable and smoke-tested; no member takes the next
//! traffic step (or scales its old color down) until every member has passed
//! the current one; and a member that rolls back takes every other member
//! back with it (see `bluegreen_core::group`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::group::{Group, GroupControl, GroupOutcome, GroupReport, MemberReport};
use bluegreen_core::{Control, Error, Journal, JournalEntry, Report};
use serde::{Deserialize, Serialize};

use crate::acceptance;
use crate::journal;
use crate::output::{self, OutputFormat, ReportFormat};
use crate::providers;
use crate::spec::{self, Format, JournalSpec, LoadedSpec, Spec, SpecError};

/// `[group]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// The group's name, e.g. `checkout`.
    pub name: String,
    /// How long the group waits at a barrier for its last member before it
    /// rolls every member back.
    #[serde(default = "default_barrier_timeout", with = "humantime_serde")]
    pub barrier_timeout: Duration,
}

fn default_barrier_timeout() -> Duration {
    bluegreen_core::group::DEFAULT_BARRIER_TIMEOUT
}

/// A group spec. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group.
    pub group: GroupSection,
    /// The members, each a whole deployment spec without `[journal]`.
    pub services: Vec<Spec>,
    /// The journal every member writes to.
    #[serde(default)]
    pub journal: JournalSpec,
}

/// A group spec and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedGroup {
    /// The spec.
    pub spec: GroupSpec,
    /// The file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// Whether `text` is a group spec: it has a top-level `group` key.
pub fn is_group(text: &str, format: Format) -> bool {
    match format {
        Format::Toml => text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("group")),
        // Too deep to parse quickly: not read as a group; loading it as a
        // spec refuses it, naming the file.
        Format::Yaml if crate::specfile::check_yaml_depth(text, "").is_err() => false,
        Format::Yaml => serde_norway::from_str::<serde_norway::Value>(text)
            .ok()
            .and_then(|v| v.as_mapping().map(|m| m.contains_key("group")))
            .unwrap_or(false),
    }
}

impl LoadedGroup {
    /// Parses and validates a group spec; errors give file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<LoadedGroup, SpecError> {
        let file = path.display().to_string();
        let spec: GroupSpec = spec::deserialize(text, &file, Format::of(&file))?;
        let at = |field: String, message: String| {
            let (line, column) = spec::locate(text, &field);
            SpecError {
                file: file.clone(),
                line,
                column,
                field,
                message,
            }
        };
        if spec.group.name.trim().is_empty() {
            return Err(at("group.name".into(), "must not be empty".into()));
        }
        if spec.services.len() < 2 {
            return Err(at(
                "services".into(),
                format!(
                    "has {} service(s); a coordinated group needs at least two",
                    spec.services.len()
                ),
            ));
        }
        let mut first_steps: Option<(String, Vec<u8>)> = None;
        for (i, s) in spec.services.iter().enumerate() {
            s.validate()
                .map_err(|(f, m)| at(format!("services[{i}].{f}"), m))?;
            if s.journal != JournalSpec::default() {
                return Err(at(
                    format!("services[{i}].journal"),
                    "a group's members share the group's journal: move [journal] to the top level"
                        .into(),
                ));
            }
            if let Some(j) = spec.services[..i]
                .iter()
                .position(|o| o.scope.service == s.scope.service)
            {
                return Err(at(
                    format!("services[{i}].scope.service"),
                    format!(
                        "{:?} is already services[{j}]; each service appears once",
                        s.scope.service
                    ),
                ));
            }
            let plan = s
                .plan()
                .map_err(|e| at(format!("services[{i}].{}", e.field), e.message.clone()))?;
            let steps: Vec<u8> = plan.strategy.steps().iter().map(|t| t.percent).collect();
            match &first_steps {
                None => first_steps = Some((s.scope.service.clone(), steps)),
                Some((name, first)) if *first != steps => {
                    return Err(at(
                        format!("services[{i}].deployment.strategy"),
                        format!(
                            "shifts traffic in steps {steps:?} but {name} in {first:?}; members move traffic together, so their steps must match"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(LoadedGroup {
            spec,
            path: path.to_path_buf(),
            text: text.to_string(),
        })
    }

    /// Each member as a spec of its own (paths resolve against the group file).
    pub fn members(&self) -> Vec<LoadedSpec> {
        self.spec
            .services
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.journal = self.spec.journal.clone();
                LoadedSpec {
                    spec: s,
                    path: self.path.clone(),
                    text: self.text.clone(),
                }
            })
            .collect()
    }

    /// The services, sorted (the group's lease order).
    pub fn services(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .spec
            .services
            .iter()
            .map(|s| s.scope.service.clone())
            .collect();
        v.sort();
        v
    }

    /// The journal file: `[journal] path`, or `.bluegreen/<group>.journal`
    /// beside the spec.
    pub fn journal_path(&self) -> PathBuf {
        let first = &self.members()[0];
        match &self.spec.journal.path {
            Some(p) => first.resolve(p),
            None => first.resolve(Path::new(&format!(
                ".bluegreen/{}.journal",
                self.spec.group.name
            ))),
        }
    }

    /// Whether every member runs under paused (virtual) time.
    pub fn paused_time(&self) -> bool {
        self.spec
            .services
            .iter()
            .all(|s| s.target.fake.as_ref().is_some_and(|f| f.paused_time))
    }
}

/// The exit code of a group's report: a rollback in which no member
/// changed anything (refused in preflight) is [`output::EXIT_REFUSED`].
pub fn exit_code_of(r: &GroupReport) -> i32 {
    match r.outcome {
        GroupOutcome::RolledBack
            if r.members.iter().all(|m| output::changed_nothing(&m.report)) =>
        {
            output::EXIT_REFUSED
        }
        o => exit_code(o),
    }
}

/// The exit code of a group outcome.
pub fn exit_code(o: GroupOutcome) -> i32 {
    match o {
        GroupOutcome::Succeeded => output::EXIT_SUCCEEDED,
        GroupOutcome::RolledBack => output::EXIT_ROLLED_BACK,
        GroupOutcome::Halted => output::EXIT_HALTED,
        GroupOutcome::Interrupted => output::EXIT_ERROR,
    }
}

pub(crate) fn coordination(g: &LoadedGroup) -> String {
    let steps = g.spec.services[0]
        .plan()
        .map(|p| p.strategy.steps().len())
        .unwrap_or(0);
    format!(
        "coordination: every member holds before each of its {steps} traffic step(s) and before its old color's scale-down until all {} members are there; a rollback of any member before the last barrier rolls every member back",
        g.spec.services.len()
    )
}

/// The deployment id of `service` in group `id`.
fn member_id(id: &str, service: &str) -> String {
    format!("{id}/{service}")
}

/// Each member's journal entries in group `id`, in [`LoadedGroup::services`]
/// order.
async fn members_entries(
    g: &LoadedGroup,
    j: &Arc<dyn Journal>,
    id: &str,
) -> Result<Vec<Vec<JournalEntry>>, Error> {
    let mut members = Vec::new();
    for service in g.services() {
        members.push(j.read(&member_id(id, &service)).await?);
    }
    Ok(members)
}

/// The group to act on: `id`, or the latest (unfinished, if `unfinished`)
/// group of these services in the journal.
async fn pick(
    g: &LoadedGroup,
    j: &Arc<dyn Journal>,
    path: &Path,
    id: Option<String>,
    unfinished: bool,
) -> Result<String, Error> {
    if let Some(id) = id {
        return Ok(id);
    }
    let services = g.services();
    let mut groups: Vec<(bluegreen_core::Timestamp, String, bool)> = Vec::new();
    for d in j.deployments(None).await? {
        let Some((gid, service)) = d.id.rsplit_once('/') else {
            continue;
        };
        if !services.iter().any(|s| s == service) {
            continue;
        }
        match groups.iter_mut().find(|(_, id, _)| id == gid) {
            Some(e) => {
                e.0 = e.0.min(d.started_at);
                e.2 |= d.outcome.is_none();
            }
            None => groups.push((d.started_at, gid.to_string(), d.outcome.is_none())),
        }
    }
    groups.sort();
    groups
        .into_iter()
        .rev()
        .find(|(_, _, open)| !unfinished || *open)
        .map(|(_, id, _)| id)
        .ok_or_else(|| {
            Error::not_found(format!(
                "no {}run of group {} in {}",
                if unfinished { "unfinished " } else { "" },
                g.spec.group.name,
                path.display()
            ))
        })
}

async fn open(g: &LoadedGroup, path: &Path) -> Result<Arc<dyn Journal>, Error> {
    if g.spec.journal.kind == spec::JournalKind::File && !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            bluegreen_core::journal::create_private_dir(dir)
                .map_err(|e| Error::unavailable(format!("{}: {e}", dir.display())))?;
        }
    }
    journal::open_for(&g.members()[0], path).await
}

/// `deploy` (or `resume`) of a group.
pub async fn deploy(
    g: &LoadedGroup,
    path: &Path,
    id: Option<String>,
    resume: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    // Refused before anything changes when a member's expand migration
    // would break its old color.
    if resume.is_none() {
        for m in g.members() {
            if let Err(e) = crate::lint::check_migrations(&m) {
                return Ok(output::refused(&e, out));
            }
        }
    }
    // Who each AWS member runs as (said once per identity); credentials
    // that resolve to nobody refuse the group before anything changes.
    let mut said = Vec::new();
    for m in g.members() {
        if let Some(e) = m.spec.target.ecs.as_ref() {
            match crate::aws::identity(e).await {
                Ok(id) if said.contains(&id) => {}
                Ok(id) => {
                    crate::aws::announce(&id, out == OutputFormat::Json);
                    said.push(id);
                }
                Err(e) => return Ok(output::refused(&e, out)),
            }
        }
    }
    let journal = open(g, path).await?;
    let mut assembled = Vec::new();
    let mut builder = Group::builder(g.spec.group.name.clone())
        .journal(journal.clone())
        .barrier_timeout(g.spec.group.barrier_timeout);
    for m in g.members() {
        let plan = m
            .spec
            .plan()
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        let a = match providers::assemble(&m).await {
            Ok(a) => a,
            Err(e) => {
                for a in assembled {
                    providers::Assembled::shutdown(a).await;
                }
                return Err(e);
            }
        };
        builder = builder.member(spec::driver_settings(
            a.builder(plan),
            &m.spec.deployment,
            &g.spec.journal,
        ));
        assembled.push(a);
    }
    builder = match (&resume, id) {
        (Some(r), _) => builder.resume(r.clone()),
        (None, Some(id)) => builder.group_id(id),
        (None, None) => builder,
    };
    let group = match builder.build() {
        Ok(g) => g,
        Err(e) => {
            for a in assembled {
                a.shutdown().await;
            }
            return Err(e);
        }
    };
    let gid = group.id().to_string();
    // `abort`, `promote`, `pause` and `resume` of a group are written to the
    // control file under the group id, and apply to every member. A resumed
    // group first applies, in order, those no deployer took (sent while none
    // ran, or to one killed before any member journaled them), then every
    // later one as it comes.
    let control = group.control();
    let (sent, from) = match journal::control_snapshot(path, &gid) {
        Ok(s) => s,
        Err(e) => {
            for a in assembled {
                a.shutdown().await;
            }
            return Err(e);
        }
    };
    if resume.is_some() && !sent.is_empty() {
        let members = match members_entries(g, &journal, &gid).await {
            Ok(m) => m,
            Err(e) => {
                for a in assembled {
                    a.shutdown().await;
                }
                return Err(e);
            }
        };
        let taken = journal::group_controls_taken(&sent, &members);
        for c in sent.into_iter().skip(taken) {
            match out {
                OutputFormat::Text => println!(
                    "applying {} sent to the group while no deployer ran",
                    output::describe_control(&c)
                ),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"group_id": gid, "applying_pending_control": c})
                ),
            }
            apply(&control, c);
        }
    }
    let forward = journal::forward_with_from(path, from, gid.clone(), move |c| {
        apply(&control, c);
    });
    let events = group.subscribe();
    let first = format!(
        "{} group {} [{}] as {gid} (journal {})",
        if resume.is_some() {
            "resuming"
        } else {
            "deploying"
        },
        g.spec.group.name,
        g.services().join(", "),
        path.display()
    );
    let members = g.members();
    let units = output::units_of(members.iter().map(|m| &m.spec));
    let result = output::follow(group.run(), events, out, first, units).await;
    forward.abort();
    for a in assembled {
        a.shutdown().await;
    }
    let report = result?;
    print_report(g, &report, out, true);
    Ok(exit_code_of(&report))
}

/// Sends a human control to every member of a running group.
fn apply(control: &GroupControl, c: Control) {
    match c {
        Control::Abort { reason } => control.abort(reason),
        Control::Promote => control.promote(),
        Control::Pause => control.pause(),
        Control::Resume => control.resume(),
        Control::Proceed { .. } | Control::Approve { .. } => false,
    };
}

fn print_report(g: &LoadedGroup, report: &GroupReport, out: OutputFormat, summary_only: bool) {
    let members = g.members();
    let criteria: Vec<_> = report
        .members
        .iter()
        .map(|m| {
            let spec = members
                .iter()
                .find(|s| s.spec.scope.service == m.service)
                .map(|s| &s.spec);
            (
                m.service.clone(),
                spec.map(|s| acceptance::evaluate(s, &m.report))
                    .unwrap_or_default(),
            )
        })
        .collect();
    match out {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "group_id": report.group_id,
                "outcome": report.outcome.name(),
                "trigger": report.trigger,
                "acceptance": criteria.iter().map(|(s, c)| serde_json::json!({"service": s, "criteria": c})).collect::<Vec<_>>(),
                "report": report,
            })
        ),
        OutputFormat::Text if summary_only => {
            println!("\n{}: {}", report.group_id, report.outcome.name());
            if let Some(t) = &report.trigger {
                match &t.member {
                    Some(m) => println!("rolled back because {m} {}", t.reason),
                    None => println!("rolled back: {}", t.reason),
                }
            }
            for m in &report.members {
                println!("  {}: {}", m.service, m.report.outcome_name());
            }
            for (service, c) in &criteria {
                if !c.is_empty() {
                    println!("\n### {service}");
                    print!("{}", acceptance::to_markdown(c));
                }
            }
        }
        OutputFormat::Text => {
            print!("{}", report.to_markdown());
            for (service, c) in &criteria {
                if !c.is_empty() {
                    println!("\n### Acceptance: {service}");
                    print!("{}", acceptance::to_markdown(c));
                }
            }
        }
    }
}

async fn read(g: &LoadedGroup, j: &Arc<dyn Journal>, id: &str) -> Result<GroupReport, Error> {
    let mut members = Vec::new();
    for service in g.services() {
        let mid = member_id(id, &service);
        let entries = j.read(&mid).await?;
        members.push(MemberReport {
            service,
            deployment_id: mid,
            report: Report::from_entries(&entries),
            error: None,
        });
    }
    if members.iter().all(|m| m.report.records == 0) {
        return Err(Error::not_found(format!(
            "no records of group {id} of {}",
            g.spec.group.name
        )));
    }
    Ok(GroupReport::from_members(
        g.spec.group.name.clone(),
        id,
        members,
    ))
}

/// `resume` of a group: the latest unfinished run, or `id`.
pub async fn resume(
    g: &LoadedGroup,
    path: &Path,
    id: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    let j = open(g, path).await?;
    let id = pick(g, &j, path, id, false).await?;
    let r = read(g, &j, &id).await?;
    if r.outcome == GroupOutcome::Interrupted {
        drop(j);
        return deploy(g, path, None, Some(id), out).await;
    }
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"group_id": id, "outcome": r.outcome.name(), "already_finished": true})
        );
    } else {
        println!("{id} already finished: {}", r.outcome.name());
    }
    Ok(exit_code_of(&r))
}

/// `status` of a group: each member's outcome and stage.
pub async fn status(
    g: &LoadedGroup,
    path: &Path,
    id: Option<String>,
    out: OutputFormat,
) -> Result<i32, Error> {
    let j = open(g, path).await?;
    let id = pick(g, &j, path, id, false).await?;
    let r = read(g, &j, &id).await?;
    let stage = |m: &MemberReport| {
        m.report
            .stages
            .last()
            .map_or("pending".to_string(), |s| s.stage.clone())
    };
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({
                "group_id": id,
                "outcome": r.outcome.name(),
                "members": r.members.iter().map(|m| serde_json::json!({
                    "service": m.service, "deployment_id": m.deployment_id,
                    "outcome": m.report.outcome_name(), "stage": stage(m),
                    "records": m.report.records,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        let state = if r.outcome == GroupOutcome::Interrupted {
            "in progress"
        } else {
            r.outcome.name()
        };
        println!("{id}: group {} — {state}", g.spec.group.name);
        for m in &r.members {
            println!(
                "  {}: {} (stage {}, {} journal records)",
                m.service,
                m.report.outcome_name(),
                stage(m),
                m.report.records
            );
        }
    }
    Ok(match r.outcome {
        GroupOutcome::Interrupted => output::EXIT_SUCCEEDED,
        _ => exit_code_of(&r),
    })
}

/// `abort` or `promote` of a running group: written to the control file
/// under the group id, for every member. Waits up to 3 s (real time) for a
/// live group deployer to take it, seen as a member journaling it, and says
/// which members took it and with what effect; otherwise that it applies
/// when the group is resumed.
pub async fn control(
    g: &LoadedGroup,
    path: &Path,
    id: Option<String>,
    c: Control,
    out: OutputFormat,
) -> Result<i32, Error> {
    let j = open(g, path).await?;
    let id = pick(g, &j, path, id, true).await?;
    let services = g.services();
    let before: Vec<u64> = members_entries(g, &j, &id)
        .await?
        .iter()
        .map(|e| journal::last_seq(e))
        .collect();
    journal::send_control(path, &id, c.clone())?;
    // A live group deployer polls the control file every 200 ms and hands
    // the control to every running member, which journals it before acting.
    let mut effects: Vec<(String, Option<String>)> = Vec::new();
    let mut seen = false;
    for _ in 0..output::CONTROL_CONFIRM_POLLS {
        output::wait_real(output::CONTROL_CONFIRM_POLL);
        let members = members_entries(g, &j, &id).await?;
        effects = services
            .iter()
            .zip(&members)
            .zip(&before)
            .map(|((s, e), b)| (s.clone(), journal::took_control(e, *b, &c)))
            .collect();
        let all = effects.iter().all(|(_, e)| e.is_some());
        if all || seen {
            // Once one member took it, one more poll lets the others record it.
            break;
        }
        seen = effects.iter().any(|(_, e)| e.is_some());
    }
    let taken = effects.iter().any(|(_, e)| e.is_some());
    let what = output::describe_control(&c);
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({
                "group_id": id, "sent": c, "taken": taken,
                "members": effects.iter().map(|(s, e)| serde_json::json!({
                    "service": s, "taken": e.is_some(), "effect": e,
                })).collect::<Vec<_>>(),
            })
        );
    } else if taken {
        println!("{id}: its group deployer took {what}:");
        for (s, e) in &effects {
            match e {
                Some(effect) => println!("  {s}: {effect}"),
                None => println!("  {s}: not taken (the member was not running)"),
            }
        }
    } else {
        println!(
            "{id}: no running group deployer took {what} within {} s; it is recorded and applies to every member when the group is resumed (`bluegreen resume`)",
            output::CONTROL_CONFIRM_POLLS / 5
        );
    }
    Ok(output::EXIT_SUCCEEDED)
}

/// `report` of a group, from the journal.
pub async fn report(
    g: &LoadedGroup,
    path: &Path,
    id: Option<String>,
    format: ReportFormat,
) -> Result<i32, Error> {
    if format == ReportFormat::Html {
        return Err(Error::invalid_input(
            "the HTML report shows one service's deployment: run `bluegreen report --format html` with a member's spec, or use --format markdown or json for the group",
        ));
    }
    let j = open(g, path).await?;
    let id = pick(g, &j, path, id, false).await?;
    let r = read(g, &j, &id).await?;
    let out = match format {
        ReportFormat::Json => OutputFormat::Json,
        ReportFormat::Markdown | ReportFormat::Html => OutputFormat::Text,
    };
    print_report(g, &r, out, false);
    Ok(output::EXIT_SUCCEEDED)
}
