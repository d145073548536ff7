//! The whole reference deployment, simulated under paused time, with its
//! metrics answered by Datadog's v1 answers as recorded (decoded by this
//! crate's own decoder, as the client decodes every answer). A simulation
//! cannot make network calls: paused time would fire every timeout while a
//! socket waits, so the answers are replayed through `series::decode_v1`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::analysis::Verdict;
use bluegreen_core::testing::{reference_plan, simulate};
use bluegreen_core::{Color, MetricAnswer, MetricQuery, MetricsSource, Outcome, Result};
use bluegreen_datadog::series::decode_v1;

const ROLLUP_MS: u64 = 60_000;

/// Datadog answering v1 queries with 60 s rollups aligned to the minute:
/// every bucket that has ended holds `ended`, the bucket still open at the
/// window's end (there always is one) holds `open`.
struct RecordedDatadog {
    ended: fn(&str) -> f64,
    open: fn(&str) -> f64,
    open_points_served: AtomicU32,
}

impl RecordedDatadog {
    /// The response body, in the shape of Datadog's API reference.
    fn body(&self, q: &MetricQuery) -> String {
        let metric = if q.check == "error-rate" {
            "api.errors"
        } else {
            "api.response_time"
        };
        let mut points = Vec::new();
        let mut bucket = q.from.0 / ROLLUP_MS * ROLLUP_MS;
        while bucket <= q.to.0 {
            let still_open = bucket + ROLLUP_MS > q.to.0;
            let value = if still_open {
                self.open_points_served.fetch_add(1, Ordering::SeqCst);
                (self.open)(&q.check)
            } else {
                (self.ended)(&q.check)
            };
            points.push(serde_json::json!([bucket as f64, value]));
            bucket += ROLLUP_MS;
        }
        serde_json::json!({
            "status": "ok",
            "res_type": "time_series",
            "resp_version": 1,
            "query": q.query,
            "message": "",
            "from_date": q.from.0,
            "to_date": q.to.0,
            "group_by": [],
            "series": [{
                "metric": metric,
                "display_name": metric,
                "unit": null,
                "pointlist": points,
                "start": q.from.0,
                "end": q.to.0,
                "interval": ROLLUP_MS / 1000,
                "length": points.len(),
                "aggr": null,
                "scope": "color:blue,service:order-api",
                "expression": q.query,
                "tag_set": [],
                "query_index": 0
            }],
            "values": [],
            "times": []
        })
        .to_string()
    }
}

#[async_trait]
impl MetricsSource for RecordedDatadog {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        decode_v1(self.body(q).as_bytes(), q, Duration::ZERO)
    }
}

fn healthy(check: &str) -> f64 {
    if check == "error-rate" {
        0.004
    } else {
        180.0
    }
}

/// Far above both rollback thresholds (5% errors, p95 1000 ms).
fn alarming(check: &str) -> f64 {
    if check == "error-rate" {
        0.5
    } else {
        5000.0
    }
}

#[test]
fn an_incomplete_last_point_above_the_threshold_does_not_roll_back() {
    let datadog = Arc::new(RecordedDatadog {
        ended: healthy,
        open: alarming,
        open_points_served: AtomicU32::new(0),
    });
    let source = datadog.clone();
    let (report, fakes) = simulate(move |fakes| fakes.builder(reference_plan()).metrics(source));

    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );
    assert_eq!(fakes.world.split().percent(Color::Blue), 100);
    assert_eq!(fakes.world.desired(Color::Green), 0);
    assert_eq!(fakes.world.desired(Color::Blue), 3);

    // Every answer carried an alarming open bucket, and none of it was used.
    let served = datadog.open_points_served.load(Ordering::SeqCst) as usize;
    assert!(!report.measurements.is_empty());
    assert!(
        served >= report.measurements.len(),
        "{served} open points served"
    );
    for m in &report.measurements {
        // The engine filled the plan's template into Datadog's tag scope.
        assert!(
            m.query.contains("{service:order-api,color:blue}"),
            "{}",
            m.query
        );
        assert!(
            m.samples.iter().all(|s| s.value == healthy(&m.check)),
            "{}: used {:?}",
            m.check,
            m.samples
        );
        let v = m.value.expect("a value");
        assert!((v - healthy(&m.check)).abs() < 1e-9, "{}", m.describe());
        assert_eq!(m.verdict, Verdict::Pass, "{}", m.describe());
        assert!(!m.breach, "{}", m.describe());
    }
    println!(
        "measurement record:\n{}",
        serde_json::to_string_pretty(&report.measurements[0]).unwrap()
    );
}

#[test]
fn the_same_values_in_ended_buckets_do_roll_back() {
    let datadog = Arc::new(RecordedDatadog {
        ended: alarming,
        open: alarming,
        open_points_served: AtomicU32::new(0),
    });
    let (report, fakes) = simulate(move |fakes| fakes.builder(reference_plan()).metrics(datadog));
    match &report.outcome {
        Some(Outcome::RolledBack { reason }) => {
            assert!(
                reason.summary.contains("error-rate") || reason.summary.contains("p95-latency"),
                "{}",
                reason.summary
            );
            assert!(
                !reason.evidence.is_empty(),
                "the decision cites its measurements"
            );
            println!("rollback reason: {}", reason.summary);
        }
        other => panic!(
            "expected a rollback, got {other:?}\n{}",
            report.to_markdown()
        ),
    }
    assert_eq!(
        fakes.world.split().percent(Color::Green),
        100,
        "traffic back on green"
    );
    assert_eq!(fakes.world.desired(Color::Blue), 0);
}
