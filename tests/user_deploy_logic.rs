//! How a platform team unit-tests its own deploy logic: a plan built by their
//! code, run against bluegreen's fakes (whole deployments in virtual time) and
//! against mockall mocks (exact expectations on one provider).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluegreen::machine::{Event, HoldReason, Stage};
use bluegreen::plan::{AnalysisCheck, Condition, Strategy};
use bluegreen::testing::{reference_plan, simulate, simulate_with};
use bluegreen::{Color, MetricAnswer, MockMetricsSource, Outcome, Plan, TrafficSplit};

/// "Our" deploy policy: the reference procedure with a 10% canary watched for
/// ten minutes, and a stricter latency budget for the checkout service.
fn our_plan(service: &str, version: &str) -> Plan {
    let mut plan = reference_plan();
    plan.service = service.into();
    plan.release.version = version.into();
    plan.release.image = format!("{service}:{version}");
    plan.strategy = Strategy::Canary {
        percent: 10,
        wait: Duration::from_secs(600),
    };
    if service == "checkout" {
        plan.analysis[1] = AnalysisCheck {
            success: Condition::lt(300.0),
            ..AnalysisCheck::p95_latency("p95:api.response_time{service:{service},color:{color}}")
        };
    }
    plan
}

#[test]
fn with_the_fakes_our_canary_promotes_a_good_release() {
    let (report, fakes) = simulate(|f| {
        f.metrics
            .constant("error-rate", 0.001)
            .constant("p95-latency", 120.0);
        f.builder(our_plan("order-api", "2.5.0"))
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert_eq!(fakes.world.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(fakes.world.desired(Color::Green), 0);
    assert!(report
        .decisions
        .iter()
        .any(|d| d.text == "read-back confirmed blue 10% / green 90%"));
}

#[test]
fn with_the_fakes_our_stricter_checkout_budget_stops_the_canary() {
    // 400 ms passes the reference's 500 ms but not checkout's 300 ms.
    let (report, fakes) = simulate(|f| {
        f.metrics
            .constant("error-rate", 0.001)
            .constant("p95-latency", 400.0);
        f.builder(our_plan("checkout", "7.1.0"))
    });
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("expected a rollback, got {:?}", report.outcome);
    };
    assert!(
        reason.summary.contains("traffic step 1 (10%)"),
        "{}",
        reason.summary
    );
    assert!(
        reason.summary.contains("p95-latency = 400"),
        "{}",
        reason.summary
    );
    assert_eq!(fakes.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(fakes.world.desired(Color::Blue), 0);
}

#[test]
fn with_a_mock_metrics_source_no_data_never_promotes_and_the_queries_name_the_new_color() {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    let mut metrics = MockMetricsSource::new();
    metrics.expect_query().returning(move |q| {
        seen.lock().unwrap().push(q.query.clone());
        Ok(MetricAnswer::NoData {
            reason: "the agent is down".into(),
        })
    });
    let mut held = None;
    let (report, fakes) = simulate_with(
        |f| {
            f.builder(our_plan("order-api", "2.5.0"))
                .metrics(Arc::new(metrics))
        },
        |ev, control| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Inconclusive { detail },
                        ..
                    },
            } = ev
            {
                held = Some(detail.clone());
                control.abort("no metrics, no promotion");
            }
        },
    );
    let held = held.expect("the deployment waited for a human");
    assert!(held.contains("no data: the agent is down"), "{held}");
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    assert_eq!(fakes.world.split(), TrafficSplit::all_on(Color::Green));
    let queries = queries.lock().unwrap();
    assert!(!queries.is_empty());
    assert!(
        queries
            .iter()
            .all(|q| q.contains("service:order-api,color:blue")),
        "{queries:?}"
    );
}
