//! Analysis: how a metric answer becomes evidence, and when a breach triggers.
//!
//! Pure functions and small state, used by the [machine](crate::machine).
//! No data or too few samples is [`Verdict::Inconclusive`], which never passes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::color::Timestamp;
use crate::plan::{Aggregation, AnalysisCheck, Condition, Unit};
use crate::provider::{MetricAnswer, Sample};

pub mod baseline;
pub use baseline::{compare, mann_whitney, BaselineComparison, Judgement};

/// What one measurement says about a check's success condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough samples, and the success condition holds.
    Pass,
    /// Enough samples, and the success condition does not hold.
    Fail,
    /// No data, or fewer samples than the check's minimum: never a pass.
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// Why a measurement was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasurementKind {
    /// A periodic measurement feeding the rollback triggers.
    Periodic,
    /// The success evaluation at the end of a step, the analysis window or the soak.
    Final,
    /// The baseline of a final evaluation (the old color, or the service
    /// before the deploy), which the final measurement is compared with.
    Baseline,
}

impl std::fmt::Display for MeasurementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeasurementKind::Periodic => "periodic",
            MeasurementKind::Final => "final",
            MeasurementKind::Baseline => "baseline",
        })
    }
}

/// One measurement, with the samples behind it: the record a decision cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The check.
    pub check: String,
    /// Periodic or final.
    pub kind: MeasurementKind,
    /// The rendered query.
    pub query: String,
    /// The window's start.
    pub from: Timestamp,
    /// The window's end.
    pub to: Timestamp,
    /// The samples used (NaN samples are left out; they are no evidence).
    pub samples: Vec<Sample>,
    /// The aggregated value, when there was data (may be infinite, never NaN).
    #[serde(default, with = "crate::provider::any_f64::opt")]
    pub value: Option<f64>,
    /// The success condition it was compared with.
    pub condition: Condition,
    /// The verdict.
    pub verdict: Verdict,
    /// Whether a rollback trigger on this check saw a breach.
    pub breach: bool,
    /// Evaluated and recorded only, never acted on.
    pub dry_run: bool,
    /// Why there was no verdict, when inconclusive; otherwise what the
    /// samples stand for, when the source noted it (e.g. the alarms in
    /// ALARM state a count counts).
    pub note: Option<String>,
    /// How it compared with the check's baseline, when it has one; the
    /// verdict above includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineComparison>,
}

impl Measurement {
    /// A one-line description, e.g. `error-rate = 0.0712 (5 samples over
    /// 1m) fail (success < 0.01)`; see [`describe_in`](Self::describe_in)
    /// for the values in the check's unit.
    pub fn describe(&self) -> String {
        self.describe_in(Unit::Number)
    }

    /// A one-line description with the value and the threshold in `unit`
    /// (the check's), e.g. `error-rate = 7.12% (5 samples over 1m) fail
    /// (success < 1%)`.
    pub fn describe_in(&self, unit: Unit) -> String {
        // Without a unit, four decimals as ever (reasons journaled and
        // compared by tests read so).
        let v = match (self.value, unit) {
            (Some(v), Unit::Number) => format!("{v:.4}"),
            (Some(v), unit) => unit.format(v),
            (None, _) => "no value".into(),
        };
        let mut s = format!(
            "{} = {v} ({} samples over {}) {} (success {})",
            self.check,
            self.samples.len(),
            humantime::format_duration(self.to.since(self.from)),
            self.verdict,
            match unit {
                Unit::Number => self.condition.to_string(),
                unit => self.condition.in_unit(unit),
            }
        );
        if self.breach {
            s.push_str(", breach");
        }
        if let Some(n) = &self.note {
            s.push_str(&format!(": {n}"));
        }
        if let Some(b) = &self.baseline {
            s.push_str(&format!("; {}", b.describe_in(unit)));
        }
        s
    }

    /// The measurement judged against `baseline` (the same check's baseline
    /// measurement) under `spec`: its verdict becomes the worse of its own
    /// and the comparison's (fail over inconclusive over pass).
    pub fn against(
        mut self,
        baseline: &Measurement,
        spec: &crate::plan::Baseline,
        unit: Unit,
    ) -> Measurement {
        let cmp = compare(&self, baseline, spec, unit);
        self.verdict = match (self.verdict, cmp.verdict) {
            (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
            (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
            _ => Verdict::Pass,
        };
        self.baseline = Some(cmp);
        self
    }
}

/// Aggregates `samples` (NaN left out). `None` when nothing is left.
pub fn aggregate(samples: &[Sample], how: Aggregation) -> Option<f64> {
    let mut vals = samples.iter().map(|s| s.value).filter(|v| !v.is_nan());
    let first = vals.next()?;
    let (mut sum, mut min, mut max, mut last, mut n) = (first, first, first, first, 1u32);
    for v in vals {
        sum += v;
        min = min.min(v);
        max = max.max(v);
        last = v;
        n += 1;
    }
    let value = match how {
        Aggregation::Mean => sum / f64::from(n),
        Aggregation::Max => max,
        Aggregation::Min => min,
        Aggregation::Last => last,
        Aggregation::Sum => sum,
    };
    // +inf and -inf together sum to NaN: that is no value either.
    (!value.is_nan()).then_some(value)
}

/// Turns an answer into a measurement of `check` over `[from, to]`.
pub fn measure(
    check: &AnalysisCheck,
    kind: MeasurementKind,
    query: String,
    from: Timestamp,
    to: Timestamp,
    answer: &MetricAnswer,
) -> Measurement {
    let (samples, note) = match answer {
        MetricAnswer::Samples { samples } => {
            // Sized for them all at once: usually none is NaN.
            let mut kept = Vec::with_capacity(samples.len());
            kept.extend(samples.iter().copied().filter(|s| !s.value.is_nan()));
            (kept, None)
        }
        MetricAnswer::NoData { reason } => (Vec::new(), Some(format!("no data: {reason}"))),
    };
    let value = aggregate(&samples, check.aggregation);
    let required = check.required_samples(to.since(from));
    let (verdict, note) = match value {
        _ if note.is_some() => (Verdict::Inconclusive, note),
        None => (
            Verdict::Inconclusive,
            Some("no data: the answer had no usable samples".into()),
        ),
        Some(_) if (samples.len() as u64) < u64::from(required) => (
            Verdict::Inconclusive,
            Some(format!(
                "too few samples: {} of the {required} required",
                samples.len(),
            )),
        ),
        Some(v) if check.success.holds(v) => (Verdict::Pass, None),
        Some(_) => (Verdict::Fail, None),
    };
    Measurement {
        check: check.name.clone(),
        kind,
        query,
        from,
        to,
        samples,
        value,
        condition: check.success,
        verdict,
        breach: false,
        dry_run: check.dry_run,
        note,
        baseline: None,
    }
}

/// A run of consecutive breaching measurements of one rollback trigger.
///
/// An inconclusive measurement neither extends nor resets the run: it is no
/// evidence either way. A conclusive measurement that does not breach resets it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreachRun {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    count: u32,
}

impl BreachRun {
    /// Records a conclusive reading ending at `at` that did (`true`) or did not breach.
    pub fn record(&mut self, at: Timestamp, breached: bool) {
        if breached {
            self.first.get_or_insert(at);
            self.last = Some(at);
            self.count += 1;
        } else {
            *self = BreachRun::default();
        }
    }

    /// Breaching measurements in a row.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The time the run covers: from the start of the first breaching window
    /// to the end of the last.
    pub fn covered(&self, window: Duration) -> Duration {
        match (self.first, self.last) {
            (Some(f), Some(l)) => l.since(f) + window,
            _ => Duration::ZERO,
        }
    }

    /// Whether the run satisfies "for `for_duration`" or "`consecutive` in a row".
    pub fn fires(
        &self,
        window: Duration,
        for_duration: Option<Duration>,
        consecutive: Option<u32>,
    ) -> bool {
        if self.count == 0 {
            return false;
        }
        match (for_duration, consecutive) {
            (Some(d), _) => self.covered(window) >= d,
            (None, Some(n)) => self.count >= n,
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(vals: &[f64]) -> MetricAnswer {
        MetricAnswer::Samples {
            samples: vals
                .iter()
                .enumerate()
                .map(|(i, v)| Sample {
                    at: Timestamp(i as u64 * 1000),
                    value: *v,
                })
                .collect(),
        }
    }

    fn check() -> AnalysisCheck {
        AnalysisCheck {
            min_samples: Some(3),
            ..AnalysisCheck::error_rate("q")
        }
    }

    fn m(answer: &MetricAnswer) -> Measurement {
        measure(
            &check(),
            MeasurementKind::Periodic,
            "q".into(),
            Timestamp(0),
            Timestamp(60_000),
            answer,
        )
    }

    #[test]
    fn no_data_is_inconclusive_never_a_pass() {
        let r = m(&MetricAnswer::NoData {
            reason: "no series".into(),
        });
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(r.value, None);
        assert!(r.note.unwrap().contains("no series"));
    }

    #[test]
    fn too_few_samples_is_inconclusive() {
        let r = m(&samples(&[0.001, 0.002]));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.note.unwrap().contains("2 of the 3"));
    }

    #[test]
    fn one_real_sample_in_fifteen_minutes_passes_no_analysis() {
        let c = AnalysisCheck::error_rate("q");
        // `n` samples of 0.001, a minute apart, in a 15-minute window.
        let judge = |n: u64| {
            let answer = MetricAnswer::Samples {
                samples: (0..n)
                    .map(|i| Sample {
                        at: Timestamp((i + 1) * 60_000),
                        value: 0.001,
                    })
                    .collect(),
            };
            let to = Timestamp(15 * 60_000);
            measure(
                &c,
                MeasurementKind::Final,
                "q".into(),
                Timestamp(0),
                to,
                &answer,
            )
        };
        let one = judge(1);
        assert_eq!(one.verdict, Verdict::Inconclusive);
        assert!(one.note.unwrap().contains("1 of the 8 required"));
        assert_eq!(judge(7).verdict, Verdict::Inconclusive);
        assert_eq!(judge(8).verdict, Verdict::Pass);
        // Half the 15 points a 15-minute window holds at 1-minute intervals, rounded up.
        assert_eq!(c.required_samples(Duration::from_secs(15 * 60)), 8);
        // A periodic one-minute window needs its one point.
        assert_eq!(c.required_samples(Duration::from_secs(60)), 1);
    }

    #[test]
    fn nan_samples_are_no_evidence() {
        let r = m(&samples(&[f64::NAN, f64::NAN, 0.001, 0.001]));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        let r = m(&samples(&[0.001, 0.002, 0.003]));
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(r.samples.len(), 3);
        let r = m(&samples(&[0.02, 0.02, 0.02]));
        assert_eq!(r.verdict, Verdict::Fail);
    }

    #[test]
    fn five_breaches_of_one_minute_cover_five_minutes() {
        let w = Duration::from_secs(60);
        let five = Some(Duration::from_secs(300));
        let mut run = BreachRun::default();
        for i in 0..4 {
            run.record(Timestamp(i * 60_000), true);
            assert!(!run.fires(w, five, None));
        }
        run.record(Timestamp(4 * 60_000), true);
        assert!(run.fires(w, five, None));
        run.record(Timestamp(5 * 60_000), false);
        assert!(!run.fires(w, five, None));
        assert_eq!(run.count(), 0);
    }

    #[test]
    fn aggregations() {
        let s: Vec<Sample> = [1.0, 3.0, 2.0]
            .iter()
            .map(|v| Sample {
                at: Timestamp(0),
                value: *v,
            })
            .collect();
        assert_eq!(aggregate(&s, Aggregation::Mean), Some(2.0));
        assert_eq!(aggregate(&s, Aggregation::Max), Some(3.0));
        assert_eq!(aggregate(&s, Aggregation::Min), Some(1.0));
        assert_eq!(aggregate(&s, Aggregation::Last), Some(2.0));
        assert_eq!(aggregate(&s, Aggregation::Sum), Some(6.0));
        assert_eq!(aggregate(&[], Aggregation::Mean), None);
    }
}
