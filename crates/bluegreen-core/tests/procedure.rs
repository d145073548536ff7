//! The reference procedure, simulated under paused time: each test sets up
//! exactly one situation of the runbook and asserts the traffic split, the
//! desired count of each color and the recorded reason.
#![cfg(feature = "testing")]

use std::time::Duration;

use bluegreen_core::machine::{Event, HoldReason, Stage};
use bluegreen_core::plan::{Gate, InconclusivePolicy, Strategy};
use bluegreen_core::provider::MigrationPhase;
use bluegreen_core::testing::{
    reference_plan, simulate, simulate_with, Change, Fakes, Fault, SIMULATION_EPOCH,
};
use bluegreen_core::{Color, ErrorKind, Journal, Outcome, Report, Timestamp, TrafficSplit};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

/// Blue (the new color) answers `bad`, green `good`.
fn on_blue(f: &Fakes, check: &str, bad: f64, good: f64) {
    f.metrics.script(check, move |q, _| {
        Some(if q.query.contains("color:blue") {
            bad
        } else {
            good
        })
    });
}

fn reason(report: &Report) -> String {
    match report.outcome.as_ref().expect("finished") {
        Outcome::RolledBack { reason } | Outcome::Halted { reason } => reason.summary.clone(),
        Outcome::Succeeded => panic!("expected a rollback or halt, got success"),
    }
}

/// When all traffic was confirmed on blue, and when the rollback started.
fn shift_and_rollback_times(report: &Report) -> (Timestamp, Timestamp) {
    let at = |pred: &dyn Fn(&str) -> bool| {
        report
            .decisions
            .iter()
            .find(|d| pred(&d.text))
            .unwrap_or_else(|| panic!("decision not found in {:#?}", report.decisions))
            .at
    };
    (
        at(&|t| t.contains("confirmed blue 100%")),
        at(&|t| t.starts_with("rollback:")),
    )
}

fn index_of(changes: &[Change], pred: impl Fn(&Change) -> bool) -> usize {
    changes
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("change not found in {changes:#?}"))
}

#[test]
fn the_reference_procedure_promotes_a_good_release_in_order() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.builder(reference_plan())
    });
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(f.world.desired(Color::Blue), 3);
    assert_eq!(f.world.desired(Color::Green), 0);

    let c = f.world.changes();
    let backup = index_of(&c, |x| matches!(x, Change::Backup(_)));
    let expand = index_of(&c, |x| *x == Change::Migrated(25, MigrationPhase::Expand));
    let scale_up = index_of(&c, |x| *x == Change::Scaled(Color::Blue, 3));
    let smoke = index_of(&c, |x| {
        matches!(x, Change::Smoke(Some(Color::Blue), _, true))
    });
    let shift = index_of(&c, |x| {
        *x == Change::Split(TrafficSplit::all_on(Color::Blue))
    });
    let scale_down = index_of(&c, |x| *x == Change::Scaled(Color::Green, 0));
    let contract = index_of(&c, |x| *x == Change::Migrated(26, MigrationPhase::Contract));
    assert!(backup < expand && expand < scale_up && scale_up < smoke);
    assert!(smoke < shift && shift < scale_down && scale_down < contract);
    assert!(c.contains(&Change::AutoscalingRestored(
        Color::Green,
        bluegreen_core::AutoscalingState {
            registered: true,
            ..Default::default()
        }
    )));

    // One hour of soak after the 15-minute analysis window, then scale-down.
    let soak = report.stages.iter().find(|s| s.stage == "soak").unwrap();
    assert_eq!(
        soak.ended_at.unwrap().since(soak.started_at),
        Duration::from_secs(3600)
    );
    let analysis = report
        .stages
        .iter()
        .find(|s| s.stage == "analysis")
        .unwrap();
    assert_eq!(
        analysis.ended_at.unwrap().since(analysis.started_at),
        Duration::from_secs(15 * 60)
    );
    let titles: Vec<String> = f.events.sent().iter().map(|n| n.title.clone()).collect();
    assert_eq!(titles.first().map(String::as_str), Some("Deployment Start"));
    assert_eq!(
        titles.last().map(String::as_str),
        Some("Deployment Complete")
    );
    let done = f.events.sent().last().cloned().unwrap();
    assert!(done.tags.contains(&"deployment:success".to_string()));
    assert!(done.tags.contains(&"version:2.5.0".to_string()));
}

#[test]
fn error_rate_above_5_percent_for_five_minutes_rolls_back_traffic_first() {
    let (report, f) = simulate(|f| {
        healthy(f);
        on_blue(f, "error-rate", 0.07, 0.001);
        f.builder(reference_plan())
    });
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    let why = reason(&report);
    assert!(why.contains("error-rate > 5% for 5m"), "{why}");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
    assert_eq!(f.world.desired(Color::Green), 3);
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        unreachable!()
    };
    assert_eq!(
        reason.evidence.len(),
        5,
        "five one-minute breaches cover five minutes"
    );
    assert!(reason
        .evidence
        .iter()
        .all(|m| m.value == Some(0.07) && m.breach));

    // Traffic is restored before anything else is touched.
    let c = f.world.changes();
    let back = index_of(&c, |x| {
        *x == Change::Split(TrafficSplit::all_on(Color::Green))
    });
    let revert = index_of(&c, |x| *x == Change::Reverted(25));
    let down = index_of(&c, |x| *x == Change::Scaled(Color::Blue, 0));
    assert!(back < revert && revert < down, "{c:#?}");
    // The rollback took five minutes of breach after the shift, no more.
    let (shifted, rolled) = shift_and_rollback_times(&report);
    assert_eq!(rolled.since(shifted), Duration::from_secs(5 * 60));
}

#[test]
fn a_short_error_spike_does_not_roll_back() {
    let (report, f) = simulate(|f| {
        healthy(f);
        // 7% for four minutes in the middle of the soak, then 0.2% again:
        // a breach shorter than the five minutes the trigger asks for.
        let start = SIMULATION_EPOCH.after(Duration::from_secs(20 * 60 + 30));
        let end = start.after(Duration::from_secs(4 * 60));
        f.metrics.script("error-rate", move |q, t| {
            let spike = t > start && t <= end;
            Some(if q.query.contains("color:blue") && spike {
                0.07
            } else {
                0.002
            })
        });
        f.builder(reference_plan())
    });
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );
    assert_eq!(report.measurements.iter().filter(|m| m.breach).count(), 4);
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn p95_above_1000ms_for_five_minutes_rolls_back() {
    let (report, f) = simulate(|f| {
        healthy(f);
        on_blue(f, "p95-latency", 1400.0, 200.0);
        f.builder(reference_plan())
    });
    assert!(reason(&report).contains("p95-latency > 1000 ms for 5m"));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
}

#[test]
fn more_than_half_the_targets_unhealthy_rolls_back() {
    let world = std::cell::RefCell::new(None);
    let (report, f) = simulate_with(
        |f| {
            healthy(f);
            *world.borrow_mut() = Some(f.world.clone());
            f.builder(reference_plan())
        },
        |ev, _| {
            if let Event::TrafficConfirmed { split } = ev {
                if split.percent(Color::Blue) == 100 {
                    // Two of the three blue targets start failing health checks.
                    let w = world.borrow();
                    let mut w = w.as_ref().unwrap().lock();
                    w.colors.get_mut(&Color::Blue).unwrap().healthy = Some(1);
                }
            }
        },
    );
    let why = reason(&report);
    assert!(
        why.contains("more than 50% of the new color's targets unhealthy"),
        "{why}"
    );
    assert!(why.contains("2 of 3 targets of blue unhealthy"), "{why}");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
    // A health reading triggers at once: no waiting for a metric window.
    let (shifted, rolled) = shift_and_rollback_times(&report);
    assert!(
        rolled.since(shifted) <= bluegreen_core::plan::defaults::HEALTH_INTERVAL,
        "within one health reading"
    );
}

#[test]
fn a_failed_smoke_test_rolls_back_before_any_traffic_moves() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let plan = reference_plan();
        let mut b = f.builder(plan);
        b = b.smoke_test(std::sync::Arc::new(
            bluegreen_core::testing::FakeSmokeTest::new(
                "create-order",
                f.world.clone(),
                f.faults.clone(),
                |t| t.color != Some(Color::Blue),
            ),
        ));
        b
    });
    let why = reason(&report);
    assert!(
        why.contains("smoke tests on the new color blue: 1 of 4 failed"),
        "{why}"
    );
    assert!(why.contains("create-order failed"), "{why}");
    assert!(
        !f.world
            .changes()
            .iter()
            .any(|c| matches!(c, Change::Split(_))),
        "no traffic ever moved"
    );
    assert_eq!(f.world.desired(Color::Blue), 0);
    assert_eq!(f.world.desired(Color::Green), 3);
    assert!(f.world.changes().contains(&Change::Reverted(25)));
}

#[test]
fn no_data_pauses_and_never_promotes() {
    let mut held = false;
    let (report, f) = simulate_with(
        |f| {
            f.metrics
                .no_data("error-rate")
                .constant("p95-latency", 200.0);
            f.builder(reference_plan())
        },
        |ev, ctl| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Inconclusive { detail },
                        ..
                    },
            } = ev
            {
                assert!(detail.contains("error-rate"), "{detail}");
                assert!(detail.contains("no data"), "{detail}");
                held = true;
                ctl.abort("metrics pipeline down; not promoting blind");
            }
        },
    );
    assert!(held, "the deployment held for a human");
    assert!(reason(&report).contains("manual abort: metrics pipeline down"));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
}

#[test]
fn no_data_with_the_rollback_policy_rolls_back() {
    let (report, f) = simulate(|f| {
        f.metrics
            .no_data("error-rate")
            .constant("p95-latency", 200.0);
        let mut plan = reference_plan();
        plan.on_inconclusive = InconclusivePolicy::Rollback;
        f.builder(plan)
    });
    let why = reason(&report);
    assert!(
        why.contains("analysis inconclusive at the end of the analysis window"),
        "{why}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
}

#[test]
fn a_dry_run_check_is_recorded_but_never_acted_on() {
    let (report, f) = simulate(|f| {
        healthy(f);
        on_blue(f, "p95-latency", 1400.0, 200.0);
        let mut plan = reference_plan();
        plan.analysis[1].dry_run = true;
        f.builder(plan)
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert!(report.decisions.iter().any(|d| d
        .text
        .contains("dry run, not acted on: automatic rollback: p95-latency > 1000 ms for 5m")));
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn a_failed_expand_verification_rolls_back_before_the_new_color_starts() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.world.lock().failing_verification = vec![MigrationPhase::Expand];
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        why.contains("expand migration verification failed"),
        "{why}"
    );
    assert!(why.contains("1000 rows before, 990 after"), "{why}");
    assert!(f.world.changes().contains(&Change::Reverted(25)));
    assert!(!f.world.changes().contains(&Change::Scaled(Color::Blue, 3)));
}

#[test]
fn a_backup_that_lists_too_few_entries_stops_before_migrating() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.world.lock().backup_entries = 40;
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        why.contains("backup lists 40 entries (at least 100 required)"),
        "{why}"
    );
    assert!(!f
        .world
        .changes()
        .iter()
        .any(|c| matches!(c, Change::Migrated(..))));
}

#[test]
fn a_rollback_after_an_irreversible_migration_halts_with_the_state_recorded() {
    let (report, f) = simulate(|f| {
        healthy(f);
        on_blue(f, "error-rate", 0.09, 0.001);
        f.world.lock().migrations[0].reversible = false;
        f.builder(reference_plan())
    });
    let Some(Outcome::Halted { reason }) = &report.outcome else {
        panic!("expected a halt: {:?}", report.outcome)
    };
    assert!(reason
        .summary
        .contains("irreversible migration(s) applied: 25 add_order_metadata"));
    assert!(
        reason.summary.contains("error-rate > 5%"),
        "{}",
        reason.summary
    );
    // Traffic went back first; the schema was not touched.
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert!(!f
        .world
        .changes()
        .iter()
        .any(|c| matches!(c, Change::Reverted(_))));
    let facts = report.facts.unwrap();
    assert_eq!(
        facts.confirmed_split,
        Some(TrafficSplit::all_on(Color::Green))
    );
    assert_eq!(facts.applied.len(), 1);
    assert!(facts.reverted.is_empty());
}

#[test]
fn a_failure_after_the_old_color_is_scaled_down_halts_instead_of_pretending() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.world.lock().failing_verification = vec![MigrationPhase::Contract];
        f.builder(reference_plan())
    });
    let Some(Outcome::Halted { reason }) = &report.outcome else {
        panic!("expected a halt: {:?}", report.outcome)
    };
    assert!(reason
        .summary
        .contains("contract migration verification failed"));
    assert!(reason.summary.contains("traffic cannot return"));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn a_color_that_never_becomes_stable_rolls_back_at_the_progress_deadline() {
    let (report, f) = simulate(|f| {
        healthy(f);
        // Every status after the preflight ones (blue, green) reports a color one short.
        f.faults
            .inject_from("compute.status", 2, Fault::WrongReadBack);
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        why.contains("progress deadline of 10m exceeded in deploy"),
        "{why}"
    );
    assert_eq!(f.world.desired(Color::Blue), 0);
    assert!(!f
        .world
        .changes()
        .iter()
        .any(|c| matches!(c, Change::Split(_))));
}

#[test]
fn a_read_back_that_disagrees_is_read_again_and_then_rolls_back() {
    let (report, f) = simulate(|f| {
        healthy(f);
        // The first read-back after the shift lies; the second tells the truth.
        f.faults
            .inject("router.current_split", 1, Fault::WrongReadBack);
        f.builder(reference_plan())
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert!(report
        .decisions
        .iter()
        .any(|d| d.text.contains("reading again")));
    drop(f);
    let (report, f) = simulate(|f| {
        healthy(f);
        // Every read-back after the preflight one disagrees.
        f.faults
            .inject_from("router.current_split", 1, Fault::WrongReadBack);
        f.builder(reference_plan())
    });
    // Persistent disagreement: the traffic deadline passes and it rolls back,
    // and the rollback's own read-back disagrees too: a human is needed.
    assert!(
        matches!(report.outcome, Some(Outcome::Halted { .. })),
        "{:?}",
        report.outcome
    );
    let why = reason(&report);
    assert!(
        why.contains("progress deadline of 1m exceeded in traffic"),
        "{why}"
    );
    assert!(
        why.contains("progress deadline of 30m exceeded in rollback"),
        "{why}"
    );
    // The router was told to restore traffic, again and again.
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
}

#[test]
fn a_hanging_router_is_cut_by_the_call_timeout_and_retried() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.inject("router.set_split", 0, Fault::Hang);
        f.builder(reference_plan())
    });
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );
    assert_eq!(f.faults.calls("router.set_split"), 2, "one hang, one retry");
}

/// A backup that hangs may still be running (a pg_dump the deployer lost
/// sight of): the retry policy does not start a second one, since a repeat
/// may take another backup; the deployment stops before migrating.
#[test]
fn a_hanging_backup_is_cut_by_the_call_timeout_and_not_started_again() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.inject("migrations.backup", 0, Fault::Hang);
        f.builder(reference_plan())
    });
    assert_eq!(f.faults.calls("migrations.backup"), 1, "one backup call");
    let why = reason(&report);
    assert!(why.contains("backup"), "{why}");
    assert!(why.contains("no answer within"), "{why}");
    assert!(!f
        .world
        .changes()
        .iter()
        .any(|c| matches!(c, Change::Migrated(..) | Change::Backup(_))));
}

#[test]
fn a_provider_failing_past_its_retries_rolls_back_and_the_journal_keeps_every_record() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.always("compute.prepare", Fault::Temporary);
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(why.contains("compute prepare failed"), "{why}");
    assert!(why.contains("persistent"), "{why}");
    assert_eq!(f.faults.calls("compute.prepare"), 3, "three attempts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entries = rt.block_on(f.journal.read("sim-1")).unwrap();
    assert_eq!(entries.len(), report.records);
    assert_eq!(Report::from_entries(&entries), report);
}

#[test]
fn the_canary_takes_ten_percent_first_and_its_failure_rolls_back() {
    let canary = Strategy::Canary {
        percent: 10,
        wait: Duration::from_secs(600),
    };
    let (report, f) = simulate(|f| {
        healthy(f);
        let mut plan = reference_plan();
        plan.strategy = canary.clone();
        f.builder(plan)
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    let splits: Vec<TrafficSplit> = f
        .world
        .changes()
        .iter()
        .filter_map(|c| match c {
            Change::Split(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(
        splits,
        vec![
            TrafficSplit::with_percent(Color::Blue, 10),
            TrafficSplit::all_on(Color::Blue)
        ]
    );
    drop(f);
    // 2% errors: below the 5% trigger, above the 1% success threshold.
    let (report, f) = simulate(|f| {
        healthy(f);
        on_blue(f, "error-rate", 0.02, 0.001);
        let mut plan = reference_plan();
        plan.strategy = canary;
        f.builder(plan)
    });
    let why = reason(&report);
    assert!(
        why.contains("analysis failed at the end of traffic step 1 (10%)"),
        "{why}"
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert!(!f
        .world
        .changes()
        .contains(&Change::Split(TrafficSplit::all_on(Color::Blue))));
}

#[test]
fn linear_steps_are_each_read_back() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let mut plan = reference_plan();
        plan.strategy = Strategy::Linear {
            step_percent: 25,
            step_wait: Duration::from_secs(120),
        };
        f.builder(plan)
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    let confirmed: Vec<&str> = report
        .decisions
        .iter()
        .filter(|d| d.text.starts_with("read-back confirmed blue"))
        .map(|d| d.text.as_str())
        .collect();
    assert_eq!(
        confirmed,
        [
            "read-back confirmed blue 25% / green 75%",
            "read-back confirmed blue 50% / green 50%",
            "read-back confirmed blue 75% / green 25%",
            "read-back confirmed blue 100% / green 0%",
            // and once more before the old color is scaled down
            "read-back confirmed blue 100% / green 0%",
        ]
    );
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn gates_hold_until_a_human_promotes() {
    let mut gates = Vec::new();
    let (report, f) = simulate_with(
        |f| {
            healthy(f);
            let mut plan = reference_plan();
            plan.gates = vec![Gate::BeforeShift, Gate::BeforeScaleDown];
            f.builder(plan)
        },
        |ev, ctl| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Gate { gate },
                        ..
                    },
            } = ev
            {
                gates.push(*gate);
                ctl.promote();
            }
        },
    );
    assert_eq!(gates, [Gate::BeforeShift, Gate::BeforeScaleDown]);
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn promote_shortens_the_soak_to_the_evidence_floor_and_skips_no_evaluation() {
    let (report, _f) = simulate_with(
        |f| {
            healthy(f);
            f.builder(reference_plan())
        },
        |ev, ctl| {
            if let Event::Stage {
                stage: Stage::Soak { .. },
            } = ev
            {
                ctl.promote();
            }
        },
    );
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    // Promote skips the wait, never the evidence: the soak lasts the
    // plan's `timing.min_evidence` (5 minutes), not its hour.
    let soak = report.stages.iter().find(|s| s.stage == "soak").unwrap();
    assert_eq!(
        soak.ended_at.unwrap().since(soak.started_at),
        Duration::from_secs(5 * 60)
    );
    assert!(report.stages.iter().any(|s| s.stage == "evaluate_soak"));
}

#[test]
fn a_pause_holds_at_the_next_phase_boundary_until_resumed() {
    let mut paused_at = None;
    let (report, _f) = simulate_with(
        |f| {
            healthy(f);
            f.builder(reference_plan())
        },
        |ev, ctl| match ev {
            Event::Stage {
                stage: Stage::WaitStable,
            } => {
                ctl.pause();
            }
            Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Paused,
                        then,
                    },
            } => {
                paused_at = Some((**then).clone());
                ctl.resume();
            }
            _ => {}
        },
    );
    assert_eq!(paused_at, Some(Stage::SmokeTests));
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
}

#[test]
fn a_manual_abort_rolls_back_and_says_why() {
    let (report, f) = simulate_with(
        |f| {
            healthy(f);
            f.builder(reference_plan())
        },
        |ev, ctl| {
            if let Event::Stage {
                stage: Stage::Analysis { .. },
            } = ev
            {
                ctl.abort("critical bug discovered in production");
            }
        },
    );
    assert!(reason(&report).contains("manual abort: critical bug discovered in production"));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
}

#[test]
fn a_failing_staging_check_stops_before_anything_changes() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.builder(reference_plan()).smoke_test(std::sync::Arc::new(
            bluegreen_core::testing::FakeSmokeTest::new(
                "staging-health",
                f.world.clone(),
                f.faults.clone(),
                |_| false,
            ),
        ))
    });
    assert!(reason(&report).contains("staging health check: 1 of 1 failed"));
    let mutating: Vec<Change> = f
        .world
        .changes()
        .into_iter()
        .filter(|c| !matches!(c, Change::Smoke(..)))
        .collect();
    // Autoscaling is suspended only after preflight, so nothing at all changed.
    assert!(mutating.is_empty(), "{mutating:#?}");
}

#[test]
fn a_secret_older_than_its_rotation_policy_fails_preflight_naming_it() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let old = Timestamp(SIMULATION_EPOCH.0 - 120 * 24 * 3600 * 1000);
        f.secrets
            .insert("prod/order-api/db-password", "x", Some(old));
        f.builder(reference_plan())
    });
    let why = reason(&report);
    assert!(
        why.contains(
            "prod/order-api/db-password: last rotated 120 days ago, the policy is every 90 days"
        ),
        "{why}"
    );
    assert!(
        !why.contains("stripe-webhook-secret"),
        "rotated only on compromise: {why}"
    );
    assert!(f
        .world
        .changes()
        .iter()
        .all(|c| matches!(c, Change::Smoke(None, _, true))));
}

#[test]
fn a_split_traffic_at_the_start_is_refused() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.world.lock().split = TrafficSplit::with_percent(Color::Blue, 40);
        f.builder(reference_plan())
    });
    assert!(reason(&report).contains("traffic is split (blue 40% / green 60%)"));
    assert!(f.world.changes().is_empty());
}

#[test]
fn a_failing_event_sink_never_blocks_the_deployment() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.faults.always("events.notify", Fault::Hang);
        f.builder(reference_plan())
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
    assert!(f.events.sent().is_empty());
    // The sink was called (start, each step, completion) and hung every time.
    assert!(
        f.faults.calls("events.notify") >= 3,
        "{}",
        f.faults.calls("events.notify")
    );
    assert!(report
        .decisions
        .iter()
        .any(|d| d.text == "notified: Deployment Complete"));
}

#[test]
fn a_second_deployer_of_the_same_service_is_refused_naming_the_holder() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let lease = f
            .journal
            .acquire(
                "order-api",
                "deployer-on-ci-7",
                Duration::from_secs(300),
                SIMULATION_EPOCH,
            )
            .await
            .unwrap();
        let err = match f.builder(reference_plan()).build().unwrap().run().await {
            Err(e) => e,
            Ok(_) => panic!("a second deployer must be refused"),
        };
        assert_eq!(err.kind(), ErrorKind::LeaseHeld);
        assert!(err.to_string().contains("deployer-on-ci-7"), "{err}");
        assert!(err.to_string().contains("2026-01-01T00:00:00"), "{err}");
        assert_eq!(lease.token, 1);
        assert!(f.world.changes().is_empty());
    });
}

#[test]
fn the_old_color_is_smoke_tested_against_the_version_it_runs() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let (report, _f) = simulate(|f| {
        healthy(f);
        on_blue(f, "error-rate", 0.07, 0.001);
        f.builder(reference_plan()).smoke_test(std::sync::Arc::new(
            bluegreen_core::testing::FakeSmokeTest::new(
                "health-check",
                f.world.clone(),
                f.faults.clone(),
                move |t| {
                    record.lock().unwrap().push((t.color, t.version.clone()));
                    true
                },
            ),
        ))
    });
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (Some(Color::Blue), "2.5.0".to_string()),
            (Some(Color::Green), "2.4.0".to_string())
        ]
    );
}

/// A router whose target-health answers for the new color cannot be true.
struct NonsenseRouter(bluegreen_core::testing::FakeRouter);

#[async_trait::async_trait]
impl bluegreen_core::TrafficRouter for NonsenseRouter {
    async fn current_split(&self) -> bluegreen_core::Result<TrafficSplit> {
        self.0.current_split().await
    }
    async fn set_split(&self, split: TrafficSplit) -> bluegreen_core::Result<()> {
        self.0.set_split(split).await
    }
    async fn target_health(
        &self,
        c: Color,
    ) -> bluegreen_core::Result<bluegreen_core::TargetHealth> {
        if c == Color::Green {
            return self.0.target_health(c).await;
        }
        Ok(bluegreen_core::TargetHealth {
            healthy: 5,
            total: 3,
        })
    }
}

#[test]
fn a_provider_answering_nonsense_rolls_back_and_the_journal_keeps_every_record() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let router = NonsenseRouter(bluegreen_core::testing::FakeRouter::new(
            f.world.clone(),
            f.faults.clone(),
        ));
        f.builder(reference_plan())
            .router(std::sync::Arc::new(router))
    });
    let why = reason(&report);
    assert!(why.contains("provider answered nonsense"), "{why}");
    assert!(why.contains("5 healthy targets of 3"), "{why}");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entries = rt.block_on(f.journal.read("sim-1")).unwrap();
    assert_eq!(Report::from_entries(&entries), report);
}
