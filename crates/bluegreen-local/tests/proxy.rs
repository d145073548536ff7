//! The proxy's switch semantics, its admin endpoint and instance logs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::{Color, TrafficRouter, TrafficSplit};
use bluegreen_local::LocalProxy;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_the_switch_finishes_on_the_backend_that_started_it() {
    let compute = demo_compute();
    deploy(&compute, Color::Blue, &release("1.0.0", 0.0), 1).await;
    deploy(&compute, Color::Green, &release("2.0.0", 0.0), 1).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .start()
        .await
        .unwrap();
    let url = proxy.url();
    let slow = tokio::spawn({
        let url = url.clone();
        async move { get(&client(), &format!("{url}/slow?ms=600")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap();
    let c = client();
    let (_, color, body) = get(&c, &format!("{url}/")).await.unwrap();
    assert_eq!(
        color.as_deref(),
        Some("green"),
        "a new request uses the new split"
    );
    assert!(body.contains("2.0.0"), "{body}");
    let (status, color, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, color.as_deref()), (200, Some("blue")));
    assert!(
        body.contains("\"version\":\"1.0.0\""),
        "finished on blue: {body}"
    );
    compute.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_is_exact_per_hundred_requests_on_one_keep_alive_connection() {
    let compute = demo_compute();
    deploy(&compute, Color::Blue, &release("1.0.0", 0.0), 2).await;
    deploy(&compute, Color::Green, &release("2.0.0", 0.0), 2).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::with_percent(Color::Green, 30))
        .start()
        .await
        .unwrap();
    let c = client();
    let mut green = 0;
    for _ in 0..200 {
        let (_, color, _) = get(&c, &format!("{}/", proxy.url())).await.unwrap();
        green += u32::from(color.as_deref() == Some("green"));
    }
    assert_eq!(
        green, 60,
        "30% of 200 requests on one connection went to green"
    );
    compute.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_prometheus_text_and_the_split() {
    let compute = demo_compute();
    let mut failing = release("3.0.0", 1.0);
    failing.env.insert("LATENCY_MS".into(), "5".into());
    deploy(&compute, Color::Blue, &failing, 1).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .admin("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let c = client();
    for _ in 0..10 {
        let (status, _, _) = get(&c, &format!("{}/", proxy.url())).await.unwrap();
        assert_eq!(status, 500, "the app fails every request");
    }
    let admin = format!("http://{}", proxy.admin_addr().unwrap());
    let (status, _, text) = get(&c, &format!("{admin}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "bluegreen_proxy_requests_total{color=\"blue\"} 10",
        "bluegreen_proxy_responses_5xx_total{color=\"blue\"} 10",
        "bluegreen_proxy_requests_total{color=\"green\"} 0",
        "bluegreen_proxy_request_duration_seconds_count{color=\"blue\"} 10",
        "bluegreen_proxy_traffic_weight_percent{color=\"blue\"} 100",
        "bluegreen_proxy_latency_ms{color=\"blue\",quantile=\"0.99\"}",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let (_, _, split) = get(&c, &format!("{admin}/split")).await.unwrap();
    assert_eq!(split.trim(), "{\"blue\":100,\"green\":0}");
    // Each instance's output is in its own log file.
    let inst = &compute.instances(Color::Blue)[0];
    let log = std::fs::read_to_string(&inst.log).unwrap();
    assert!(
        log.contains(&format!("listening on 127.0.0.1:{}", inst.port)),
        "{log}"
    );
    compute.shutdown().await;
}
