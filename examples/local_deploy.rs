//! bluegreen on one machine, end to end, in under a minute:
//!
//! 1. starts v1 of a demo app as the green color behind an in-process proxy,
//!    with load on the proxy that this example generates itself;
//! 2. deploys v2 to blue: smoke tests, a 20% canary, analysis, a short soak,
//!    green scaled down: **Succeeded**;
//! 3. deploys v3, which fails 10% of its requests, to green: the error-rate
//!    trigger fires and the automatic rollback puts all traffic back on blue
//!    within seconds: **RolledBack**, with the reason and the measurements.
//!
//! Each deployment's Markdown report is written to `target/local_deploy/`.
//!
//! ```text
//! cargo run --example local_deploy
//! ```
//!
//! The app instances are this same executable, started again with
//! `--bluegreen-demo-app` (see `bluegreen_local::demo`), so nothing but this
//! example has to be built, and nothing leaves the machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluegreen_core::machine::{Event, Outcome};
use bluegreen_core::{
    BlueGreen, Color, ComputeProvider, Plan, Release, TrafficRouter, TrafficSplit,
};
use bluegreen_local::demo::{self, DEMO_APP_ARG};
use bluegreen_local::{HttpCheck, Load, LocalCompute, LocalProxy};

/// Instances per color.
const REPLICAS: u32 = 2;

fn main() {
    demo::run_if_requested();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("local_deploy: {e}");
        std::process::exit(1);
    }
}

/// The plan of one deployment of the demo app: a 20% canary watched for 2 s,
/// then all traffic, 3 s of analysis and a 3 s soak. Error rate above 5% in
/// two measurements in a row (0.5 s apart) rolls back.
fn plan(version: &str, failure_rate: f64) -> Result<Plan, String> {
    let json = format!(
        r#"{{
  "service": "demo-app",
  "release": {{
    "version": "{version}",
    "image": "bluegreen-demo-app",
    "env": {{ "APP_VERSION": "{version}", "FAILURE_RATE": "{failure_rate}", "LATENCY_MS": "1" }}
  }},
  "replicas": {REPLICAS},
  "strategy": {{ "type": "canary", "percent": 20, "wait": "2s" }},
  "smoke_tests": ["health"],
  "analysis": [
    {{ "name": "error-rate", "query": "error_rate:{{color}}", "unit": "ratio",
       "success": "< 0.01", "interval": "500ms", "window": "1s", "min_samples": 1 }},
    {{ "name": "p95-latency", "query": "p95_ms:{{color}}", "unit": "milliseconds",
       "aggregation": "max", "success": "< 500", "interval": "500ms", "window": "1s" }}
  ],
  "rollback_triggers": [
    {{ "type": "metric", "check": "error-rate", "breach": "> 0.05", "consecutive": 2 }},
    {{ "type": "unhealthy-targets", "above": 0.5 }}
  ],
  "timing": {{ "analysis_window": "3s", "soak": "3s", "scale_down_delay": "0s", "drain": "500ms",
              "rollback_window": "1m", "poll_interval": "200ms" }},
  "deadlines": {{ "deploy": "30s", "smoke": "10s", "traffic": "10s", "scale_down": "30s" }}
}}"#
    );
    Plan::from_json(&json).map_err(|e| format!("plan for {version}: {e}"))
}

async fn run() -> Result<(), String> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let compute = LocalCompute::builder()
        .command([exe.to_string_lossy().into_owned(), DEMO_APP_ARG.to_string()])
        .health_interval(Duration::from_millis(200))
        .grace(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    println!("== bluegreen local deployment demo");
    println!("   instance logs: {}", compute.log_dir().display());

    // v1 on green, behind the proxy.
    let v1 = plan("1.0.0", 0.0)?.release;
    start_color(&compute, Color::Green, &v1).await?;
    let proxy = LocalProxy::builder(Arc::new(compute.clone()))
        .admin("127.0.0.1:0".parse().expect("an address"))
        .initial_split(TrafficSplit::all_on(Color::Green))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let admin = proxy.admin_addr().expect("started with an admin endpoint");
    println!("   v1.0.0 runs on green ({REPLICAS} instances)");
    println!(
        "   proxy: {}   metrics: http://{admin}/metrics   split: http://{admin}/split",
        proxy.url()
    );
    let load = Load::start(
        &format!("{}/", proxy.url()),
        4,
        Some(Duration::from_millis(1)),
    );
    println!("   load: 4 clients on keep-alive connections through the proxy\n");

    let out_dir = PathBuf::from("target/local_deploy");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;

    // v2 to blue: succeeds.
    println!("== deploying v2.0.0 (healthy) to blue");
    let (v2, _) = deploy(&compute, &proxy, plan("2.0.0", 0.0)?, &out_dir).await?;
    expect(
        matches!(v2, Outcome::Succeeded),
        "v2.0.0 should have succeeded",
    )?;

    // v3 to green: fails 10% of requests, rolls back.
    println!("\n== deploying v3.0.0 (fails 10% of requests) to green");
    let (v3, restored_in) = deploy(&compute, &proxy, plan("3.0.0", 0.1)?, &out_dir).await?;
    let Outcome::RolledBack { reason } = &v3 else {
        return Err(format!("v3.0.0 should have rolled back, got {}", v3.name()));
    };
    println!("\n== automatic rollback");
    println!("   reason: {}", reason.summary);
    println!("   measurements behind it:");
    for m in &reason.evidence {
        println!("     - {}", m.describe());
    }
    if let Some(d) = restored_in {
        println!("   traffic back on blue {d:.0?} after the first breaching measurement");
    }
    let split = proxy.current_split().await.map_err(|e| e.to_string())?;
    println!("   split now: {split}");
    expect(
        split == TrafficSplit::all_on(Color::Blue),
        "all traffic back on blue",
    )?;

    let tally = load.stop().await;
    println!("\n== load through the proxy, whole run");
    println!(
        "   {} requests: {} ok, {} app 5xx (v3's failures), {} failed in the proxy or the network",
        tally.total(),
        tally.ok,
        tally.app_errors,
        tally.failed()
    );
    println!("   per color: {:?}", tally.per_color);
    for c in Color::ALL {
        let f = proxy.metrics().total(c);
        println!(
            "   proxy metrics {c}: {} requests, {} 5xx, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            f.requests,
            f.errors,
            f.p50_ms.unwrap_or(0.0),
            f.p95_ms.unwrap_or(0.0),
            f.p99_ms.unwrap_or(0.0)
        );
    }
    compute.shutdown().await;
    expect(
        tally.failed() == 0,
        "no request failed in the proxy or the network",
    )?;
    println!("\n== done in {:.1?}", started.elapsed());
    Ok(())
}

async fn start_color(
    compute: &LocalCompute,
    color: Color,
    release: &Release,
) -> Result<(), String> {
    compute
        .prepare(color, release)
        .await
        .map_err(|e| e.to_string())?;
    compute
        .scale(color, REPLICAS)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = compute.status(color).await.map_err(|e| e.to_string())?;
        if s.is_stable_at(REPLICAS) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{color} did not become ready: {s:?}; logs in {}",
                compute.log_dir().display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one deployment with live progress; returns its outcome and, after a
/// rollback, the time from the first breaching measurement to the split
/// being back on the old color.
async fn deploy(
    compute: &LocalCompute,
    proxy: &LocalProxy,
    plan: Plan,
    out_dir: &std::path::Path,
) -> Result<(Outcome, Option<Duration>), String> {
    let version = plan.release.version.clone();
    let deployment = BlueGreen::builder(plan)
        .compute(Arc::new(compute.clone()))
        .router(Arc::new(proxy.clone()))
        .metrics(Arc::new(proxy.metrics()))
        .smoke_test(Arc::new(HttpCheck::new("health", "/health")))
        .build()
        .map_err(|e| e.to_string())?;
    let mut events = deployment.subscribe();
    let mut splits = proxy.split_changes();
    let t0 = Instant::now();
    let progress = tokio::spawn(async move {
        let mut first_breach: Option<Instant> = None;
        let mut old = None;
        while let Ok(e) = events.recv().await {
            let t = t0.elapsed().as_secs_f64();
            match e.event {
                Event::Stage { stage } => println!("  [{t:5.1}s] stage {}", stage.name()),
                Event::Colors { old: o, new } => {
                    old = Some(o);
                    println!("  [{t:5.1}s] {o} serves, deploying to {new}");
                }
                Event::TrafficConfirmed { split } => println!("  [{t:5.1}s] traffic: {split}"),
                Event::Measured { measurement } => {
                    if measurement.breach && first_breach.is_none() {
                        first_breach = Some(Instant::now());
                    }
                    println!("  [{t:5.1}s]   {}", measurement.describe());
                }
                Event::SmokeTests { results, .. } => {
                    for r in results {
                        let detail = r
                            .outcome
                            .as_ref()
                            .map(|o| {
                                format!(
                                    "{} ({})",
                                    if o.passed { "passed" } else { "FAILED" },
                                    o.detail
                                )
                            })
                            .or(r.error.as_ref().map(|e| e.message.clone()))
                            .unwrap_or_default();
                        println!("  [{t:5.1}s] smoke test {}: {detail}", r.name);
                    }
                }
                Event::RollbackStarted { reason } => {
                    println!("  [{t:5.1}s] ROLLBACK: {}", reason.summary)
                }
                Event::Finished { outcome, .. } => {
                    println!("  [{t:5.1}s] finished: {}", outcome.name());
                    break;
                }
                _ => {}
            }
        }
        (first_breach, old)
    });
    let report = deployment.run().await.map_err(|e| e.to_string())?;
    let (first_breach, old) = progress.await.map_err(|e| e.to_string())?;
    let mut restored_in = None;
    if let (Some(b), Some(old)) = (first_breach, old) {
        let (split, at) = *splits.borrow_and_update();
        if split == TrafficSplit::all_on(old) && at >= b {
            restored_in = Some(at - b);
        }
    }
    let path = out_dir.join(format!("report-{version}.md"));
    std::fs::write(&path, report.to_markdown()).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("  report: {}", path.display());
    let outcome = report
        .outcome
        .clone()
        .ok_or_else(|| format!("deployment of {version} has no outcome"))?;
    Ok((outcome, restored_in))
}

fn expect(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {what}"))
    }
}
