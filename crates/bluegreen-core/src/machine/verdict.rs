use super::*;
use crate::plan::{BaselineOf, Unit};

impl Machine {
    /// Asks for check `i`'s baseline over the candidate's window
    /// `[from, to]`, when the check has one: the old color over the same
    /// window, or over a window as long ending when the deployment started.
    pub(super) fn issue_baseline(&mut self, i: usize, from: Timestamp, to: Timestamp) {
        let Some(b) = &self.plan.analysis[i].baseline else {
            return;
        };
        let old = self.old();
        let (from, to) = match b.of {
            BaselineOf::OldColor => (from, to),
            BaselineOf::BeforeDeploy => {
                let start = self.started_at.unwrap_or(from);
                (
                    Timestamp(start.0.saturating_sub(to.since(from).as_millis() as u64)),
                    start,
                )
            }
        };
        self.issue(Action::Measure {
            check: self.plan.analysis[i].name.clone(),
            query: self.render_query_for(i, old),
            from,
            to,
            kind: MeasurementKind::Baseline,
            color: Some(old),
        });
    }

    /// Records a final evaluation's measurement. A baseline's is recorded at
    /// once; the candidate of a check with a baseline waits for it, in
    /// [`decide_evaluation`](Self::decide_evaluation), so that its record
    /// carries the comparison.
    pub(super) fn final_measured(&mut self, m: Measurement) {
        let waits = m.kind == MeasurementKind::Final
            && self
                .plan
                .check(&m.check)
                .is_some_and(|c| c.baseline.is_some());
        if !waits {
            self.event(Event::Measured {
                measurement: Arc::new(m.clone()),
            });
        }
        self.final_results.push(m);
    }

    /// The final measurements with each check that has a baseline judged
    /// against its baseline's measurement (which is left out); a baseline
    /// that never answered is no data, so inconclusive.
    fn judge_baselines(&mut self, results: Vec<Measurement>) -> Vec<Measurement> {
        let (baselines, finals): (Vec<Measurement>, Vec<Measurement>) = results
            .into_iter()
            .partition(|m| m.kind == MeasurementKind::Baseline);
        let plan = Arc::clone(&self.plan);
        let mut out = Vec::with_capacity(finals.len());
        for m in finals {
            let Some((c, spec)) = plan
                .check(&m.check)
                .and_then(|c| c.baseline.as_ref().map(|b| (c, b)))
            else {
                out.push(m);
                continue;
            };
            let missing;
            let base = match baselines.iter().find(|b| b.check == m.check) {
                Some(b) => b,
                None => {
                    missing = measure(
                        c,
                        MeasurementKind::Baseline,
                        String::new(),
                        m.from,
                        m.to,
                        &MetricAnswer::NoData {
                            reason: "the baseline was not measured".into(),
                        },
                    );
                    &missing
                }
            };
            let m = m.against(base, spec, c.unit);
            self.event(Event::Measured {
                measurement: Arc::new(m.clone()),
            });
            out.push(m);
        }
        out
    }

    /// `m` described with its value and threshold in its check's unit
    /// (a ratio as a percent, milliseconds as `ms`).
    fn describe_measurement(&self, m: &Measurement) -> String {
        let unit = self
            .plan
            .analysis
            .iter()
            .find(|c| c.name == m.check)
            .map_or(Unit::Number, |c| c.unit);
        m.describe_in(unit)
    }

    pub(super) fn decide_evaluation(&mut self, point: EvalPoint) {
        let results = std::mem::take(&mut self.final_results);
        let results = self.judge_baselines(results);
        let acted: Vec<&Measurement> = results.iter().filter(|m| !m.dry_run).collect();
        let percent = match point {
            EvalPoint::Step { step } => Some(self.steps[step].percent),
            _ => None,
        };
        for m in results
            .iter()
            .filter(|m| m.dry_run && m.verdict != Verdict::Pass)
        {
            let cause = Cause::Analysis {
                point,
                percent,
                failed: m.verdict == Verdict::Fail,
                checks: vec![self.describe_measurement(m)],
            };
            self.event(Event::DryRun {
                detail: format!("dry run, not acted on: {}", self.describe_measurement(m)),
                cause: Some(cause),
            });
        }
        let failed: Vec<String> = acted
            .iter()
            .filter(|m| m.verdict == Verdict::Fail)
            .map(|m| self.describe_measurement(m))
            .collect();
        if !failed.is_empty() {
            let evidence = acted.iter().map(|m| (*m).clone()).collect();
            return self.fail(
                Reason::because(Cause::Analysis {
                    point,
                    percent,
                    failed: true,
                    checks: failed,
                })
                .with_evidence(evidence),
            );
        }
        let inconclusive: Vec<String> = acted
            .iter()
            .filter(|m| m.verdict == Verdict::Inconclusive)
            .map(|m| self.describe_measurement(m))
            .collect();
        if !inconclusive.is_empty() {
            let cause = Cause::Analysis {
                point,
                percent,
                failed: false,
                checks: inconclusive,
            };
            let detail = cause.to_string();
            match self.plan.on_inconclusive {
                InconclusivePolicy::Rollback => {
                    let evidence = acted.iter().map(|m| (*m).clone()).collect();
                    return self.fail(Reason::because(cause).with_evidence(evidence));
                }
                InconclusivePolicy::Pause => {
                    let then = self.next_stage();
                    self.notify(
                        "Deployment Paused",
                        format!(
                            "{} {}: {detail}",
                            self.plan.service, self.plan.release.version
                        ),
                        Severity::Warning,
                        &["deployment:paused"],
                    );
                    self.hold(HoldReason::Inconclusive { detail }, then);
                    return;
                }
            }
        }
        self.advance();
    }

    /// Why `status` is not the release the new color should run, or `None`
    /// when it is: the plan's version and, where `prepare` returned one, the
    /// provider's identity (ECS: a circuit-breaker rollback puts the old task
    /// definition back as the primary deployment, COMPLETED).
    pub(super) fn release_mismatch(&self, status: &ComputeStatus) -> Option<String> {
        let want_version = &self.plan.release.version;
        let want_id = self.facts.prepared_id.as_ref();
        let version_ok = status.version.as_ref() == Some(want_version);
        let id_ok = want_id.is_none_or(|id| status.release_id.as_ref() == Some(id));
        if version_ok && id_ok {
            return None;
        }
        let show = |v: Option<&String>, id: Option<&String>| {
            let mut out = match v {
                Some(v) => format!("version {v}"),
                None => "an unreported version".to_string(),
            };
            if let Some(id) = id {
                out.push_str(&format!(" ({id})"));
            }
            out
        };
        Some(format!(
            "expected {}, found {}",
            show(Some(want_version), want_id),
            show(status.version.as_ref(), status.release_id.as_ref())
        ))
    }

    /// Whether the old color can take traffic back as it is: at least its
    /// recorded capacity desired, running and healthy (by the provider and
    /// by the router), nothing pending, its rollout settled, and the version
    /// it ran at the start.
    pub(super) fn old_color_problem(&self) -> Option<String> {
        let (Some(s), Some(h)) = (&self.old_status, &self.old_health) else {
            return Some("its status or target health could not be read".into());
        };
        let cap = self.facts.old_capacity.unwrap_or(self.plan.replicas);
        let mut problems = Vec::new();
        if !s.serves_at_least(cap) {
            problems.push(format!(
                "{} desired, {} running, {} pending, {} healthy, rollout {}, against its capacity of {cap}",
                s.desired,
                s.running,
                s.pending,
                s.healthy.map_or("unknown".into(), |x| x.to_string()),
                s.rollout
            ));
        }
        if h.healthy < cap {
            problems.push(format!(
                "{} of {} targets healthy at the router",
                h.healthy, h.total
            ));
        }
        if let Some(v) = &self.facts.old_version {
            if s.version.as_ref() != Some(v) {
                problems.push(format!(
                    "it runs {} instead of version {v}",
                    s.version
                        .as_deref()
                        .map_or("an unreported version".to_string(), |x| format!(
                            "version {x}"
                        ))
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}
