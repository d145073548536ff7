//! Scale: N concurrent simulated deployments (default 1,000) of the reference
//! procedure, one-hour soak included, in one process under paused time, on
//! the core fakes, each with its own in-memory journal. Prints the wall
//! time, the outcomes, the journal records kept and the peak RSS.
//!
//! ```text
//! cargo bench --bench scale [-- N] [--plain]
//! ```
//!
//! The journals compact (`MemoryJournal::compacting`), as a process running
//! many deployments would set them; `--plain` keeps records as they are
//! (`MemoryJournal::new`, the fakes' default).

use std::sync::Arc;
use std::time::Instant;

use bluegreen_core::testing::{reference_plan, Fakes};
use bluegreen_core::{MemoryJournal, Outcome};

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; the first number is N.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let plain = std::env::args().any(|a| a == "--plain");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let baseline = peak_rss_mb().unwrap_or(f64::NAN);
    let started = Instant::now();
    let (succeeded, other, records) = rt.block_on(async {
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
                .journal(if plain {
                    Arc::new(MemoryJournal::new())
                } else {
                    Arc::new(MemoryJournal::compacting())
                })
                .build()
                .expect("a valid simulation");
            tasks.push(tokio::spawn(async move {
                let r = dep.run().await;
                // The fakes (and the journal) live until the deployment ends.
                drop(fakes);
                r
            }));
        }
        let (mut ok, mut other, mut records) = (0, 0, 0);
        for t in tasks {
            match t.await.expect("a deployment task") {
                Ok(r) => {
                    records += r.records;
                    if r.outcome == Some(Outcome::Succeeded) {
                        ok += 1
                    } else {
                        other += 1
                    }
                }
                Err(_) => other += 1,
            }
        }
        (ok, other, records)
    });
    let wall = started.elapsed();
    let peak = peak_rss_mb().unwrap_or(f64::NAN);
    println!(
        "{n} concurrent deployments ({} journals): {succeeded} succeeded, {other} other; {records} journal records; wall {wall:.2?}; peak RSS {peak:.1} MB (process before: {baseline:.1} MB)",
        if plain { "plain" } else { "compacting" }
    );
}
