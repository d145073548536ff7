//! Scale: 1,000 concurrent simulated deployments of the reference procedure
//! (one-hour soak included) in one process under paused time, on the core
//! fakes. Prints the wall time, the outcomes and the peak RSS.
//!
//! ```text
//! cargo run --release -p bluegreen-cli --example scale [-- N]
//! ```

use std::time::Instant;

use bluegreen_core::testing::{reference_plan, Fakes};
use bluegreen_core::Outcome;

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let (succeeded, other) = rt.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let fakes = Fakes::new();
            fakes
                .metrics
                .constant("error-rate", 0.002)
                .constant("p95-latency", 180.0);
            let dep = fakes
                .builder(reference_plan())
                .deployment_id(format!("sim-{i}"))
                .build()
                .expect("a valid simulation");
            tasks.push(tokio::spawn(async move {
                let r = dep.run().await;
                drop(fakes);
                r
            }));
        }
        let (mut ok, mut other) = (0, 0);
        for t in tasks {
            match t.await.expect("a deployment task").map(|r| r.outcome) {
                Ok(Some(Outcome::Succeeded)) => ok += 1,
                _ => other += 1,
            }
        }
        (ok, other)
    });
    let wall = started.elapsed();
    println!(
        "{n} concurrent deployments: {succeeded} succeeded, {other} other; wall {wall:.2?}; peak RSS {:.1} MB",
        peak_rss_mb().unwrap_or(f64::NAN)
    );
}
