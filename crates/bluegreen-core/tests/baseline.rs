//! Checks relative to a baseline, simulated under paused time: the old
//! color over the same window, or the service before the deploy, with the
//! ratio conditions and the Mann–Whitney judge. The scripted metrics answer
//! by the color each query carries.
#![cfg(feature = "testing")]

use std::sync::{Arc, Mutex};

use bluegreen_core::analysis::{Measurement, MeasurementKind, Verdict};
use bluegreen_core::plan::{Baseline, BaselineOf, InconclusivePolicy, MannWhitney, Plan};
use bluegreen_core::provider::MetricQuery;
use bluegreen_core::testing::{reference_plan, simulate, Fakes};
use bluegreen_core::{Color, Outcome, Report, Timestamp, TrafficSplit};

/// The reference plan with a baseline on p95 latency.
fn with_p95_baseline(baseline: Baseline) -> Plan {
    let mut plan = reference_plan();
    let p95 = plan
        .analysis
        .iter_mut()
        .find(|c| c.name == "p95-latency")
        .expect("the reference plan checks p95");
    p95.baseline = Some(baseline);
    plan
}

fn old_color(max_increase: f64) -> Baseline {
    Baseline {
        of: BaselineOf::OldColor,
        max_increase: Some(max_increase),
        min_ratio: None,
        judge: None,
    }
}

/// Blue (the new color) answers `new`, green `old`, by the query's color;
/// every p95 query is recorded.
fn p95_by_color(
    f: &Fakes,
    new: impl Fn(Timestamp) -> Option<f64> + Send + Sync + 'static,
    old: impl Fn(Timestamp) -> Option<f64> + Send + Sync + 'static,
) -> Arc<Mutex<Vec<MetricQuery>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    f.metrics.constant("error-rate", 0.002);
    f.metrics.script("p95-latency", move |q, t| {
        log.lock().unwrap().push(q.clone());
        match q.color {
            Some(Color::Blue) => new(t),
            Some(Color::Green) => old(t),
            None => panic!("a query without its color: {q:?}"),
        }
    });
    seen
}

fn reason(report: &Report) -> String {
    match report.outcome.as_ref().expect("finished") {
        Outcome::RolledBack { reason } | Outcome::Halted { reason } => reason.summary.clone(),
        Outcome::Succeeded => panic!("expected a rollback, got success"),
    }
}

fn p95_finals(report: &Report) -> Vec<&Measurement> {
    report
        .measurements
        .iter()
        .filter(|m| m.check == "p95-latency" && m.kind == MeasurementKind::Final)
        .collect()
}

#[test]
fn p95_25_percent_above_the_old_colors_rolls_back_though_under_500_ms() {
    let mut seen = None;
    let (report, f) = simulate(|f| {
        seen = Some(p95_by_color(f, |_| Some(250.0), |_| Some(200.0)));
        f.builder(with_p95_baseline(old_color(0.2)))
    });
    let why = reason(&report);
    assert!(why.contains("analysis failed"), "{why}");
    assert!(
        why.contains("250 ms is more than 20% above the baseline's 200 ms (limit 240 ms)"),
        "{why}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
    // The baseline was the old color over the candidate's own window.
    let seen = seen.unwrap();
    let seen = seen.lock().unwrap();
    let base = seen.iter().find(|q| q.baseline).expect("a baseline query");
    assert_eq!(base.color, Some(Color::Green));
    assert!(base.query.contains("color:green"), "{}", base.query);
    let cand = seen
        .iter()
        .find(|q| !q.baseline && q.from == base.from && q.to == base.to)
        .expect("a candidate query over the same window");
    assert_eq!(cand.color, Some(Color::Blue));
    let m = p95_finals(&report)[0];
    assert_eq!(m.verdict, Verdict::Fail);
    assert_eq!(m.baseline.as_ref().unwrap().ratio, Some(1.25));
}

#[test]
fn p95_15_percent_above_the_old_colors_promotes() {
    let (report, _f) = simulate(|f| {
        p95_by_color(f, |_| Some(230.0), |_| Some(200.0));
        f.builder(with_p95_baseline(old_color(0.2)))
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    let finals = p95_finals(&report);
    assert!(!finals.is_empty());
    for m in finals {
        assert_eq!(m.verdict, Verdict::Pass);
        assert_eq!(m.baseline.as_ref().unwrap().value, Some(200.0));
    }
}

#[test]
fn an_old_color_with_no_data_is_inconclusive_and_never_promotes() {
    let (report, f) = simulate(|f| {
        p95_by_color(f, |_| Some(200.0), |_| None);
        let mut plan = with_p95_baseline(old_color(0.2));
        plan.on_inconclusive = InconclusivePolicy::Rollback;
        f.builder(plan)
    });
    let why = reason(&report);
    assert!(why.contains("analysis inconclusive"), "{why}");
    assert!(
        why.contains("the baseline is no evidence: no data"),
        "{why}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
}

#[test]
fn the_before_deploy_baseline_ends_when_the_deployment_started() {
    let mut seen = None;
    let (report, _f) = simulate(|f| {
        // Before the deployment the service answered 100 ms; the new color
        // answers 150 ms: 50% slower than before.
        seen = Some(p95_by_color(f, |_| Some(150.0), |_| Some(100.0)));
        f.builder(with_p95_baseline(Baseline {
            of: BaselineOf::BeforeDeploy,
            ..old_color(0.2)
        }))
    });
    assert!(reason(&report).contains("more than 20% above the baseline's 100 ms"));
    let seen = seen.unwrap();
    let seen = seen.lock().unwrap();
    let base = seen.iter().find(|q| q.baseline).expect("a baseline query");
    let cand = seen
        .iter()
        .find(|q| !q.baseline && q.window() == base.window());
    assert!(
        cand.is_some(),
        "a candidate window as long as the baseline's"
    );
    // The whole baseline window lies before the first traffic change.
    let first_shift = report
        .decisions
        .iter()
        .find(|d| d.text.contains("confirmed blue"))
        .expect("traffic moved")
        .at;
    assert!(base.to < first_shift, "{:?} >= {first_shift:?}", base.to);
    assert_eq!(base.color, Some(Color::Green));
}

/// Samples that wobble around `level` by up to ±10%, by the sample's time.
fn noisy(level: f64) -> impl Fn(Timestamp) -> Option<f64> + Send + Sync + 'static {
    move |t| Some(level * (0.9 + 0.2 * (((t.0 / 10_000) * 7919 % 101) as f64 / 100.0)))
}

#[test]
fn the_u_test_rolls_back_a_significant_40_percent_slowdown() {
    let (report, _f) = simulate(|f| {
        p95_by_color(f, noisy(280.0), noisy(200.0));
        f.builder(with_p95_baseline(Baseline {
            of: BaselineOf::OldColor,
            max_increase: None,
            min_ratio: None,
            judge: Some(MannWhitney::default()),
        }))
    });
    let why = reason(&report);
    assert!(why.contains("U test: U="), "{why}");
    let j = p95_finals(&report)[0]
        .baseline
        .as_ref()
        .unwrap()
        .judge
        .clone()
        .unwrap();
    assert_eq!(j.verdict, Verdict::Fail);
    assert!(j.p.unwrap() < 0.05, "{j:?}");
    assert!(j.effect.unwrap() > 1.3, "{j:?}");
    assert!(j.n_candidate >= 8 && j.n_baseline >= 8, "{j:?}");
}

#[test]
fn the_u_test_passes_the_same_distribution_on_both_colors() {
    let (report, _f) = simulate(|f| {
        p95_by_color(f, noisy(200.0), noisy(200.0));
        f.builder(with_p95_baseline(Baseline {
            of: BaselineOf::OldColor,
            max_increase: None,
            min_ratio: None,
            judge: Some(MannWhitney::default()),
        }))
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    for m in p95_finals(&report) {
        let j = m.baseline.as_ref().unwrap().judge.as_ref().unwrap();
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    }
}

#[test]
fn a_baseline_without_a_condition_is_refused_naming_the_field() {
    let plan = with_p95_baseline(Baseline {
        of: BaselineOf::OldColor,
        max_increase: None,
        min_ratio: None,
        judge: None,
    });
    let err = plan.validate().unwrap_err();
    assert_eq!(err.field, "analysis[1].baseline");
    let plan = with_p95_baseline(Baseline {
        judge: Some(MannWhitney {
            significance: 1.5,
            ..MannWhitney::default()
        }),
        ..old_color(0.2)
    });
    let err = plan.validate().unwrap_err();
    assert_eq!(err.field, "analysis[1].baseline.judge.significance");
}
