//! Property tests: the seven safety invariants of DESIGN.md, checked on random
//! fault schedules (errors, timeouts, hangs and lying read-backs on any call),
//! random metric scenarios, strategies and migrations. Each case runs a whole
//! simulated deployment under paused time and checks the world the fakes
//! recorded and the journal the driver wrote.
//!
//! `BLUEGREEN_PROPTEST_CASES` sets the number of schedules (default 10,000).
#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::time::Duration;

use bluegreen_core::journal::{Journal, Record};
use bluegreen_core::machine::{Action, Event, HoldReason, Stage};
use bluegreen_core::plan::{InconclusivePolicy, Plan, Strategy as Rollout};
use bluegreen_core::provider::MigrationPhase;
use bluegreen_core::testing::{
    reference_plan, simulate_with, Change, Fakes, Fault, OPERATIONS, SIMULATION_EPOCH,
};
use bluegreen_core::{Color, ErrorKind, Outcome, Report, TrafficSplit};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metrics {
    Healthy,
    ErrorBreach,
    LatencyBreach,
    /// Between the success threshold and the rollback trigger.
    Degraded,
    NoData,
    /// A breach that starts late, during the soak.
    LateBreach,
}

#[derive(Debug, Clone)]
struct Case {
    metrics: Metrics,
    strategy: u8,
    irreversible_expand: bool,
    inconclusive_rolls_back: bool,
    faults: Vec<(usize, u32, u8)>,
}

fn fault(kind: u8) -> Fault {
    match kind % 6 {
        0 => Fault::Error(ErrorKind::Other),
        1 | 2 => Fault::Temporary,
        3 => Fault::Timeout,
        4 => Fault::Hang,
        _ => Fault::WrongReadBack,
    }
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    (
        prop_oneof![
            Just(Metrics::Healthy),
            Just(Metrics::ErrorBreach),
            Just(Metrics::LatencyBreach),
            Just(Metrics::Degraded),
            Just(Metrics::NoData),
            Just(Metrics::LateBreach),
        ],
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((0..OPERATIONS.len(), 0u32..12, any::<u8>()), 0..6),
    )
        .prop_map(
            |(metrics, strategy, irreversible_expand, inconclusive_rolls_back, faults)| Case {
                metrics,
                strategy,
                irreversible_expand,
                inconclusive_rolls_back,
                faults,
            },
        )
}

fn plan_for(case: &Case) -> Plan {
    let mut plan = reference_plan();
    plan.strategy = match case.strategy {
        0 => Rollout::AllAtOnce,
        1 => Rollout::Canary {
            percent: 10,
            wait: Duration::from_secs(300),
        },
        _ => Rollout::Linear {
            step_percent: 50,
            step_wait: Duration::from_secs(120),
        },
    };
    if case.inconclusive_rolls_back {
        plan.on_inconclusive = InconclusivePolicy::Rollback;
    }
    plan
}

fn script(f: &Fakes, case: &Case) {
    let blue = |q: &bluegreen_core::MetricQuery| q.query.contains("color:blue");
    let late = SIMULATION_EPOCH.after(Duration::from_secs(40 * 60));
    match case.metrics {
        Metrics::Healthy => {
            f.metrics
                .constant("error-rate", 0.002)
                .constant("p95-latency", 150.0);
        }
        Metrics::ErrorBreach => {
            f.metrics.constant("p95-latency", 150.0);
            f.metrics.script("error-rate", move |q, _| {
                Some(if blue(q) { 0.2 } else { 0.001 })
            });
        }
        Metrics::LatencyBreach => {
            f.metrics.constant("error-rate", 0.002);
            f.metrics.script("p95-latency", move |q, _| {
                Some(if blue(q) { 2500.0 } else { 150.0 })
            });
        }
        Metrics::Degraded => {
            f.metrics.constant("p95-latency", 150.0);
            f.metrics.script("error-rate", move |q, _| {
                Some(if blue(q) { 0.03 } else { 0.001 })
            });
        }
        Metrics::NoData => {
            f.metrics
                .no_data("error-rate")
                .constant("p95-latency", 150.0);
        }
        Metrics::LateBreach => {
            f.metrics.constant("p95-latency", 150.0);
            f.metrics.script("error-rate", move |q, t| {
                Some(if blue(q) && t > late { 0.3 } else { 0.002 })
            });
        }
    }
    if case.irreversible_expand {
        f.world.lock().migrations[0].reversible = false;
    }
    for (op, call, kind) in &case.faults {
        f.faults.inject(OPERATIONS[*op], *call, fault(*kind));
    }
}

/// Replays the world's changes and checks invariants 1, 2 and 4 on them.
fn check_world(f: &Fakes, plan: &Plan, report: &Report) -> Result<(), String> {
    let w = f.world.lock();
    let settle = w.settle;
    let changes = w.changes.clone();
    drop(w);
    let (old, new) = (Color::Green, Color::Blue);
    let mut split = TrafficSplit::all_on(old);
    let mut desired: BTreeMap<Color, u32> = [(old, plan.replicas), (new, 0)].into();
    let mut scaled_at = BTreeMap::new();
    let mut smoke_passed: Vec<String> = Vec::new();
    let mut smoke_failed = false;
    let mut all_on_new_at = None;
    let mut contract_ran = false;
    for (at, change) in &changes {
        match change {
            Change::Scaled(c, n) => {
                // Invariant 2: never below serving capacity while holding weight.
                if *n < desired[c] && split.percent(*c) > 0 {
                    return Err(format!("{c} scaled to {n} while holding {split}"));
                }
                if *c == old && *n == 0 {
                    let since = all_on_new_at
                        .map(|t: tokio::time::Instant| at.duration_since(t))
                        .ok_or("old color scaled to zero before all traffic moved")?;
                    let needed = plan.timing.analysis_window
                        + plan.timing.soak
                        + plan.timing.scale_down_delay;
                    if since < needed {
                        return Err(format!(
                            "old color scaled to zero {since:?} after the cutover; analysis + soak + delay is {needed:?}"
                        ));
                    }
                }
                desired.insert(*c, *n);
                scaled_at.insert(*c, *at);
                if *c == new {
                    smoke_passed.clear();
                    smoke_failed = false;
                }
            }
            Change::Smoke(Some(c), name, passed) if *c == new => {
                if *passed {
                    smoke_passed.push(name.clone());
                } else {
                    smoke_failed = true;
                }
            }
            Change::Split(s) => {
                // Invariant 1: weight only to a stable, smoke-tested color.
                if s.percent(new) > 0 {
                    if desired[&new] != plan.replicas {
                        return Err(format!("{s} with {new} desired at {}", desired[&new]));
                    }
                    let since = scaled_at.get(&new).map(|t| at.duration_since(*t));
                    if since.is_none_or(|d| d < settle) {
                        return Err(format!("{s} before {new} was running ({since:?})"));
                    }
                    if smoke_failed || !plan.smoke_tests.iter().all(|t| smoke_passed.contains(t)) {
                        return Err(format!("{s} without passing smoke tests: {smoke_passed:?}"));
                    }
                }
                if s.percent(old) > 0 && desired[&old] == 0 {
                    return Err(format!("{s} to a scaled-down old color"));
                }
                split = *s;
                if split.percent(new) == 100 {
                    all_on_new_at.get_or_insert(*at);
                } else {
                    all_on_new_at = None;
                }
            }
            // Invariant 4: no revert while the new color holds traffic.
            Change::Reverted(v) if split.percent(new) > 0 => {
                return Err(format!("migration {v} reverted while {split}"));
            }
            Change::Migrated(v, MigrationPhase::Contract) => {
                if desired[&old] != 0 {
                    return Err(format!(
                        "contract migration {v} with the old color at {}",
                        desired[&old]
                    ));
                }
                contract_ran = true;
            }
            _ => {}
        }
    }
    if contract_ran && matches!(report.outcome, Some(Outcome::RolledBack { .. })) {
        return Err("rolled back after a contract migration".into());
    }
    Ok(())
}

/// Invariants 3 (traffic first), 5 (one terminal outcome, a consistent record)
/// and 7 (no promotion without evidence), from the journal.
fn check_journal(
    f: &Fakes,
    case: &Case,
    report: &Report,
    human_promoted: bool,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entries = rt
        .block_on(f.journal.read("sim-1"))
        .map_err(|e| e.to_string())?;
    if entries.len() != report.records {
        return Err("the report does not cover the journal".into());
    }
    let mut finished = 0;
    let mut rolling_back = false;
    let mut first_rollback_action: Option<Action> = None;
    let mut traffic_touched = false;
    for e in &entries {
        if let Record::Step {
            commands, events, ..
        } = &e.record
        {
            for ev in events {
                match ev {
                    Event::RollbackStarted { .. } => rolling_back = true,
                    Event::Finished { .. } => finished += 1,
                    _ => {}
                }
            }
            for c in commands {
                if matches!(c.action, Action::SetSplit { .. }) && !rolling_back {
                    traffic_touched = true;
                }
                if rolling_back && first_rollback_action.is_none() && c.action.is_mutating() {
                    first_rollback_action = Some(c.action.clone());
                }
            }
        }
    }
    if finished != 1 {
        return Err(format!("{finished} Finished events"));
    }
    let outcome = report.outcome.as_ref().ok_or("no outcome")?;
    if let Outcome::RolledBack { reason } | Outcome::Halted { reason } = outcome {
        if reason.summary.trim().is_empty() {
            return Err("an outcome without a reason".into());
        }
    }
    if rolling_back && traffic_touched {
        match &first_rollback_action {
            Some(Action::SetSplit { split }) if split.percent(Color::Green) == 100 => {}
            other => return Err(format!("rollback began with {other:?}, not the traffic")),
        }
    }
    if case.metrics == Metrics::NoData && !human_promoted && *outcome == Outcome::Succeeded {
        return Err("succeeded without evidence".into());
    }
    if matches!(
        case.metrics,
        Metrics::ErrorBreach | Metrics::LatencyBreach | Metrics::Degraded
    ) && *outcome == Outcome::Succeeded
    {
        return Err(format!("{:?} release succeeded", case.metrics));
    }
    let facts = report.facts.as_ref().ok_or("no recorded state")?;
    if let Outcome::RolledBack { .. } = outcome {
        if f.world.split() != TrafficSplit::all_on(Color::Green) {
            return Err(format!("rolled back but traffic is {}", f.world.split()));
        }
        if facts.traffic_touched
            && facts.confirmed_split != Some(TrafficSplit::all_on(Color::Green))
        {
            return Err("rolled back without a confirmed read-back".into());
        }
    }
    if *outcome == Outcome::Succeeded
        && (f.world.split() != TrafficSplit::all_on(Color::Blue)
            || f.world.desired(Color::Green) != 0
            || f.world.desired(Color::Blue) != 3)
    {
        return Err("succeeded without blue at 100% and 3, green at 0".into());
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), String> {
    let plan = plan_for(case);
    let mut promoted = false;
    let (report, fakes) = simulate_with(
        |f| {
            script(f, case);
            f.builder(plan.clone())
        },
        |ev, ctl| {
            // The human on call: aborts on anything inconclusive, and passes
            // any other hold (none in these plans) by promoting.
            if let Event::Stage {
                stage: Stage::Hold { reason, .. },
            } = ev
            {
                match reason {
                    HoldReason::Inconclusive { .. } => {
                        ctl.abort("inconclusive analysis");
                    }
                    HoldReason::Gate { .. } | HoldReason::Paused => {
                        promoted = true;
                        ctl.promote();
                    }
                    // These plans belong to no group.
                    HoldReason::Group { barrier } => {
                        ctl.send(bluegreen_core::Control::Proceed { barrier: *barrier });
                    }
                }
            }
        },
    );
    check_world(&fakes, &plan, &report)?;
    check_journal(&fakes, case, &report, promoted)
}

fn cases() -> u32 {
    std::env::var("BLUEGREEN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_seven_invariants_hold_on_every_fault_schedule(case in case()) {
        if let Err(violation) = run_case(&case) {
            prop_assert!(false, "{violation}\ncase: {case:?}");
        }
    }
}

#[test]
fn the_invariant_checker_catches_a_violation() {
    // A world in which traffic moved before the smoke tests: the checker must say so.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (f, plan) = rt.block_on(async {
        let f = Fakes::new();
        let plan = reference_plan();
        use bluegreen_core::{ComputeProvider, TrafficRouter};
        f.compute.scale(Color::Blue, 3).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        f.router
            .set_split(TrafficSplit::all_on(Color::Blue))
            .await
            .unwrap();
        (f, plan)
    });
    let err = check_world(&f, &plan, &Report::default()).unwrap_err();
    assert!(err.contains("without passing smoke tests"), "{err}");
}
