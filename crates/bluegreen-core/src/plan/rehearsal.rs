//! Rollback rehearsal: the plan's rollback, driven through a failure at
//! every stage, without touching anything.
//!
//! The reference's checklist asks for the "rollback procedure documented
//! and tested". [`Plan::rehearse`] runs the real [`Machine`] against an
//! in-process world that answers every call at once and always succeeds
//! (the live color serving, smoke tests and checks passing, the given
//! migrations applied), first on the happy path, then once per stage of
//! it with a failure injected as that stage begins. For each stage it
//! records what the rollback does, in order (every change it makes and
//! every wait), how long it takes at the plan's timings (the drain, or
//! the router's deregistration delay when larger; a scale settling within
//! [`RehearsalOptions::scale_settle`]), when traffic is back on the old
//! color, and whether it ends rolled back or halted, and where: after an
//! irreversible migration, past the point of no return.
//!
//! Nothing outside the process is called: no provider, no journal, no
//! clock. A plan that does not validate is refused with the field named.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Gate, Plan};
use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::{Error, PlanError};
use crate::machine::{
    Action, Command, Control, Event, HoldReason, Input, Machine, Outcome, Reply, SmokeResult,
    SmokeScope, Stage,
};
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeStatus, MigrationInfo,
    PreparedRelease, Rollout, SecretMetadata, SmokeOutcome, TargetHealth,
};

/// Where a rehearsal's virtual clock starts (2026-01-01T00:00:00Z); only
/// durations since it are shown.
const EPOCH: Timestamp = Timestamp(1_767_225_600_000);

/// The most inputs one rehearsed deployment may take before it is called
/// stuck (a one-hour soak measured every 10 s takes a few thousand).
const MAX_INPUTS: usize = 200_000;

/// What the rehearsal assumes of the world it cannot read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsalOptions {
    /// The migrations the release applies, in order (from its migration
    /// files): their phase and reversibility decide where a rollback halts.
    pub migrations: Vec<MigrationInfo>,
    /// The router's own drain figure (an ALB target group's deregistration
    /// delay, 300 s by default on AWS), when known; the drain is the larger
    /// of it and `timing.drain`.
    pub router_drain: Option<Duration>,
    /// How long a scale takes to settle (desired count running and
    /// healthy); `timing.poll_interval` when absent.
    pub scale_settle: Option<Duration>,
}

/// One rehearsed rollback step: what happens, and when after the failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsedEffect {
    /// Since the failure.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// What, e.g. `traffic set to green 100%`, `drain for 5m`.
    pub what: String,
}

/// The rollback after a failure injected as one stage begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsedFailure {
    /// The stage the failure is injected in, e.g. `soak`.
    pub stage: String,
    /// When that stage begins, since the deployment's start.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// What the rollback does, in order.
    pub effects: Vec<RehearsedEffect>,
    /// From the failure until a read-back shows all traffic on the old
    /// color (`None` when traffic never left it, or never returns).
    #[serde(with = "humantime_serde")]
    pub traffic_back_after: Option<Duration>,
    /// From the failure until the smoke tests on the old color finished.
    #[serde(with = "humantime_serde")]
    pub verified_after: Option<Duration>,
    /// From the failure until the deployment ended.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
    /// `rolled_back` or `halted`.
    pub outcome: String,
    /// The stage the deployment halted from (the last before it restored
    /// autoscaling and stopped), when it halted.
    pub halted_at: Option<String>,
    /// The outcome's reason, as the report shows it.
    pub reason: String,
}

/// A plan's rollback rehearsal: see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rehearsal {
    /// The service.
    pub service: String,
    /// The release.
    pub version: String,
    /// The happy path's stages, in order, with when each begins.
    pub path: Vec<(String, u64)>,
    /// How long the happy path takes.
    #[serde(with = "humantime_serde")]
    pub happy_path: Duration,
    /// The drain used: the larger of `timing.drain` and the router's figure.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// How long a scale takes to settle.
    #[serde(with = "humantime_serde")]
    pub scale_settle: Duration,
    /// One entry per stage of the happy path.
    pub failures: Vec<RehearsedFailure>,
    /// The plan's rollback-time targets.
    pub targets: super::RollbackTargets,
}

impl Plan {
    /// Rehearses the rollback from every stage (see [`rehearsal`](self)).
    /// Refused with the field named when the plan does not validate; an
    /// error also when a rehearsed deployment does not end (a bug).
    pub fn rehearse(&self, options: &RehearsalOptions) -> Result<Rehearsal, Error> {
        self.validate().map_err(|e: PlanError| {
            Error::invalid_input(format!("cannot rehearse an invalid plan: {e}"))
        })?;
        let plan = Arc::new(self.clone());
        let happy = run(&plan, options, None)?;
        if let Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) = &happy.outcome {
            // Every call succeeds in the rehearsal's world: a happy path
            // that fails is a call the world does not answer as it should.
            return Err(Error::invalid_input(format!(
                "the rehearsal's happy path did not succeed, so no failure can be rehearsed: {}",
                reason.summary
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut failures = Vec::new();
        for (index, (name, _)) in happy.stages.iter().enumerate() {
            if matches!(name.as_str(), "pending" | "hold" | "done")
                || !seen.insert(name.clone())
                || happy.stages[..index].iter().any(|(n, _)| n == name)
            {
                continue;
            }
            let r = run(&plan, options, Some(name))?;
            let Some(at) = r.injected_at else { continue };
            let took = r.finished_at.since(at);
            let (outcome, reason) = match &r.outcome {
                Some(Outcome::RolledBack { reason }) => ("rolled_back", reason.summary.clone()),
                Some(Outcome::Halted { reason }) => ("halted", reason.summary.clone()),
                Some(Outcome::Succeeded) => ("succeeded", String::new()),
                None => ("stuck", String::new()),
            };
            failures.push(RehearsedFailure {
                stage: name.clone(),
                at: at.since(EPOCH),
                effects: r.effects,
                traffic_back_after: r.traffic_back_at.map(|t| t.since(at)),
                verified_after: r.verified_at.map(|t| t.since(at)),
                took,
                outcome: outcome.into(),
                halted_at: r.halted_from,
                reason,
            });
        }
        Ok(Rehearsal {
            service: self.service.clone(),
            version: self.release.version.clone(),
            path: happy
                .stages
                .iter()
                .map(|(n, t)| (n.clone(), t.since(EPOCH).as_secs()))
                .collect(),
            happy_path: happy.finished_at.since(EPOCH),
            drain: self
                .timing
                .drain
                .max(options.router_drain.unwrap_or_default()),
            scale_settle: options.scale_settle.unwrap_or(self.timing.poll_interval),
            failures,
            targets: self.rollback_targets.clone(),
        })
    }
}

impl Rehearsal {
    /// The rehearsal as text: one block per stage, its rollback's effects
    /// with their times, the totals against the targets, and any halt.
    pub fn to_text(&self) -> String {
        let d =
            |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Rollback rehearsal of {} {}: a failure injected as each of the {} stages of the happy path begins; nothing is touched.",
            self.service,
            self.version,
            self.failures.len()
        );
        let _ = writeln!(
            s,
            "Timings: drain {} (the larger of timing.drain and the router's deregistration delay), a scale settles in {}, provider calls and smoke tests take no time; the happy path takes {}.",
            d(self.drain),
            d(self.scale_settle),
            d(self.happy_path)
        );
        let t = &self.targets;
        let _ = writeln!(
            s,
            "Targets (the reference's rollback time estimate): traffic switch < {}, full rollback < {}, verification < {}.",
            d(t.traffic_switch),
            d(t.full_rollback),
            d(t.verification)
        );
        for (i, f) in self.failures.iter().enumerate() {
            let _ = writeln!(s, "\n{}. failure in {} (at +{}):", i + 1, f.stage, d(f.at));
            for e in &f.effects {
                let _ = writeln!(s, "   +{:<8} {}", d(e.after), e.what);
            }
            let mut totals = Vec::new();
            if let Some(x) = f.traffic_back_after {
                totals.push(format!(
                    "traffic back in {} ({} the {} target)",
                    d(x),
                    within(x, t.traffic_switch),
                    d(t.traffic_switch)
                ));
            }
            if let Some(x) = f.verified_after {
                totals.push(format!(
                    "verified in {} ({} the {} target)",
                    d(x),
                    within(x, t.verification),
                    d(t.verification)
                ));
            }
            match f.outcome.as_str() {
                "halted" => {
                    let _ = writeln!(
                        s,
                        "   => HALTS after {}{}: {}",
                        d(f.took),
                        f.halted_at
                            .as_ref()
                            .map(|h| format!(" at {h}"))
                            .unwrap_or_default(),
                        f.reason
                    );
                }
                _ => {
                    totals.push(format!(
                        "full rollback in {} ({} the {} target)",
                        d(f.took),
                        within(f.took, t.full_rollback),
                        d(t.full_rollback)
                    ));
                    let _ = writeln!(
                        s,
                        "   => {} after {}",
                        f.outcome.replace('_', " "),
                        d(f.took)
                    );
                }
            }
            if !totals.is_empty() {
                let _ = writeln!(s, "   {}", totals.join("; "));
            }
        }
        s
    }
}

fn within(measured: Duration, target: Duration) -> &'static str {
    if measured < target {
        "within"
    } else {
        "OVER"
    }
}

struct Run {
    stages: Vec<(String, Timestamp)>,
    injected_at: Option<Timestamp>,
    effects: Vec<RehearsedEffect>,
    traffic_back_at: Option<Timestamp>,
    verified_at: Option<Timestamp>,
    finished_at: Timestamp,
    outcome: Option<Outcome>,
    halted_from: Option<String>,
}

/// The rehearsal's world: the live color green at the plan's replicas.
struct World {
    split: TrafficSplit,
    count: BTreeMap<Color, (u32, u32, Timestamp)>,
    version: BTreeMap<Color, String>,
    prepared: bool,
    settle: Duration,
    drain: Option<Duration>,
    migrations: Vec<MigrationInfo>,
}

const OLD_VERSION: &str = "(live)";
const PREPARED_ID: &str = "rehearsal";

impl World {
    fn new(plan: &Plan, options: &RehearsalOptions) -> World {
        let mut count = BTreeMap::new();
        count.insert(Color::Green, (plan.replicas, plan.replicas, EPOCH));
        count.insert(Color::Blue, (0, 0, EPOCH));
        let mut version = BTreeMap::new();
        version.insert(Color::Green, OLD_VERSION.to_string());
        World {
            split: TrafficSplit::all_on(Color::Green),
            count,
            version,
            prepared: false,
            settle: options.scale_settle.unwrap_or(plan.timing.poll_interval),
            drain: options.router_drain,
            migrations: options.migrations.clone(),
        }
    }

    fn running(&self, c: Color, now: Timestamp) -> u32 {
        let (from, to, at) = self.count[&c];
        if now >= at {
            to
        } else {
            from
        }
    }

    fn status(&self, c: Color, now: Timestamp) -> ComputeStatus {
        let (_, to, at) = self.count[&c];
        let running = self.running(c, now);
        let mut s = ComputeStatus::steady(to, self.version.get(&c).cloned());
        s.running = running;
        s.healthy = Some(running);
        if now < at {
            s.rollout = Rollout::InProgress;
        }
        if c == Color::Blue && self.prepared {
            s.release_id = Some(PREPARED_ID.into());
        }
        s
    }

    fn answer(&mut self, plan: &Plan, action: &Action, now: Timestamp) -> Reply {
        match action {
            Action::ReadSplit => Reply::Split { split: self.split },
            Action::SetSplit { split } => {
                self.split = *split;
                Reply::Done
            }
            Action::ReadTargetHealth { color } => {
                let n = self.running(*color, now);
                Reply::Health {
                    health: TargetHealth {
                        healthy: n,
                        total: n,
                    },
                }
            }
            Action::ReadDrainPeriod => Reply::DrainPeriod { period: self.drain },
            Action::ReadStatus { colors } => Reply::Statuses {
                statuses: colors.iter().map(|c| self.status(*c, now)).collect(),
            },
            Action::Prepare { color } => {
                self.version.insert(*color, plan.release.version.clone());
                self.prepared = true;
                Reply::Prepared {
                    prepared: PreparedRelease::with_id(PREPARED_ID),
                }
            }
            Action::Scale { color, count } => {
                let from = self.running(*color, now);
                let at = if from == *count {
                    now
                } else {
                    now.after(self.settle)
                };
                self.count.insert(*color, (from, *count, at));
                Reply::Done
            }
            Action::ReadAutoscaling { .. } | Action::SuspendAutoscaling { .. } => {
                Reply::Autoscaling {
                    state: AutoscalingState {
                        registered: true,
                        ..AutoscalingState::default()
                    },
                }
            }
            Action::CheckSecrets { secrets } => Reply::Secrets {
                checks: secrets
                    .iter()
                    .map(|s| crate::machine::SecretCheck {
                        name: s.name.clone(),
                        metadata: Some(SecretMetadata {
                            name: s.name.clone(),
                            last_rotated: Some(Timestamp(now.0.saturating_sub(3_600_000))),
                        }),
                        error: None,
                    })
                    .collect(),
            },
            Action::RunSmokeTests { tests, .. } => Reply::Smoke {
                results: tests
                    .iter()
                    .map(|t| SmokeResult {
                        name: t.clone(),
                        outcome: Some(SmokeOutcome {
                            passed: true,
                            duration: Duration::ZERO,
                            detail: "rehearsal".into(),
                        }),
                        error: None,
                    })
                    .collect(),
            },
            Action::ReadMigrationLedger => Reply::Ledger {
                applied: plan.preflight.migrations_applied.clone(),
            },
            Action::Backup => Reply::Backup {
                backup: BackupRecord {
                    id: "rehearsal".into(),
                    location: "(rehearsal)".into(),
                    bytes: None,
                    taken_at: now,
                },
            },
            Action::VerifyBackup { min_entries, .. } => Reply::BackupVerified {
                verification: BackupVerification {
                    entries: *min_entries,
                    passed: true,
                    detail: "rehearsal".into(),
                },
            },
            Action::Migrate { phase } => Reply::Migrated {
                applied: self
                    .migrations
                    .iter()
                    .filter(|m| m.phase == *phase)
                    .cloned()
                    .collect(),
            },
            Action::VerifyMigrations { .. } => Reply::Verified { checks: Vec::new() },
            Action::RevertMigrations { versions } => Reply::Reverted {
                reverted: self
                    .migrations
                    .iter()
                    .filter(|m| versions.contains(&m.version))
                    .cloned()
                    .collect(),
            },
            Action::Measure {
                check, from, to, ..
            } => metric(plan, check, *from, *to),
            other => passing_reply(other),
        }
    }
}

/// A passing answer with enough samples for `check` over `from..to`.
fn metric(plan: &Plan, check: &str, from: Timestamp, to: Timestamp) -> Reply {
    let (value, n) = match plan.check(check) {
        Some(c) => {
            let v = crate::dry_run::healthy_value(plan, c);
            (v, c.required_samples(to.since(from)) as u64 + 1)
        }
        None => (0.0, 1),
    };
    let span = to.0.saturating_sub(from.0);
    let samples: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "at": Timestamp(from.0 + span * (i + 1) / n),
                "value": value,
            })
        })
        .collect();
    // Built through serde so the reply carries the fields a metric reply
    // has, whatever optional ones it gains.
    serde_json::from_value(serde_json::json!({
        "reply": "metric",
        "answer": {"outcome": "samples", "samples": samples},
    }))
    .unwrap_or(Reply::Done)
}

/// The passing answer to a call the world above does not model: a
/// lifecycle hook passes; anything else is done.
fn passing_reply(action: &Action) -> Reply {
    let tag = serde_json::to_value(action)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str().map(str::to_string)));
    let reply = match tag.as_deref() {
        Some("run_hook") => serde_json::json!({
            "reply": "hook",
            "outcome": {"passed": true, "duration": "0s", "detail": "rehearsal: assumed to pass", "attempts": 1},
        }),
        _ => serde_json::json!({"reply": "done"}),
    };
    serde_json::from_value(reply).unwrap_or(Reply::Done)
}

fn describe(a: &Action) -> Option<String> {
    Some(match a {
        Action::SetSplit { split } => format!("traffic set to {split}"),
        Action::Scale { color, count } => format!("scale {color} to {count}"),
        Action::RevertMigrations { versions } => format!(
            "revert migrations {}",
            versions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::RestoreAutoscaling { color, .. } => format!("restore autoscaling on {color}"),
        Action::SuspendAutoscaling { color } => format!("suspend autoscaling on {color}"),
        Action::RunSmokeTests {
            scope: SmokeScope::Color(c),
            tests,
            ..
        } => format!("smoke tests on {c} ({})", tests.join(", ")),
        Action::ReadStatus { colors } if colors.len() == 1 => {
            return None;
        }
        a if a.is_mutating() => {
            let json = serde_json::to_value(a).unwrap_or_default();
            match (
                json.get("action").and_then(|v| v.as_str()),
                json.get("hook").and_then(|v| v.as_str()),
            ) {
                (Some("run_hook"), Some(hook)) => format!("run hook {hook}"),
                _ => {
                    let (p, o) = a.operation();
                    format!("{p}.{o}")
                }
            }
        }
        _ => return None,
    })
}

fn run(plan: &Arc<Plan>, options: &RehearsalOptions, inject: Option<&str>) -> Result<Run, Error> {
    let mut m = Machine::new(plan.clone(), "rehearsal");
    let mut world = World::new(plan, options);
    let mut now = EPOCH;
    let mut queue: VecDeque<Command> = VecDeque::new();
    let mut r = Run {
        stages: Vec::new(),
        injected_at: None,
        effects: Vec::new(),
        traffic_back_at: None,
        verified_at: None,
        finished_at: now,
        outcome: None,
        halted_from: None,
    };
    let mut inputs: VecDeque<Input> = VecDeque::from([Input::Start]);
    let mut handled = 0usize;
    let mut last_stage = String::new();
    loop {
        let input = match inputs.pop_front() {
            Some(i) => i,
            None => match queue.pop_front() {
                Some(c) => {
                    let reply = world.answer(plan, &c.action, now);
                    Input::Reply { id: c.id, reply }
                }
                None => match m.next_wakeup() {
                    Some(t) if m.outcome().is_none() => {
                        now = now.max(t);
                        Input::Tick
                    }
                    _ => break,
                },
            },
        };
        handled += 1;
        if handled > MAX_INPUTS {
            return Err(Error::invalid_input(format!(
                "the rehearsal of a failure in {} did not end within {MAX_INPUTS} inputs",
                inject.unwrap_or("no stage")
            )));
        }
        let step = m.handle(now, &input);
        let injected = r.injected_at.is_some();
        for e in &step.events {
            match e {
                Event::Stage { stage } => {
                    let name = stage.name();
                    if injected {
                        match stage {
                            Stage::Drain { until } => r.effects.push(RehearsedEffect {
                                after: now.since(r.injected_at.unwrap_or(now)),
                                what: format!(
                                    "drain for {}",
                                    humantime::format_duration(Duration::from_secs(
                                        until.since(now).as_secs()
                                    ))
                                ),
                            }),
                            Stage::CheckOld => r.effects.push(RehearsedEffect {
                                after: now.since(r.injected_at.unwrap_or(now)),
                                what: "check the old color's status and target health".into(),
                            }),
                            Stage::HaltRestoreAutoscaling => {
                                r.halted_from = Some(last_stage.clone());
                            }
                            _ => {}
                        }
                    } else {
                        r.stages.push((name.clone(), now));
                        if inject == Some(name.as_str()) {
                            r.injected_at = Some(now);
                            inputs.push_back(Input::Control {
                                control: Control::Abort {
                                    reason: format!("rehearsed failure in {name}"),
                                },
                            });
                        }
                    }
                    if let Stage::Hold {
                        reason: HoldReason::Gate { gate },
                        ..
                    } = stage
                    {
                        inputs.extend(pass_gate(plan, *gate));
                    }
                    last_stage = name;
                }
                Event::TrafficConfirmed { split }
                    if injected
                        && r.traffic_back_at.is_none()
                        && split.percent(Color::Green) == 100 =>
                {
                    r.traffic_back_at = Some(now);
                    r.effects.push(RehearsedEffect {
                        after: now.since(r.injected_at.unwrap_or(now)),
                        what: format!("read back: {split}"),
                    });
                }
                Event::SmokeTests {
                    scope: SmokeScope::Color(Color::Green),
                    ..
                } if injected => {
                    r.verified_at = Some(now);
                }
                Event::Finished { outcome, .. } => {
                    r.finished_at = now;
                    r.outcome = Some(outcome.clone());
                    if injected {
                        r.effects.push(RehearsedEffect {
                            after: now.since(r.injected_at.unwrap_or(now)),
                            what: match outcome {
                                Outcome::Halted { .. } => "halted for a human".into(),
                                o => o.name().replace('_', " "),
                            },
                        });
                    }
                }
                _ => {}
            }
        }
        // After the events: a read-back confirmed is said before the
        // calls its reply led to.
        for c in &step.commands {
            if injected && r.outcome.is_none() {
                if let Some(what) = describe(&c.action) {
                    r.effects.push(RehearsedEffect {
                        after: now.since(r.injected_at.unwrap_or(now)),
                        what,
                    });
                }
            }
        }
        queue.extend(step.commands.iter().cloned());
    }
    if r.outcome.is_none() {
        return Err(Error::invalid_input(format!(
            "the rehearsal of a failure in {} stopped at {} without an outcome",
            inject.unwrap_or("no stage"),
            m.stage().name()
        )));
    }
    Ok(r)
}

/// The inputs that pass `gate`: a promote, or each group's first
/// required approvers.
fn pass_gate(plan: &Plan, gate: Gate) -> Vec<Input> {
    match plan.approval_gate(gate) {
        None => vec![Input::Control {
            control: Control::Promote,
        }],
        Some(a) => a
            .groups
            .iter()
            .flat_map(|g| g.names.iter().take(g.required as usize))
            .map(|n| Input::Control {
                control: Control::Approve {
                    name: n.clone(),
                    gate: Some(gate),
                },
            })
            .collect(),
    }
}
