//! How long decoding a Datadog answer takes: a 15-minute analysis window at
//! 10 s rollups (90 points) for 1 and for 20 series (`by {host}`).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]
use std::time::Duration;

use bluegreen_core::{MetricQuery, Timestamp};
use bluegreen_datadog::series::decode_v1;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const FROM: u64 = 1_700_000_000_000;

fn body(series: usize) -> (String, MetricQuery) {
    let to = FROM + 15 * 60_000 + 5_000;
    let s: Vec<serde_json::Value> = (0..series)
        .map(|h| {
            let points: Vec<serde_json::Value> = (0..91u64)
                .map(|i| {
                    let v = if i % 17 == 0 {
                        None
                    } else {
                        Some(0.001 * (i % 7) as f64)
                    };
                    serde_json::json!([(FROM + i * 10_000) as f64, v])
                })
                .collect();
            serde_json::json!({
                "metric": "api.errors", "pointlist": points, "interval": 10, "length": 91,
                "scope": format!("host:h{h}"), "expression": format!("sum:api.errors{{host:h{h}}}")
            })
        })
        .collect();
    let body =
        serde_json::json!({"status": "ok", "res_type": "time_series", "series": s}).to_string();
    let q = MetricQuery {
        check: "error-rate".into(),
        query: "sum:api.errors{*} by {host}".into(),
        from: Timestamp(FROM),
        to: Timestamp(to),
        color: None,
        baseline: false,
    };
    (body, q)
}

fn bench(c: &mut Criterion) {
    for n in [1, 20] {
        let (b, q) = body(n);
        c.bench_function(&format!("decode_v1 {n} series x 91 points"), |bench| {
            bench.iter(|| decode_v1(black_box(b.as_bytes()), &q, Duration::ZERO).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
