use super::*;

/// Where the deployment is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Not started.
    Pending,
    /// Reading the current state, staging health and secrets.
    Preflight,
    /// Suspending autoscaling on both colors.
    SuspendAutoscaling,
    /// Reading the old color's desired count now that autoscaling is
    /// suspended, and choosing the new color's capacity from it.
    ReadCapacity,
    /// Taking a backup.
    Backup,
    /// Verifying the backup.
    VerifyBackup,
    /// Applying migrations of a phase.
    Migrate {
        /// The phase.
        phase: MigrationPhase,
    },
    /// Verifying migrations of a phase.
    VerifyMigrations {
        /// The phase.
        phase: MigrationPhase,
    },
    /// Preparing the release on the new color.
    Prepare,
    /// Scaling the new color up.
    ScaleUp,
    /// Waiting for the new color to be stable.
    WaitStable,
    /// Smoke tests on the new color.
    SmokeTests,
    /// Setting a traffic step and reading it back.
    Shift {
        /// The step index.
        step: usize,
        /// The new color's percent.
        percent: u8,
        /// Whether the set is done and a read-back is pending.
        confirming: bool,
    },
    /// Watching a traffic step.
    Watch {
        /// The step index.
        step: usize,
        /// When the wait ends.
        until: Timestamp,
    },
    /// Evaluating success.
    Evaluate {
        /// Where.
        point: EvalPoint,
        /// The window's start.
        from: Timestamp,
    },
    /// The analysis window with all traffic on the new color.
    Analysis {
        /// When it ends.
        until: Timestamp,
    },
    /// The soak.
    Soak {
        /// When it ends.
        until: Timestamp,
    },
    /// The scale-down delay.
    ScaleDownDelay {
        /// When it ends.
        until: Timestamp,
    },
    /// Reading back that the old color holds no traffic, and that the new
    /// color still runs the prepared release at its capacity.
    ConfirmDrained,
    /// Letting a color that a read-back showed at 0% drain (load balancer
    /// propagation, requests in flight) before it is scaled down or
    /// migrations are reverted.
    Drain {
        /// When the drain period ends.
        until: Timestamp,
    },
    /// Scaling the old color to zero and waiting until it is.
    ScaleDownOld {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Restoring autoscaling at the end.
    RestoreAutoscaling,
    /// Waiting for a human.
    Hold {
        /// Why.
        reason: HoldReason,
        /// Where to go on promote/resume.
        then: Box<Stage>,
    },
    /// Rollback: reading the old color's status and target health before
    /// any traffic returns to it.
    CheckOld,
    /// Rollback: the old color was found below its capacity; scaling it back
    /// and waiting until it is stable there, before traffic returns.
    RestoreOld {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Rollback: traffic back to the old color.
    RestoreTraffic {
        /// Whether the set is done and a read-back is pending.
        confirming: bool,
    },
    /// Rollback: smoke tests on the old color.
    VerifyOld,
    /// Rollback: reverting reversible migrations.
    RevertMigrations,
    /// Rollback: scaling the new color down.
    ScaleDownNew {
        /// Whether the scale request is done and polling has begun.
        polling: bool,
    },
    /// Rollback: restoring autoscaling.
    RollbackRestoreAutoscaling,
    /// Halting: restoring autoscaling on the color(s) holding traffic, so
    /// that the service can still scale while it waits for a human.
    HaltRestoreAutoscaling,
    /// Running the plan's lifecycle hook `plan.hooks[index]` at `point`,
    /// then the rest of the point's hooks in plan order, before `then`.
    Hook {
        /// The point.
        point: HookPoint,
        /// The hook's index in the plan.
        index: usize,
        /// The stage the hooks precede (`done` for `after_rollback` and
        /// `on_finish`).
        then: Box<Stage>,
    },
    /// Smoke tests through the production URL (after a traffic change, or
    /// after a rollback restored traffic), before `then`.
    ProductionChecks {
        /// The stage they precede.
        then: Box<Stage>,
    },
    /// Finished.
    Done,
}

impl Default for Stage {
    /// [`Stage::Pending`]: not started.
    fn default() -> Self {
        Stage::Pending
    }
}

/// The stage's name as reports, journals and the CLI show it, e.g.
/// `watch_step_0` (the same as [`Stage::name`]).
impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Stage {
    /// A short name, e.g. `wait_stable`.
    pub fn name(&self) -> String {
        match self {
            Stage::Pending => "pending".into(),
            Stage::Preflight => "preflight".into(),
            Stage::SuspendAutoscaling => "suspend_autoscaling".into(),
            Stage::ReadCapacity => "read_capacity".into(),
            Stage::Backup => "backup".into(),
            Stage::VerifyBackup => "verify_backup".into(),
            Stage::Migrate { phase } => format!("migrate_{phase}"),
            Stage::VerifyMigrations { phase } => format!("verify_{phase}"),
            Stage::Prepare => "prepare".into(),
            Stage::ScaleUp => "scale_up".into(),
            Stage::WaitStable => "wait_stable".into(),
            Stage::SmokeTests => "smoke_tests".into(),
            Stage::Shift {
                percent,
                confirming: false,
                ..
            } => format!("shift_{percent}"),
            Stage::Shift { percent, .. } => format!("confirm_shift_{percent}"),
            Stage::Watch { step, .. } => format!("watch_step_{step}"),
            Stage::Evaluate { point, .. } => match point {
                EvalPoint::Step { step } => format!("evaluate_step_{step}"),
                EvalPoint::Analysis => "evaluate_analysis".into(),
                EvalPoint::Soak => "evaluate_soak".into(),
            },
            Stage::Analysis { .. } => "analysis".into(),
            Stage::Soak { .. } => "soak".into(),
            Stage::ScaleDownDelay { .. } => "scale_down_delay".into(),
            Stage::ConfirmDrained => "confirm_drained".into(),
            Stage::Drain { .. } => "drain".into(),
            Stage::CheckOld => "rollback_check_old".into(),
            Stage::RestoreOld { .. } => "rollback_restore_old".into(),
            Stage::HaltRestoreAutoscaling => "halt_restore_autoscaling".into(),
            Stage::Hook { point, .. } => format!("hook_{point}"),
            Stage::ProductionChecks { .. } => "production_checks".into(),
            Stage::ScaleDownOld { .. } => "scale_down_old".into(),
            Stage::RestoreAutoscaling => "restore_autoscaling".into(),
            Stage::Hold { .. } => "hold".into(),
            Stage::RestoreTraffic { .. } => "rollback_restore_traffic".into(),
            Stage::VerifyOld => "rollback_verify_old".into(),
            Stage::RevertMigrations => "rollback_revert_migrations".into(),
            Stage::ScaleDownNew { .. } => "rollback_scale_down_new".into(),
            Stage::RollbackRestoreAutoscaling => "rollback_restore_autoscaling".into(),
            Stage::Done => "done".into(),
        }
    }

    /// Whether traffic may still go back to the old color from here.
    pub(super) fn old_color_serving(&self) -> bool {
        match self {
            // Before the old color is scaled down, traffic can return to it.
            Stage::Hook {
                point: HookPoint::BeforeScaleDown,
                ..
            } => return true,
            Stage::Hook { then, .. } | Stage::ProductionChecks { then } => {
                return then.old_color_serving()
            }
            _ => {}
        }
        !matches!(
            self,
            Stage::ScaleDownOld { .. }
                | Stage::Migrate {
                    phase: MigrationPhase::Contract
                }
                | Stage::VerifyMigrations {
                    phase: MigrationPhase::Contract
                }
                | Stage::RestoreAutoscaling
                | Stage::Done
        )
    }
}

impl Machine {
    /// Issues the commands of a stage just entered.
    pub(super) fn begin(&mut self, stage: Stage) {
        let new = self.new_color();
        let old = self.old();
        match stage {
            Stage::Pending | Stage::Hold { .. } => {}
            Stage::Hook { index, .. } => self.run_hook(index),
            Stage::ProductionChecks { .. } => self.run_production_checks(),
            Stage::Preflight => {
                self.issue(Action::ReadSplit);
                self.issue(Action::ReadStatus {
                    colors: Color::ALL.to_vec(),
                });
                self.issue(Action::ReadDrainPeriod);
                if !self.plan.preflight.required_secrets.is_empty() {
                    self.issue(Action::CheckSecrets {
                        secrets: self.plan.preflight.required_secrets.clone(),
                    });
                }
                if !self.plan.preflight.migrations_applied.is_empty() {
                    self.issue(Action::ReadMigrationLedger);
                }
                if !self.plan.preflight.checks.is_empty() {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Dependencies,
                        tests: self.plan.preflight.checks.clone(),
                        version: self.plan.release.version.clone(),
                    });
                }
                if !self.plan.preflight.staging_checks.is_empty() {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Staging,
                        tests: self.plan.preflight.staging_checks.clone(),
                        version: self.plan.release.version.clone(),
                    });
                }
            }
            Stage::SuspendAutoscaling => {
                // Read first, journaled, then suspend: the state to restore
                // never comes from a call that changes it.
                for c in Color::ALL {
                    self.issue(Action::ReadAutoscaling { color: c });
                }
            }
            Stage::ReadCapacity => {
                self.issue(Action::ReadStatus { colors: vec![old] });
            }
            Stage::Backup => {
                self.issue(Action::Backup);
            }
            Stage::VerifyBackup => {
                let backup = self.facts.backup.clone().expect("backup taken");
                let min_entries = self
                    .plan
                    .migrations
                    .as_ref()
                    .map_or(1, |m| m.backup_min_entries);
                self.issue(Action::VerifyBackup {
                    backup,
                    min_entries,
                });
            }
            Stage::Migrate { phase } => {
                self.issue(Action::Migrate { phase });
            }
            Stage::VerifyMigrations { phase } => {
                self.issue(Action::VerifyMigrations { phase });
            }
            Stage::Prepare => {
                self.issue(Action::Prepare { color: new });
            }
            Stage::ScaleUp => {
                let count = self.capacity();
                self.facts.new_count = Some(count);
                self.issue(Action::Scale { color: new, count });
            }
            Stage::WaitStable => {
                self.issue(Action::ReadStatus { colors: vec![new] });
            }
            Stage::SmokeTests => {
                if self.plan.smoke_tests.is_empty() {
                    self.note(Noted::NoSmokeTests);
                    self.facts.smoke_passed = true;
                    self.advance();
                } else {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Color(new),
                        tests: self.plan.smoke_tests.clone(),
                        version: self.plan.release.version.clone(),
                    });
                }
            }
            Stage::Shift {
                percent,
                confirming,
                ..
            } => {
                if confirming {
                    self.issue(Action::ReadSplit);
                } else {
                    self.facts.traffic_touched = true;
                    let split = TrafficSplit::with_percent(new, percent);
                    self.requested_split = Some(split);
                    self.issue(Action::SetSplit { split });
                }
            }
            Stage::Watch { .. }
            | Stage::Analysis { .. }
            | Stage::Soak { .. }
            | Stage::ScaleDownDelay { .. }
            | Stage::Drain { .. } => {}
            Stage::Evaluate { from, .. } => {
                self.final_results.clear();
                // The window is the phase's own: data no earlier evaluation
                // used. A wait cut short by a human still covers at least
                // `timing.min_evidence` (see `on_control`).
                let to = self.now;
                for i in 0..self.plan.analysis.len() {
                    let query = self.render_query(i);
                    self.issue(Action::Measure {
                        check: self.plan.analysis[i].name.clone(),
                        query,
                        from,
                        to,
                        kind: MeasurementKind::Final,
                        color: Some(new),
                    });
                    self.issue_baseline(i, from, to);
                }
            }
            Stage::ConfirmDrained => {
                self.issue(Action::ReadSplit);
                self.issue(Action::ReadStatus { colors: vec![new] });
            }
            Stage::CheckOld | Stage::RestoreOld { polling: true } => {
                self.old_status = None;
                self.old_health = None;
                self.issue(Action::ReadStatus { colors: vec![old] });
                self.issue(Action::ReadTargetHealth { color: old });
            }
            Stage::RestoreOld { polling: false } => {
                // Up to its capacity, never down from a larger count that
                // something else set while it holds traffic.
                let count = self
                    .facts
                    .old_capacity
                    .unwrap_or(self.plan.replicas)
                    .max(self.old_status.as_ref().map_or(0, |s| s.desired));
                self.facts.old_count = Some(count);
                self.issue(Action::Scale { color: old, count });
            }
            Stage::HaltRestoreAutoscaling => {
                let serving = self.colors_holding_traffic();
                let todo: Vec<(Color, AutoscalingState)> = self
                    .facts
                    .autoscaling
                    .iter()
                    .filter(|(c, _)| {
                        serving.contains(c) && !self.facts.autoscaling_restored_on.contains(c)
                    })
                    .map(|(c, s)| (*c, *s))
                    .collect();
                if todo.is_empty() {
                    self.advance();
                } else {
                    for (color, previous) in todo {
                        self.issue(Action::RestoreAutoscaling { color, previous });
                    }
                }
            }
            Stage::ScaleDownOld { polling } => {
                if polling {
                    self.issue(Action::ReadStatus { colors: vec![old] });
                } else {
                    self.monitoring_since = None;
                    self.facts.old_count = Some(0);
                    self.issue(Action::Scale {
                        color: old,
                        count: 0,
                    });
                }
            }
            Stage::RestoreAutoscaling | Stage::RollbackRestoreAutoscaling => {
                let states: Vec<(Color, AutoscalingState)> = self
                    .facts
                    .autoscaling
                    .iter()
                    .map(|(c, s)| (*c, *s))
                    .collect();
                if states.is_empty() || self.facts.autoscaling_restored {
                    self.advance();
                } else {
                    for (color, previous) in states {
                        self.issue(Action::RestoreAutoscaling { color, previous });
                    }
                }
            }
            Stage::RestoreTraffic { confirming } => {
                if confirming {
                    self.issue(Action::ReadSplit);
                } else {
                    let split = TrafficSplit::all_on(old);
                    self.requested_split = Some(split);
                    self.issue(Action::SetSplit { split });
                }
            }
            Stage::VerifyOld => {
                if self.plan.smoke_tests.is_empty() {
                    self.advance();
                } else {
                    self.issue(Action::RunSmokeTests {
                        scope: SmokeScope::Color(old),
                        tests: self.plan.smoke_tests.clone(),
                        version: self.facts.old_version.clone().unwrap_or_default(),
                    });
                }
            }
            Stage::RevertMigrations => {
                let irreversible = self.facts.irreversible_applied();
                if !irreversible.is_empty() {
                    let names: Vec<String> = irreversible
                        .iter()
                        .map(|m| format!("{} {} ({})", m.version, m.name, m.phase))
                        .collect();
                    self.halt(Reason::because(Cause::IrreversibleMigrations {
                        migrations: names,
                        rollback_for: self.rollback_reason.as_ref().map(|r| r.summary.clone()),
                    }));
                    return;
                }
                let reverted: BTreeSet<u64> =
                    self.facts.reverted.iter().map(|m| m.version).collect();
                let mut versions: Vec<u64> = self
                    .facts
                    .applied
                    .iter()
                    .map(|m| m.version)
                    .filter(|v| !reverted.contains(v))
                    .collect();
                versions.sort_unstable_by(|a, b| b.cmp(a));
                if versions.is_empty() {
                    self.advance();
                } else {
                    self.issue(Action::RevertMigrations { versions });
                }
            }
            Stage::ScaleDownNew { polling } => {
                if polling {
                    self.issue(Action::ReadStatus { colors: vec![new] });
                } else if self.facts.new_count.is_none() {
                    // The new color was never scaled: nothing to scale down.
                    self.enter(Stage::RollbackRestoreAutoscaling);
                } else {
                    self.facts.new_count = Some(0);
                    self.issue(Action::Scale {
                        color: new,
                        count: 0,
                    });
                }
            }
            Stage::Done => {}
        }
    }

    /// The stage after the current one on the forward or rollback path.
    pub(super) fn next_stage(&self) -> Stage {
        let migrations = self.plan.migrations.as_ref();
        let now = self.now;
        match &self.stage {
            Stage::Pending => Stage::Preflight,
            Stage::Preflight => Stage::SuspendAutoscaling,
            Stage::SuspendAutoscaling => Stage::ReadCapacity,
            Stage::ReadCapacity => match migrations {
                Some(m) if m.backup => Stage::Backup,
                Some(_) => Stage::Migrate {
                    phase: MigrationPhase::Expand,
                },
                None => Stage::Prepare,
            },
            Stage::Backup => Stage::VerifyBackup,
            Stage::VerifyBackup => Stage::Migrate {
                phase: MigrationPhase::Expand,
            },
            Stage::Migrate { phase } => Stage::VerifyMigrations { phase: *phase },
            Stage::VerifyMigrations {
                phase: MigrationPhase::Expand,
            } => Stage::Prepare,
            Stage::VerifyMigrations {
                phase: MigrationPhase::Contract,
            } => Stage::RestoreAutoscaling,
            Stage::Prepare => Stage::ScaleUp,
            Stage::ScaleUp => Stage::WaitStable,
            Stage::WaitStable => Stage::SmokeTests,
            Stage::SmokeTests => self.shift(0),
            Stage::Shift {
                step,
                confirming: false,
                percent,
            } => Stage::Shift {
                step: *step,
                percent: *percent,
                confirming: true,
            },
            Stage::Shift {
                step,
                confirming: true,
                ..
            } => {
                let s = self.steps[*step];
                if s.percent >= 100 {
                    Stage::Analysis {
                        until: now.after(self.plan.timing.analysis_window),
                    }
                } else {
                    Stage::Watch {
                        step: *step,
                        until: now.after(s.wait),
                    }
                }
            }
            Stage::Watch { step, .. } => Stage::Evaluate {
                point: EvalPoint::Step { step: *step },
                from: self.window_start,
            },
            Stage::Analysis { .. } => Stage::Evaluate {
                point: EvalPoint::Analysis,
                from: self.window_start,
            },
            Stage::Evaluate { point, .. } => match point {
                EvalPoint::Step { step } => self.shift(step + 1),
                EvalPoint::Analysis => {
                    if self.plan.timing.soak.is_zero() {
                        self.after_soak()
                    } else {
                        Stage::Soak {
                            until: now.after(self.plan.timing.soak),
                        }
                    }
                }
                EvalPoint::Soak => self.after_soak(),
            },
            Stage::Soak { .. } => Stage::Evaluate {
                point: EvalPoint::Soak,
                from: self.window_start,
            },
            Stage::ScaleDownDelay { .. } => Stage::ConfirmDrained,
            Stage::ConfirmDrained => self.drain(),
            Stage::Drain { .. } if self.rolling_back() => Stage::RevertMigrations,
            Stage::Drain { .. } => Stage::ScaleDownOld { polling: false },
            Stage::ScaleDownOld { polling: false } => Stage::ScaleDownOld { polling: true },
            Stage::ScaleDownOld { polling: true } => match migrations {
                Some(_) => Stage::Migrate {
                    phase: MigrationPhase::Contract,
                },
                None => Stage::RestoreAutoscaling,
            },
            Stage::RestoreAutoscaling => Stage::Done,
            Stage::Hold { then, .. } => (**then).clone(),
            Stage::Hook { then, .. } | Stage::ProductionChecks { then } => (**then).clone(),
            Stage::RestoreTraffic { confirming: false } => {
                Stage::RestoreTraffic { confirming: true }
            }
            Stage::CheckOld => Stage::RestoreTraffic { confirming: false },
            Stage::RestoreOld { polling: false } => Stage::RestoreOld { polling: true },
            Stage::RestoreOld { polling: true } => Stage::RestoreTraffic { confirming: false },
            Stage::RestoreTraffic { confirming: true } => Stage::VerifyOld,
            Stage::VerifyOld => self.drain(),
            Stage::RevertMigrations => Stage::ScaleDownNew { polling: false },
            Stage::ScaleDownNew { polling: false } => Stage::ScaleDownNew { polling: true },
            Stage::ScaleDownNew { polling: true } => Stage::RollbackRestoreAutoscaling,
            Stage::RollbackRestoreAutoscaling => Stage::Done,
            Stage::HaltRestoreAutoscaling => Stage::Done,
            Stage::Done => Stage::Done,
        }
    }

    /// The drain after a read-back showed the color to be scaled down at 0%:
    /// until the larger of `timing.drain` and the router's own figure has
    /// passed since that read-back.
    pub(super) fn drain(&self) -> Stage {
        let period = self
            .plan
            .timing
            .drain
            .max(self.facts.router_drain.unwrap_or_default());
        let since = self.traffic_left_at.unwrap_or(self.now);
        Stage::Drain {
            until: since.after(period).max(self.now),
        }
    }

    /// The new color's serving capacity.
    pub(super) fn capacity(&self) -> u32 {
        self.facts.capacity.unwrap_or(self.plan.replicas)
    }

    /// The colors that hold traffic or may: those with weight in the split
    /// last confirmed and, when a later split was requested, in that one.
    pub(super) fn colors_holding_traffic(&self) -> BTreeSet<Color> {
        let mut out = BTreeSet::new();
        let confirmed = self
            .facts
            .confirmed_split
            .unwrap_or_else(|| TrafficSplit::all_on(self.old()));
        for split in [Some(confirmed), self.requested_split]
            .into_iter()
            .flatten()
        {
            for c in Color::ALL {
                if split.percent(c) > 0 {
                    out.insert(c);
                }
            }
        }
        out
    }

    pub(super) fn shift(&self, step: usize) -> Stage {
        Stage::Shift {
            step,
            percent: self.steps[step].percent,
            confirming: false,
        }
    }

    pub(super) fn after_soak(&self) -> Stage {
        Stage::ScaleDownDelay {
            until: self.now.after(self.plan.timing.scale_down_delay),
        }
    }

    /// The current stage is complete: go on.
    pub(super) fn advance(&mut self) {
        let next = self.next_stage();
        match (&self.stage, &next) {
            (Stage::RestoreAutoscaling, Stage::Done) => {
                self.facts.autoscaling_restored = true;
                self.conclude(Outcome::Succeeded);
            }
            (Stage::HaltRestoreAutoscaling, Stage::Done) => {
                let reason = self.halt_reason.clone().unwrap_or_else(|| {
                    Reason::because(Cause::Unrecorded {
                        what: "halted".into(),
                    })
                });
                self.conclude(Outcome::Halted { reason });
            }
            (Stage::RollbackRestoreAutoscaling, Stage::Done) => {
                self.facts.autoscaling_restored = !self.facts.autoscaling.is_empty();
                let outcome = Outcome::RolledBack {
                    reason: self.rollback_reason.clone().unwrap_or_else(|| {
                        Reason::because(Cause::Unrecorded {
                            what: "rolled back".into(),
                        })
                    }),
                };
                self.conclude(outcome);
            }
            _ => self.enter(next),
        }
    }

    pub(super) fn gate_before(&self, stage: &Stage) -> Option<Gate> {
        let candidates: &[Gate] = match stage {
            Stage::Shift {
                step: 0,
                percent: 100,
                confirming: false,
            } => &[Gate::BeforeShift, Gate::BeforeFullTraffic],
            Stage::Shift {
                step: 0,
                confirming: false,
                ..
            } => &[Gate::BeforeShift],
            Stage::Shift {
                percent: 100,
                confirming: false,
                ..
            } => &[Gate::BeforeFullTraffic],
            Stage::ConfirmDrained => &[Gate::BeforeScaleDown],
            Stage::Migrate {
                phase: MigrationPhase::Contract,
            } => &[Gate::BeforeContract],
            _ => &[],
        };
        candidates.iter().copied().find(|g| {
            !self.gates_passed.contains(g)
                && match self.plan.approval_gate(*g) {
                    // Holds until its approvals are complete (they
                    // may all have come before it was reached).
                    Some(a) => !a.missing(&self.facts.approvals).is_empty(),
                    None => self.plan.gates.contains(g),
                }
        })
    }

    pub(super) fn barrier_before(&self, stage: &Stage) -> Option<Barrier> {
        self.plan.group.as_ref()?;
        let barrier = match stage {
            Stage::Shift {
                step,
                confirming: false,
                ..
            } => Barrier::Shift { step: *step },
            Stage::ConfirmDrained => Barrier::ScaleDown,
            _ => return None,
        };
        (!self.barriers_passed.contains(&barrier)).then_some(barrier)
    }
}
