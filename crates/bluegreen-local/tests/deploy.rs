//! Whole deployments with the core driver against real processes, the real
//! proxy and its measurements.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::{
    BlueGreen, Color, ComputeProvider, Outcome, Plan, TrafficRouter, TrafficSplit,
};
use bluegreen_local::{HttpCheck, Load, LocalCompute, LocalProxy};
use common::*;

/// A quick plan: 20% canary for 1 s, 1 s analysis, 1 s soak; error rate above
/// 5% twice in a row rolls back; the deploy phase may take `deploy`.
fn plan(version: &str, env: &[(&str, &str)], deploy: &str) -> Plan {
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    Plan::from_json(&format!(
        r#"{{
  "service": "demo-app",
  "release": {{ "version": "{version}", "image": "bluegreen-demo-app",
                "env": {{ "APP_VERSION": "{version}" {} {} }} }},
  "replicas": 2,
  "strategy": {{ "type": "canary", "percent": 20, "wait": "1s" }},
  "smoke_tests": ["health"],
  "analysis": [
    {{ "name": "error-rate", "query": "error_rate:{{color}}", "unit": "ratio",
       "success": "< 0.01", "interval": "250ms", "window": "1s", "min_samples": 1 }}
  ],
  "rollback_triggers": [
    {{ "type": "metric", "check": "error-rate", "breach": "> 0.05", "consecutive": 2 }}
  ],
  "timing": {{ "analysis_window": "1s", "soak": "1s", "poll_interval": "100ms", "drain": "200ms" }},
  "deadlines": {{ "deploy": "{deploy}" }}
}}"#,
        if env.is_empty() { "" } else { "," },
        env.join(", ")
    ))
    .expect("a valid plan")
}

async fn setup() -> (LocalCompute, LocalProxy) {
    let compute = demo_compute();
    deploy(&compute, Color::Green, &release("1.0.0", 0.0), 2).await;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .unwrap();
    (compute, proxy)
}

async fn run(plan: Plan, compute: &LocalCompute, proxy: &LocalProxy) -> bluegreen_core::Report {
    BlueGreen::builder(plan)
        .compute(Arc::new(compute.clone()))
        .router(Arc::new(proxy.clone()))
        .metrics(Arc::new(proxy.metrics()))
        .smoke_test(Arc::new(HttpCheck::new("health", "/health")))
        .build()
        .unwrap()
        .run()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_release_succeeds_and_a_release_failing_10_percent_rolls_back() {
    let (compute, proxy) = setup().await;
    let load = Load::start(
        &format!("{}/", proxy.url()),
        4,
        Some(Duration::from_millis(1)),
    );

    let report = run(plan("2.0.0", &[], "30s"), &compute, &proxy).await;
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        proxy.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );
    assert_eq!(
        compute
            .status(Color::Blue)
            .await
            .unwrap()
            .version
            .as_deref(),
        Some("2.0.0")
    );
    assert!(
        compute.instances(Color::Green).is_empty(),
        "old color scaled to zero"
    );

    let report = run(
        plan("3.0.0", &[("FAILURE_RATE", "0.1")], "30s"),
        &compute,
        &proxy,
    )
    .await;
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("expected a rollback: {}", report.to_markdown());
    };
    // The trigger (two breaches in a row) or the canary step's evaluation,
    // whichever comes first: both are the error rate of the new color.
    assert!(reason.summary.contains("error-rate"), "{}", reason.summary);
    assert!(!reason.evidence.is_empty(), "{}", reason.summary);
    assert!(
        reason
            .evidence
            .iter()
            .all(|m| m.query == "error_rate:green" && m.value.is_some_and(|v| v > 0.05)),
        "{:?}",
        reason.evidence
    );
    assert_eq!(
        proxy.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );
    assert!(
        compute.instances(Color::Green).is_empty(),
        "the failed color scaled to zero"
    );
    assert_eq!(compute.status(Color::Blue).await.unwrap().running, 2);

    let tally = load.stop().await;
    assert_eq!(tally.failed(), 0, "{:?}", tally.failures);
    assert!(
        tally.app_errors > 0,
        "v3's own failures were seen: {tally:?}"
    );
    compute.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_that_never_passes_ends_at_the_deploy_deadline_and_rolls_back() {
    let (compute, proxy) = setup().await;
    let report = run(
        plan("2.0.0", &[("HEALTH_FAIL", "1")], "2s"),
        &compute,
        &proxy,
    )
    .await;
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("expected a rollback: {}", report.to_markdown());
    };
    assert!(reason.summary.contains("deadline"), "{}", reason.summary);
    assert_eq!(
        proxy.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Green)
    );
    assert!(
        compute.instances(Color::Blue).is_empty(),
        "nothing left running on blue"
    );
    assert_eq!(
        compute.status(Color::Green).await.unwrap().running,
        2,
        "green untouched"
    );
    compute.shutdown().await;
}
