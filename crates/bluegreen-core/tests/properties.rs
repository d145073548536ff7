//! Property tests: the safety invariants of DESIGN.md, checked on random
//! fault schedules (errors, timeouts, hangs, lying and lagging read-backs,
//! lost replies, a new color that comes up on the old release, the old
//! color scaled from outside (killed, or moved by its autoscaler) at any
//! call), random metric scenarios, strategies and migrations. Each case runs a whole
//! simulated deployment under paused time and checks the world the fakes
//! recorded and the journal the driver wrote.
//!
//! `BLUEGREEN_PROPTEST_CASES` sets the number of schedules (default 50,000).
#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::journal::{Journal, Record};
use bluegreen_core::machine::{Action, Event, HoldReason, Stage};
use bluegreen_core::plan::{InconclusivePolicy, Plan, Strategy as Rollout};
use bluegreen_core::provider::MigrationPhase;
use bluegreen_core::testing::{
    reference_plan, simulate_with, Change, FakeSmokeTest, Fakes, Fault, OPERATIONS,
    SIMULATION_EPOCH,
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
    match kind % 10 {
        0 => Fault::Error(ErrorKind::Other),
        1 | 2 => Fault::Temporary,
        3 => Fault::Timeout,
        4 => Fault::Hang,
        5 => Fault::WrongReadBack,
        6 => Fault::LostReply,
        7 => Fault::OldRelease,
        // The old color killed from outside, or its autoscaler moving it.
        8 => Fault::ExternalScale {
            color: Color::Green,
            count: 0,
        },
        _ => Fault::ExternalScale {
            color: Color::Green,
            count: 5,
        },
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

/// The longest one split call can be in flight in the fakes' driver: 3
/// attempts of up to the 30 s call timeout each (a hang or a timeout), 200
/// and 400 ms apart, with margin. The engine reads the old color and issues
/// the split back to it in the same instant, so a kill landing within this
/// window before the split took effect came after the engine's read.
const RACE: Duration = Duration::from_secs(91);

/// Replays the world's changes and checks invariants 1, 2 and 4 on them.
fn check_world(f: &Fakes, plan: &Plan, report: &Report) -> Result<(), String> {
    let w = f.world.lock();
    let settle = w.settle;
    let changes = w.changes.clone();
    drop(w);
    let (old, new) = (Color::Green, Color::Blue);
    let facts = report.facts.clone().unwrap_or_default();
    // The capacities the engine chose; the plan's count until it chose.
    let capacity = facts.capacity.unwrap_or(plan.replicas);
    let old_capacity = facts.old_capacity.unwrap_or(plan.replicas);
    let mut split = TrafficSplit::all_on(old);
    let mut desired: BTreeMap<Color, u32> = [(old, plan.replicas), (new, 0)].into();
    let mut release_ok = false;
    // The old color's count as the deployer last set it (outside changes
    // after its scale-down are not the deployer's doing).
    let mut requested_old = plan.replicas;
    let mut scaled_at = BTreeMap::new();
    // When the old color came back to its capacity after dropping below it.
    let mut old_back_at: Option<tokio::time::Instant> = None;
    // When something outside last scaled the old color: a kill after the
    // deployer read the old color back and before its split landed (within
    // the split call's own retries, RACE) is a race no deployer can see;
    // what it must do then is checked by the outcome.
    let mut old_external_at: Option<tokio::time::Instant> = None;
    let mut smoke_passed: Vec<String> = Vec::new();
    let mut smoke_failed = false;
    let mut all_on_new_at = None;
    let mut contract_ran = false;
    for (at, change) in &changes {
        match change {
            Change::External(c, n) => {
                if *c == old {
                    old_external_at = Some(*at);
                    requested_old = requested_old.min(*n);
                    if desired[c] < old_capacity && *n >= old_capacity {
                        old_back_at = Some(*at);
                    }
                }
                desired.insert(*c, *n);
                scaled_at.insert(*c, *at);
            }
            Change::Scaled(c, n) => {
                if *c == old {
                    requested_old = *n;
                    if desired[c] < old_capacity && *n >= old_capacity {
                        old_back_at = Some(*at);
                    }
                }
                // Invariant 2: never below serving capacity while holding weight.
                let serving = if *c == old { old_capacity } else { capacity };
                if *n < desired[c].min(serving) && split.percent(*c) > 0 {
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
            // What the new color runs, as the world (not the engine) knows it.
            Change::Running(c, v) if *c == new => {
                release_ok = v.as_deref() == Some(plan.release.version.as_str());
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
                    if desired[&new] < capacity {
                        return Err(format!(
                            "{s} with {new} desired at {} of its capacity {capacity}",
                            desired[&new]
                        ));
                    }
                    if !release_ok {
                        return Err(format!("{s} to a new color not on the release"));
                    }
                    let since = scaled_at.get(&new).map(|t| at.duration_since(*t));
                    if since.is_none_or(|d| d < settle) {
                        return Err(format!("{s} before {new} was running ({since:?})"));
                    }
                    if smoke_failed || !plan.smoke_tests.iter().all(|t| smoke_passed.contains(t)) {
                        return Err(format!("{s} without passing smoke tests: {smoke_passed:?}"));
                    }
                }
                // Invariant 1 the other way: weight moves back to the old
                // color only while it is at its capacity and settled.
                if s.percent(old) > split.percent(old)
                    && old_external_at.is_none_or(|t| at.duration_since(t) > RACE)
                {
                    if desired[&old] < old_capacity {
                        return Err(format!(
                            "{s} to the old color at {} of its capacity {old_capacity}",
                            desired[&old]
                        ));
                    }
                    let since = old_back_at.map(|t| at.duration_since(t));
                    if since.is_some_and(|d| d < settle) {
                        return Err(format!("{s} before {old} was running again ({since:?})"));
                    }
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
                if requested_old != 0 {
                    return Err(format!(
                        "contract migration {v} with the old color at {requested_old}"
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
            // The old color brought back to capacity before traffic returns.
            Some(Action::Scale {
                color: Color::Green,
                count,
            }) if *count > 0 => {}
            // A halt, with autoscaling restored where the traffic is.
            Some(Action::RestoreAutoscaling { .. })
                if matches!(report.outcome, Some(Outcome::Halted { .. })) => {}
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
    let capacity = facts.capacity.unwrap_or(3);
    // Green's count as the deployer left it, unless something outside moved it after.
    let green_moved_after = f.world.changes().iter().rev().find_map(|c| match c {
        Change::External(Color::Green, _) => Some(true),
        Change::Scaled(Color::Green, _) => Some(false),
        _ => None,
    }) == Some(true);
    if *outcome == Outcome::Succeeded
        && (f.world.split() != TrafficSplit::all_on(Color::Blue)
            || (f.world.desired(Color::Green) != 0 && !green_moved_after)
            || f.world.desired(Color::Blue) != capacity
            || f.world.lock().colors[&Color::Blue].version.as_deref() != Some("2.5.0"))
    {
        return Err(format!(
            "succeeded without blue on 2.5.0 at 100% and {capacity}, green at 0"
        ));
    }
    // Invariant 12: whatever the end, the color serving all traffic can scale.
    if let Some(live) = f.world.split().live_color() {
        let a = f.world.lock().colors[&live].autoscaling;
        let suspended = a.scale_in_suspended || a.scale_out_suspended || a.scheduled_suspended;
        // Only a halt whose restore itself failed may leave it suspended.
        let excused = matches!(outcome, Outcome::Halted { .. })
            && !facts.autoscaling_restored_on.contains(&live);
        if suspended && !excused {
            return Err(format!(
                "{live} serves all traffic with autoscaling suspended ({outcome:?})"
            ));
        }
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), String> {
    let (report, fakes, promoted) = simulate_case(case);
    check_world(&fakes, &plan_for(case), &report)?;
    check_journal(&fakes, case, &report, promoted)
}

/// Runs `case` with the human on call; also says whether they promoted.
fn simulate_case(case: &Case) -> (Report, Fakes, bool) {
    let plan = plan_for(case);
    let mut promoted = false;
    let (report, fakes) = simulate_with(
        |f| {
            script(f, case);
            // The smoke tests answer what the fake world shows (a color with
            // no running or no healthy instance fails them), so a color
            // killed behind the engine's back fails its tests as it would.
            let mut b = f.builder(plan.clone());
            for name in plan
                .smoke_tests
                .iter()
                .chain(&plan.preflight.staging_checks)
            {
                b = b.smoke_test(Arc::new(FakeSmokeTest::healthy(
                    name,
                    f.world.clone(),
                    f.faults.clone(),
                )));
            }
            b
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
    (report, fakes, promoted)
}

fn cases() -> u32 {
    std::env::var("BLUEGREEN_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
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
        f.compute.prepare(Color::Blue, &plan.release).await.unwrap();
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

/// Runs `case`, in which the old color is killed after the engine read it
/// at its capacity: the rollback must still end with all traffic on it at
/// 3 (its smoke tests failed, it was read again and scaled back), the new
/// color at 0, and every invariant of the world held.
fn old_color_scaled_back_after_its_smoke_tests_failed(case: &Case) {
    let (report, f, _) = simulate_case(case);
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{:?}",
        report.outcome
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Green), 3);
    assert_eq!(f.world.desired(Color::Blue), 0);
    assert!(report
        .decisions
        .iter()
        .any(|d| d.text.contains("failed after traffic returned")));
    check_world(&f, &plan_for(case), &report).unwrap();
}

/// Found by the schedules: during the soak the breach starts the rollback,
/// the old color is read back at its capacity, something outside kills it in
/// that same instant, and the split back to it is retried once (a temporary
/// error), so the traffic lands on a color at 0. Before, the old color's
/// smoke tests then failed and the deployment halted there: every request
/// failing until a human came. Now the failed smoke tests make the engine
/// read the old color again, scale it back to its capacity, and finish the
/// rollback.
#[test]
fn the_old_color_killed_while_the_split_back_to_it_is_retried_is_scaled_back_and_the_rollback_finishes(
) {
    let case = Case {
        metrics: Metrics::LateBreach,
        strategy: 1,
        irreversible_expand: false,
        inconclusive_rolls_back: false,
        faults: vec![(20, 3, 108), (7, 2, 31)],
    };
    old_color_scaled_back_after_its_smoke_tests_failed(&case);
}

/// Found by the schedules (CI): an error-rate breach starts the rollback,
/// the engine reads the old color at its capacity and sends the split back
/// to it; in that same instant something outside kills the old color, and
/// the split call hangs for its 30 s timeout before its retry lands. The
/// traffic lands on a color at 0, which no deployer could have seen: its
/// smoke tests then fail, the engine reads it again, scales it back to its
/// capacity and finishes the rollback with all traffic on it at 3.
#[test]
fn the_old_color_killed_while_the_split_back_to_it_hangs_is_scaled_back_and_the_rollback_finishes()
{
    let case = Case {
        metrics: Metrics::ErrorBreach,
        strategy: 0,
        irreversible_expand: false,
        inconclusive_rolls_back: false,
        faults: vec![(7, 1, 14), (20, 2, 18)],
    };
    old_color_scaled_back_after_its_smoke_tests_failed(&case);
}

/// Found by the schedules (CI): the split to 100% on the new color fails
/// once (a temporary error) and is retried; in that instant the health
/// trigger starts the rollback, whose split back to the old color landed
/// first. The forward call's retry then landed last: all traffic on the new
/// color, which the rollback scaled to 0 after reverting the migration. Now
/// the rollback's mutating calls wait until the abandoned call returned.
#[test]
fn a_forward_split_retried_as_the_rollback_starts_never_lands_after_the_rollbacks_split() {
    let case = Case {
        metrics: Metrics::Healthy,
        strategy: 1,
        irreversible_expand: false,
        inconclusive_rolls_back: false,
        faults: vec![(8, 10, 155), (7, 1, 11)],
    };
    let (report, f, _) = simulate_case(&case);
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{:?}",
        report.outcome
    );
    let splits: Vec<TrafficSplit> = f
        .world
        .changes()
        .into_iter()
        .filter_map(|c| match c {
            Change::Split(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(
        splits.last(),
        Some(&TrafficSplit::all_on(Color::Green)),
        "{splits:?}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
    check_world(&f, &plan_for(&case), &report).unwrap();
}
