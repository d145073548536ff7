//! CloudWatch metrics and alarms, replayed through the SDK's deserializer
//! (moto 5.2.5 does not speak the RPC v2 CBOR protocol; see common/replay.rs).

mod common;

use bluegreen_cloudwatch::{CloudWatchAlarms, CloudWatchMetrics};
use bluegreen_core::testing::conformance;
use bluegreen_core::{ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Timestamp};
use common::replay::{self, Series};

/// A multiple of 60 s: 2023-11-14T22:14:00Z.
const T0: i64 = 1_699_999_980 + 60;

fn q(check: &str, query: &str, from: i64, to: i64) -> MetricQuery {
    MetricQuery {
        check: check.into(),
        query: query.into(),
        from: Timestamp(from as u64 * 1000),
        to: Timestamp(to as u64 * 1000),
        color: None,
        baseline: false,
    }
}

const ERROR_RATE: &str =
    "alb-error-rate load_balancer=app/web/1 target_group=targetgroup/api-green/2";

fn values(a: &MetricAnswer) -> Vec<(u64, f64)> {
    match a {
        MetricAnswer::Samples { samples } => {
            samples.iter().map(|s| (s.at.0 / 1000, s.value)).collect()
        }
        MetricAnswer::NoData { reason } => panic!("no data: {reason}"),
    }
}

#[tokio::test]
async fn the_alb_error_rate_keeps_whole_periods_in_order_and_drops_a_point_past_the_window() {
    // CloudWatch's metric math answers the ratio per period; a point at the
    // window's last boundary (incomplete period) must not be used.
    let body = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0 + 120, 0.02), (T0, 0.0), (T0 + 60, 0.5), (T0 + 300, 0.9)],
            status: "Complete",
        }],
        None,
    );
    let (config, seen) = replay::config(vec![("GetMetricData", vec![body])]);
    let source = CloudWatchMetrics::new(&config);
    let a = source
        .query(&q("error-rate", ERROR_RATE, T0, T0 + 300 + 30))
        .await
        .unwrap();
    assert_eq!(
        values(&a),
        [
            (T0 as u64, 0.0),
            (T0 as u64 + 60, 0.5),
            (T0 as u64 + 120, 0.02)
        ]
    );
    assert_eq!(seen.count("GetMetricData"), 1);
    // The request carries the metric math and both metrics.
    let sent = &seen.0.lock().unwrap()["GetMetricData"][0];
    let text = String::from_utf8_lossy(sent);
    assert!(text.contains("IF(r > 0, FILL(e, 0) / r)"), "{text}");
    assert!(
        text.contains("HTTPCode_Target_5XX_Count") && text.contains("RequestCount"),
        "{text}"
    );
}

#[tokio::test]
async fn a_period_without_requests_is_no_data_never_zero() {
    // IF(r > 0, …) leaves such periods without a point: the answer is empty.
    let body = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![],
            status: "Complete",
        }],
        None,
    );
    let (config, _) = replay::config(vec![("GetMetricData", vec![body])]);
    let a = CloudWatchMetrics::new(&config)
        .query(&q("error-rate", ERROR_RATE, T0, T0 + 300))
        .await
        .unwrap();
    let MetricAnswer::NoData { reason } = a else {
        panic!("{a:?}")
    };
    assert!(reason.contains("\"error-rate\""), "{reason}");
    assert!(
        reason.contains("HTTPCode_Target_5XX_Count / RequestCount of targetgroup/api-green/2"),
        "{reason}"
    );
}

#[tokio::test]
async fn p95_target_response_time_is_read_in_milliseconds() {
    let body = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0, 0.25), (T0 + 60, 0.4)],
            status: "Complete",
        }],
        None,
    );
    let (config, _) = replay::config(vec![("GetMetricData", vec![body])]);
    let a = CloudWatchMetrics::new(&config)
        .query(&q(
            "p95",
            "alb-p95-ms load_balancer=app/web/1 target_group=targetgroup/api-green/2",
            T0,
            T0 + 120,
        ))
        .await
        .unwrap();
    assert_eq!(values(&a), [(T0 as u64, 250.0), (T0 as u64 + 60, 400.0)]);
}

#[tokio::test]
async fn a_partial_answer_is_read_to_its_last_page() {
    let first = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0, 10.0)],
            status: "PartialData",
        }],
        Some("t1"),
    );
    let second = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0 + 60, 20.0)],
            status: "Complete",
        }],
        None,
    );
    let (config, seen) = replay::config(vec![("GetMetricData", vec![first, second])]);
    let a = CloudWatchMetrics::new(&config)
        .query(&q(
            "cpu",
            "ecs-cpu cluster=prod service=api-green",
            T0,
            T0 + 120,
        ))
        .await
        .unwrap();
    assert_eq!(values(&a), [(T0 as u64, 10.0), (T0 as u64 + 60, 20.0)]);
    assert_eq!(seen.count("GetMetricData"), 2);
}

#[tokio::test]
async fn an_internal_error_of_the_expression_is_an_error_naming_the_check_never_a_pass() {
    let body = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0, 0.0)],
            status: "InternalError",
        }],
        None,
    );
    let (config, _) = replay::config(vec![("GetMetricData", vec![body])]);
    let e = CloudWatchMetrics::new(&config)
        .query(&q("error-rate", ERROR_RATE, T0, T0 + 120))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.message().starts_with("check \"error-rate\""), "{e}");
}

#[tokio::test]
async fn metrics_pass_the_conformance_suite_on_replayed_answers() {
    let with = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![(T0, 41.0), (T0 + 60, 43.0)],
            status: "Complete",
        }],
        None,
    );
    let without = replay::metric_data(
        &[Series {
            id: "out",
            points: vec![],
            status: "Complete",
        }],
        None,
    );
    // The suite asks the query with data twice, then the one without twice.
    let (config, _) = replay::config(vec![("GetMetricData", vec![with.clone(), with, without])]);
    let source = CloudWatchMetrics::new(&config);
    let report = conformance::check_metrics(
        &source,
        &q(
            "cpu",
            "ecs-cpu cluster=prod service=api-green",
            T0,
            T0 + 120,
        ),
        &q(
            "cpu",
            "metric namespace=AWS/Nope name=Nothing stat=Sum",
            T0,
            T0 + 120,
        ),
        &conformance::Capabilities::all(),
    )
    .await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn alarms_in_alarm_are_counted_and_named() {
    let body = replay::alarms(&[
        ("api-5xx", "ALARM"),
        ("api-latency", "OK"),
        ("api-cpu", "ALARM"),
    ]);
    let (config, _) = replay::config(vec![("DescribeAlarms", vec![body])]);
    let n = CloudWatchAlarms::new(&config)
        .query_noted(&q("alerts", "alarms prefix=api-", T0, T0 + 60))
        .await
        .unwrap();
    assert_eq!(values(&n.answer), [(T0 as u64 + 60, 2.0)]);
    assert_eq!(n.note.as_deref(), Some("in ALARM: api-5xx, api-cpu"));
}

#[tokio::test]
async fn alarms_that_match_nothing_are_no_data_naming_the_check() {
    let (config, _) = replay::config(vec![("DescribeAlarms", vec![replay::alarms(&[])])]);
    let a = CloudWatchAlarms::new(&config)
        .query(&q("alerts", "alarms names=\"api-5xx\"", T0, T0 + 60))
        .await
        .unwrap();
    let MetricAnswer::NoData { reason } = a else {
        panic!("{a:?}")
    };
    assert!(
        reason.contains("\"alerts\"") && reason.contains("no alarm named api-5xx"),
        "{reason}"
    );
}

#[tokio::test]
async fn alarms_pass_the_conformance_suite_on_replayed_answers() {
    let with = replay::alarms(&[("api-5xx", "OK")]);
    let without = replay::alarms(&[]);
    let (config, _) = replay::config(vec![("DescribeAlarms", vec![with.clone(), with, without])]);
    let report = conformance::check_metrics(
        &CloudWatchAlarms::new(&config),
        &q("alerts", "alarms names=api-5xx", T0, T0 + 60),
        &q("alerts", "alarms names=nope", T0, T0 + 60),
        &conformance::Capabilities::all(),
    )
    .await;
    assert!(report.passed(), "{report}");
}

#[test]
fn an_alarm_in_alarm_rolls_the_deployment_back_and_the_reason_names_it() {
    use bluegreen_core::plan::{Aggregation, AnalysisCheck, Condition, RollbackTrigger};
    use bluegreen_core::testing::{reference_plan, simulate};
    use bluegreen_core::Outcome;
    use std::sync::Arc;

    let (config, _) = replay::config(vec![(
        "DescribeAlarms",
        vec![replay::alarms(&[
            ("order-api-5xx", "ALARM"),
            ("order-api-latency", "OK"),
        ])],
    )]);
    let alarms = Arc::new(CloudWatchAlarms::new(&config));
    let (report, _fakes) = simulate(|f| {
        f.metrics
            .constant("error-rate", 0.001)
            .constant("p95-latency", 120.0);
        let mut plan = reference_plan();
        plan.analysis.push(AnalysisCheck {
            source: Some("alarms".into()),
            min_samples: Some(1),
            aggregation: Aggregation::Max,
            ..AnalysisCheck::new(
                "critical-alerts",
                "alarms names=\"order-api-5xx,order-api-latency\"",
                Condition::lt(1.0),
            )
        });
        plan.rollback_triggers.push(RollbackTrigger::Metric {
            check: "critical-alerts".into(),
            breach: Condition::gt(0.0),
            for_duration: None,
            consecutive: Some(1),
        });
        f.builder(plan).metrics_named("alarms", alarms.clone())
    });
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("expected a rollback, got {:?}", report.outcome);
    };
    assert!(
        reason.summary.contains("critical-alerts > 0"),
        "{}",
        reason.summary
    );
    assert!(
        reason.summary.contains("in ALARM: order-api-5xx"),
        "{}",
        reason.summary
    );
    assert!(
        !reason.summary.contains("order-api-latency"),
        "{}",
        reason.summary
    );
}
