//! A dry run: the state machine driven to its end with scripted replies, in
//! virtual time, touching nothing.
//!
//! [`DryRun`] feeds a [`Machine`] its inputs exactly as the driver does
//! (start, each command's reply, a tick at each wakeup), but every command
//! is answered by a [`Responder`] instead of a provider, and time jumps
//! from one wakeup to the next, so a plan with a one-hour soak runs in
//! milliseconds. The result is the [`Report`] the journal of such a
//! deployment would give: its stages, every provider call it would make,
//! its decisions and its outcome. It needs no runtime, no providers and no
//! `testing` feature; `bluegreen plan` uses it.
//!
//! [`HealthyProviders`] answers as healthy providers would: instances start
//! within a settle time, the router confirms each split, smoke tests and
//! verifications pass, every check reads a value that meets its success
//! condition. Write your own [`Responder`] (or wrap this one) to script a
//! failure.
//!
//! ```
//! use bluegreen_core::dry_run::{DryRun, HealthyProviders};
//! use bluegreen_core::{Outcome, Plan, Release};
//!
//! // The reference procedure: its one-hour soak included, in virtual time.
//! let plan = Plan::reference(
//!     "order-api",
//!     Release::new("2.5.0", "registry/order-api:2.5.0"),
//!     "sum:api.errors{service:{service},color:{color}}.as_rate()",
//!     "p95:api.response_time{service:{service},color:{color}}",
//! );
//! let report = DryRun::new(plan.clone())
//!     .unwrap()
//!     .run(&mut HealthyProviders::new(&plan));
//! assert_eq!(report.outcome, Some(Outcome::Succeeded));
//! assert!(report.actions.iter().any(|a| a.operation == "router set_split"));
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::{ErrorRecord, PlanError};
use crate::journal::{Record, ENGINE_VERSION, JOURNAL_FORMAT};
use crate::machine::{
    Action, Control, Event, Input, Machine, Reply, SecretCheck, SmokeResult, Stage,
};
use crate::plan::{Aggregation, AnalysisCheck, Comparison, Plan, RollbackTrigger};
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeStatus, HookOutcome, MetricAnswer,
    MigrationInfo, PreparedRelease, Rollout, Sample, SecretMetadata, SmokeOutcome, TargetHealth,
    VerificationCheck,
};
use crate::report::Report;

/// Where a dry run's virtual clock starts: 2026-01-01T00:00:00Z. Only
/// times relative to it mean anything.
pub const DRY_RUN_EPOCH: Timestamp = Timestamp(1_767_225_600_000);

/// The most machine steps a dry run takes before it stops with the report
/// so far: far more than any plan needs (the reference plan takes about
/// 500), so only a responder that never lets the machine finish reaches it.
pub const MAX_STEPS: usize = 100_000;

/// Answers the commands of a dry run in place of the providers.
pub trait Responder {
    /// The reply to `action`, issued at `now`, or the error the call would
    /// end with after the driver's retries.
    fn reply(&mut self, now: Timestamp, action: &Action) -> Result<Reply, ErrorRecord>;
}

impl<F> Responder for F
where
    F: FnMut(Timestamp, &Action) -> Result<Reply, ErrorRecord>,
{
    fn reply(&mut self, now: Timestamp, action: &Action) -> Result<Reply, ErrorRecord> {
        self(now, action)
    }
}

type OnEvent<'a> = Box<dyn FnMut(Timestamp, &Event) -> Option<Control> + 'a>;

/// A dry run of one plan. See the [module docs](self).
pub struct DryRun<'a> {
    plan: Arc<Plan>,
    deployment_id: String,
    start: Timestamp,
    limit: Option<Duration>,
    on_event: OnEvent<'a>,
}

impl std::fmt::Debug for DryRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DryRun")
            .field("deployment_id", &self.deployment_id)
            .field("start", &self.start)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<'a> DryRun<'a> {
    /// A dry run of `plan` as deployment `dry-run`, starting at
    /// [`DRY_RUN_EPOCH`], that passes every hold (a gate, a pause for an
    /// inconclusive analysis) with [`Control::Promote`], and every approval
    /// gate with approvals from the first names each group needs, as
    /// humans who approve everything would.
    ///
    /// # Errors
    /// The plan's first error, naming its field ([`Plan::validate`]).
    pub fn new(plan: Plan) -> Result<Self, PlanError> {
        plan.validate()?;
        // Each approval gate's approvals, sent one at a time: at the hold,
        // then after each one taken while the gate still needs more.
        let mut approvals: Vec<(crate::plan::Gate, std::vec::IntoIter<String>)> = plan
            .approvals
            .iter()
            .map(|a| {
                let names: Vec<String> = a
                    .groups
                    .iter()
                    .flat_map(|g| g.names.iter().take(g.required as usize).cloned())
                    .collect();
                (a.gate, names.into_iter())
            })
            .collect();
        let mut approve = move |gate: crate::plan::Gate| {
            let (_, names) = approvals.iter_mut().find(|(g, _)| *g == gate)?;
            names.next().map(|name| Control::Approve {
                name,
                gate: Some(gate),
            })
        };
        Ok(DryRun {
            plan: Arc::new(plan),
            deployment_id: "dry-run".into(),
            start: DRY_RUN_EPOCH,
            limit: None,
            on_event: Box::new(move |_, ev| match ev {
                Event::Stage {
                    stage:
                        Stage::Hold {
                            reason: crate::machine::HoldReason::Gate { gate },
                            ..
                        },
                } => approve(*gate).or(Some(Control::Promote)),
                Event::Stage {
                    stage: Stage::Hold { .. },
                } => Some(Control::Promote),
                Event::Control {
                    kind: Some(crate::reason::Effect::Approved { gate, missing, .. }),
                    ..
                } if !missing.is_empty() => approve(*gate),
                _ => None,
            }),
        })
    }

    /// The deployment id the report carries (`dry-run` if not set).
    pub fn deployment_id(mut self, id: impl Into<String>) -> Self {
        self.deployment_id = id.into();
        self
    }

    /// Starts the virtual clock at `start` instead of [`DRY_RUN_EPOCH`].
    pub fn starting_at(mut self, start: Timestamp) -> Self {
        self.start = start;
        self
    }

    /// Stops after `limit` of virtual time, with the report so far
    /// (`outcome` `None` when the deployment had not finished).
    pub fn for_at_most(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Calls `on_event` with each event and its time instead of promoting
    /// every hold; a control it returns is fed to the machine next, as a
    /// human's instruction would be.
    pub fn on_event(
        mut self,
        on_event: impl FnMut(Timestamp, &Event) -> Option<Control> + 'a,
    ) -> Self {
        self.on_event = Box::new(on_event);
        self
    }

    /// Drives the machine to its end (or the limit, or a hold nothing
    /// passes, or [`MAX_STEPS`]) and returns the report. Commands are
    /// answered in the order issued, at the time they were issued.
    pub fn run(mut self, responder: &mut dyn Responder) -> Report {
        let id = self.deployment_id.clone();
        let mut report = Report::default();
        let mut now = self.start;
        report.add(
            &id,
            now,
            &Record::Started {
                plan: Box::new((*self.plan).clone()),
                holder: "dry run".into(),
                format: JOURNAL_FORMAT,
                engine: ENGINE_VERSION.into(),
            },
        );
        let end = self.limit.map(|l| self.start.after(l));
        let mut machine = Machine::new(self.plan.clone(), id.clone());
        let mut queue = std::collections::VecDeque::from([Input::Start]);
        let mut steps = 0;
        loop {
            while let Some(input) = queue.pop_front() {
                steps += 1;
                if steps > MAX_STEPS {
                    return report;
                }
                let step = machine.handle(now, &input);
                for ev in &step.events {
                    if let Some(control) = (self.on_event)(now, ev) {
                        queue.push_back(Input::Control { control });
                    }
                }
                for c in &step.commands {
                    if matches!(c.action, Action::Notify { .. }) {
                        continue;
                    }
                    queue.push_back(match responder.reply(now, &c.action) {
                        Ok(reply) => Input::Reply { id: c.id, reply },
                        Err(error) => Input::Failed { id: c.id, error },
                    });
                }
                report.add(
                    &id,
                    now,
                    &Record::Step {
                        input,
                        commands: step.commands,
                        events: step.events,
                        notifications: step.notifications,
                    },
                );
            }
            if machine.outcome().is_some() {
                return report;
            }
            let Some(wake) = machine.next_wakeup() else {
                return report;
            };
            if end.is_some_and(|e| wake > e) {
                return report;
            }
            now = Timestamp(now.0.max(wake.0));
            queue.push_back(Input::Tick);
        }
    }
}

/// One color of [`HealthyProviders`].
#[derive(Debug, Clone, Default)]
struct ColorState {
    desired: u32,
    running_before: u32,
    changed_at: Timestamp,
    version: Option<String>,
    release_id: Option<String>,
    prepared: Option<String>,
}

/// A [`Responder`] that answers as healthy providers would. See the
/// [module docs](self).
///
/// The live color serves the plan's replicas of a previous release; the
/// other is at zero. A scaled color reaches its count after
/// [`settle`](Self::settle) (30 s, or a quarter of the plan's deploy
/// deadline if that is shorter). The router confirms every split it was
/// given and has no drain figure of its own. Secrets were rotated a day
/// before the start. The backup lists as many entries as the plan asks
/// for. Migrations: those given to [`migrations`](Self::migrations) (none
/// by default) apply in their phase, and every verification passes. Each
/// metric query returns, at the check's interval over the window, a value
/// that meets the check's success condition. Lifecycle hooks are not run:
/// each is answered as passed.
#[derive(Debug, Clone)]
pub struct HealthyProviders {
    plan: Plan,
    split: TrafficSplit,
    blue: ColorState,
    green: ColorState,
    settle: Duration,
    migrations: Vec<MigrationInfo>,
    start: Option<Timestamp>,
}

impl HealthyProviders {
    /// Healthy providers for `plan`, green live.
    pub fn new(plan: &Plan) -> Self {
        let live = ColorState {
            desired: plan.replicas,
            running_before: plan.replicas,
            version: Some("live".into()),
            release_id: Some("dry-run:green:live".into()),
            ..ColorState::default()
        };
        HealthyProviders {
            plan: plan.clone(),
            split: TrafficSplit::all_on(Color::Green),
            blue: ColorState::default(),
            green: live,
            settle: Duration::from_secs(30).min(plan.deadlines.deploy / 4),
            migrations: Vec::new(),
            start: None,
        }
    }

    /// How long a scaled color takes to reach its count.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The migrations the runner would apply, each in its phase.
    pub fn migrations(mut self, migrations: Vec<MigrationInfo>) -> Self {
        self.migrations = migrations;
        self
    }

    fn color(&mut self, c: Color) -> &mut ColorState {
        match c {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }

    fn running(&mut self, now: Timestamp, c: Color) -> u32 {
        let settle = self.settle;
        let s = self.color(c);
        if now.0 >= s.changed_at.0.saturating_add(settle.as_millis() as u64) {
            s.desired
        } else {
            s.running_before
        }
    }

    fn status(&mut self, now: Timestamp, c: Color) -> ComputeStatus {
        let running = self.running(now, c);
        let s = self.color(c);
        ComputeStatus {
            desired: s.desired,
            running,
            pending: s.desired.saturating_sub(running),
            failed: 0,
            healthy: Some(running),
            version: s.version.clone(),
            release_id: s.release_id.clone(),
            rollout: if running == s.desired {
                Rollout::Completed
            } else {
                Rollout::InProgress
            },
        }
    }

    fn samples(&self, check: &str, from: Timestamp, to: Timestamp) -> MetricAnswer {
        let Some(c) = self.plan.check(check) else {
            return MetricAnswer::NoData {
                reason: format!("the plan has no check {check:?}"),
            };
        };
        let window = Duration::from_millis(to.0.saturating_sub(from.0));
        let every = c.interval.as_millis().max(1) as u64;
        let n = u64::from(c.required_samples(window))
            .max(window.as_millis() as u64 / every)
            .max(1);
        let step = (to.0.saturating_sub(from.0) / n).max(1);
        let value = healthy_value(&self.plan, c);
        MetricAnswer::Samples {
            samples: (1..=n)
                .map(|i| Sample {
                    at: Timestamp(from.0 + i * step),
                    value,
                })
                .collect(),
        }
    }
}

/// The value a healthy service reads for check `c` of `plan`: one that meets
/// the check's success condition and breaches none of the plan's rollback
/// triggers on that check. A count watched both as "< 1" (success) and
/// "> 0" (trigger) reads 0, not 0.5; a summed check reads 0 when 0 passes,
/// because summed samples add up. Shared by [`HealthyProviders`] and the
/// rollback rehearsal, so `plan` and `plan --rehearse` assume the same
/// healthy world.
pub(crate) fn healthy_value(plan: &Plan, c: &AnalysisCheck) -> f64 {
    let t = c.success.threshold;
    let preferred = match c.success.op {
        Comparison::Lt | Comparison::Le if t > 0.0 => t / 2.0,
        Comparison::Lt | Comparison::Le => t - 1.0,
        Comparison::Gt | Comparison::Ge if t > 0.0 => t * 2.0,
        Comparison::Gt | Comparison::Ge => t + 1.0,
    };
    let breaches = |v: f64| {
        plan.rollback_triggers.iter().any(|tr| {
            matches!(tr, RollbackTrigger::Metric { check: name, breach, .. }
                if name == &c.name && breach.holds(v))
        })
    };
    let first = if c.aggregation == Aggregation::Sum {
        0.0
    } else {
        preferred
    };
    [first, preferred, 0.0, t, t - 1.0, t + 1.0]
        .into_iter()
        .find(|v| c.success.holds(*v) && !breaches(*v))
        .unwrap_or(preferred)
}

impl Responder for HealthyProviders {
    fn reply(&mut self, now: Timestamp, action: &Action) -> Result<Reply, ErrorRecord> {
        let start = *self.start.get_or_insert(now);
        Ok(match action {
            Action::ReadSplit => Reply::Split { split: self.split },
            Action::SetSplit { split } => {
                self.split = *split;
                Reply::Done
            }
            Action::ReadTargetHealth { color } => {
                let running = self.running(now, *color);
                Reply::Health {
                    health: TargetHealth {
                        healthy: running,
                        total: running,
                    },
                }
            }
            Action::ReadDrainPeriod => Reply::DrainPeriod { period: None },
            Action::ReadStatus { colors } => Reply::Statuses {
                statuses: colors.iter().map(|c| self.status(now, *c)).collect(),
            },
            Action::Prepare { color } => {
                let version = self.plan.release.version.clone();
                self.color(*color).prepared = Some(version.clone());
                Reply::Prepared {
                    prepared: PreparedRelease::with_id(format!("dry-run:{color}:{version}")),
                }
            }
            Action::Scale { color, count } => {
                let running = self.running(now, *color);
                let s = self.color(*color);
                if let Some(v) = s.prepared.take() {
                    s.release_id = Some(format!("dry-run:{color}:{v}"));
                    s.version = Some(v);
                }
                if s.desired != *count {
                    s.running_before = running;
                    s.desired = *count;
                    s.changed_at = now;
                }
                Reply::Done
            }
            Action::ReadAutoscaling { .. } | Action::SuspendAutoscaling { .. } => {
                Reply::Autoscaling {
                    state: AutoscalingState::default(),
                }
            }
            Action::RestoreAutoscaling { .. } | Action::Notify { .. } => Reply::Done,
            Action::CheckSecrets { secrets } => Reply::Secrets {
                checks: secrets
                    .iter()
                    .map(|s| SecretCheck {
                        name: s.name.clone(),
                        metadata: Some(SecretMetadata {
                            name: s.name.clone(),
                            last_rotated: Some(Timestamp(start.0.saturating_sub(86_400_000))),
                        }),
                        error: None,
                    })
                    .collect(),
            },
            Action::RunSmokeTests { tests, .. } => Reply::Smoke {
                results: tests
                    .iter()
                    .map(|name| SmokeResult {
                        name: name.clone(),
                        outcome: Some(SmokeOutcome {
                            passed: true,
                            duration: Duration::ZERO,
                            detail: "dry run: assumed to pass".into(),
                        }),
                        error: None,
                    })
                    .collect(),
            },
            // The migrations the plan needs already applied are.
            Action::ReadMigrationLedger => Reply::Ledger {
                applied: self.plan.preflight.migrations_applied.clone(),
            },
            Action::Backup => Reply::Backup {
                backup: BackupRecord {
                    id: "dry-run-backup".into(),
                    location: "nowhere (dry run)".into(),
                    bytes: None,
                    taken_at: now,
                },
            },
            Action::VerifyBackup { min_entries, .. } => Reply::BackupVerified {
                verification: BackupVerification {
                    entries: *min_entries,
                    passed: true,
                    detail: "dry run: assumed to pass".into(),
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
            Action::VerifyMigrations { phase } => Reply::Verified {
                checks: vec![VerificationCheck {
                    name: format!("{phase} verification"),
                    passed: true,
                    detail: "dry run: assumed to pass".into(),
                }],
            },
            Action::RevertMigrations { versions } => Reply::Reverted {
                reverted: self
                    .migrations
                    .iter()
                    .filter(|m| versions.contains(&m.version))
                    .cloned()
                    .collect(),
            },
            Action::RunHook { .. } => Reply::Hook {
                outcome: HookOutcome {
                    passed: true,
                    duration: Duration::ZERO,
                    detail: "dry run: not run, assumed to pass".into(),
                    attempts: 1,
                },
            },
            Action::Measure {
                check, from, to, ..
            } => Reply::Metric {
                answer: self.samples(check, *from, *to),
                note: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::SmokeScope;
    use crate::{Cause, Outcome, Release};

    fn plan() -> Plan {
        let mut p = Plan::reference(
            "order-api",
            Release::new("2.5.0", "registry/order-api:2.5.0"),
            "errors{service:{service},color:{color}}",
            "p95{service:{service},color:{color}}",
        );
        p.smoke_tests = vec!["health-check".into(), "create-order".into()];
        p
    }

    fn stages(r: &Report) -> Vec<String> {
        let mut s: Vec<String> = r.stages.iter().map(|s| s.stage.clone()).collect();
        s.dedup();
        s
    }

    /// The reference plan on healthy providers takes the whole forward path
    /// (soak and scale-down included) and moves all traffic to blue.
    #[test]
    fn healthy_providers_take_the_reference_plan_to_success() {
        let p = plan();
        let report = DryRun::new(p.clone())
            .unwrap()
            .run(&mut HealthyProviders::new(&p));
        assert_eq!(report.outcome, Some(Outcome::Succeeded));
        let s = stages(&report);
        for stage in ["preflight", "soak", "scale_down_old"] {
            assert!(s.iter().any(|x| x == stage), "{stage} missing from {s:?}");
        }
        let last = report.splits.last().expect("splits read back");
        assert_eq!(last.split.percent(Color::Blue), 100);
        // The soak alone is an hour of virtual time.
        let took = report.finished_at.unwrap().since(report.started_at);
        assert!(took >= Duration::from_secs(3600), "{took:?}");
    }

    /// A responder that fails the new color's smoke tests makes the dry run
    /// roll back, with the smoke test as the reason: a failure is scripted
    /// by wrapping the healthy providers.
    #[test]
    fn a_scripted_smoke_failure_rolls_the_dry_run_back() {
        let p = plan();
        let mut healthy = HealthyProviders::new(&p);
        let mut failing = |now: Timestamp, a: &Action| match a {
            Action::RunSmokeTests {
                scope: SmokeScope::Color(Color::Blue),
                tests,
                ..
            } => Ok(Reply::Smoke {
                results: tests
                    .iter()
                    .map(|n| SmokeResult {
                        name: n.clone(),
                        outcome: Some(SmokeOutcome {
                            passed: false,
                            duration: Duration::ZERO,
                            detail: "HTTP 500".into(),
                        }),
                        error: None,
                    })
                    .collect(),
            }),
            other => healthy.reply(now, other),
        };
        let report = DryRun::new(p).unwrap().run(&mut failing);
        let cause = match &report.outcome {
            Some(Outcome::RolledBack { reason }) => reason.cause.clone(),
            other => panic!("expected a rollback, got {other:?}"),
        };
        assert!(matches!(cause, Some(Cause::SmokeTests { .. })), "{cause:?}");
    }

    /// A limit stops the run with the report so far, unfinished.
    #[test]
    fn a_time_limit_stops_the_dry_run_unfinished() {
        let p = plan();
        let report = DryRun::new(p.clone())
            .unwrap()
            .for_at_most(Duration::from_secs(600))
            .run(&mut HealthyProviders::new(&p));
        assert_eq!(report.outcome, None);
        assert!(report
            .stages
            .iter()
            .all(|s| s.started_at <= DRY_RUN_EPOCH.after(Duration::from_secs(600))));
    }

    /// An invalid plan is refused with its field named, before anything runs.
    #[test]
    fn an_invalid_plan_is_refused_naming_its_field() {
        let mut p = plan();
        p.replicas = 0;
        let e = DryRun::new(p).unwrap_err();
        assert!(e.to_string().contains("replicas"), "{e}");
    }
}
