use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Monitor {
    Check(usize),
    Health,
}

/// What the plan's rollback triggers watch, found once per machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Watched {
    /// Per check of the plan: whether a metric trigger names it.
    checks: Vec<bool>,
    /// Whether a trigger watches the new color's target health.
    health: bool,
}

impl Watched {
    pub(super) fn of(plan: &Plan) -> Watched {
        let metric = |name: &str| {
            plan.rollback_triggers
                .iter()
                .any(|t| matches!(t, RollbackTrigger::Metric { check, .. } if check == name))
        };
        Watched {
            checks: plan.analysis.iter().map(|c| metric(&c.name)).collect(),
            health: plan
                .rollback_triggers
                .iter()
                .any(|t| matches!(t, RollbackTrigger::UnhealthyTargets { .. })),
        }
    }
}

impl Machine {
    pub(super) fn schedule_monitors(&mut self) {
        let Some(_) = self.monitoring_since else {
            return;
        };
        if self.rolling_back() || self.outcome.is_some() {
            return;
        }
        let now = self.now;
        let new = self.new_color();
        for i in 0..self.plan.analysis.len() {
            if !self.has_metric_trigger(i)
                || now < self.next_measure[i]
                || self.monitor_pending(&Monitor::Check(i))
            {
                continue;
            }
            let c = &self.plan.analysis[i];
            let window = c.measurement_window();
            self.next_measure[i] = now.after(c.interval);
            let query = self.render_query(i);
            let check = c.name.clone();
            self.issue_as(
                Pending::Monitor(Monitor::Check(i)),
                Action::Measure {
                    check,
                    query,
                    from: now.since_start(window),
                    to: now,
                    kind: MeasurementKind::Periodic,
                    color: Some(new),
                },
            );
        }
        if self.has_health_trigger()
            && self.next_health.is_some_and(|t| now >= t)
            && !self.monitor_pending(&Monitor::Health)
        {
            self.next_health = Some(now.after(self.plan.timing.health_interval));
            self.issue_as(
                Pending::Monitor(Monitor::Health),
                Action::ReadTargetHealth { color: new },
            );
        }
    }

    pub(super) fn has_metric_trigger(&self, check: usize) -> bool {
        self.triggers.checks[check]
    }

    pub(super) fn has_health_trigger(&self) -> bool {
        self.triggers.health
    }

    pub(super) fn start_monitoring(&mut self) {
        if self.monitoring_since.is_none() {
            let now = self.now;
            self.monitoring_since = Some(now);
            for (i, c) in self.plan.analysis.iter().enumerate() {
                self.next_measure[i] = now.after(c.measurement_window());
            }
            self.next_health = Some(now);
            self.schedule_monitors();
        }
    }

    /// A monitor's reply, borrowed: a reading is journaled as it came, and
    /// only what the machine keeps of it is copied.
    pub(super) fn on_monitor_reply(&mut self, m: Monitor, action: Action, reply: &Reply) {
        if self.rolling_back() || self.outcome.is_some() {
            return;
        }
        match (m, action, reply) {
            (
                Monitor::Check(i),
                Action::Measure {
                    query,
                    from,
                    to,
                    kind,
                    ..
                },
                Reply::Metric { answer, note },
            ) => {
                // The plan is shared: borrowing the check from it costs no copy.
                let plan = Arc::clone(&self.plan);
                let check = &plan.analysis[i];
                let mut meas = measure(check, kind, query, from, to, answer);
                if meas.note.is_none() {
                    meas.note.clone_from(note);
                }
                let mut fired: Option<(usize, String)> = None;
                if let Some(value) = meas.value.filter(|_| meas.verdict != Verdict::Inconclusive) {
                    for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                        let RollbackTrigger::Metric {
                            check: name,
                            breach,
                            for_duration,
                            consecutive,
                        } = trigger
                        else {
                            continue;
                        };
                        if *name != check.name {
                            continue;
                        }
                        let breached = breach.holds(value);
                        meas.breach |= breached;
                        self.breach_runs[t].record(to, breached);
                        if !breached {
                            self.run_evidence[t].clear();
                        }
                        if breached
                            && self.breach_runs[t].fires(
                                check.measurement_window(),
                                *for_duration,
                                *consecutive,
                            )
                            && fired.is_none()
                        {
                            fired = Some((t, trigger.describe_in(check.unit)));
                        }
                    }
                }
                for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                    if matches!(trigger, RollbackTrigger::Metric { check: n, .. } if *n == check.name)
                        && meas.breach
                    {
                        self.run_evidence[t].push(meas.clone());
                    }
                }
                self.reading(
                    ReadingOf::Check(i),
                    Reading::Check {
                        verdict: meas.verdict,
                        breach: meas.breach,
                    },
                );
                let meas = Arc::new(meas);
                self.event(Event::Measured {
                    measurement: Arc::clone(&meas),
                });
                if let Some((t, describe)) = fired {
                    let evidence = std::mem::take(&mut self.run_evidence[t]);
                    self.breach_runs[t] = BreachRun::default();
                    let reason = Reason::because(Cause::MetricTrigger {
                        trigger: describe,
                        value: meas.value,
                        unit: check.unit,
                        samples: meas.samples.len(),
                        note: meas.note.clone(),
                    })
                    .with_evidence(evidence);
                    if check.dry_run {
                        self.event(Event::DryRun {
                            detail: format!("dry run, not acted on: {}", reason.summary),
                            cause: reason.cause,
                        });
                    } else {
                        self.fail(reason);
                    }
                }
            }
            (Monitor::Health, Action::ReadTargetHealth { color }, &Reply::Health { health }) => {
                if health.healthy > health.total {
                    return self.bad_reply(&format!(
                        "{} healthy targets of {}",
                        health.healthy, health.total
                    ));
                }
                self.reading(
                    ReadingOf::Health(color),
                    Reading::Health {
                        healthy: health.healthy,
                        total: health.total,
                    },
                );
                self.event(Event::TargetHealth { color, health });
                let frac = health.unhealthy_fraction();
                let now = self.now;
                let mut fired = None;
                for (t, trigger) in self.plan.rollback_triggers.iter().enumerate() {
                    if let RollbackTrigger::UnhealthyTargets { above, consecutive } = trigger {
                        let breached = frac > *above;
                        self.breach_runs[t].record(now, breached);
                        if self.breach_runs[t].fires(
                            Duration::ZERO,
                            None,
                            Some(consecutive.unwrap_or(1)),
                        ) && fired.is_none()
                        {
                            fired = Some(trigger.describe());
                        }
                    }
                }
                if let Some(describe) = fired {
                    self.fail(Reason::because(Cause::UnhealthyTargets {
                        trigger: describe,
                        color,
                        unhealthy: health.total - health.healthy,
                        total: health.total,
                    }));
                }
            }
            (_, action, reply) => {
                let (p, o) = action.operation();
                self.bad_reply(&format!("{p} {o} got an unexpected reply {reply:?}"))
            }
        }
    }

    pub(super) fn render_query(&self, check: usize) -> String {
        self.render_query_for(check, self.new_color())
    }

    /// Check `check`'s query for `color`.
    pub(super) fn render_query_for(&self, check: usize, color: Color) -> String {
        self.queries
            .iter()
            .find(|(c, _)| *c == color)
            .map(|(_, q)| q[check].clone())
            .unwrap_or_else(|| render_query(&self.plan, check, color))
    }
}

/// Check `check`'s query of `plan` for the new color `color`, its
/// `{service}`, `{color}` and `{version}` filled in.
pub(super) fn render_query(plan: &Plan, check: usize, color: Color) -> String {
    let c = &plan.analysis[check];
    render_template(&c.query, |name| match name {
        "service" => Some(plan.service.as_str()),
        "color" => Some(color.as_str()),
        "version" => Some(plan.release.version.as_str()),
        _ => None,
    })
    .unwrap_or_else(|_| c.query.clone())
}
