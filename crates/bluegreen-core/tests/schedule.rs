//! Deployment windows, approval gates, preflight dependencies, the rollback
//! rehearsal and the rollback-time targets, in virtual time on the fakes.
#![cfg(feature = "testing")]

use std::time::Duration;

use bluegreen_core::machine::{Event, HoldReason, Stage};
use bluegreen_core::plan::{
    AllowedWindow, ApprovalGate, ApproverGroup, DeployWindow, Gate, RehearsalOptions, Weekday,
};
use bluegreen_core::provider::{MigrationInfo, MigrationPhase};
use bluegreen_core::testing::{reference_plan, simulate, simulate_with, Fakes, SIMULATION_EPOCH};
use bluegreen_core::{Cause, ErrorKind, Journal, Outcome, Plan, Timestamp};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- windows --

fn office_hours_berlin() -> DeployWindow {
    use Weekday::*;
    DeployWindow {
        time_zone: "Europe/Berlin".into(),
        allowed: vec![AllowedWindow {
            days: vec![Mon, Tue, Wed, Thu, Fri],
            from: "09:00".into(),
            to: "17:00".into(),
        }],
        blackouts: vec![],
    }
}

#[test]
fn a_deploy_at_23_00_outside_a_09_to_17_berlin_window_starts_nothing_and_says_when_it_opens() {
    // The simulation starts at 2026-01-01T00:00Z; 22:00 UTC is 23:00 CET
    // (a Thursday): the next window opens Friday 09:00 CET, 08:00 UTC.
    let mut plan = reference_plan();
    plan.window = Some(office_hours_berlin());
    runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        tokio::time::advance(Duration::from_secs(22 * 3600)).await;
        let err = f.builder(plan).build().unwrap().run().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("outside the deployment window"), "{msg}");
        assert!(msg.contains("2026-01-02 09:00 CET (+01:00)"), "{msg}");
        assert!(msg.contains("in 10h"), "{msg}");
        // Nothing journaled, nothing changed.
        assert!(f.journal.read("sim-1").await.unwrap().is_empty());
        assert!(f.world.lock().changes.is_empty());
    });
}

#[test]
fn a_deploy_inside_its_window_runs() {
    let mut plan = reference_plan();
    // 2026-01-01T00:00Z is 01:00 CET on a Thursday: a night window.
    plan.window = Some(DeployWindow {
        time_zone: "Europe/Berlin".into(),
        allowed: vec![AllowedWindow {
            days: vec![Weekday::Thu],
            from: "00:30".into(),
            to: "04:00".into(),
        }],
        blackouts: vec![],
    });
    let (report, _) = simulate(|f| {
        healthy(f);
        f.builder(plan)
    });
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
}

#[test]
fn a_window_that_never_opens_is_refused_naming_its_field() {
    let mut plan = reference_plan();
    let mut w = office_hours_berlin();
    w.allowed[0].to = "09:00".into();
    plan.window = Some(w);
    let err = plan.validate().unwrap_err();
    assert_eq!(err.field, "window.allowed[0].to");
    assert!(err.message.contains("never opens"), "{err}");
}

// -------------------------------------------------------------- approvals --

/// "Code review approved by 2+ engineers" and "Product owner approved
/// release notes", before any traffic moves.
fn with_approvals() -> Plan {
    let mut plan = reference_plan();
    plan.approvals = vec![ApprovalGate {
        gate: Gate::BeforeShift,
        groups: vec![
            ApproverGroup {
                role: "engineers".into(),
                names: vec!["eng-a".into(), "eng-b".into(), "eng-c".into()],
                required: 2,
            },
            ApproverGroup {
                role: "product owner".into(),
                names: vec!["owner".into()],
                required: 1,
            },
        ],
    }];
    plan
}

fn control_effects(report: &bluegreen_core::Report) -> Vec<String> {
    report
        .decisions
        .iter()
        .map(|d| d.text.clone())
        .filter(|t| t.contains("approv") || t.contains("refused"))
        .collect()
}

#[test]
fn a_gate_needing_two_engineers_and_the_product_owner_passes_on_three_distinct_approvals() {
    let mut sent = false;
    let (report, f) = simulate_with(
        |f| {
            healthy(f);
            f.builder(with_approvals())
        },
        |ev, ctl| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason:
                            HoldReason::Gate {
                                gate: Gate::BeforeShift,
                            },
                        ..
                    },
            } = ev
            {
                if !sent {
                    sent = true;
                    ctl.promote(); // refused: approvals, not promote
                    ctl.approve("eng-a", None);
                    ctl.approve("eng-a", None); // refused: the same name again
                    ctl.approve("intruder", None); // refused: not on the lists
                    ctl.approve("eng-b", Some(Gate::BeforeShift));
                    ctl.approve("owner", None);
                }
            }
        },
    );
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let facts = report.facts.clone().unwrap();
    let who: Vec<(&str, &str)> = facts
        .approvals
        .iter()
        .map(|a| (a.name.as_str(), a.role.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("eng-a", "engineers"),
            ("eng-b", "engineers"),
            ("owner", "product owner")
        ]
    );
    assert!(facts.approvals.iter().all(|a| a.at >= SIMULATION_EPOCH));
    let entries = runtime().block_on(f.journal.read("sim-1")).unwrap();
    let effects = entries
        .into_iter()
        .flat_map(|e| match e.record {
            bluegreen_core::Record::Step { events, .. } => events,
            _ => vec![],
        })
        .filter_map(|e| match e {
            Event::Control { effect, .. } => Some(effect),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(
        effects[0].contains("passes on approvals, not promote")
            && effects[0].contains("2 more of engineers, 1 more of product owner"),
        "{effects:?}"
    );
    assert!(
        effects[1].contains("approved by eng-a (engineers)"),
        "{effects:?}"
    );
    assert!(
        effects[2].contains("eng-a already approved the gate before-shift"),
        "{effects:?}"
    );
    assert!(
        effects[3].contains("\"intruder\" is not an approver of the gate before-shift"),
        "{effects:?}"
    );
    assert!(effects[5].contains("approvals are complete"), "{effects:?}");
    assert!(!control_effects(&report).is_empty());
}

#[test]
fn approvals_given_before_a_crash_count_after_the_resume() {
    runtime().block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let plan = with_approvals();
        // First deployer: reaches the gate, takes two approvals, dies.
        let dep = f.builder(plan.clone()).build().unwrap();
        let ctl = dep.control();
        let mut events = dep.subscribe();
        let run = tokio::spawn(dep.run());
        loop {
            let ev = events.recv().await.unwrap();
            if matches!(
                ev.event,
                Event::Stage {
                    stage: Stage::Hold { .. }
                }
            ) {
                break;
            }
        }
        ctl.approve("eng-a", None);
        ctl.approve("owner", None);
        loop {
            let ev = events.recv().await.unwrap();
            if let Event::Control { effect, .. } = &ev.event {
                if effect.contains("owner") {
                    break;
                }
            }
        }
        run.abort();
        let _ = run.await;
        // A second deployer resumes: the two approvals are still there, a
        // repeat by eng-a is refused, and eng-c's completes the gate.
        tokio::time::advance(Duration::from_secs(120)).await;
        let dep = f.builder(plan).resume("sim-1").build().unwrap();
        let ctl = dep.control();
        ctl.approve("eng-a", None);
        ctl.approve("eng-c", None);
        let report = dep.run().await.unwrap();
        assert_eq!(
            report.outcome,
            Some(Outcome::Succeeded),
            "{:?}",
            report.outcome
        );
        let names: Vec<String> = report
            .facts
            .unwrap()
            .approvals
            .iter()
            .map(|a| a.name.clone())
            .collect();
        assert_eq!(names, ["eng-a", "owner", "eng-c"]);
    });
}

// -------------------------------------------------- preflight dependencies --

fn migration(version: u64, name: &str) -> MigrationInfo {
    MigrationInfo {
        version,
        name: name.into(),
        phase: MigrationPhase::Expand,
        reversible: true,
    }
}

#[test]
fn a_migration_that_must_already_be_applied_and_is_not_refuses_the_deploy_in_preflight() {
    let mut plan = reference_plan();
    plan.preflight.migrations_applied = vec![24];
    let (report, f) = simulate(|f| {
        healthy(f);
        f.world.lock().migrations = vec![migration(24, "add_required_indexes")];
        f.builder(plan)
    });
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let Some(Cause::Dependency { field, problems }) = &reason.cause else {
        panic!("{reason:?}")
    };
    assert_eq!(field, "preflight.migrations_applied");
    assert!(
        problems[0].contains("migration 024 must already be applied"),
        "{problems:?}"
    );
    let facts = report.facts.unwrap();
    assert!(facts.new_count.is_none() && !facts.traffic_touched && facts.autoscaling.is_empty());
    assert!(f.world.lock().changes.is_empty(), "nothing changed");
}

#[test]
fn an_applied_dependency_migration_and_a_passing_dependency_check_let_the_deploy_go_on() {
    let mut plan = reference_plan();
    plan.preflight.migrations_applied = vec![24];
    plan.preflight.checks = vec!["payments-api".into()];
    let (report, _) = simulate(|f| {
        healthy(f);
        let mut w = f.world.lock();
        w.migrations = vec![migration(24, "add_required_indexes")];
        w.applied = vec![24];
        drop(w);
        f.builder(plan)
    });
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{:?}",
        report.outcome
    );
}

#[test]
fn a_failing_dependency_check_refuses_the_deploy_naming_preflight_checks() {
    let mut plan = reference_plan();
    plan.preflight.checks = vec!["payments-api".into()];
    let (report, f) = simulate(|f| {
        healthy(f);
        f.smoke.fail("payments-api", "503 from payments");
        f.builder(plan)
    });
    let Some(Outcome::RolledBack { reason }) = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        reason.summary.contains("preflight.checks"),
        "{}",
        reason.summary
    );
    assert!(
        reason.summary.contains("503 from payments"),
        "{}",
        reason.summary
    );
    // The dependency check ran; nothing else happened.
    let changes = f.world.changes();
    assert!(
        changes
            .iter()
            .all(|c| format!("{c:?}").starts_with("Smoke(None, \"payments-api\"")),
        "nothing changed: {changes:?}"
    );
}

// -------------------------------------------------------------- rehearsal --

#[test]
fn a_rehearsal_with_an_irreversible_migration_halts_at_the_revert_and_times_each_rollback() {
    let mut plan = reference_plan();
    plan.migrations = Some(Default::default());
    plan.timing.drain = Duration::from_secs(30);
    let options = RehearsalOptions {
        migrations: vec![
            migration(25, "add_order_metadata"),
            MigrationInfo {
                version: 26,
                name: "backfill_order_metadata".into(),
                phase: MigrationPhase::Expand,
                reversible: false,
            },
        ],
        router_drain: Some(Duration::from_secs(300)),
        scale_settle: None,
    };
    let r = plan.rehearse(&options).unwrap();
    let stage = |n: &str| {
        r.failures.iter().find(|f| f.stage == n).unwrap_or_else(|| {
            panic!(
                "no rehearsal of {n}: {:?}",
                r.failures.iter().map(|f| &f.stage).collect::<Vec<_>>()
            )
        })
    };
    // Before the migrations: a clean rollback, nothing to drain.
    let pre = stage("preflight");
    assert_eq!(pre.outcome, "rolled_back");
    assert_eq!(pre.took, Duration::ZERO);
    // Once the irreversible expand ran, the rollback halts at the revert,
    // after traffic is back and the old color drained for the ALB's 5 min.
    let soak = stage("soak");
    assert_eq!(soak.outcome, "halted", "{soak:?}");
    assert_eq!(
        soak.halted_at.as_deref(),
        Some("rollback_revert_migrations")
    );
    assert!(
        soak.reason.contains("026 backfill_order_metadata")
            || soak.reason.contains("26 backfill_order_metadata"),
        "{}",
        soak.reason
    );
    assert_eq!(soak.traffic_back_after, Some(Duration::ZERO));
    assert_eq!(soak.took, Duration::from_secs(300));
    let whats: Vec<&str> = soak.effects.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(whats[0], "check the old color's status and target health");
    assert!(
        whats.contains(&"traffic set to blue 0% / green 100%"),
        "{whats:?}"
    );
    assert!(whats.contains(&"drain for 5m"), "{whats:?}");
    // Before the migration ran: reverted, the new color scaled down in one
    // poll interval (15 s) after the drain... no drain without traffic.
    let prepare = stage("prepare");
    assert_eq!(
        prepare.outcome, "halted",
        "the irreversible one already ran: {prepare:?}"
    );
    let backup = stage("backup");
    assert_eq!(backup.outcome, "rolled_back", "{backup:?}");
    // Past the point of no return: scaling the old color down halts.
    let down = stage("scale_down_old");
    assert_eq!(down.outcome, "halted");
    assert!(
        down.reason.contains("traffic cannot return to it"),
        "{}",
        down.reason
    );
    let text = r.to_text();
    assert!(
        text.contains("HALTS after 5m at rollback_revert_migrations"),
        "{text}"
    );
}

#[test]
fn a_rehearsal_of_an_invalid_plan_is_refused_naming_the_field() {
    let mut plan = reference_plan();
    plan.timing.rollback_window = Duration::ZERO;
    let err = plan.rehearse(&RehearsalOptions::default()).unwrap_err();
    assert!(err.to_string().contains("timing.rollback_window"), "{err}");
}

// ------------------------------------------------------ rollback targets --

#[test]
fn a_rolled_back_report_sets_its_rollback_times_against_the_reference_targets() {
    let (report, _) = simulate(|f| {
        f.metrics
            .constant("error-rate", 0.09)
            .constant("p95-latency", 180.0);
        f.builder(reference_plan())
    });
    assert!(matches!(report.outcome, Some(Outcome::RolledBack { .. })));
    let times = report.rollback_times();
    let by = |w: &str| times.iter().find(|t| t.what == w).unwrap().clone();
    assert_eq!(by("traffic switch").target, Duration::from_secs(60));
    assert_eq!(by("full rollback").target, Duration::from_secs(300));
    assert_eq!(by("verification").target, Duration::from_secs(600));
    let switch = by("traffic switch").measured.unwrap();
    assert!(switch < Duration::from_secs(60), "{switch:?}");
    let full = by("full rollback").measured.unwrap();
    assert!(
        full >= Duration::from_secs(30),
        "the drain at least: {full:?}"
    );
    let md = report.to_markdown();
    assert!(
        md.contains("## Rollback time against the reference's targets"),
        "{md}"
    );
    assert!(md.contains("| traffic switch (rollback start to a read-back of all traffic on the old color) | < 1m |"), "{md}");
    let html = report.to_html();
    assert!(html.contains("id=\"rollback-times\""));
    let _ = Timestamp(0);
}
