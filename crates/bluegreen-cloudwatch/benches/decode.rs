//! How long reading a CloudWatch answer takes, through the SDK's own RPC v2
//! CBOR deserializer and this crate's conversion: a 3-hour window at 60 s
//! periods (180 points) and a full 1440-point day, and DescribeAlarms with
//! 100 alarms. The HTTP client is in memory, so the figure is decode plus
//! the SDK's request pipeline, no network.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

#[path = "../tests/common/replay.rs"]
mod replay;

use bluegreen_cloudwatch::{CloudWatchAlarms, CloudWatchMetrics};
use bluegreen_core::{MetricQuery, MetricsSource, Timestamp};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use replay::Series;

const T0: i64 = 1_700_000_040;

fn q(query: &str, points: i64) -> MetricQuery {
    MetricQuery {
        check: "c".into(),
        query: query.into(),
        from: Timestamp(T0 as u64 * 1000),
        to: Timestamp((T0 + points * 60) as u64 * 1000),
        color: None,
        baseline: false,
    }
}

fn decode(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for points in [180i64, 1440] {
        let body = replay::metric_data(
            &[Series {
                id: "out",
                points: (0..points)
                    .map(|i| (T0 + i * 60, 0.001 * (i % 7) as f64))
                    .collect(),
                status: "Complete",
            }],
            None,
        );
        let (config, _) = replay::config(vec![("GetMetricData", vec![body])]);
        let source = CloudWatchMetrics::new(&config);
        let query = q(
            "alb-error-rate load_balancer=app/web/1 target_group=targetgroup/t/2",
            points,
        );
        c.bench_function(&format!("cloudwatch GetMetricData {points} points"), |b| {
            b.iter(|| black_box(rt.block_on(source.query(&query)).unwrap()))
        });
    }
    let names: Vec<String> = (0..100).map(|i| format!("api-{i:03}")).collect();
    let alarms: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i % 10 == 0 { "ALARM" } else { "OK" }))
        .collect();
    let (config, _) = replay::config(vec![("DescribeAlarms", vec![replay::alarms(&alarms)])]);
    let source = CloudWatchAlarms::new(&config);
    let query = q("alarms prefix=api-", 1);
    c.bench_function("cloudwatch DescribeAlarms 100 alarms", |b| {
        b.iter(|| black_box(rt.block_on(source.query_noted(&query)).unwrap()))
    });
}

criterion_group!(benches, decode);
criterion_main!(benches);
