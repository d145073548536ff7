//! Judging a check's candidate against its baseline: the ratio of the two
//! aggregated values, and a Mann–Whitney U test on the two sample sets.
//!
//! The candidate is the new color over the check's window; the baseline is
//! the old color over the same window, or the service before the deploy
//! (see [`BaselineOf`]). A baseline with no data, too few samples or
//! samples that all tie is [`Verdict::Inconclusive`], never a pass.
//!
//! The U test is the one Kayenta's Mann–Whitney classifier runs: is the
//! candidate's distribution shifted from the baseline's, and is the shift
//! large enough to matter (the ratio of the means against a minimum effect
//! size)? Ranks with ties take their average rank; the p-value is the
//! normal approximation with the tie correction and the continuity
//! correction, as `scipy.stats.mannwhitneyu(x, y, method="asymptotic")`
//! computes it (the tests compare with its results).

use serde::{Deserialize, Serialize};

use super::{Measurement, Verdict};
use crate::plan::{Baseline, BaselineOf, Direction, MannWhitney, Unit};

/// What the Mann–Whitney judge found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// U of the candidate's samples: how many (candidate, baseline) pairs
    /// the candidate's value is larger in, ties counting one half.
    pub u: f64,
    /// The p-value for the direction judged (two-sided for
    /// [`Direction::Either`]); `None` when there was no test (too few
    /// samples, all ties).
    #[serde(default, with = "crate::provider::any_f64::opt")]
    pub p: Option<f64>,
    /// The effect size: the candidate's mean over the baseline's (1.0 is
    /// no change; infinite when the baseline's mean is zero and the
    /// candidate's is not).
    #[serde(default, with = "crate::provider::any_f64::opt")]
    pub effect: Option<f64>,
    /// The candidate's sample count.
    pub n_candidate: usize,
    /// The baseline's sample count.
    pub n_baseline: usize,
    /// The judge's verdict: fail only for a significant shift in the
    /// judged direction at least as large as the minimum effect.
    pub verdict: Verdict,
    /// Why, when it is not a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Judgement {
    /// One line, e.g. `U=812, p=0.0003, effect 1.31x, n=40/40: fail`.
    pub fn describe(&self) -> String {
        let p = self.p.map_or("n/a".to_string(), |p| format!("{p:.4}"));
        let effect = self.effect.map_or("n/a".to_string(), |e| {
            format!("{}x", Unit::Number.format(e))
        });
        let mut s = format!(
            "U={}, p={p}, effect {effect}, n={}/{}: {}",
            Unit::Number.format(self.u),
            self.n_candidate,
            self.n_baseline,
            self.verdict
        );
        if let Some(n) = &self.note {
            s.push_str(&format!(" ({n})"));
        }
        s
    }
}

/// The standard normal distribution's upper tail, P(Z > z).
fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// U of `candidate` against `baseline` and the tie term Σ(t³ − t) over the
/// groups of equal values of both samples together.
fn u_statistic(candidate: &[f64], baseline: &[f64]) -> (f64, f64) {
    let mut all: Vec<(f64, bool)> = candidate
        .iter()
        .map(|v| (*v, true))
        .chain(baseline.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i + 1;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let avg = (i + 1 + j) as f64 / 2.0;
        let t = (j - i) as f64;
        ties += t * t * t - t;
        rank_sum += avg * all[i..j].iter().filter(|(_, c)| *c).count() as f64;
        i = j;
    }
    let n1 = candidate.len() as f64;
    (rank_sum - n1 * (n1 + 1.0) / 2.0, ties)
}

/// The Mann–Whitney U test of `candidate` against `baseline` under `judge`
/// (NaN samples must be left out first, as [`measure`](super::measure)
/// does).
///
/// Inconclusive when either sample has fewer than `judge.min_samples`, or
/// when every sample of both ties (no ranking at all).
pub fn mann_whitney(candidate: &[f64], baseline: &[f64], judge: &MannWhitney) -> Judgement {
    let (n1, n2) = (candidate.len(), baseline.len());
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let effect = (n1 > 0 && n2 > 0).then(|| {
        let (c, b) = (mean(candidate), mean(baseline));
        if b == 0.0 {
            if c == 0.0 {
                1.0
            } else {
                f64::INFINITY.copysign(c)
            }
        } else {
            c / b
        }
    });
    let (u, ties) = u_statistic(candidate, baseline);
    let inconclusive = |note: String| Judgement {
        u,
        p: None,
        effect,
        n_candidate: n1,
        n_baseline: n2,
        verdict: Verdict::Inconclusive,
        note: Some(note),
    };
    let min = judge.min_samples as usize;
    if n1 < min || n2 < min {
        let which = match (n1 < min, n2 < min) {
            (true, true) => "candidate and baseline",
            (true, false) => "candidate",
            _ => "baseline",
        };
        return inconclusive(format!(
            "too few samples for the U test: {n1} candidate and {n2} baseline, the {which} \
             below the {min} required"
        ));
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let n = f1 + f2;
    let variance = f1 * f2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        return inconclusive("every sample of both colors is the same value: no ranking".into());
    }
    let sigma = variance.sqrt();
    let mu = f1 * f2 / 2.0;
    let u2 = f1 * f2 - u;
    // The U of the direction judged, with the continuity correction.
    let (stat, sides) = match judge.direction {
        Direction::Increase => (u, 1.0),
        Direction::Decrease => (u2, 1.0),
        Direction::Either => (u.max(u2), 2.0),
    };
    let z = (stat - mu - 0.5) / sigma;
    let p = (normal_sf(z) * sides).clamp(0.0, 1.0);
    let e = effect.unwrap_or(1.0);
    let large = match judge.direction {
        Direction::Increase => e >= 1.0 + judge.min_effect,
        Direction::Decrease => e <= 1.0 - judge.min_effect,
        Direction::Either => e >= 1.0 + judge.min_effect || e <= 1.0 - judge.min_effect,
    };
    let significant = p < judge.significance;
    let (verdict, note) = if significant && large {
        (
            Verdict::Fail,
            Some(format!(
                "a significant {} (p < {}) of at least {} of the baseline",
                match judge.direction {
                    Direction::Increase => "increase",
                    Direction::Decrease => "decrease",
                    Direction::Either => "shift",
                },
                judge.significance,
                Unit::Ratio.format(judge.min_effect)
            )),
        )
    } else {
        (Verdict::Pass, None)
    };
    Judgement {
        u,
        p: Some(p),
        effect,
        n_candidate: n1,
        n_baseline: n2,
        verdict,
        note,
    }
}

/// How a candidate measurement compared with its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineComparison {
    /// Whose samples the baseline was.
    pub of: BaselineOf,
    /// The baseline's rendered query.
    pub query: String,
    /// The baseline window's start.
    pub from: crate::color::Timestamp,
    /// The baseline window's end.
    pub to: crate::color::Timestamp,
    /// The baseline's aggregated value, when it had data.
    #[serde(default, with = "crate::provider::any_f64::opt")]
    pub value: Option<f64>,
    /// The baseline's sample count.
    pub samples: usize,
    /// The candidate's value over the baseline's, when both are known and
    /// the baseline's is not zero.
    #[serde(default, with = "crate::provider::any_f64::opt")]
    pub ratio: Option<f64>,
    /// The Mann–Whitney judgement, when the check asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judgement>,
    /// The verdict of the baseline conditions together.
    pub verdict: Verdict,
    /// What failed, or why there is no verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl BaselineComparison {
    /// One line, e.g. `against old-color 180 ms (12 samples): 1.31x, fail
    /// (at most 20% above the baseline)`.
    pub fn describe_in(&self, unit: Unit) -> String {
        let value = self
            .value
            .map_or("no value".to_string(), |v| unit.format(v));
        let mut s = format!("against {} {value} ({} samples)", self.of, self.samples);
        if let Some(r) = self.ratio {
            s.push_str(&format!(": {}x", Unit::Number.format(r)));
        }
        if let Some(j) = &self.judge {
            s.push_str(&format!("; {}", j.describe()));
        }
        s.push_str(&format!(", {}", self.verdict));
        if let Some(n) = &self.note {
            s.push_str(&format!(" ({n})"));
        }
        s
    }
}

/// Compares `candidate` with `baseline` under `spec`, the measurement's
/// own verdict aside.
///
/// The ratio conditions compare the aggregated values without dividing:
/// "at most 20% above" is `candidate <= baseline × 1.2`, so a baseline of
/// zero allows only zero. A baseline that was inconclusive on its own (no
/// data, too few samples for the check) makes the comparison inconclusive.
pub fn compare(
    candidate: &Measurement,
    baseline: &Measurement,
    spec: &Baseline,
    unit: Unit,
) -> BaselineComparison {
    let mut out = BaselineComparison {
        of: spec.of,
        query: baseline.query.clone(),
        from: baseline.from,
        to: baseline.to,
        value: baseline.value,
        samples: baseline.samples.len(),
        ratio: match (candidate.value, baseline.value) {
            (Some(c), Some(b)) if b != 0.0 => Some(c / b),
            _ => None,
        },
        judge: None,
        verdict: Verdict::Pass,
        note: None,
    };
    if baseline.verdict == Verdict::Inconclusive {
        out.verdict = Verdict::Inconclusive;
        out.note = Some(format!(
            "the baseline is no evidence: {}",
            baseline.note.as_deref().unwrap_or("no value")
        ));
        return out;
    }
    let mut failed = Vec::new();
    if let (Some(c), Some(b)) = (candidate.value, baseline.value) {
        if let Some(up) = spec.max_increase {
            let limit = b * (1.0 + up);
            if c > limit {
                failed.push(format!(
                    "{} is more than {} above the baseline's {} (limit {})",
                    unit.format(c),
                    Unit::Ratio.format(up),
                    unit.format(b),
                    unit.format(limit)
                ));
            }
        }
        if let Some(r) = spec.min_ratio {
            let limit = b * r;
            if c < limit {
                failed.push(format!(
                    "{} is less than {} of the baseline's {} (limit {})",
                    unit.format(c),
                    Unit::Ratio.format(r),
                    unit.format(b),
                    unit.format(limit)
                ));
            }
        }
    }
    let mut inconclusive = None;
    if let Some(judge) = &spec.judge {
        let values = |m: &Measurement| m.samples.iter().map(|s| s.value).collect::<Vec<_>>();
        let j = mann_whitney(&values(candidate), &values(baseline), judge);
        match j.verdict {
            Verdict::Fail => failed.push(format!("U test: {}", j.describe())),
            Verdict::Inconclusive => inconclusive = Some(format!("U test: {}", j.describe())),
            Verdict::Pass => {}
        }
        out.judge = Some(j);
    }
    if !failed.is_empty() {
        out.verdict = Verdict::Fail;
        out.note = Some(failed.join("; "));
    } else if let Some(n) = inconclusive {
        out.verdict = Verdict::Inconclusive;
        out.note = Some(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{measure, MeasurementKind};
    use crate::color::Timestamp;
    use crate::plan::AnalysisCheck;
    use crate::provider::{MetricAnswer, Sample};

    const UP: [f64; 10] = [12., 14., 15., 16., 18., 19., 21., 22., 24., 25.];
    const BASE: [f64; 10] = [10., 11., 12., 12., 13., 14., 14., 15., 16., 17.];
    const SAME: [f64; 10] = [10., 11., 12., 13., 14., 15., 16., 17., 18., 19.];

    fn judge(direction: Direction) -> MannWhitney {
        MannWhitney {
            direction,
            ..MannWhitney::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
    }

    /// Every U and p below is scipy 1.17.1's
    /// `mannwhitneyu(x, y, alternative=…, method="asymptotic")`.
    #[test]
    fn u_and_p_match_scipy_with_ties_and_continuity_correction() {
        type Case<'a> = (&'a [f64], &'a [f64], Direction, f64, f64);
        let cases: [Case; 9] = [
            (&UP, &BASE, Direction::Increase, 85.0, 0.004424740458083363),
            (&UP, &BASE, Direction::Decrease, 85.0, 0.996466744648699),
            (&UP, &BASE, Direction::Either, 85.0, 0.008849480916166726),
            (
                &[1., 1., 2., 2., 2., 3., 3., 3., 3., 4.],
                &[1., 1., 1., 2., 2., 2., 2., 3., 3., 3.],
                Direction::Increase,
                62.0,
                0.17984409295109333,
            ),
            (
                &[1., 1., 2., 2., 2., 3., 3., 3., 3., 4.],
                &[1., 1., 1., 2., 2., 2., 2., 3., 3., 3.],
                Direction::Either,
                62.0,
                0.35968818590218665,
            ),
            (
                &[50., 52., 48., 47., 45., 44., 43., 49., 46., 41.],
                &[100., 98., 102., 97., 99., 101., 103., 96., 104., 95.],
                Direction::Decrease,
                0.0,
                9.133589555477501e-05,
            ),
            (
                &[50., 52., 48., 47., 45., 44., 43., 49., 46., 41.],
                &[100., 98., 102., 97., 99., 101., 103., 96., 104., 95.],
                Direction::Either,
                0.0,
                0.00018267179110955002,
            ),
            (&SAME, &SAME, Direction::Increase, 50.0, 0.5151319787899796),
            (&SAME, &SAME, Direction::Either, 50.0, 1.0),
        ];
        for (x, y, d, u, p) in cases {
            let j = mann_whitney(x, y, &judge(d));
            assert_eq!(j.u, u, "{d:?} {x:?}");
            assert!(
                close(j.p.unwrap(), p),
                "{d:?}: p {} against scipy's {p}",
                j.p.unwrap()
            );
        }
    }

    #[test]
    fn a_significant_increase_of_38_percent_fails_and_reports_all_figures() {
        let j = mann_whitney(&UP, &BASE, &MannWhitney::default());
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!((j.n_candidate, j.n_baseline), (10, 10));
        assert!(close(j.effect.unwrap(), 1.3880597014925373));
        assert!(j
            .describe()
            .starts_with("U=85, p=0.0044, effect 1.3881x, n=10/10: fail"));
    }

    #[test]
    fn a_significant_change_smaller_than_the_minimum_effect_passes() {
        // A 3% shift that 40 samples make significant: below the 10% minimum.
        let base: Vec<f64> = (0..40).map(|i| 100.0 + f64::from(i % 5)).collect();
        let cand: Vec<f64> = base.iter().map(|v| v * 1.03).collect();
        let j = mann_whitney(&cand, &base, &MannWhitney::default());
        assert!(j.p.unwrap() < 0.05, "{}", j.describe());
        assert_eq!(j.verdict, Verdict::Pass);
        let strict = MannWhitney {
            min_effect: 0.02,
            ..MannWhitney::default()
        };
        assert_eq!(mann_whitney(&cand, &base, &strict).verdict, Verdict::Fail);
    }

    #[test]
    fn an_improvement_is_no_regression_for_a_one_sided_judge() {
        // Latency halves: a decrease, which an increase judge passes.
        let j = mann_whitney(&BASE.map(|v| v / 2.0), &BASE, &MannWhitney::default());
        assert_eq!(j.verdict, Verdict::Pass);
        // Throughput halves: a decrease judge fails it.
        let j = mann_whitney(&BASE.map(|v| v / 2.0), &BASE, &judge(Direction::Decrease));
        assert_eq!(j.verdict, Verdict::Fail);
    }

    #[test]
    fn too_few_samples_are_inconclusive_never_a_pass() {
        let j = mann_whitney(&UP[..7], &BASE, &MannWhitney::default());
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert_eq!(j.p, None);
        assert!(j
            .note
            .unwrap()
            .contains("7 candidate and 10 baseline, the candidate below the 8"));
        let j = mann_whitney(&UP, &[], &MannWhitney::default());
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert_eq!(j.effect, None);
    }

    #[test]
    fn all_ties_are_inconclusive_never_a_pass() {
        let j = mann_whitney(&[0.0; 20], &[0.0; 20], &MannWhitney::default());
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.note.unwrap().contains("same value"));
        assert_eq!(j.effect, Some(1.0));
    }

    #[test]
    fn a_zero_baseline_mean_gives_an_infinite_effect() {
        let j = mann_whitney(&[1.0; 10], &[0.0; 10], &MannWhitney::default());
        assert_eq!(j.effect, Some(f64::INFINITY));
        assert_eq!(j.verdict, Verdict::Fail);
    }

    fn meas(kind: MeasurementKind, vals: &[f64]) -> Measurement {
        let answer = if vals.is_empty() {
            MetricAnswer::NoData {
                reason: "no series".into(),
            }
        } else {
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
        };
        let check = AnalysisCheck {
            min_samples: Some(3),
            ..AnalysisCheck::p95_latency("q")
        };
        measure(
            &check,
            kind,
            "q".into(),
            Timestamp(0),
            Timestamp(60_000),
            &answer,
        )
    }

    fn spec(max_increase: Option<f64>, min_ratio: Option<f64>) -> Baseline {
        Baseline {
            of: BaselineOf::OldColor,
            max_increase,
            min_ratio,
            judge: None,
        }
    }

    #[test]
    fn p95_more_than_20_percent_above_the_old_color_fails() {
        // Mean 250 ms against 200 ms: 25% above, both under the 500 ms success.
        let cand = meas(MeasurementKind::Final, &[250.0; 5]);
        let base = meas(MeasurementKind::Baseline, &[200.0; 5]);
        let m = cand.against(&base, &spec(Some(0.2), None), Unit::Milliseconds);
        assert_eq!(m.verdict, Verdict::Fail);
        let b = m.baseline.as_ref().unwrap();
        assert_eq!(b.ratio, Some(1.25));
        assert!(b
            .note
            .as_deref()
            .unwrap()
            .contains("250 ms is more than 20% above the baseline's 200 ms (limit 240 ms)"));
        assert!(m
            .describe_in(Unit::Milliseconds)
            .contains("against old-color 200 ms (5 samples): 1.25x, fail"));
        // 15% above passes.
        let cand = meas(MeasurementKind::Final, &[230.0; 5]);
        let m = cand.against(&base, &spec(Some(0.2), None), Unit::Milliseconds);
        assert_eq!(m.verdict, Verdict::Pass);
    }

    #[test]
    fn throughput_under_half_the_baseline_fails() {
        let base = meas(MeasurementKind::Baseline, &[100.0; 5]);
        let low = meas(MeasurementKind::Final, &[40.0; 5]);
        let m = low.against(&base, &spec(None, Some(0.5)), Unit::Number);
        assert_eq!(m.verdict, Verdict::Fail);
        assert!(m
            .baseline
            .unwrap()
            .note
            .unwrap()
            .contains("less than 50% of the baseline's 100"));
        let ok = meas(MeasurementKind::Final, &[60.0; 5]);
        assert_eq!(
            ok.against(&base, &spec(None, Some(0.5)), Unit::Number)
                .verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_baseline_with_no_data_is_inconclusive_never_a_pass() {
        let cand = meas(MeasurementKind::Final, &[100.0; 5]);
        let base = meas(MeasurementKind::Baseline, &[]);
        let m = cand.against(&base, &spec(Some(0.2), None), Unit::Milliseconds);
        assert_eq!(m.verdict, Verdict::Inconclusive);
        assert!(m
            .baseline
            .unwrap()
            .note
            .unwrap()
            .contains("the baseline is no evidence: no data: no series"));
        // Too few baseline samples for the check: the same.
        let base = meas(MeasurementKind::Baseline, &[100.0, 100.0]);
        let m = meas(MeasurementKind::Final, &[100.0; 5]).against(
            &base,
            &spec(Some(0.2), None),
            Unit::Milliseconds,
        );
        assert_eq!(m.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn the_candidates_own_failure_stands_whatever_the_baseline() {
        // 600 ms fails "< 500" even though the old color is as slow.
        let cand = meas(MeasurementKind::Final, &[600.0; 5]);
        let base = meas(MeasurementKind::Baseline, &[600.0; 5]);
        let m = cand.against(&base, &spec(Some(0.2), None), Unit::Milliseconds);
        assert_eq!(m.verdict, Verdict::Fail);
        assert_eq!(m.baseline.unwrap().verdict, Verdict::Pass);
    }
}
