//! Lifecycle hooks and production checks: what runs between two stages.
//!
//! Both are entered in place of the stage they precede ([`Machine::due_before`],
//! called by `enter` once gates, group barriers and a pause have been
//! passed), and go on to that stage when done. Each is begun once per
//! deployment (per traffic step for those that follow a step); the set of
//! those begun is part of the journaled state.
//!
//! Where they run:
//!
//! | before the stage                  | what runs, in order                                         |
//! |-----------------------------------|-------------------------------------------------------------|
//! | `scale_up`                        | `before_scale_up` hooks                                     |
//! | `smoke_tests`                     | `after_scale_up` hooks                                      |
//! | `shift` of step 0 (after its gate)| `before_traffic` hooks                                      |
//! | `watch_step_N`                    | production checks, `after_traffic_step` hooks               |
//! | `analysis` (100% read back)       | production checks, `after_traffic_step`, `after_traffic`    |
//! | `scale_down_old`                  | `before_scale_down` hooks                                   |
//! | `drain` in a rollback             | production checks (after traffic is back on the old color)  |
//! | the end (`RolledBack`)            | `after_rollback` hooks, then `on_finish` hooks              |
//! | the end (`Succeeded`, `Halted`)   | `on_finish` hooks                                           |
//!
//! A failed hook or production check is a failure of the deployment where
//! it ran ([`Machine::fail`]): a rollback while traffic can return to the
//! old color, a halt past the point of no return or during a rollback. A
//! production check failing after a rollback halts for a human (critical):
//! the old color, serving again, fails through the public URL. An
//! `on_finish` hook of a halted deployment that fails is noted only.
//!
//! A hook is a journaled effect: the [`Action::RunHook`] (its intent) is
//! journaled before it runs and the [`Reply::Hook`] (its outcome) after. A
//! resumed deployment re-executes outstanding commands; a hook among them
//! runs again only when the plan marks it `idempotent`, otherwise the
//! deployment halts with [`Cause::HookInterrupted`] naming the hook.

use super::*;

impl Machine {
    /// The stage to enter in place of `stage`: the production checks or
    /// the first hook due before it and not yet begun, or `stage` itself.
    pub(super) fn due_before(&mut self, stage: Stage) -> Stage {
        if self.halt_reason.is_some() {
            return stage;
        }
        let rolling = self.rolling_back();
        let last = self.steps.len().saturating_sub(1);
        let hooks = |p: HookPoint, step: usize| (Due::Hooks(p), step);
        let due: Vec<(Due, usize)> = match &stage {
            _ if rolling => match &stage {
                // After traffic is back on the old color and its smoke tests.
                Stage::Drain { .. } => vec![(Due::Production, usize::MAX)],
                _ => Vec::new(),
            },
            Stage::ScaleUp => vec![hooks(HookPoint::BeforeScaleUp, 0)],
            Stage::SmokeTests => vec![hooks(HookPoint::AfterScaleUp, 0)],
            Stage::Shift {
                step: 0,
                confirming: false,
                ..
            } => vec![hooks(HookPoint::BeforeTraffic, 0)],
            Stage::Watch { step, .. } => vec![
                (Due::Production, *step),
                hooks(HookPoint::AfterTrafficStep, *step),
            ],
            Stage::Analysis { .. } => vec![
                (Due::Production, last),
                hooks(HookPoint::AfterTrafficStep, last),
                hooks(HookPoint::AfterTraffic, 0),
            ],
            Stage::ScaleDownOld { polling: false } => vec![hooks(HookPoint::BeforeScaleDown, 0)],
            _ => Vec::new(),
        };
        for key in due {
            if self.begun.contains(&key) {
                continue;
            }
            let then = Box::new(stage.clone());
            let instead = match key.0 {
                Due::Production => self
                    .plan
                    .production_checks
                    .is_some()
                    .then_some(Stage::ProductionChecks { then }),
                Due::Hooks(point) => self
                    .plan
                    .hooks_at(point)
                    .next()
                    .map(|(index, _)| Stage::Hook { point, index, then }),
            };
            if let Some(instead) = instead {
                self.begun.insert(key);
                return instead;
            }
        }
        stage
    }

    /// Finishes with `outcome` once the `after_rollback` hooks (of a
    /// rollback that began after preflight) and the `on_finish` hooks have
    /// run.
    pub(super) fn conclude(&mut self, outcome: Outcome) {
        // The rollback is complete: its window no longer runs.
        self.timers.rollback = None;
        let mut points = Vec::with_capacity(2);
        if matches!(outcome, Outcome::RolledBack { .. }) && self.facts.old.is_some() {
            points.push(HookPoint::AfterRollback);
        }
        points.push(HookPoint::OnFinish);
        for point in points {
            let key = (Due::Hooks(point), 0);
            if self.begun.contains(&key) {
                continue;
            }
            let first = self.plan.hooks_at(point).next().map(|(i, _)| i);
            if let Some(index) = first {
                self.begun.insert(key);
                self.concluding = Some(outcome);
                self.enter(Stage::Hook {
                    point,
                    index,
                    then: Box::new(Stage::Done),
                });
                return;
            }
        }
        self.concluding = None;
        self.finish(outcome);
    }

    /// The current hook or production checks are done: the next hook of
    /// the same point, or the stage they preceded (its wait starting now).
    pub(super) fn due_done(&mut self) {
        let (then, next) = match &self.stage {
            Stage::Hook { point, index, then } => {
                let next = self
                    .plan
                    .hooks_at(*point)
                    .find(|(i, _)| i > index)
                    .map(|(i, _)| (*point, i));
                ((**then).clone(), next)
            }
            Stage::ProductionChecks { then } => ((**then).clone(), None),
            _ => return,
        };
        if let Some((point, index)) = next {
            self.enter(Stage::Hook {
                point,
                index,
                then: Box::new(then),
            });
            return;
        }
        let then = match then {
            Stage::Done => {
                let outcome = self.concluding.take().unwrap_or_else(|| Outcome::Halted {
                    reason: Reason::because(Cause::Unrecorded {
                        what: "finished".into(),
                    }),
                });
                self.conclude(outcome);
                return;
            }
            Stage::Watch { step, .. } => Stage::Watch {
                step,
                until: self.now.after(self.steps[step].wait),
            },
            Stage::Analysis { .. } => Stage::Analysis {
                until: self.now.after(self.plan.timing.analysis_window),
            },
            Stage::Drain { .. } => self.drain(),
            s => s,
        };
        self.enter(then);
    }

    /// What a hook at `point` is told.
    fn hook_context(&self, point: HookPoint) -> HookContext {
        HookContext {
            deployment_id: self.deployment_id.clone(),
            service: self.plan.service.clone(),
            version: self.plan.release.version.clone(),
            point,
            old: self.facts.old,
            new: self.facts.new,
            new_percent: self
                .facts
                .confirmed_split
                .zip(self.facts.new)
                .map(|(s, c)| s.percent(c)),
            outcome: self.concluding.as_ref().map(|o| o.name().to_string()),
        }
    }

    /// Issues the hook `plan.hooks[index]`.
    pub(super) fn run_hook(&mut self, index: usize) {
        let Some(hook) = self.plan.hooks.get(index) else {
            return self.due_done();
        };
        let action = Action::RunHook {
            hook: hook.name.clone(),
            context: Box::new(self.hook_context(hook.point)),
        };
        self.issue(action);
    }

    /// Issues the production smoke tests.
    pub(super) fn run_production_checks(&mut self) {
        let Some(p) = &self.plan.production_checks else {
            return self.due_done();
        };
        let version = if self.rolling_back() {
            self.facts.old_version.clone().unwrap_or_default()
        } else {
            self.plan.release.version.clone()
        };
        let tests = p.smoke_tests.clone();
        self.issue(Action::RunSmokeTests {
            scope: SmokeScope::Production,
            tests,
            version,
        });
    }

    /// A hook's outcome: recorded; a failure fails the deployment where it
    /// ran (noted only for an `on_finish` hook of a halted deployment).
    pub(super) fn on_hook(&mut self, hook: String, point: HookPoint, outcome: HookOutcome) {
        let passed = outcome.passed;
        let (attempts, detail) = (outcome.attempts, outcome.detail.clone());
        self.event(Event::Hook {
            hook: hook.clone(),
            point,
            outcome,
            late: false,
        });
        if passed {
            return;
        }
        if matches!(self.concluding, Some(Outcome::Halted { .. })) {
            self.note(Noted::HookFailed {
                hook,
                point,
                detail,
            });
            return;
        }
        self.fail(Reason::because(Cause::HookFailed {
            hook,
            point,
            attempts,
            detail,
        }));
    }

    /// The outcome of a hook whose stage the deployment left: recorded only.
    pub(super) fn on_detached_hook(&mut self, action: Action, reply: &Reply) {
        if let (Action::RunHook { hook, context }, Reply::Hook { outcome }) = (action, reply) {
            self.event(Event::Hook {
                hook,
                point: context.point,
                outcome: outcome.clone(),
                late: true,
            });
        }
    }

    /// The production smoke tests failed: a rollback after a traffic
    /// change, a critical halt after a rollback.
    pub(super) fn production_checks_failed(&mut self, total: usize, failed: Vec<String>) {
        let url = self
            .plan
            .production_checks
            .as_ref()
            .map(|p| p.url.clone())
            .unwrap_or_default();
        if let Some(rollback_for) = self.rollback_reason.as_ref().map(|r| r.summary.clone()) {
            self.critical = true;
            self.halt(Reason::because(Cause::ProductionSmokeTests {
                after: format!("the rollback (for: {rollback_for})"),
                url,
                total,
                failed,
            }));
            return;
        }
        let percent = self
            .facts
            .confirmed_split
            .map_or(0, |s| s.percent(self.new_color()));
        self.fail(Reason::because(Cause::ProductionSmokeTests {
            after: format!("the traffic change to {percent}% on {}", self.new_color()),
            url,
            total,
            failed,
        }));
    }

    /// On a resume: a hook detached by a rollback has lost its outcome
    /// (noted), and a hook of the current stage with an intent and no
    /// outcome runs again only if it is idempotent; otherwise the
    /// deployment halts, naming it.
    pub(super) fn resume_hooks(&mut self) {
        let detached: Vec<CommandId> = self
            .pending
            .iter()
            .filter(|(_, (k, _))| *k == Pending::Detached)
            .map(|(id, _)| *id)
            .collect();
        for id in detached {
            if let Some((_, Action::RunHook { hook, context })) = self.pending.remove(&id) {
                self.note(Noted::HookOutcomeLost {
                    hook,
                    point: context.point,
                });
            }
        }
        let interrupted = self.pending.iter().find_map(|(id, (k, a))| match a {
            Action::RunHook { hook, context } if *k == Pending::Stage => {
                let idempotent = self
                    .plan
                    .hooks
                    .iter()
                    .any(|h| h.name == *hook && h.point == context.point && h.idempotent);
                (!idempotent).then(|| (*id, hook.clone(), context.point))
            }
            _ => None,
        });
        let Some((id, hook, point)) = interrupted else {
            return;
        };
        self.pending.remove(&id);
        if matches!(self.concluding, Some(Outcome::Halted { .. })) {
            self.note(Noted::HookOutcomeLost { hook, point });
            self.due_done();
            return;
        }
        self.halt(Reason::because(Cause::HookInterrupted { hook, point }));
    }
}
