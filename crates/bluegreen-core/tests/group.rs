//! Coordinated deployments: a group's traffic moves together and rolls back
//! together (`bluegreen_core::group`).
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::group::{Group, GroupOutcome, GroupReport};
use bluegreen_core::journal::{Journal, JournalEntry, Record};
use bluegreen_core::machine::{Action, Event, HoldReason, Stage};
use bluegreen_core::plan::{Gate, GroupMembership, Strategy};
use bluegreen_core::testing::{reference_plan, simulate_with, Change, CrashingJournal, Fakes};
use bluegreen_core::{
    Barrier, Color, Control, ErrorKind, MemoryJournal, Outcome, Plan, Timestamp, TrafficSplit,
};

const A: &str = "order-api";
const B: &str = "payment-api";

fn plan(service: &str) -> Plan {
    let mut p = reference_plan();
    p.service = service.into();
    p.strategy = Strategy::Canary {
        percent: 10,
        wait: Duration::from_secs(5 * 60),
    };
    p
}

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

/// Error rate 8% on the new (blue) color, healthy on green.
fn failing(f: &Fakes) {
    f.metrics.constant("p95-latency", 180.0);
    f.metrics.script("error-rate", |q, _| {
        Some(if q.query.contains("color:blue") {
            0.08
        } else {
            0.002
        })
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Two members on their own fakes, sharing `journal`.
fn group(a: &Fakes, b: &Fakes, journal: Arc<dyn Journal>) -> bluegreen_core::group::GroupBuilder {
    Group::builder("checkout")
        .member(a.builder(plan(A)))
        .member(b.builder(plan(B)))
        .journal(journal)
        .group_id("g1")
}

fn member<'a>(r: &'a GroupReport, service: &str) -> &'a bluegreen_core::group::MemberReport {
    r.members.iter().find(|m| m.service == service).unwrap()
}

fn reason(r: &GroupReport, service: &str) -> String {
    match &member(r, service).report.outcome {
        Some(Outcome::RolledBack { reason }) | Some(Outcome::Halted { reason }) => {
            reason.summary.clone()
        }
        other => panic!("{service}: {other:?}"),
    }
}

/// When `id` reached `barrier`, and when it set the split of that step.
fn barrier_times(entries: &[JournalEntry], barrier: Barrier) -> (Timestamp, Option<Timestamp>) {
    let mut reached = None;
    let mut set = None;
    let mut passed = false;
    for e in entries {
        if let Record::Step {
            input,
            commands,
            events,
            ..
        } = &e.record
        {
            for ev in events {
                if let Event::Stage {
                    stage:
                        Stage::Hold {
                            reason: HoldReason::Group { barrier: b },
                            ..
                        },
                } = ev
                {
                    if *b == barrier && reached.is_none() {
                        reached = Some(e.at);
                    }
                }
            }
            if let bluegreen_core::machine::Input::Control {
                control: Control::Proceed { barrier: b },
            } = input
            {
                passed |= *b == barrier;
            }
            let acts = commands.iter().any(|c| {
                matches!(c.action, Action::SetSplit { .. } | Action::ReadSplit)
                    || matches!(
                        c.action,
                        Action::Scale {
                            color: Color::Green,
                            count: 0
                        }
                    )
            });
            if passed && set.is_none() && acts {
                set = Some(e.at);
            }
        }
    }
    (reached.expect("every member holds at every barrier"), set)
}

#[test]
fn no_member_gets_traffic_until_every_member_is_ready_and_each_step_moves_together() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        // payment-api's new color takes five minutes to settle.
        b.world.lock().settle = Duration::from_secs(300);
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let report = group(&a, &b, journal.clone())
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.outcome, GroupOutcome::Succeeded, "{report:#?}");
        assert_eq!(report.trigger, None);
        for f in [&a, &b] {
            assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Blue));
            assert_eq!(f.world.desired(Color::Blue), 3);
            assert_eq!(f.world.desired(Color::Green), 0);
        }
        let entries = [
            journal.read("g1/order-api").await.unwrap(),
            journal.read("g1/payment-api").await.unwrap(),
        ];
        for barrier in [
            Barrier::Shift { step: 0 },
            Barrier::Shift { step: 1 },
            Barrier::ScaleDown,
        ] {
            let times: Vec<_> = entries.iter().map(|e| barrier_times(e, barrier)).collect();
            let last_reached = times.iter().map(|t| t.0).max().unwrap();
            for (i, (_, acted)) in times.iter().enumerate() {
                let acted = acted.expect("acted after the barrier");
                assert!(
                    acted >= last_reached,
                    "member {i} acted past {barrier} at {acted} before the last member reached it at {last_reached}"
                );
            }
        }
        // The slow member really held the fast one: order-api reached the
        // first barrier minutes before payment-api did.
        let a0 = barrier_times(&entries[0], Barrier::Shift { step: 0 }).0;
        let b0 = barrier_times(&entries[1], Barrier::Shift { step: 0 }).0;
        assert!(b0.since(a0) >= Duration::from_secs(240), "{a0} {b0}");
        // Each member passed three barriers, each by one Proceed.
        for e in &entries {
            let proceeds = e
                .iter()
                .filter(|e| {
                    matches!(
                        &e.record,
                        Record::Step {
                            input: bluegreen_core::machine::Input::Control {
                                control: Control::Proceed { .. }
                            },
                            ..
                        }
                    )
                })
                .count();
            assert_eq!(proceeds, 3);
        }
    });
}

#[test]
fn one_member_failing_its_analysis_rolls_back_every_member() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        failing(&b);
        let report = group(&a, &b, Arc::new(MemoryJournal::new()))
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.outcome, GroupOutcome::RolledBack, "{report:#?}");
        let trigger = report.trigger.clone().unwrap();
        assert_eq!(trigger.member.as_deref(), Some(B));
        assert!(trigger.reason.contains("error-rate"), "{trigger:?}");
        assert!(reason(&report, B).contains("error-rate"));
        let a_reason = reason(&report, A);
        assert!(
            a_reason.contains("group checkout: member payment-api rolled back")
                && a_reason.contains("error-rate"),
            "{a_reason}"
        );
        for f in [&a, &b] {
            assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
            assert_eq!(f.world.desired(Color::Blue), 0);
            assert_eq!(f.world.desired(Color::Green), 3);
            // Both had the canary: the group moved together until the failure.
            assert!(f
                .world
                .changes()
                .contains(&Change::Split(TrafficSplit::new(10, 90).unwrap())));
        }
        let md = report.to_markdown();
        assert!(
            md.contains("Rolled back because payment-api failed"),
            "{md}"
        );
    });
}

#[test]
fn a_member_failing_before_traffic_keeps_every_member_off_traffic() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        // payment-api passes staging (call 0) and fails every smoke test on
        // its new color.
        b.faults.inject_from(
            "smoke.run",
            1,
            bluegreen_core::testing::Fault::Error(ErrorKind::InvalidResponse),
        );
        let report = group(&a, &b, Arc::new(MemoryJournal::new()))
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.outcome, GroupOutcome::RolledBack, "{report:#?}");
        assert_eq!(report.trigger.as_ref().unwrap().member.as_deref(), Some(B));
        for f in [&a, &b] {
            assert!(
                !f.world.changes().iter().any(
                    |c| matches!(c, Change::Split(s) if *s != TrafficSplit::all_on(Color::Green))
                ),
                "no member's new color ever got traffic"
            );
            assert_eq!(f.world.desired(Color::Blue), 0);
        }
    });
}

#[test]
fn a_lease_held_elsewhere_starts_no_member() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        journal
            .acquire(
                B,
                "another-deployer",
                Duration::from_secs(3600),
                b.clock_now(),
            )
            .await
            .unwrap();
        let err = match group(&a, &b, journal.clone()).build().unwrap().run().await {
            Err(e) => e,
            Ok(r) => panic!("must not start: {r:#?}"),
        };
        assert_eq!(err.kind(), ErrorKind::LeaseHeld);
        assert!(err.message().contains("payment-api"), "{err}");
        assert!(err.message().contains("no member was started"), "{err}");
        assert!(journal.read("g1/order-api").await.unwrap().is_empty());
        assert!(a.world.changes().is_empty());
        // order-api's lease was given back.
        journal
            .acquire(A, "someone", Duration::from_secs(60), a.clock_now())
            .await
            .expect("order-api's lease is free again");
    });
}

trait ClockNow {
    fn clock_now(&self) -> Timestamp;
}

impl ClockNow for Fakes {
    fn clock_now(&self) -> Timestamp {
        use bluegreen_core::Clock;
        self.clock.now()
    }
}

#[test]
fn mismatched_steps_duplicate_services_and_lone_members_are_refused() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        let mut other = plan(B);
        other.strategy = Strategy::AllAtOnce;
        let err = Group::builder("checkout")
            .member(a.builder(plan(A)))
            .member(b.builder(other))
            .build()
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message()
                .contains("member payment-api shifts traffic in steps [100]"),
            "{err}"
        );
        assert!(err.message().contains("[10, 100]"), "{err}");

        let err = Group::builder("checkout")
            .member(a.builder(plan(A)))
            .member(b.builder(plan(A)))
            .build()
            .err()
            .unwrap();
        assert!(
            err.message().contains("\"order-api\" is listed twice"),
            "{err}"
        );

        let err = Group::builder("checkout")
            .member(a.builder(plan(A)))
            .build()
            .err()
            .unwrap();
        assert!(err.message().contains("at least two"), "{err}");

        let mut bad = plan(B);
        bad.replicas = 0;
        let err = Group::builder("checkout")
            .member(a.builder(plan(A)))
            .member(b.builder(bad))
            .build()
            .err()
            .unwrap();
        assert!(err.message().contains("member payment-api"), "{err}");
        assert!(err.message().contains("replicas"), "{err}");
    });
}

#[test]
fn a_member_that_never_reaches_a_barrier_rolls_the_group_back_at_the_timeout() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        let mut gated = plan(B);
        gated.gates = vec![Gate::BeforeShift]; // nobody promotes it
        let report = Group::builder("checkout")
            .member(a.builder(plan(A)))
            .member(b.builder(gated))
            .journal(Arc::new(MemoryJournal::new()))
            .barrier_timeout(Duration::from_secs(600))
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.outcome, GroupOutcome::RolledBack, "{report:#?}");
        let t = report.trigger.unwrap();
        assert_eq!(t.member, None);
        assert!(
            t.reason
                .contains("[payment-api] did not reach traffic step 0 within 10m"),
            "{t:?}"
        );
        for f in [&a, &b] {
            assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
            assert_eq!(f.world.desired(Color::Blue), 0);
        }
    });
}

#[test]
fn an_operator_abort_rolls_back_every_member() {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        let g = group(&a, &b, Arc::new(MemoryJournal::new())).build().unwrap();
        let control = g.control();
        let mut events = g.subscribe();
        let run = tokio::spawn(g.run());
        while let Ok(e) = events.recv().await {
            if matches!(e.event, Event::TrafficConfirmed { split } if split.percent(Color::Blue) == 10) {
                control.abort("customers report failed payments");
                break;
            }
        }
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.outcome, GroupOutcome::RolledBack, "{report:#?}");
        let t = report.trigger.unwrap();
        assert_eq!(t.member, None);
        assert!(t.reason.contains("customers report failed payments"), "{t:?}");
        for f in [&a, &b] {
            assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
        }
    });
}

#[test]
fn a_member_refuses_promote_at_a_barrier_and_proceeds_only_past_the_one_it_waits_at() {
    let (report, fakes) = simulate_with(
        |f| {
            healthy(f);
            let mut p = plan(A);
            p.group = Some(GroupMembership {
                name: "checkout".into(),
                id: "g1".into(),
                members: vec![A.into(), B.into()],
            });
            f.builder(p)
        },
        |event, control| {
            if let Event::Stage {
                stage:
                    Stage::Hold {
                        reason: HoldReason::Group { barrier },
                        ..
                    },
            } = event
            {
                control.promote();
                control.send(Control::Proceed {
                    barrier: Barrier::ScaleDown,
                });
                control.send(Control::Proceed { barrier: *barrier });
            }
        },
    );
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:#?}");
    assert_eq!(fakes.world.split(), TrafficSplit::all_on(Color::Blue));
    let texts: Vec<&str> = report.decisions.iter().map(|d| d.text.as_str()).collect();
    let refused_promote = texts
        .iter()
        .filter(|t| t.contains("refused: waiting for the rest of its group"))
        .count();
    assert_eq!(refused_promote, 3, "{texts:#?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("refused: not waiting at the old color's scale-down")),
        "{texts:#?}"
    );
}

fn effects(f: &Fakes) -> Vec<Change> {
    f.world
        .changes()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Change::Split(_)
                    | Change::Scaled(..)
                    | Change::Prepared(..)
                    | Change::Migrated(..)
                    | Change::Reverted(_)
            )
        })
        .collect()
}

/// Runs the group, killed after `kill` appends and then resumed, and returns
/// the outcome, each member's effects, and the appends of the whole run.
fn crash_run(bad: bool, kill: Option<usize>) -> (GroupOutcome, [Vec<Change>; 2], usize) {
    runtime().block_on(async {
        let (a, b) = (Fakes::new(), Fakes::new());
        healthy(&a);
        if bad {
            failing(&b)
        } else {
            healthy(&b)
        }
        let inner: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let report = match kill {
            None => group(&a, &b, inner.clone())
                .build()
                .unwrap()
                .run()
                .await
                .unwrap(),
            Some(allowed) => {
                let killed = Arc::new(CrashingJournal::new(inner.clone(), allowed));
                let first = group(&a, &b, killed).build().unwrap().run().await.unwrap();
                assert_eq!(
                    first.outcome,
                    GroupOutcome::Interrupted,
                    "killed after {allowed} appends"
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
                Group::builder("checkout")
                    .member(a.builder(plan(A)))
                    .member(b.builder(plan(B)))
                    .journal(inner.clone())
                    .resume("g1")
                    .build()
                    .unwrap()
                    .run()
                    .await
                    .expect("the group resumes")
            }
        };
        let records = report.members.iter().map(|m| m.report.records).sum();
        (report.outcome, [effects(&a), effects(&b)], records)
    })
}

fn killed_at_append_points_resumes_to_the_same_outcome(bad: bool) {
    let (outcome, baseline, records) = crash_run(bad, None);
    let expected = if bad {
        GroupOutcome::RolledBack
    } else {
        GroupOutcome::Succeeded
    };
    assert_eq!(outcome, expected);
    assert!(records > 40, "{records}");
    // Every 5th append point, plus the first ten (lease, start, preflight).
    let points: Vec<usize> = (1..10).chain((10..records).step_by(5)).collect();
    for allowed in points {
        let (o, changes, _) = crash_run(bad, Some(allowed));
        assert_eq!(o, expected, "killed after {allowed} of {records} appends");
        assert_eq!(
            changes, baseline,
            "killed after {allowed} of {records} appends: every effect exactly once"
        );
    }
}

#[test]
fn a_good_group_killed_at_its_append_points_resumes_to_success() {
    killed_at_append_points_resumes_to_the_same_outcome(false);
}

#[test]
fn a_bad_group_killed_at_its_append_points_resumes_to_the_same_rollback() {
    killed_at_append_points_resumes_to_the_same_outcome(true);
}

#[test]
fn resume_refuses_a_journal_of_another_membership() {
    runtime().block_on(async {
        let (a, b, c) = (Fakes::new(), Fakes::new(), Fakes::new());
        healthy(&a);
        healthy(&b);
        let inner: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let killed = Arc::new(CrashingJournal::new(inner.clone(), 12));
        let first = group(&a, &b, killed).build().unwrap().run().await.unwrap();
        assert_eq!(first.outcome, GroupOutcome::Interrupted);
        let err = match Group::builder("checkout")
            .member(a.builder(plan(A)))
            .member(b.builder(plan(B)))
            .member(c.builder(plan("inventory-api")))
            .journal(inner)
            .resume("g1")
            .build()
            .unwrap()
            .run()
            .await
        {
            Err(e) => e,
            Ok(r) => panic!("must be refused: {r:#?}"),
        };
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains(
                "was started as part of group checkout with members [order-api, payment-api]"
            ),
            "{err}"
        );
    });
}
