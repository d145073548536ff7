//! Engine benchmarks: one whole reference deployment simulated under paused
//! time (target: 1 ms median or less), and the state machine's transitions
//! per second, replaying the inputs of a recorded deployment.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::sync::Arc;

use bluegreen_core::journal::Record;
use bluegreen_core::machine::Machine;
use bluegreen_core::testing::{reference_plan, simulate, Fakes};
use bluegreen_core::Journal;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

fn full_deployment(c: &mut Criterion) {
    let mut g = c.benchmark_group("simulation");
    g.bench_function("reference deployment, 1h soak, succeeded", |b| {
        b.iter(|| {
            let (report, _) = simulate(|f| {
                healthy(f);
                f.builder(reference_plan())
            });
            assert!(report.outcome.is_some());
        })
    });
    g.bench_function(
        "reference deployment, error-rate breach, rolled back",
        |b| {
            b.iter(|| {
                let (report, _) = simulate(|f| {
                    f.metrics.constant("p95-latency", 180.0);
                    f.metrics.script("error-rate", |q, _| {
                        Some(if q.query.contains("color:blue") {
                            0.07
                        } else {
                            0.002
                        })
                    });
                    f.builder(reference_plan())
                });
                assert!(report.outcome.is_some());
            })
        },
    );
    g.finish();
}

fn transitions(c: &mut Criterion) {
    // Record one deployment's inputs, then replay them through a fresh machine.
    let (_, fakes) = simulate(|f| {
        healthy(f);
        f.builder(reference_plan())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entries = rt.block_on(fakes.journal.read("sim-1")).unwrap();
    let inputs: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::Step { input, .. } => Some((e.at, input.clone())),
            _ => None,
        })
        .collect();
    let plan = Arc::new(reference_plan());
    let mut g = c.benchmark_group("machine");
    g.throughput(Throughput::Elements(inputs.len() as u64));
    g.bench_function(
        format!("{} transitions of a full deployment", inputs.len()),
        |b| {
            b.iter(|| {
                let mut m = Machine::new(plan.clone(), "sim-1");
                for (at, input) in &inputs {
                    std::hint::black_box(m.handle(*at, input.clone()));
                }
                assert!(m.outcome().is_some());
            })
        },
    );
    g.finish();
}

criterion_group!(benches, full_deployment, transitions);
criterion_main!(benches);
