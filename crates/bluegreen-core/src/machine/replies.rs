use super::*;

impl Machine {
    /// Called when the current stage has no outstanding command and no poll
    /// scheduled: decide whether it is done.
    pub(super) fn stage_complete(&mut self) {
        match &self.stage {
            Stage::Evaluate { point, .. } => {
                let point = *point;
                self.decide_evaluation(point);
            }
            Stage::Preflight => self.finish_preflight(),
            Stage::CheckOld => match self.old_color_problem() {
                None => self.advance(),
                Some(problem) => {
                    let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
                    self.note(Noted::OldColorBelowCapacity {
                        color: self.old(),
                        problem,
                        capacity: cap,
                    });
                    self.enter(Stage::RestoreOld { polling: false });
                }
            },
            Stage::RestoreOld { polling: true } => {
                if self.old_color_problem().is_none() {
                    self.advance();
                } else {
                    self.timers.poll = Some(self.now.after(self.plan.timing.poll_interval));
                }
            }
            Stage::Hold { .. } | Stage::Done => {}
            Stage::Hook { .. } | Stage::ProductionChecks { .. } => self.due_done(),
            _ => self.advance(),
        }
    }

    pub(super) fn on_stage_reply(&mut self, action: Action, reply: Reply) {
        match (action, reply) {
            (Action::ReadSplit, Reply::Split { split }) => self.on_split(split),
            (Action::ReadStatus { colors }, Reply::Statuses { statuses }) => {
                if statuses.len() != colors.len() {
                    return self.bad_reply(&format!(
                        "asked for {} statuses, got {}",
                        colors.len(),
                        statuses.len()
                    ));
                }
                self.on_statuses(&colors, &statuses);
            }
            (Action::ReadAutoscaling { color }, Reply::Autoscaling { state }) => {
                self.facts.autoscaling.entry(color).or_insert(state);
                self.issue(Action::SuspendAutoscaling { color });
            }
            (Action::SuspendAutoscaling { color }, Reply::Autoscaling { state }) => {
                // The read above is the state to restore. A provider that
                // does not implement `autoscaling_state` reads "no scalable
                // target"; then the suspend's own answer is the only one.
                let read = self.facts.autoscaling.entry(color).or_insert(state);
                if !read.registered && state.registered {
                    *read = state;
                }
            }
            (Action::CheckSecrets { secrets }, Reply::Secrets { checks }) => {
                self.on_secrets(&secrets, &checks)
            }
            (Action::RunSmokeTests { scope, .. }, Reply::Smoke { results }) => {
                self.on_smoke(scope, results)
            }
            (Action::RunHook { hook, context }, Reply::Hook { outcome }) => {
                self.on_hook(hook, context.point, outcome)
            }
            (Action::ReadMigrationLedger, Reply::Ledger { applied }) => {
                let missing: Vec<String> = self
                    .plan
                    .preflight
                    .migrations_applied
                    .iter()
                    .filter(|v| !applied.contains(v))
                    .map(|v| {
                        format!(
                            "migration {v:03} must already be applied; the ledger does not show it"
                        )
                    })
                    .collect();
                if !missing.is_empty() {
                    self.fail(Reason::because(Cause::Dependency {
                        field: "preflight.migrations_applied".into(),
                        problems: missing,
                    }));
                }
            }
            (Action::Backup, Reply::Backup { backup }) => self.facts.backup = Some(backup),
            (Action::VerifyBackup { min_entries, .. }, Reply::BackupVerified { verification }) => {
                let ok = verification.passed && verification.entries >= min_entries;
                let noted = Noted::BackupVerified {
                    entries: verification.entries,
                    min_entries,
                    detail: verification.detail.clone(),
                };
                self.facts.backup_verification = Some(verification);
                if !ok {
                    self.fail(Reason::because(Cause::BackupVerification {
                        detail: noted.to_string(),
                    }));
                } else {
                    self.note(noted);
                }
            }
            (Action::Migrate { .. }, Reply::Migrated { applied }) => {
                for m in applied {
                    if !self.facts.applied.iter().any(|a| a.version == m.version) {
                        self.facts.applied.push(m);
                    }
                }
            }
            (Action::VerifyMigrations { phase }, Reply::Verified { checks }) => {
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                if !failed.is_empty() {
                    self.fail(Reason::because(Cause::MigrationVerification {
                        phase,
                        failed,
                    }));
                }
            }
            (Action::RevertMigrations { .. }, Reply::Reverted { reverted }) => {
                self.facts.reverted.extend(reverted);
            }
            (Action::Prepare { .. }, Reply::Prepared { prepared }) => {
                self.facts.prepared_id = prepared.id;
            }
            (Action::ReadDrainPeriod, Reply::DrainPeriod { period }) => {
                self.facts.router_drain = period;
            }
            (Action::RestoreAutoscaling { color, .. }, Reply::Done) => {
                self.facts.autoscaling_restored_on.insert(color);
            }
            (Action::SetSplit { .. }, Reply::Done) | (Action::Prepare { .. }, Reply::Done) => {}
            (Action::Scale { .. }, Reply::Done) => {}
            (Action::ReadTargetHealth { color }, Reply::Health { health }) => {
                if health.healthy > health.total {
                    return self.bad_reply(&format!(
                        "{} healthy targets of {}",
                        health.healthy, health.total
                    ));
                }
                self.event(Event::TargetHealth { color, health });
                self.old_health = Some(health);
                self.old_checked();
            }
            (
                Action::Measure {
                    check,
                    query,
                    from,
                    to,
                    kind,
                    ..
                },
                Reply::Metric { answer, note },
            ) => {
                let Some(c) = self.plan.check(&check).cloned() else {
                    return;
                };
                let mut m = measure(&c, kind, query, from, to, &answer);
                m.note = m.note.or(note);
                self.final_measured(m);
            }
            (action, reply) => {
                let (p, o) = action.operation();
                self.bad_reply(&format!("{p} {o} got an unexpected reply {reply:?}"))
            }
        }
    }

    pub(super) fn on_split(&mut self, split: TrafficSplit) {
        match self.stage.clone() {
            Stage::Preflight => match split.live_color() {
                Some(old) => {
                    self.facts.old = Some(old);
                    self.facts.new = Some(old.other());
                    self.facts.confirmed_split = Some(split);
                    self.event(Event::Colors {
                        old,
                        new: old.other(),
                    });
                }
                None => self.fail(Reason::because(Cause::AlreadySplit { split })),
            },
            Stage::Shift { percent, step, .. } => {
                let want = TrafficSplit::with_percent(self.new_color(), percent);
                if split == want {
                    self.facts.confirmed_split = Some(split);
                    if split.percent(self.old()) == 0 {
                        self.traffic_left_at = Some(self.now);
                    }
                    self.event(Event::TrafficConfirmed { split });
                    self.notify(
                        "Deployment Step",
                        format!(
                            "{} {}: {}% of traffic on {} (step {} of {})",
                            self.plan.service,
                            self.plan.release.version,
                            percent,
                            self.new_color(),
                            step + 1,
                            self.steps.len()
                        ),
                        Severity::Info,
                        &["deployment:step"],
                    );
                    self.start_monitoring();
                } else {
                    let wait = self.read_back_backoff();
                    self.note(Noted::ReadBackDisagrees {
                        found: split,
                        expected: want,
                        resend: false,
                        wait,
                        rollback: false,
                    });
                    self.timers.poll = Some(self.now.after(wait));
                }
            }
            Stage::ConfirmDrained => {
                if split.percent(self.old()) == 0 {
                    self.facts.confirmed_split = Some(split);
                    self.traffic_left_at.get_or_insert(self.now);
                    self.event(Event::TrafficConfirmed { split });
                } else {
                    self.fail(Reason::because(Cause::OldColorHoldsTraffic {
                        color: self.old(),
                        split,
                    }));
                }
            }
            Stage::RestoreTraffic { .. } => {
                let want = TrafficSplit::all_on(self.old());
                if split == want {
                    self.facts.confirmed_split = Some(split);
                    self.traffic_left_at = Some(self.now);
                    self.event(Event::TrafficConfirmed { split });
                } else {
                    // Read again after a backoff; send the write again only
                    // when a backed-off read still disagrees.
                    let resend = self.read_back_attempts % 2 == 1;
                    let wait = self.read_back_backoff();
                    self.note(Noted::ReadBackDisagrees {
                        found: split,
                        expected: want,
                        resend,
                        wait,
                        rollback: true,
                    });
                    if resend {
                        self.stage = Stage::RestoreTraffic { confirming: false };
                    }
                    self.timers.poll = Some(self.now.after(wait));
                }
            }
            _ => {}
        }
    }

    /// The wait before the next read-back after a disagreeing one:
    /// exponential from a quarter of `timing.poll_interval` (at least
    /// 100 ms), doubling per disagreement up to [`READ_BACK_MAX_BACKOFF`],
    /// with jitter in `[wait/2, wait]` drawn from the deployment id and the
    /// attempt, so replaying the journal gives the same waits.
    pub(super) fn read_back_backoff(&mut self) -> Duration {
        let attempt = self.read_back_attempts;
        self.read_back_attempts = self.read_back_attempts.saturating_add(1);
        let base = (self.plan.timing.poll_interval / 4).max(Duration::from_millis(100));
        let full = base
            .saturating_mul(1u32 << attempt.min(16))
            .min(READ_BACK_MAX_BACKOFF.max(base));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.deployment_id.bytes().chain(attempt.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let fraction = 0.5 + (h % 1000) as f64 / 2000.0;
        full.mul_f64(fraction)
    }

    pub(super) fn on_statuses(&mut self, colors: &[Color], statuses: &[ComputeStatus]) {
        match self.stage.clone() {
            Stage::Preflight => {
                // Both colors; which one is old is known once the split is read.
                self.preflight_statuses = colors
                    .iter()
                    .copied()
                    .zip(statuses.iter().cloned())
                    .collect();
            }
            Stage::ReadCapacity => {
                let s = &statuses[0];
                let old = self.old();
                if s.desired == 0 {
                    return self.fail(Reason::because(Cause::OldColorAtZero { color: old }));
                }
                let count = match self.plan.capacity {
                    CapacityPolicy::AtLeastOld => self.plan.replicas.max(s.desired),
                    CapacityPolicy::Fixed => self.plan.replicas,
                };
                self.facts.old_capacity = Some(s.desired);
                self.facts.old_count = Some(s.desired);
                self.facts.capacity = Some(count);
                self.event(Event::Capacity {
                    replicas: self.plan.replicas,
                    old_desired: s.desired,
                    count,
                    policy: self.plan.capacity,
                });
            }
            Stage::WaitStable => {
                let s = &statuses[0];
                let cap = self.capacity();
                if s.rollout == Rollout::Failed {
                    self.fail(Reason::because(Cause::RolloutFailed {
                        desired: s.desired,
                        running: s.running,
                        failed: s.failed,
                    }));
                } else if !s.is_stable_at(cap) {
                    self.timers.poll = Some(self.now.after(self.plan.timing.poll_interval));
                } else if let Some(mismatch) = self.release_mismatch(s) {
                    self.fail(Reason::because(Cause::WrongRelease {
                        color: self.new_color(),
                        capacity: cap,
                        mismatch,
                    }));
                } else {
                    self.event(Event::ReleaseVerified {
                        color: self.new_color(),
                        version: self.plan.release.version.clone(),
                        id: s.release_id.clone(),
                    });
                }
            }
            Stage::ConfirmDrained => {
                let s = &statuses[0];
                let cap = self.capacity();
                let problem = if !s.serves_at_least(cap) {
                    Some(format!(
                        "it is not stable at its capacity {cap} (desired {}, running {}, pending {}, rollout {})",
                        s.desired, s.running, s.pending, s.rollout
                    ))
                } else {
                    self.release_mismatch(s)
                };
                match problem {
                    Some(problem) => self.fail(Reason::because(Cause::ReleaseDrifted {
                        color: self.new_color(),
                        problem,
                    })),
                    None => self.event(Event::ReleaseVerified {
                        color: self.new_color(),
                        version: self.plan.release.version.clone(),
                        id: s.release_id.clone(),
                    }),
                }
            }
            Stage::CheckOld | Stage::RestoreOld { polling: true } => {
                self.old_status = Some(statuses[0].clone());
                self.old_checked();
            }
            Stage::ScaleDownOld { polling: true } | Stage::ScaleDownNew { polling: true } => {
                let s = &statuses[0];
                if !(s.desired == 0 && s.running == 0 && s.pending == 0) {
                    self.timers.poll = Some(self.now.after(self.plan.timing.poll_interval));
                }
            }
            _ => {}
        }
    }

    /// Records the old color's check once both its status and its target
    /// health are in.
    pub(super) fn old_checked(&mut self) {
        let (Some(status), Some(health)) = (self.old_status.clone(), self.old_health) else {
            return;
        };
        if !matches!(self.stage, Stage::CheckOld | Stage::RestoreOld { .. }) {
            return;
        }
        let serving = self.old_color_problem().is_none();
        self.event(Event::OldColorChecked {
            status,
            health,
            capacity: self.facts.old_capacity.unwrap_or(self.plan.replicas),
            serving,
        });
    }

    pub(super) fn finish_preflight(&mut self) {
        let Some(old) = self.facts.old else {
            return self.fail(Reason::because(Cause::NoLiveColor));
        };
        let Some((_, status)) = self.preflight_statuses.iter().find(|(c, _)| *c == old) else {
            return self.fail(Reason::because(Cause::NoOldStatus { color: old }));
        };
        if status.desired == 0 || !status.is_stable_at(status.desired) {
            let s = status.clone();
            return self.fail(Reason::because(Cause::OldColorUnstable {
                color: old,
                desired: s.desired,
                running: s.running,
                pending: s.pending,
                healthy: s.healthy,
            }));
        }
        self.facts.old_capacity = Some(status.desired);
        self.facts.old_version = status.version.clone();
        self.facts.old_count = Some(status.desired);
        self.advance();
    }

    pub(super) fn on_secrets(&mut self, secrets: &[RequiredSecret], checks: &[SecretCheck]) {
        let mut problems = Vec::new();
        for s in secrets {
            match checks.iter().find(|c| c.name == s.name) {
                None => problems.push(format!("{}: not checked", s.name)),
                Some(SecretCheck { error: Some(e), .. }) => {
                    problems.push(format!("{}: {}", s.name, e.message))
                }
                Some(SecretCheck {
                    metadata: Some(m), ..
                }) => {
                    if let Some(max) = s.max_age {
                        match m.last_rotated {
                            None => problems.push(format!(
                                "{}: its last rotation is unknown; the policy is every {}",
                                s.name,
                                days(max)
                            )),
                            Some(at) => {
                                let age = self.now.since(at);
                                if age > max {
                                    problems.push(format!(
                                        "{}: last rotated {} ago, the policy is every {}",
                                        s.name,
                                        days(age),
                                        days(max)
                                    ));
                                }
                            }
                        }
                    }
                }
                Some(_) => problems.push(format!("{}: no metadata returned", s.name)),
            }
        }
        if !problems.is_empty() {
            self.fail(Reason::because(Cause::Secrets { problems }));
        }
    }

    pub(super) fn on_smoke(&mut self, scope: SmokeScope, results: Vec<SmokeResult>) {
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| match (&r.outcome, &r.error) {
                (_, Some(e)) => format!("{} could not run: {}", r.name, e.message),
                (Some(o), _) => format!("{} failed: {}", r.name, o.detail),
                (None, None) => format!("{} gave no result", r.name),
            })
            .collect();
        self.event(Event::SmokeTests {
            scope,
            results: results.clone(),
        });
        if failed.is_empty() {
            if scope == SmokeScope::Color(self.new_color()) {
                self.facts.smoke_passed = true;
            }
            return;
        }
        if scope == SmokeScope::Color(self.old())
            && self.rolling_back()
            && self.facts.new.is_some()
            && !self.old_rechecked
        {
            // Traffic is back on the old color and it fails: it may have
            // dropped since it was read at its capacity (killed from
            // outside). Read it again once; below its capacity, it is
            // scaled back and checked again before anything else.
            self.old_rechecked = true;
            self.note(Noted::OldColorSmokeTestsFailed {
                color: self.old(),
                failed: failed.len(),
                total: results.len(),
            });
            self.old_status = None;
            self.old_health = None;
            self.enter(Stage::CheckOld);
            return;
        }
        let what = match scope {
            SmokeScope::Dependencies => {
                return self.fail(Reason::because(Cause::Dependency {
                    field: "preflight.checks".into(),
                    problems: failed,
                }))
            }
            SmokeScope::Production => return self.production_checks_failed(results.len(), failed),
            SmokeScope::Staging => "staging health check".to_string(),
            SmokeScope::Color(c) if Some(c) == self.facts.new => {
                format!("smoke tests on the new color {c}")
            }
            SmokeScope::Color(c) => {
                format!("smoke tests on the old color {c} after restoring traffic")
            }
        };
        self.fail(Reason::because(Cause::SmokeTests {
            what,
            total: results.len(),
            failed,
        }));
    }
}
