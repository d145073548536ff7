//! The core conformance suites against real child processes and real HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::testing::conformance::{self, Patience};
use bluegreen_core::{Color, MetricQuery, Timestamp, TrafficRouter, TrafficSplit};
use bluegreen_local::LocalProxy;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_compute_passes_the_compute_conformance_suite_on_both_colors() {
    let compute = demo_compute();
    let patience = Patience {
        timeout: Duration::from_secs(30),
        poll: Duration::from_millis(50),
    };
    for color in Color::ALL {
        conformance::compute(&compute, color, &release("1.0.0", 0.0), patience).await;
        assert!(
            compute.instances(color).is_empty(),
            "{color} left instances behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_proxy_passes_the_router_conformance_suite() {
    let compute = demo_compute();
    deploy(&compute, Color::Blue, &release("1.0.0", 0.0), 1).await;
    deploy(&compute, Color::Green, &release("2.0.0", 0.0), 1).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .start()
        .await
        .unwrap();
    conformance::router(&proxy).await;
    assert_eq!(
        proxy.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );
    let h = proxy.target_health(Color::Green).await.unwrap();
    assert_eq!((h.healthy, h.total), (1, 1), "green's instance is healthy");
    compute.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_metrics_pass_the_metrics_conformance_suite_after_real_traffic() {
    let compute = demo_compute();
    deploy(&compute, Color::Green, &release("1.0.0", 0.0), 1).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .unwrap();
    let from = Timestamp::from_system_time(std::time::SystemTime::now());
    let client = client();
    for _ in 0..20 {
        let (status, color, _) = get(&client, &format!("{}/", proxy.url())).await.unwrap();
        assert_eq!((status, color.as_deref()), (200, Some("green")));
    }
    let to =
        Timestamp::from_system_time(std::time::SystemTime::now()).after(Duration::from_millis(1));
    let q = |query: &str| MetricQuery {
        check: "conformance".into(),
        query: query.into(),
        from,
        to,
        color: None,
        baseline: false,
    };
    conformance::metrics(
        &proxy.metrics(),
        &q("error_rate:green"),
        &q("error_rate:blue"),
    )
    .await;
    let figures = proxy.metrics().figures_between(Color::Green, from, to);
    assert_eq!(figures.requests, 20);
    assert_eq!(figures.errors, 0);
    compute.shutdown().await;
}
