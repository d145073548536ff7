//! Verify, don't trust: each test sets up one way reality disagrees with what
//! the engine was told (a color on the wrong release, an autoscaler that
//! moved, an old color killed from outside, a lost reply, a hold nobody
//! ends, too little evidence) and asserts the traffic split, each color's
//! count and the recorded reason.
#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::time::Duration;

use bluegreen_core::machine::{Event, Stage};
use bluegreen_core::plan::{CapacityPolicy, HoldTimeoutPolicy, Strategy};
use bluegreen_core::provider::MigrationPhase;
use bluegreen_core::testing::{
    reference_plan, simulate, simulate_with, Change, Fakes, Fault, World, SIMULATION_EPOCH,
};
use bluegreen_core::{AutoscalingState, Color, Outcome, Report, Severity, TrafficSplit};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

fn reason(report: &Report) -> String {
    match report.outcome.as_ref().expect("finished") {
        Outcome::RolledBack { reason } | Outcome::Halted { reason } => reason.summary.clone(),
        Outcome::Succeeded => panic!("expected a rollback or halt, got success"),
    }
}

/// The virtual time of the first change matching `pred`.
fn when(world: &World, pred: impl Fn(&Change) -> bool) -> tokio::time::Instant {
    world
        .lock()
        .changes
        .iter()
        .find(|(_, c)| pred(c))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("change not found in {:#?}", world.changes()))
}

fn found(world: &World, pred: impl Fn(&Change) -> bool) -> bool {
    world.changes().iter().any(pred)
}

fn as_found() -> AutoscalingState {
    AutoscalingState {
        registered: true,
        ..AutoscalingState::default()
    }
}

/// Error rate of blue (the new color) goes to 30% 40 minutes in, during the soak.
fn late_breach(f: &Fakes) {
    let late = SIMULATION_EPOCH.after(Duration::from_secs(40 * 60));
    f.metrics.constant("p95-latency", 150.0);
    f.metrics.script("error-rate", move |q, t| {
        Some(if q.query.contains("color:blue") && t > late {
            0.3
        } else {
            0.002
        })
    });
}

/// Runs the reference plan scripted by `script`, and calls `at_soak` on the
/// world when the soak begins: something outside acting mid-deployment.
fn simulate_with_soak_event(
    script: impl FnOnce(&Fakes),
    at_soak: impl Fn(&World),
) -> (Report, Fakes) {
    let world: RefCell<Option<World>> = RefCell::new(None);
    simulate_with(
        |f| {
            script(f);
            *world.borrow_mut() = Some(f.world.clone());
            f.builder(reference_plan())
        },
        |ev, _| {
            if let Event::Stage {
                stage: Stage::Soak { .. },
            } = ev
            {
                at_soak(world.borrow().as_ref().unwrap());
            }
        },
    )
}

// ------------------------------------------------- 1. the release it runs --

#[test]
fn a_new_color_stable_on_the_old_version_rolls_back_before_any_traffic_and_runs_no_contract() {
    // ECS's circuit breaker rolled the new color back to its old task
    // definition: running == desired, COMPLETED, but version 2.4.0.
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.inject("compute.scale", 0, Fault::OldRelease);
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{why}"
    );
    assert!(
        why.contains(
            "expected version 2.5.0 (rev:blue:2.5.0), found version 2.4.0 (rev:blue:2.4.0)"
        ),
        "{why}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert!(!found(&f.world, |c| matches!(c, Change::Split(_))));
    assert_eq!(f.world.desired(Color::Green), 3);
    assert_eq!(f.world.desired(Color::Blue), 0);
    assert!(!found(&f.world, |c| matches!(
        c,
        Change::Migrated(_, MigrationPhase::Contract)
    )));
}

#[test]
fn a_new_color_that_drifts_off_the_release_during_the_soak_is_caught_before_the_old_color_scales_down(
) {
    let (report, f) = simulate_with_soak_event(healthy, |w| {
        // Something redeploys blue with the old task definition.
        let mut s = w.lock();
        let blue = s.colors.get_mut(&Color::Blue).unwrap();
        blue.version = Some("2.4.0".into());
        blue.release_id = Some("rev:blue:2.4.0".into());
    });
    let why = reason(&report);
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{why}"
    );
    assert!(why.contains("before scaling the old color down"), "{why}");
    assert!(why.contains("found version 2.4.0"), "{why}");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Green), 3);
    assert!(!found(&f.world, |c| *c == Change::Scaled(Color::Green, 0)));
    assert!(!found(&f.world, |c| matches!(
        c,
        Change::Migrated(_, MigrationPhase::Contract)
    )));
}

// ------------------------------------------------------- 2. its capacity --

/// The autoscaler scales green out from 3 to 5 just before it is suspended
/// (after the preflight read it at 3).
fn autoscaler_moves_green_to_5(f: &Fakes) {
    f.faults.inject(
        "compute.autoscaling_state",
        0,
        Fault::ExternalScale {
            color: Color::Green,
            count: 5,
        },
    );
}

#[test]
fn autoscaling_holding_the_old_color_at_5_gives_the_new_color_5_not_the_plans_3() {
    let (report, f) = simulate(|f| {
        healthy(f);
        autoscaler_moves_green_to_5(f);
        f.builder(reference_plan())
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert!(found(&f.world, |c| *c == Change::Scaled(Color::Blue, 5)));
    assert!(!found(&f.world, |c| *c == Change::Scaled(Color::Blue, 3)));
    assert_eq!(f.world.desired(Color::Blue), 5);
    let facts = report.facts.as_ref().unwrap();
    assert_eq!(facts.capacity, Some(5));
    assert_eq!(facts.old_capacity, Some(5));
    assert!(
        report.decisions.iter().any(|d| d.text.contains(
            "the new color runs 5 (the larger of the plan's 3 and the old color's 5 desired"
        )),
        "{:#?}",
        report.decisions
    );
}

#[test]
fn a_plan_that_fixes_its_capacity_keeps_it_and_says_so() {
    let (report, f) = simulate(|f| {
        healthy(f);
        autoscaler_moves_green_to_5(f);
        let mut plan = reference_plan();
        plan.capacity = CapacityPolicy::Fixed;
        f.builder(plan)
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert_eq!(f.world.desired(Color::Blue), 3);
    assert!(report.decisions.iter().any(|d| d
        .text
        .contains("runs 3, fixed by the plan (the old color has 5 desired)")));
}

// ------------------------------------- 3. rollback to a color that serves --

#[test]
fn the_old_colors_tasks_killed_during_the_soak_are_scaled_back_before_traffic_returns() {
    let (report, f) = simulate_with_soak_event(late_breach, |w| w.external_scale(Color::Green, 0));
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{}",
        reason(&report)
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Green), 3);
    assert_eq!(f.world.desired(Color::Blue), 0);
    let scaled_back = when(&f.world, |c| *c == Change::Scaled(Color::Green, 3));
    let traffic_back = when(&f.world, |c| {
        *c == Change::Split(TrafficSplit::all_on(Color::Green))
    });
    // Green takes the world's 30 s to run again; traffic waits for it.
    assert!(
        traffic_back.duration_since(scaled_back) >= Duration::from_secs(30),
        "traffic returned {:?} after the scale-up",
        traffic_back.duration_since(scaled_back)
    );
    assert!(report
        .decisions
        .iter()
        .any(|d| d.text.contains("the old color green is below its capacity")));
}

#[test]
fn an_old_color_that_cannot_come_back_halts_with_traffic_where_it_is_and_a_critical_notification() {
    let (report, f) = simulate_with_soak_event(late_breach, |w| {
        // Green's tasks die and every replacement fails its health check.
        w.external_scale(Color::Green, 0);
        w.lock().colors.get_mut(&Color::Green).unwrap().healthy = Some(0);
    });
    let why = reason(&report);
    assert!(
        matches!(report.outcome, Some(Outcome::Halted { .. })),
        "{why}"
    );
    assert!(
        why.contains("the old color green could not be brought back to its capacity of 3"),
        "{why}"
    );
    // Nothing else touched: traffic stays on blue, blue keeps its tasks, no revert.
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(f.world.desired(Color::Blue), 3);
    assert!(!found(&f.world, |c| matches!(c, Change::Reverted(_))));
    let halted = f
        .events
        .sent()
        .into_iter()
        .find(|n| n.title == "Deployment Halted")
        .unwrap();
    assert_eq!(halted.severity, Severity::Critical);
    assert!(halted.tags.contains(&"severity:critical".to_string()));
    // 12: the color serving 100% can scale again; green stays suspended.
    assert!(found(&f.world, |c| *c
        == Change::AutoscalingRestored(Color::Blue, as_found())));
    assert!(!found(&f.world, |c| matches!(
        c,
        Change::AutoscalingRestored(Color::Green, _)
    )));
    let facts = report.facts.unwrap();
    assert!(facts.autoscaling_restored_on.contains(&Color::Blue));
    assert!(!facts.autoscaling_restored_on.contains(&Color::Green));
}

// --------------------------------------------------- 4. drain, then act --

#[test]
fn a_rollback_waits_the_drain_period_after_the_read_back_before_scale_down_and_revert() {
    let (report, f) = simulate(|f| {
        late_breach(f);
        f.builder(reference_plan())
    });
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    let back = when(&f.world, |c| {
        *c == Change::Split(TrafficSplit::all_on(Color::Green))
    });
    let revert = when(&f.world, |c| matches!(c, Change::Reverted(25)));
    let down = when(&f.world, |c| *c == Change::Scaled(Color::Blue, 0));
    assert!(revert.duration_since(back) >= Duration::from_secs(30));
    assert!(down.duration_since(back) >= Duration::from_secs(30));
}

#[test]
fn the_routers_deregistration_delay_sets_the_drain_when_it_is_longer() {
    let (report, f) = simulate(|f| {
        late_breach(f);
        f.world.lock().router_drain = Some(Duration::from_secs(300));
        f.builder(reference_plan())
    });
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    let back = when(&f.world, |c| {
        *c == Change::Split(TrafficSplit::all_on(Color::Green))
    });
    let revert = when(&f.world, |c| matches!(c, Change::Reverted(25)));
    let gap = revert.duration_since(back);
    assert!(
        gap >= Duration::from_secs(300) && gap < Duration::from_secs(330),
        "{gap:?}"
    );
    assert_eq!(
        report.facts.unwrap().router_drain,
        Some(Duration::from_secs(300))
    );
}

// ------------------------------------------------------- 6. holds end --

#[test]
fn a_deployment_held_with_no_data_rolls_back_after_the_hold_timeout_with_reminders() {
    let (report, f) = simulate(|f| {
        f.metrics
            .no_data("error-rate")
            .constant("p95-latency", 180.0);
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{why}"
    );
    assert!(why.contains("held for 30m"), "{why}");
    assert!(why.contains("on_hold_timeout is rollback"), "{why}");
    let held = f
        .events
        .sent()
        .iter()
        .filter(|n| n.title == "Deployment Held")
        .count();
    assert_eq!(held, 2, "reminders at 10 and 20 minutes");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
    // Autoscaling is back on both colors, as found.
    for c in [Color::Blue, Color::Green] {
        assert_eq!(f.world.lock().colors[&c].autoscaling, as_found());
    }
    // The whole deployment ended within the hold timeout of the hold.
    let took = report.finished_at.unwrap().since(report.started_at);
    assert!(took < Duration::from_secs(60 * 60), "{took:?}");
}

/// Held for 72 virtual hours with no data (before holds ended, a deployment
/// sat like this with about 360 journal records an hour): each reading
/// repeats the verdict before it, so only the reminders and a checkpoint
/// before each are journaled.
#[test]
fn a_deployment_held_72_hours_with_no_data_journals_its_reminders_not_360_readings_an_hour() {
    use bluegreen_core::journal::Record;
    let (report, f) = simulate(|f| {
        f.metrics
            .no_data("error-rate")
            .constant("p95-latency", 180.0);
        let mut plan = reference_plan();
        plan.timing.hold_timeout = Duration::from_secs(72 * 3600);
        f.builder(plan)
    });
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{:?}",
        report.outcome
    );
    let hold = report
        .stages
        .iter()
        .find(|s| s.stage == "hold")
        .expect("held");
    let (from, to) = (hold.started_at, hold.ended_at.unwrap());
    assert_eq!(to.since(from), Duration::from_secs(72 * 3600));
    let entries = futures_read(&f);
    let held: Vec<_> = entries
        .iter()
        .filter(|e| e.at > from && e.at < to)
        .collect();
    let reminders = f
        .events
        .sent()
        .iter()
        .filter(|n| n.title == "Deployment Held")
        .count();
    assert_eq!(reminders, 72 * 6 - 1, "every 10 minutes until the timeout");
    let (checkpoints, skipped) = held.iter().fold((0, 0), |(n, s), e| match &e.record {
        Record::Checkpoint { skipped, .. } => (n + 1, s + skipped),
        _ => (n, s),
    });
    // One reminder step and one checkpoint before it, each 10 minutes.
    assert_eq!(checkpoints, reminders, "{} held records", held.len());
    assert_eq!(held.len(), 2 * reminders, "records in 72 hours");
    // What was left out: each check's and the health monitor's polls and
    // readings, thousands over 72 hours.
    assert!(skipped > 72 * 100, "{skipped} steps left out");
    // Checkpoints go through JSON in the file and Postgres journals.
    let text = serde_json::to_string(&entries).expect("the journal serializes");
    let back: Vec<bluegreen_core::JournalEntry> =
        serde_json::from_str(&text).expect("and reads back");
    assert_eq!(back, entries);
    assert!(report.decisions.iter().any(|d| d
        .text
        .contains("repeated the previous readings left out of the journal")));
}

/// Held at a gate with its monitors running: the readings repeat, so they
/// are left out of the journal, until the error rate breaches and the
/// trigger fires. A deployer killed right after that decision is resumed:
/// the replay restores the checkpoint, decides the same, and rolls back.
#[test]
fn a_deployer_killed_after_a_held_breach_fired_resumes_from_the_checkpoint_to_the_same_rollback() {
    use bluegreen_core::journal::Record;
    use bluegreen_core::plan::Gate;
    fn breaching(f: &Fakes) {
        // Blue (the new color) breaks 40 minutes in: the hold at the gate
        // began at 25 minutes (a 10-minute soak), so after 15 minutes of
        // repeated readings and a reminder.
        let late = SIMULATION_EPOCH.after(Duration::from_secs(40 * 60));
        f.metrics.constant("p95-latency", 150.0);
        f.metrics.script("error-rate", move |q, t| {
            Some(if q.query.contains("color:blue") && t > late {
                0.3
            } else {
                0.002
            })
        });
    }
    fn plan() -> bluegreen_core::Plan {
        let mut plan = reference_plan();
        plan.timing.soak = Duration::from_secs(10 * 60);
        plan.gates = vec![Gate::BeforeScaleDown];
        plan
    }
    paused_runtime().block_on(async {
        // The whole run, to find the record that decided the rollback.
        let whole = Fakes::new();
        breaching(&whole);
        let report = whole.builder(plan()).build().unwrap().run().await.unwrap();
        assert!(
            reason(&report).contains("error-rate"),
            "{:?}",
            report.outcome
        );
        let entries = bluegreen_core::Journal::read(&*whole.journal, "sim-1")
            .await
            .unwrap();
        let checkpoint = entries
            .iter()
            .position(|e| matches!(e.record, Record::Checkpoint { .. }))
            .unwrap_or_else(|| {
                panic!(
                    "the hold's repeated readings were not checkpointed: {:?}",
                    report
                        .stages
                        .iter()
                        .map(|s| (
                            s.stage.clone(),
                            s.started_at.since(SIMULATION_EPOCH).as_secs() / 60
                        ))
                        .collect::<Vec<_>>()
                )
            });
        let decided = entries
            .iter()
            .position(|e| {
                matches!(&e.record, Record::Step { events, .. }
                    if events.iter().any(|ev| matches!(ev, Event::RollbackStarted { .. })))
            })
            .expect("a rollback");
        assert!(checkpoint < decided, "{checkpoint} {decided}");

        let f = Fakes::new();
        breaching(&f);
        die_after(&f, f.builder(plan()), decided + 1).await;
        let resumed = f
            .builder(plan())
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
            .expect("the journal replays through its checkpoint");
        assert_eq!(resumed.outcome, report.outcome);
        assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
        assert_eq!(f.world.desired(Color::Blue), 0);
        assert_eq!(f.world.desired(Color::Green), 3);
    });
}

#[test]
fn a_hold_that_times_out_with_the_halt_policy_halts_and_restores_autoscaling_where_traffic_is() {
    let (report, f) = simulate(|f| {
        f.metrics
            .no_data("error-rate")
            .constant("p95-latency", 180.0);
        let mut plan = reference_plan();
        plan.on_hold_timeout = HoldTimeoutPolicy::Halt;
        f.builder(plan)
    });
    let why = reason(&report);
    assert!(
        matches!(report.outcome, Some(Outcome::Halted { .. })),
        "{why}"
    );
    assert!(why.contains("on_hold_timeout is halt"), "{why}");
    // Traffic stays on blue; blue's autoscaling is back, green's stays suspended.
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(f.world.lock().colors[&Color::Blue].autoscaling, as_found());
    assert!(
        f.world.lock().colors[&Color::Green]
            .autoscaling
            .scale_in_suspended
    );
}

// ------------------------------------------------ 7. evidence has a floor --

#[test]
fn one_real_sample_in_fifteen_minutes_does_not_pass_the_analysis() {
    let (report, _f) = simulate_with(
        |f| {
            f.metrics.constant("p95-latency", 180.0);
            // One sample in the whole analysis window.
            let only = SIMULATION_EPOCH.after(Duration::from_secs(5 * 60));
            f.metrics.script("error-rate", move |_, t| {
                (t.0 / 10_000 == only.0 / 10_000).then_some(0.001)
            });
            f.builder(reference_plan())
        },
        |_, _| {},
    );
    assert_ne!(report.outcome, Some(Outcome::Succeeded));
    let final_error_rate = report
        .measurements
        .iter()
        .find(|m| {
            m.check == "error-rate" && m.kind == bluegreen_core::analysis::MeasurementKind::Final
        })
        .unwrap();
    assert_eq!(
        final_error_rate.verdict,
        bluegreen_core::analysis::Verdict::Inconclusive
    );
    assert!(final_error_rate
        .note
        .as_deref()
        .unwrap()
        .contains("1 of the 8 required"));
}

#[test]
fn promote_right_after_the_switch_still_waits_for_five_minutes_of_fresh_evidence() {
    let (report, _f) = simulate_with(
        |f| {
            healthy(f);
            let mut plan = reference_plan();
            plan.strategy = Strategy::AllAtOnce;
            f.builder(plan)
        },
        |ev, ctl| {
            if let Event::Stage {
                stage: Stage::Analysis { .. },
            } = ev
            {
                ctl.promote();
            }
        },
    );
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    let analysis = report
        .stages
        .iter()
        .find(|s| s.stage == "analysis")
        .unwrap();
    assert_eq!(
        analysis.ended_at.unwrap().since(analysis.started_at),
        Duration::from_secs(5 * 60)
    );
    let evaluated = report
        .measurements
        .iter()
        .find(|m| m.kind == bluegreen_core::analysis::MeasurementKind::Final)
        .unwrap();
    assert_eq!(
        evaluated.to.since(evaluated.from),
        Duration::from_secs(5 * 60)
    );
}

// ------------------------------------------------ 9. lost replies, fakes --

#[test]
fn a_lost_suspend_reply_never_records_the_suspended_state_as_the_state_before() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults
            .inject("compute.suspend_autoscaling", 0, Fault::LostReply);
        f.faults
            .inject("compute.suspend_autoscaling", 1, Fault::LostReply);
        f.builder(reference_plan())
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    for c in [Color::Blue, Color::Green] {
        assert_eq!(f.world.lock().colors[&c].autoscaling, as_found(), "{c}");
    }
    let facts = report.facts.unwrap();
    assert_eq!(facts.autoscaling[&Color::Green], as_found());
}

#[test]
fn a_hold_reminder_names_the_hold_and_when_the_timeout_acts() {
    let (_report, f) = simulate(|f| {
        f.metrics
            .no_data("error-rate")
            .constant("p95-latency", 180.0);
        f.builder(reference_plan())
    });
    let first = f
        .events
        .sent()
        .into_iter()
        .find(|n| n.title == "Deployment Held")
        .unwrap();
    assert!(
        first.text.contains("has been held for 10m"),
        "{}",
        first.text
    );
    assert!(
        first
            .text
            .contains("analysis inconclusive at the end of the analysis window"),
        "{}",
        first.text
    );
    assert!(
        first.text.contains("it rolls back in 20m"),
        "{}",
        first.text
    );
}

// ------------------------------------------------ 8. one deployer acts --

/// Runs `builder`'s deployment on the fakes' journal, which fails every
/// append after the first `records`: a deployer killed there.
async fn die_after(f: &Fakes, builder: bluegreen_core::Builder, records: usize) {
    let dying = std::sync::Arc::new(bluegreen_core::testing::CrashingJournal::new(
        f.journal.clone(),
        records,
    ));
    let run = builder.journal(dying).build().unwrap().run().await;
    assert!(run.is_err(), "the deployer dies after {records} records");
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_deployment_held_at_a_gate_keeps_its_lease_and_promoting_it_later_succeeds() {
    use bluegreen_core::plan::Gate;
    use bluegreen_core::{ErrorKind, Journal};
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let mut plan = reference_plan();
        plan.gates = vec![Gate::BeforeShift];
        let deployment = f.builder(plan).build().unwrap();
        let control = deployment.control();
        let run = tokio::spawn(deployment.run());
        // Held at the gate for 20 minutes: four lease TTLs of 5 minutes.
        tokio::time::sleep(Duration::from_secs(20 * 60)).await;
        let now = bluegreen_core::Clock::now(&*f.clock);
        let err = f
            .journal
            .acquire(
                "order-api",
                "another-ci-workspace",
                Duration::from_secs(300),
                now,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LeaseHeld, "{err}");
        assert!(control.promote());
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.outcome, Some(Outcome::Succeeded));
    });
}

#[test]
fn a_call_timeout_not_below_the_lease_ttl_is_refused() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        let err = f
            .builder(reference_plan())
            .call_timeout(Duration::from_secs(300))
            .lease_ttl(Duration::from_secs(300))
            .build()
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("call_timeout (5m) must be below lease_ttl (5m)"),
            "{err}"
        );
    });
}

#[test]
fn each_builder_of_the_fakes_gets_its_own_deployment_id() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        let a = f.builder(reference_plan()).build().unwrap();
        let b = f.builder(reference_plan()).build().unwrap();
        assert_eq!(a.deployment_id(), "sim-1");
        assert_eq!(b.deployment_id(), "sim-2");
    });
}

// ------------------------------------------- 5. bounded provider traffic --

/// A router whose read-back is stuck on the new color once traffic went back
/// to green, counting the calls made after that.
struct StuckReadBack {
    inner: bluegreen_core::testing::FakeRouter,
    world: World,
    sets: std::sync::atomic::AtomicU32,
    reads: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl bluegreen_core::TrafficRouter for StuckReadBack {
    async fn current_split(&self) -> bluegreen_core::Result<TrafficSplit> {
        let split = self.inner.current_split().await?;
        if split == TrafficSplit::all_on(Color::Green)
            && found(&self.world, |c| {
                *c == Change::Split(TrafficSplit::all_on(Color::Blue))
            })
        {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(TrafficSplit::all_on(Color::Blue));
        }
        Ok(split)
    }
    async fn set_split(&self, split: TrafficSplit) -> bluegreen_core::Result<()> {
        if split == TrafficSplit::all_on(Color::Green) {
            self.sets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.set_split(split).await
    }
    async fn target_health(
        &self,
        c: Color,
    ) -> bluegreen_core::Result<bluegreen_core::TargetHealth> {
        self.inner.target_health(c).await
    }
}

#[test]
fn a_stuck_read_back_during_a_rollback_backs_off_instead_of_re_sending_the_split_every_few_seconds()
{
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let router: RefCell<Option<Arc<StuckReadBack>>> = RefCell::new(None);
    let (report, _f) = simulate(|f| {
        late_breach(f);
        let r = Arc::new(StuckReadBack {
            inner: bluegreen_core::testing::FakeRouter::new(f.world.clone(), f.faults.clone()),
            world: f.world.clone(),
            sets: 0.into(),
            reads: 0.into(),
        });
        *router.borrow_mut() = Some(r.clone());
        f.builder(reference_plan()).router(r)
    });
    // The rollback window (30 minutes) ends it: a halt with traffic as it is.
    assert!(
        matches!(report.outcome, Some(Outcome::Halted { .. })),
        "{}",
        reason(&report)
    );
    let r = router.borrow().clone().unwrap();
    let (sets, reads) = (
        r.sets.load(Ordering::SeqCst),
        r.reads.load(Ordering::SeqCst),
    );
    // Every 3.75 s for 30 minutes would be 480 writes; backing off to one
    // read a minute, with a write after every second disagreeing read:
    assert!(sets <= 25, "{sets} writes in the rollback window");
    assert!(
        reads <= 50,
        "{reads} disagreeing reads in the rollback window"
    );
    assert!(sets >= 10, "the write is still sent again: {sets}");
}

#[test]
fn two_runs_with_the_same_id_on_one_journal_the_second_is_refused_before_it_acts() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let first = f
            .builder(reference_plan())
            .deployment_id("release-2.5.0")
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(first.outcome, Some(Outcome::Succeeded));
        let changes = f.world.changes().len();
        let err = f
            .builder(reference_plan())
            .deployment_id("release-2.5.0")
            .build()
            .unwrap()
            .run()
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("already has"), "{err}");
        assert_eq!(f.world.changes().len(), changes, "nothing touched");
    });
}

#[test]
fn a_second_id_with_the_same_holder_is_refused_while_the_first_is_unfinished() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        // The first deployment dies after suspending autoscaling.
        die_after(&f, f.builder(reference_plan()).holder("ci-runner-7"), 12).await;
        assert!(
            f.world.lock().colors[&Color::Green]
                .autoscaling
                .scale_in_suspended
        );
        let changes = f.world.changes().len();
        let err = f
            .builder(reference_plan())
            .holder("ci-runner-7")
            .build()
            .unwrap()
            .run()
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("sim-1 of order-api never finished"),
            "{err}"
        );
        assert_eq!(f.world.changes().len(), changes, "nothing touched");
        // Resuming the first one finishes it and restores autoscaling as found.
        let report = f
            .builder(reference_plan())
            .holder("ci-runner-7")
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.outcome, Some(Outcome::Succeeded));
        assert_eq!(f.world.lock().colors[&Color::Green].autoscaling, as_found());
    });
}

/// A deployer freezes inside `set_split` (the switch) and its
/// write lands four minutes later. Another run resumes the deployment under
/// the same holder at once, which takes the lease over, and is told to
/// abort. Before, it rolled back at once and the frozen write landed after:
/// the traffic on a color scaled to 0. Now it waits out the superseded
/// lease plus the call timeout before its first mutating call, so the late
/// write lands first and the rollback's own write and read-back come after.
#[test]
fn a_deployer_frozen_inside_set_split_cannot_land_its_write_after_the_takeover_rolled_back() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let frozen_for = Duration::from_secs(4 * 60);
        f.faults
            .inject("router.set_split", 0, Fault::Frozen { after: frozen_for });
        let first = tokio::spawn(f.builder(reference_plan()).build().unwrap().run());
        for _ in 0..7200 {
            if f.faults.calls("router.set_split") >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            f.faults.calls("router.set_split"),
            1,
            "frozen in the switch: {:#?}",
            f.world.changes()
        );
        // The frozen process never acts again (a stopped process holds no
        // timers); its write is already on its way.
        first.abort();
        let frozen_at = tokio::time::Instant::now();
        let late =
            TrafficSplit::with_percent(Color::Blue, reference_plan().strategy.steps()[0].percent);

        let second = f.builder(reference_plan()).resume("sim-1").build().unwrap();
        assert!(second.control().abort("the frozen deployer is gone"));
        let report = second.run().await.unwrap();

        assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
        assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
        assert_eq!(f.world.desired(Color::Blue), 0);
        let landed = f
            .world
            .lock()
            .changes
            .iter()
            .rev()
            .find(|(_, c)| *c == Change::Split(late))
            .map(|(t, _)| *t)
            .expect("the switch landed");
        // The test notices the freeze up to a second after the call began.
        assert!(
            landed - frozen_at <= frozen_for
                && landed - frozen_at >= frozen_for - Duration::from_secs(1),
            "the frozen write landed {:?} after the freeze",
            landed - frozen_at
        );
        let restored = f
            .world
            .lock()
            .changes
            .iter()
            .rev()
            .find(|(_, c)| matches!(c, Change::Split(_)))
            .map(|(t, c)| (*t, c.clone()))
            .unwrap();
        assert_eq!(
            restored.1,
            Change::Split(TrafficSplit::all_on(Color::Green)),
            "the last write is the rollback's"
        );
        assert!(
            restored.0 > landed,
            "the rollback wrote after the late write"
        );
        assert!(
            report
                .decisions
                .iter()
                .any(|d| d.text.contains("for the previous deployer's calls to land")),
            "the wait is on record: {:#?}",
            report.decisions
        );
        // The wait is bounded by the lease TTL (5 min) plus the call timeout (30 s).
        assert!(restored.0 - frozen_at <= Duration::from_secs(5 * 60 + 30 + 60));
    });
}

/// A deployer whose lease another run took over stops before its next
/// mutating call, with nothing changed by it after the takeover.
#[test]
fn a_deployer_whose_lease_was_taken_over_stops_before_its_next_mutating_call() {
    use bluegreen_core::{ErrorKind, Journal};
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let mut plan = reference_plan();
        plan.gates = vec![bluegreen_core::plan::Gate::BeforeShift];
        let deployment = f.builder(plan).build().unwrap();
        let control = deployment.control();
        let run = tokio::spawn(deployment.run());
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        // Another run takes the lease (as a resume under the same holder would).
        let now = bluegreen_core::Clock::now(&*f.clock);
        f.journal
            .acquire("order-api", "sim-1", Duration::from_secs(300), now)
            .await
            .unwrap();
        let changes = f.world.changes().len();
        assert!(control.promote());
        let err = run.await.unwrap().expect_err("fenced");
        assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
        assert_eq!(
            f.world.changes().len(),
            changes,
            "no write after the takeover"
        );
        assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    });
}

/// The deployer dies during the switch; a human resumes it half an hour
/// later, beyond the stage's progress deadline. Nothing
/// drove the stage meanwhile, so its deadline restarts on resume instead of
/// rolling back a deployment that is fine.
#[test]
fn a_deployment_resumed_after_longer_than_its_stage_deadline_goes_on_instead_of_rolling_back() {
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        die_after(&f, f.builder(reference_plan()), 24).await;
        let entries = bluegreen_core::Journal::read(&*f.journal, "sim-1")
            .await
            .unwrap();
        let stage = bluegreen_core::Report::from_entries(&entries)
            .stages
            .last()
            .map(|s| s.stage.clone());
        assert_eq!(stage.as_deref(), Some("shift_100"));
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        let report = f
            .builder(reference_plan())
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(
            report.outcome,
            Some(Outcome::Succeeded),
            "{:?}",
            report.outcome
        );
        assert!(report.decisions.iter().any(|d| d
            .text
            .starts_with("resumed: the traffic progress deadline of")));
        assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
    });
}

// ------------------------------------------- 10. journals survive upgrades --

/// Notes and a human's controls are journaled as their kind and values too,
/// with the line rendered from them: a patch release may reword the line,
/// and tools read the kind.
#[test]
fn notes_and_control_effects_are_journaled_as_their_kind_and_values() {
    use bluegreen_core::machine::{Control, HoldReason};
    use bluegreen_core::plan::Gate;
    use bluegreen_core::{Effect, Noted, Refusal};
    let (_report, f) = simulate_with(
        |f| {
            healthy(f);
            let mut plan = reference_plan();
            plan.gates = vec![Gate::BeforeShift];
            f.builder(plan)
        },
        |ev, ctl| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Gate { .. },
                        ..
                    },
            } = ev
            {
                // A group's proceed is refused (no group here); a promote
                // passes the gate.
                ctl.send(Control::Proceed {
                    barrier: bluegreen_core::Barrier::Shift { step: 0 },
                });
                ctl.promote();
            }
        },
    );
    let entries = futures_read(&f);
    let events: Vec<&Event> = entries
        .iter()
        .filter_map(|e| match &e.record {
            bluegreen_core::journal::Record::Step { events, .. } => Some(events),
            _ => None,
        })
        .flatten()
        .collect();
    let backup = events
        .iter()
        .find_map(|e| match e {
            Event::Note {
                text,
                cause: Some(n @ Noted::BackupVerified { .. }),
            } => Some((text, n)),
            _ => None,
        })
        .expect("the verified backup is noted");
    assert!(
        matches!(
            backup.1,
            Noted::BackupVerified {
                entries: 120,
                min_entries: 100,
                ..
            }
        ),
        "{:?}",
        backup.1
    );
    assert_eq!(*backup.0, backup.1.to_string());
    let effects: Vec<(&String, &Effect)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Control {
                effect,
                kind: Some(k),
                ..
            } => Some((effect, k)),
            _ => None,
        })
        .collect();
    assert!(
        effects.iter().any(|(_, k)| matches!(
            k,
            Effect::Refused {
                why: Refusal::NotWaitingAt {
                    rolling_back: false,
                    ..
                }
            }
        )),
        "{effects:?}"
    );
    let (text, promoted) = effects
        .iter()
        .find(|(_, k)| matches!(k, Effect::Promoted { .. }))
        .expect("promoted");
    assert_eq!(**text, promoted.to_string());
    assert!(
        text.contains("promoted past the gate before-shift"),
        "{text}"
    );
    let json = serde_json::to_string(&entries).unwrap();
    assert!(json.contains(r#""kind":"backup_verified""#));
    assert!(json.contains(r#""effect":"promoted""#));
}

/// The reason a rollback records is its kind and values, in the journal, the
/// report and the notifications; the line is rendered from them outside the
/// machine.
#[test]
fn a_rollback_reason_is_journaled_as_its_kind_and_values() {
    use bluegreen_core::Cause;
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.inject("compute.scale", 0, Fault::OldRelease);
        f.builder(reference_plan())
    });
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let Some(Cause::WrongRelease {
        color,
        capacity,
        mismatch,
    }) = &reason.cause
    else {
        panic!("{:?}", reason.cause)
    };
    assert_eq!((*color, *capacity), (Color::Blue, 3));
    assert!(mismatch.contains("found version 2.4.0"), "{mismatch}");
    assert_eq!(reason.summary, reason.cause.as_ref().unwrap().to_string());
    // Read back from the journal as a resumed deployer or `report` would.
    let entries = futures_read(&f);
    let from_journal = Report::from_entries(&entries);
    assert_eq!(from_journal.outcome, report.outcome);
    let text = serde_json::to_string(&entries).unwrap();
    assert!(text.contains(r#""kind":"wrong_release""#));
    // The notifications carry it too, for sinks that route on the kind.
    let sent = f.events.sent();
    for title in ["Deployment Rollback", "Deployment Rolled Back"] {
        let n = sent
            .iter()
            .find(|n| n.title == title)
            .unwrap_or_else(|| panic!("no {title} in {sent:#?}"));
        assert!(
            matches!(
                n.cause,
                Some(Cause::WrongRelease {
                    color: Color::Blue,
                    ..
                })
            ),
            "{title}: {:?}",
            n.cause
        );
    }
    assert!(sent
        .iter()
        .filter(|n| n.title == "Deployment Start")
        .all(|n| n.cause.is_none()));
}

fn futures_read(f: &Fakes) -> Vec<bluegreen_core::JournalEntry> {
    paused_runtime()
        .block_on(bluegreen_core::Journal::read(&*f.journal, "sim-1"))
        .unwrap()
}

/// A mutating call never starts on a lease that could lapse before the call
/// ends: with a 31 s lease renewed at half and a 30 s call timeout, the lease
/// can be down to 15.5 s between renewals, yet 29.5 s after a deployer died
/// inside `set_split` another deployer is still refused.
#[test]
fn a_mutating_call_starts_only_with_the_call_timeout_left_on_the_lease() {
    use bluegreen_core::{ErrorKind, Journal};
    paused_runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        f.faults.inject("router.set_split", 0, Fault::Hang);
        let deployment = f
            .builder(reference_plan())
            .lease_ttl(Duration::from_secs(31))
            .build()
            .unwrap();
        let run = tokio::spawn(deployment.run());
        while f.faults.calls("router.set_split") < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The deployer dies with its call in flight: nothing renews now.
        run.abort();
        tokio::time::sleep(Duration::from_millis(29_500)).await;
        let now = bluegreen_core::Clock::now(&*f.clock);
        let err = f
            .journal
            .acquire(
                "order-api",
                "another-deployer",
                Duration::from_secs(300),
                now,
            )
            .await
            .expect_err("the lease outlasts the call");
        assert_eq!(err.kind(), ErrorKind::LeaseHeld, "{err}");
    });
}
