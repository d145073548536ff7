//! How long decoding the Datadog evidence answers takes: a logs aggregate
//! count and a page of 100 monitors (the page size read), in the shapes of
//! Datadog's API reference.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use bluegreen_datadog::logs::decode_count;
use bluegreen_datadog::monitors::decode_monitors;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let count = serde_json::json!({
        "data": {"buckets": [{"by": {}, "computes": {"c0": 1234}}]},
        "meta": {"elapsed": 132, "request_id": "abc", "status": "done"}
    })
    .to_string();
    c.bench_function("datadog logs aggregate count", |b| {
        b.iter(|| black_box(decode_count(black_box(count.as_bytes())).unwrap()))
    });
    let monitors: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            serde_json::json!({
                "id": 1000 + i, "name": format!("order-api monitor {i}"), "type": "query alert",
                "query": format!("avg(last_5m):sum:trace.http.request.errors{{service:order-api,shard:{i}}}.as_rate() > 0.05"),
                "message": "@pagerduty-order-api", "tags": ["service:order-api", "severity:critical"],
                "overall_state": if i % 10 == 0 { "Alert" } else { "OK" },
                "options": {"thresholds": {"critical": 0.05}, "notify_no_data": false}
            })
        })
        .collect();
    let page = serde_json::Value::Array(monitors).to_string();
    c.bench_function("datadog monitors page of 100", |b| {
        b.iter(|| black_box(decode_monitors(black_box(page.as_bytes())).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
