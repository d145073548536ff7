//! The deployment report: every step, measurement, decision and timing, and
//! the outcome, rebuilt from the journal and rendered as JSON or Markdown.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::analysis::Measurement;
use crate::color::{Timestamp, TrafficSplit};
use crate::journal::{JournalEntry, Record};
use crate::machine::{Action, Control, Event, Facts, Input, Outcome, SmokeResult, SmokeScope};
use crate::plan::{Condition, Plan, RollbackTrigger, Unit};

#[cfg(feature = "html")]
mod html;
#[cfg(feature = "html")]
pub use html::HtmlTable;

/// A stage and when it started and ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub stage: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When the next stage started.
    pub ended_at: Option<Timestamp>,
}

/// A provider call the deployment made and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// When it was issued.
    pub at: Timestamp,
    /// The command id.
    pub id: u64,
    /// `provider operation`, e.g. `router set_split`.
    pub operation: String,
    /// What it asked, briefly.
    pub detail: String,
    /// `ok`, or the error.
    pub result: Option<String>,
}

/// A decision or note, in time order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When.
    pub at: Timestamp,
    /// What.
    pub text: String,
    /// What sort of record it is (a note in reports written before it was kept).
    #[serde(default)]
    pub kind: DecisionKind,
}

/// What sort of record a [`DecisionRecord`] is: the HTML report's timeline
/// marks human controls and rollbacks, not every note.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A note or a decision of the engine along the way.
    #[default]
    Note,
    /// A notification sent.
    Notification,
    /// A human's instruction (pause, resume, promote, abort) or its effect.
    Control,
    /// The rollback started.
    Rollback,
}

/// A traffic split in force from `at`: the live color's whole share when the
/// deployment read it first, then each split the router confirmed by read-back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// When it was read back.
    pub at: Timestamp,
    /// The split.
    pub split: TrafficSplit,
}

/// A check of the plan, as the report's charts need it: its unit, its
/// success condition and the breach conditions of the triggers on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The check's name.
    pub name: String,
    /// The unit of its values.
    pub unit: Unit,
    /// The success condition.
    pub success: Condition,
    /// The breach condition of each rollback trigger on the check.
    pub breach: Vec<Condition>,
}

/// A smoke-test run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeRecord {
    /// When.
    pub at: Timestamp,
    /// Where.
    pub scope: SmokeScope,
    /// The results.
    pub results: Vec<SmokeResult>,
}

/// One run of a lifecycle hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRecord {
    /// When its outcome was recorded.
    pub at: Timestamp,
    /// The hook's name.
    pub hook: String,
    /// Where it ran.
    pub point: crate::plan::HookPoint,
    /// How it ended: passed, attempts, duration and the tail of its output
    /// (secrets masked).
    pub outcome: crate::provider::HookOutcome,
    /// Its outcome came after a rollback began: recorded, deciding nothing.
    #[serde(default)]
    pub late: bool,
}

/// The record of one deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The deployment.
    pub deployment_id: String,
    /// The service.
    pub service: String,
    /// The release version.
    pub version: String,
    /// The image.
    pub image: String,
    /// The first record's time.
    pub started_at: Timestamp,
    /// The finish time.
    pub finished_at: Option<Timestamp>,
    /// The outcome, once finished.
    pub outcome: Option<Outcome>,
    /// The recorded state at the end.
    pub facts: Option<Facts>,
    /// Stages with timings.
    pub stages: Vec<StageRecord>,
    /// Every measurement.
    pub measurements: Vec<Measurement>,
    /// Smoke-test runs.
    pub smoke_tests: Vec<SmokeRecord>,
    /// Provider calls.
    pub actions: Vec<ActionRecord>,
    /// Decisions and notes.
    pub decisions: Vec<DecisionRecord>,
    /// The traffic split over time, as read back.
    #[serde(default)]
    pub splits: Vec<SplitRecord>,
    /// The plan's checks, with their units and thresholds.
    #[serde(default)]
    pub checks: Vec<CheckRecord>,
    /// Journal records read.
    pub records: usize,
    /// The plan's rollback-time targets (see [`Report::rollback_times`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_targets: Option<crate::plan::RollbackTargets>,
    /// When the rollback started, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<Timestamp>,
    /// Lifecycle hook runs, in order.
    #[serde(default)]
    pub hooks: Vec<HookRecord>,
}

/// One of the reference's rollback-time targets against the measured time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTime {
    /// `traffic switch`, `full rollback` or `verification`.
    pub what: String,
    /// What is measured, in words.
    pub measured_as: String,
    /// The target (the reference's unless the plan's `rollback_targets` says).
    #[serde(with = "humantime_serde")]
    pub target: std::time::Duration,
    /// The measured time, when this deployment has one.
    #[serde(with = "humantime_serde")]
    pub measured: Option<std::time::Duration>,
}

impl RollbackTime {
    /// `met`, `MISSED`, or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.measured {
            Some(m) if m < self.target => "met",
            Some(_) => "MISSED",
            None => "not measured",
        }
    }
}

impl Report {
    /// Rebuilds the report from a deployment's journal entries.
    pub fn from_entries(entries: &[JournalEntry]) -> Report {
        let mut r = Report::default();
        for e in entries {
            r.add(&e.deployment_id, e.at, &e.record);
        }
        r
    }

    /// Adds one journal record of `deployment_id`, written at `at`, to the
    /// report: what [`Report::from_entries`] does for each entry, for a
    /// report kept as the records are written.
    pub fn add(&mut self, deployment_id: &str, at: Timestamp, record: &Record) {
        let r = self;
        r.records += 1;
        if r.deployment_id.is_empty() {
            r.deployment_id = deployment_id.to_string();
            r.started_at = at;
        }
        {
            match record {
                Record::Started { plan, .. } => {
                    r.service = plan.service.clone();
                    r.version = plan.release.version.clone();
                    r.image = plan.release.image.clone();
                    r.checks = check_records(plan);
                    r.rollback_targets = Some(plan.rollback_targets.clone());
                }
                Record::Step {
                    input,
                    commands,
                    events,
                    notifications,
                } => {
                    for n in notifications {
                        r.decide_as(
                            at,
                            DecisionKind::Notification,
                            format!("notified: {}", n.title),
                        );
                    }
                    match input {
                        Input::Reply { id, .. } => r.close_action(*id, "ok".into()),
                        Input::Failed { id, error } => r.close_action(*id, error.message.clone()),
                        Input::Control { control } => r.decide_as(
                            at,
                            DecisionKind::Control,
                            format!("human: {}", control_text(control)),
                        ),
                        _ => {}
                    }
                    for c in commands {
                        if let Action::Notify { notification } = &c.action {
                            r.decide_as(
                                at,
                                DecisionKind::Notification,
                                format!("notified: {}", notification.title),
                            );
                            continue;
                        }
                        let (p, o) = c.action.operation();
                        r.actions.push(ActionRecord {
                            at,
                            id: c.id,
                            operation: joined(&[p, " ", o]),
                            detail: describe_action(&c.action),
                            result: None,
                        });
                    }
                    for ev in events {
                        r.absorb(at, ev);
                    }
                }
                Record::Checkpoint { skipped, .. } => r.decide(
                    at,
                    format!(
                        "{skipped} held step{} that repeated the previous readings left out of the journal",
                        if *skipped == 1 { "" } else { "s" }
                    ),
                ),
            }
        }
    }

    fn close_action(&mut self, id: u64, result: String) {
        if let Some(a) = self.actions.iter_mut().rev().find(|a| a.id == id) {
            a.result = Some(result);
        }
    }

    fn decide(&mut self, at: Timestamp, text: String) {
        self.decide_as(at, DecisionKind::Note, text);
    }

    fn decide_as(&mut self, at: Timestamp, kind: DecisionKind, text: String) {
        self.decisions.push(DecisionRecord { at, text, kind });
    }

    fn absorb(&mut self, at: Timestamp, ev: &Event) {
        match ev {
            Event::Stage { stage } => {
                let name = stage.name();
                // A stage entered again at once (scale_down_old once its
                // scale request is done and polling begins) is one stage.
                if self
                    .stages
                    .last()
                    .is_some_and(|l| l.stage == name && l.ended_at.is_none())
                {
                    return;
                }
                if let Some(last) = self.stages.last_mut() {
                    last.ended_at.get_or_insert(at);
                }
                self.stages.push(StageRecord {
                    stage: name,
                    started_at: at,
                    ended_at: None,
                });
            }
            Event::Colors { old, new } => {
                self.splits.push(SplitRecord {
                    at,
                    split: TrafficSplit::all_on(*old),
                });
                self.decide(at, format!("{old} is live; deploying to {new}"))
            }
            Event::TrafficConfirmed { split } => {
                self.splits.push(SplitRecord { at, split: *split });
                self.decide(at, format!("read-back confirmed {split}"))
            }
            Event::Capacity {
                replicas,
                old_desired,
                count,
                policy,
            } => self.decide(
                at,
                match policy {
                    crate::plan::CapacityPolicy::AtLeastOld => format!(
                        "capacity: the new color runs {count} (the larger of the plan's {replicas} and the old color's {old_desired} desired once autoscaling was suspended)"
                    ),
                    crate::plan::CapacityPolicy::Fixed => format!(
                        "capacity: the new color runs {count}, fixed by the plan (the old color has {old_desired} desired)"
                    ),
                },
            ),
            Event::ReleaseVerified { color, version, id } => self.decide(
                at,
                match id {
                    Some(id) => format!("{color} runs the prepared release: version {version} ({id})"),
                    None => format!("{color} runs the prepared release: version {version}"),
                },
            ),
            Event::OldColorChecked {
                status,
                health,
                capacity,
                serving,
            } => self.decide(
                at,
                format!(
                    "old color: {} desired, {} running, {} of {} targets healthy, capacity {capacity}: {}",
                    status.desired,
                    status.running,
                    health.healthy,
                    health.total,
                    if *serving { "can take traffic" } else { "cannot take traffic yet" }
                ),
            ),
            Event::Measured { measurement } => self.measurements.push((**measurement).clone()),
            Event::TargetHealth { color, health } => {
                if health.healthy < health.total {
                    self.decide(
                        at,
                        format!(
                            "{color}: {} of {} targets healthy",
                            health.healthy, health.total
                        ),
                    )
                }
            }
            Event::SmokeTests { scope, results } => self.smoke_tests.push(SmokeRecord {
                at,
                scope: *scope,
                results: results.clone(),
            }),
            Event::Hook {
                hook,
                point,
                outcome,
                late,
            } => self.hooks.push(HookRecord {
                at,
                hook: hook.clone(),
                point: *point,
                outcome: outcome.clone(),
                late: *late,
            }),
            Event::DryRun { detail, .. } => self.decide(at, detail.clone()),
            Event::Note { text, .. } => self.decide(at, text.clone()),
            Event::Control {
                control, effect, ..
            } => self.decide_as(
                at,
                DecisionKind::Control,
                format!("control {}: {effect}", control_text(control)),
            ),
            Event::RollbackStarted { reason } => {
                self.rollback_started_at.get_or_insert(at);
                self.decide_as(
                    at,
                    DecisionKind::Rollback,
                    format!("rollback: {}", reason.summary),
                )
            }
            Event::Finished { outcome, facts } => {
                if let Some(last) = self.stages.last_mut() {
                    last.ended_at.get_or_insert(at);
                }
                self.finished_at = Some(at);
                self.outcome = Some(outcome.clone());
                self.facts = Some((**facts).clone());
            }
        }
    }

    /// The outcome's name, or `"in progress"`.
    pub fn outcome_name(&self) -> &'static str {
        self.outcome.as_ref().map_or("in progress", Outcome::name)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The reference's rollback-time targets ("Rollback Time Estimate":
    /// traffic switch < 1 minute, full rollback < 5 minutes, verification
    /// < 10 minutes; the plan's `rollback_targets` when set) against the
    /// times this deployment's rollback took: from the rollback's start
    /// until a read-back showed all traffic on the old color, from its
    /// start until it finished, and the smoke tests on the old color once
    /// traffic was back. Empty when the deployment did not roll back.
    pub fn rollback_times(&self) -> Vec<RollbackTime> {
        let Some(start) = self.rollback_started_at else {
            return Vec::new();
        };
        let t = self.rollback_targets.clone().unwrap_or_default();
        let old = self.facts.as_ref().and_then(|f| f.old);
        let switched = old.and_then(|old| {
            self.splits
                .iter()
                .find(|s| s.at >= start && s.split.percent(old) == 100)
                .map(|s| s.at.since(start))
        });
        let full = match self.outcome {
            Some(Outcome::RolledBack { .. }) => self.finished_at.map(|f| f.since(start)),
            _ => None,
        };
        let verified = self
            .stages
            .iter()
            .find(|s| s.stage == "rollback_verify_old" && s.started_at >= start)
            .and_then(|s| s.ended_at.map(|e| e.since(s.started_at)));
        vec![
            RollbackTime {
                what: "traffic switch".into(),
                measured_as: "rollback start to a read-back of all traffic on the old color".into(),
                target: t.traffic_switch,
                measured: switched,
            },
            RollbackTime {
                what: "full rollback".into(),
                measured_as: "rollback start to rolled back".into(),
                target: t.full_rollback,
                measured: full,
            },
            RollbackTime {
                what: "verification".into(),
                measured_as: "smoke tests on the old color after the switch".into(),
                target: t.verification,
                measured: verified,
            },
        ]
    }

    /// The report as Markdown: the reference's "deployment documented".
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Deployment {} of {} {}\n",
            self.deployment_id, self.service, self.version
        );
        let _ = writeln!(s, "- Image: `{}`", self.image);
        let _ = writeln!(s, "- Started: {}", self.started_at);
        if let Some(f) = self.finished_at {
            let _ = writeln!(
                s,
                "- Finished: {f} (took {})",
                humantime::format_duration(f.since(self.started_at))
            );
        }
        let _ = writeln!(s, "- Outcome: **{}**", self.outcome_name());
        match &self.outcome {
            Some(Outcome::RolledBack { reason }) | Some(Outcome::Halted { reason }) => {
                let _ = writeln!(s, "- Reason: {}", reason.summary);
                if !reason.evidence.is_empty() {
                    let _ = writeln!(s, "\n## Evidence behind the decision\n");
                    for m in &reason.evidence {
                        let unit = self
                            .checks
                            .iter()
                            .find(|c| c.name == m.check)
                            .map_or(crate::plan::Unit::Number, |c| c.unit);
                        let _ = writeln!(s, "- {} at {}", m.describe_in(unit), m.to);
                    }
                }
            }
            _ => {}
        }
        if let Some(f) = &self.facts {
            let _ = writeln!(s, "\n## Recorded state\n");
            let color =
                |c: Option<crate::Color>| c.map_or("unknown".to_string(), |c| c.to_string());
            let _ = writeln!(
                s,
                "- Old color: {}, new color: {}",
                color(f.old),
                color(f.new)
            );
            if let Some(split) = f.confirmed_split {
                let _ = writeln!(s, "- Traffic (read back): {split}");
            }
            let count = |c: Option<u32>| c.map_or("none".to_string(), |c| c.to_string());
            let _ = writeln!(
                s,
                "- Requested counts: new {}, old {} (old capacity {})",
                count(f.new_count),
                count(f.old_count),
                count(f.old_capacity)
            );
            if let Some(b) = &f.backup {
                let _ = writeln!(s, "- Backup: {} at {}", b.id, b.location);
            }
            for m in &f.applied {
                let _ = writeln!(
                    s,
                    "- Migration applied: {} {} ({}, {})",
                    m.version,
                    m.name,
                    m.phase,
                    if m.reversible {
                        "reversible"
                    } else {
                        "irreversible"
                    }
                );
            }
            for m in &f.reverted {
                let _ = writeln!(s, "- Migration reverted: {} {}", m.version, m.name);
            }
        }
        let times = self.rollback_times();
        if !times.is_empty() {
            let _ = writeln!(
                s,
                "\n## Rollback time against the reference's targets\n\n| | target | measured | |\n|---|---|---|---|"
            );
            for t in &times {
                let _ = writeln!(
                    s,
                    "| {} ({}) | < {} | {} | {} |",
                    t.what,
                    t.measured_as,
                    humantime::format_duration(t.target),
                    t.measured.map_or("-".to_string(), |m| {
                        humantime::format_duration(std::time::Duration::from_secs(m.as_secs()))
                            .to_string()
                    }),
                    t.verdict()
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Stages\n\n| stage | started | took |\n|---|---|---|"
        );
        for st in &self.stages {
            let took = st
                .ended_at
                .map(|e| humantime::format_duration(e.since(st.started_at)).to_string())
                .unwrap_or_default();
            let _ = writeln!(s, "| {} | {} | {} |", st.stage, st.started_at, took);
        }
        for production in [false, true] {
            let runs: Vec<&SmokeRecord> = self
                .smoke_tests
                .iter()
                .filter(|r| (r.scope == SmokeScope::Production) == production)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let _ = if production {
                writeln!(
                    s,
                    "\n## Production checks\n\nSmoke tests through the production URL after each traffic change and after a rollback.\n"
                )
            } else {
                writeln!(s, "\n## Smoke tests\n")
            };
            for run in runs {
                let scope = scope_text(run.scope);
                let passed = run.results.iter().filter(|r| r.passed()).count();
                let _ = writeln!(
                    s,
                    "On {scope} at {}: {passed}/{} passed",
                    run.at,
                    run.results.len()
                );
                for t in &run.results {
                    match (&t.outcome, &t.error) {
                        (Some(o), _) => {
                            let _ = writeln!(
                                s,
                                "- {} {} ({} ms): {}",
                                if o.passed { "✓" } else { "✗" },
                                t.name,
                                o.duration.as_millis(),
                                o.detail
                            );
                        }
                        (None, Some(e)) => {
                            let _ = writeln!(s, "- ✗ {}: {}", t.name, e.message);
                        }
                        _ => {}
                    }
                }
            }
        }
        if !self.hooks.is_empty() {
            let _ = writeln!(s, "\n## Hooks\n");
            for h in &self.hooks {
                let o = &h.outcome;
                let _ = writeln!(
                    s,
                    "- {} {} at {} ({}, {} attempt{}, {} ms{}): {}",
                    if o.passed { "✓" } else { "✗" },
                    h.hook,
                    h.point,
                    h.at,
                    o.attempts,
                    if o.attempts == 1 { "" } else { "s" },
                    o.duration.as_millis(),
                    if h.late {
                        ", after the rollback began"
                    } else {
                        ""
                    },
                    o.detail.replace('\n', "\n  ")
                );
            }
        }
        if !self.measurements.is_empty() {
            let _ = writeln!(
                s,
                "\n## Measurements\n\n| at | check | kind | value | samples | verdict | breach |\n|---|---|---|---|---|---|---|"
            );
            for m in &self.measurements {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {}{} | {} |",
                    m.to,
                    m.check,
                    m.kind,
                    m.value.map_or("-".to_string(), |v| {
                        let unit = self
                            .checks
                            .iter()
                            .find(|c| c.name == m.check)
                            .map_or(crate::plan::Unit::Number, |c| c.unit);
                        unit.format(v)
                    }),
                    m.samples.len(),
                    m.verdict,
                    if m.dry_run { " (dry run)" } else { "" },
                    if m.breach { "yes" } else { "" }
                );
            }
        }
        let _ = writeln!(s, "\n## Decisions\n");
        for d in &self.decisions {
            let _ = writeln!(s, "- {}: {}", d.at, d.text);
        }
        let _ = writeln!(
            s,
            "\n## Provider calls\n\n| at | call | detail | result |\n|---|---|---|---|"
        );
        for a in &self.actions {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                a.at,
                a.operation,
                a.detail,
                a.result.as_deref().unwrap_or("(no result recorded)")
            );
        }
        s
    }
}

/// `parts` in one string allocated once: what `concat` does, quicker for a
/// few short parts (a report joins two or three for every provider call).
fn joined(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

fn describe_action(a: &Action) -> String {
    match a {
        Action::SetSplit { split } => split.to_string(),
        Action::Scale { color, count } => format!("{color} to {count}"),
        Action::Prepare { color } => format!("{color}"),
        Action::ReadStatus { colors } => colors
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        Action::ReadTargetHealth { color }
        | Action::ReadAutoscaling { color }
        | Action::SuspendAutoscaling { color }
        | Action::RestoreAutoscaling { color, .. } => color.as_str().to_owned(),
        Action::RunSmokeTests {
            scope,
            tests,
            version,
        } => format!("{} ({version}): {}", scope_text(*scope), tests.join(", ")),
        Action::Migrate { phase } | Action::VerifyMigrations { phase } => phase.to_string(),
        Action::RevertMigrations { versions } => versions
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        // The most frequent call: joined without the formatting machinery.
        Action::Measure { check, query, .. } => joined(&[check, ": ", query]),
        Action::VerifyBackup {
            backup,
            min_entries,
        } => {
            format!("{} (at least {min_entries} entries)", backup.id)
        }
        Action::CheckSecrets { secrets } => secrets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        Action::RunHook { hook, context } => format!("{hook} ({})", context.point),
        Action::ReadSplit
        | Action::ReadDrainPeriod
        | Action::ReadMigrationLedger
        | Action::Backup
        | Action::Notify { .. } => String::new(),
    }
}

/// A human's instruction in words: `pause`, `abort (error budget spent)`.
fn control_text(c: &Control) -> String {
    match c {
        Control::Pause => "pause".into(),
        Control::Resume => "resume".into(),
        Control::Promote => "promote".into(),
        Control::Abort { reason } => format!("abort ({reason})"),
        Control::Proceed { barrier } => format!("proceed past {barrier}"),
        Control::Approve { name, gate } => approve_text(name, *gate),
    }
}

/// An approval in words: `approve as NAME (before-shift)`.
pub(crate) fn approve_text(name: &str, gate: Option<crate::plan::Gate>) -> String {
    match gate {
        Some(g) => format!("approve as {name} (gate {g})"),
        None => format!("approve as {name}"),
    }
}

/// Where smoke tests ran: `staging`, the color's name, or `production`.
pub(crate) fn scope_text(s: SmokeScope) -> String {
    match s {
        SmokeScope::Staging => "staging".into(),
        SmokeScope::Color(c) => c.to_string(),
        SmokeScope::Production => "production".into(),
        SmokeScope::Dependencies => "dependencies".into(),
    }
}

/// The plan's checks with the breach conditions of the triggers on them.
fn check_records(plan: &Plan) -> Vec<CheckRecord> {
    plan.analysis
        .iter()
        .map(|c| CheckRecord {
            name: c.name.clone(),
            unit: c.unit,
            success: c.success,
            breach: plan
                .rollback_triggers
                .iter()
                .filter_map(|t| match t {
                    RollbackTrigger::Metric { check, breach, .. } if *check == c.name => {
                        Some(*breach)
                    }
                    _ => None,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod stage_table_tests {
    use super::*;
    use crate::machine::Stage;

    fn step(events: Vec<Event>) -> Record {
        Record::Step {
            input: Input::Tick,
            commands: vec![],
            events,
            notifications: vec![],
        }
    }

    /// scale_down_old is entered twice in a row (the request, then its
    /// polling): the Markdown report's Stages table lists it once, timed
    /// from the first entry to the next stage.
    #[test]
    fn the_stages_table_lists_scale_down_old_once() {
        let mut r = Report::default();
        let stage = |stage| Event::Stage { stage };
        r.add(
            "d",
            Timestamp(0),
            &step(vec![stage(Stage::ScaleDownOld { polling: false })]),
        );
        r.add(
            "d",
            Timestamp(1_000),
            &step(vec![stage(Stage::ScaleDownOld { polling: true })]),
        );
        r.add(
            "d",
            Timestamp(31_000),
            &step(vec![stage(Stage::RestoreAutoscaling)]),
        );
        let names: Vec<&str> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["scale_down_old", "restore_autoscaling"]);
        assert_eq!(r.stages[0].ended_at, Some(Timestamp(31_000)));
        let md = r.to_markdown();
        assert_eq!(md.matches("| scale_down_old |").count(), 1, "{md}");
        assert!(
            md.contains("| scale_down_old | ") && md.contains(" | 31s |"),
            "{md}"
        );
    }
}
