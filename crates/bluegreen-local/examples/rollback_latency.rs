//! Rollback latency: from the first breaching measurement to 100% of traffic
//! on the old color, with a 100 ms analysis interval. Deploys a release that
//! fails every request to the idle color a few times under load and prints
//! each latency and their median.
//!
//! ```text
//! cargo run --release -p bluegreen-local --example rollback_latency
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::{
    BlueGreen, Color, ComputeProvider, MetricAnswer, MetricQuery, MetricsSource, Outcome, Plan,
    TrafficSplit,
};
use bluegreen_local::demo::{self, DEMO_APP_ARG};
use bluegreen_local::{HttpCheck, Load, LocalCompute, LocalProxy};

const RUNS: usize = 7;
const BREACH: f64 = 0.05;

/// Remembers when an answer first breached the rollback condition.
struct Stopwatch {
    inner: Arc<dyn MetricsSource>,
    first_breach: Mutex<Option<Instant>>,
}

#[async_trait]
impl MetricsSource for Stopwatch {
    async fn query(&self, q: &MetricQuery) -> bluegreen_core::Result<MetricAnswer> {
        let a = self.inner.query(q).await?;
        if let MetricAnswer::Samples { samples } = &a {
            if samples.iter().any(|s| s.value > BREACH) {
                self.first_breach
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
        }
        Ok(a)
    }
}

fn plan(version: &str) -> Plan {
    Plan::from_json(&format!(
        r#"{{
  "service": "demo-app",
  "release": {{ "version": "{version}", "image": "demo",
                "env": {{ "APP_VERSION": "{version}", "FAILURE_RATE": "1" }} }},
  "replicas": 1,
  "strategy": {{ "type": "canary", "percent": 20, "wait": "60s" }},
  "analysis": [
    {{ "name": "error-rate", "query": "error_rate:{{color}}", "unit": "ratio",
       "success": "< 0.01", "interval": "100ms", "window": "100ms", "min_samples": 1 }}
  ],
  "rollback_triggers": [
    {{ "type": "metric", "check": "error-rate", "breach": "> {BREACH}", "consecutive": 1 }}
  ],
  "timing": {{ "analysis_window": "1s", "soak": "1s", "poll_interval": "50ms", "drain": "100ms" }}
}}"#
    ))
    .expect("a valid plan")
}

fn main() {
    demo::run_if_requested();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let exe = std::env::current_exe().unwrap();
    let compute = LocalCompute::builder()
        .command([exe.to_string_lossy().into_owned(), DEMO_APP_ARG.to_string()])
        .health_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut v1 = plan("1.0.0").release;
    v1.env.insert("FAILURE_RATE".into(), "0".into());
    compute.prepare(Color::Green, &v1).await.unwrap();
    compute.scale(Color::Green, 1).await.unwrap();
    while !compute.status(Color::Green).await.unwrap().is_stable_at(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .unwrap();
    let load = Load::start(
        &format!("{}/", proxy.url()),
        4,
        Some(Duration::from_millis(1)),
    );
    let mut latencies = Vec::new();
    let mut end_to_end = Vec::new();
    for run in 0..RUNS {
        let stopwatch = Arc::new(Stopwatch {
            inner: Arc::new(proxy.metrics()),
            first_breach: Mutex::new(None),
        });
        let mut splits = proxy.split_changes();
        let mut watcher = proxy.split_changes();
        let canary_at = tokio::spawn(async move {
            // The moment the failing color first got traffic.
            loop {
                if watcher.changed().await.is_err() {
                    return None;
                }
                let (split, at) = *watcher.borrow_and_update();
                if split.percent(Color::Blue) > 0 {
                    return Some(at);
                }
            }
        });
        let report = BlueGreen::builder(plan(&format!("2.0.{run}")))
            .compute(Arc::new(compute.clone()))
            .router(Arc::new(proxy.clone()))
            .metrics(stopwatch.clone())
            .smoke_test(Arc::new(HttpCheck::new("health", "/health")))
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert!(
            matches!(report.outcome, Some(Outcome::RolledBack { .. })),
            "{}",
            report.to_markdown()
        );
        let (split, at) = *splits.borrow_and_update();
        assert_eq!(split, TrafficSplit::all_on(Color::Green));
        let breach = stopwatch
            .first_breach
            .lock()
            .unwrap()
            .expect("a breach was measured");
        let d = at.saturating_duration_since(breach);
        let canary = canary_at.await.unwrap().expect("the canary got traffic");
        let e2e = at.saturating_duration_since(canary);
        println!(
            "run {run}: first breaching measurement -> 100% on green in {d:.1?}; \
             failing color first got traffic -> 100% on green in {e2e:.1?}"
        );
        latencies.push(d);
        end_to_end.push(e2e);
    }
    latencies.sort();
    println!(
        "rollback latency over {RUNS} runs (100 ms analysis interval): min {:.1?}, median {:.1?}, max {:.1?}",
        latencies[0],
        latencies[RUNS / 2],
        latencies[RUNS - 1]
    );
    end_to_end.sort();
    println!(
        "from the failing color's first traffic: min {:.1?}, median {:.1?}, max {:.1?}",
        end_to_end[0],
        end_to_end[RUNS / 2],
        end_to_end[RUNS - 1]
    );
    let tally = load.stop().await;
    println!(
        "load: {} requests, {} failed in the proxy or network",
        tally.total(),
        tally.failed()
    );
    compute.shutdown().await;
}
