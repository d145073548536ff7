//! The testing API itself: fake smoke tests that answer from their own
//! configuration, simulations cut at a virtual-time limit, event callbacks
//! with the time and the fakes, a timed world, unique deployment ids,
//! metric schedules keyed by stage and the report's outcome helpers.
#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::machine::{Event, Stage};
use bluegreen_core::provider::{MigrationContext, MigrationPhase, VerificationCheck};
use bluegreen_core::testing::{
    reference_plan, simulate, simulate_for, simulation, Change, Delegated, FakeCompute, FakeRouter,
    Fakes, World, SIMULATION_EPOCH,
};
use bluegreen_core::{Cause, Color, Journal, Outcome, TargetHealth, Timestamp, TrafficSplit};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

/// A compute and a router that keep a world of their own: the fakes' world
/// never sees a scale or a split, as with a real cloud plugged in.
fn elsewhere(f: &Fakes) -> (World, Arc<FakeCompute>, Arc<FakeRouter>) {
    let real = World::new(Color::Green, 3, "2.4.0", Duration::from_secs(30));
    (
        real.clone(),
        Arc::new(FakeCompute::new(real.clone(), f.faults.clone())),
        Arc::new(FakeRouter::new(real, f.faults.clone())),
    )
}

#[test]
fn smoke_tests_pass_with_a_real_compute_plugged_in_because_they_answer_from_their_configuration() {
    let real = RefCell::new(None);
    let (report, f) = simulate(|f| {
        healthy(f);
        let (world, compute, router) = elsewhere(f);
        *real.borrow_mut() = Some(world);
        f.builder(reference_plan()).compute(compute).router(router)
    });
    assert!(report.succeeded(), "{:?}", report.reason());
    let real = real.into_inner().unwrap();
    assert_eq!(real.split(), TrafficSplit::all_on(Color::Blue));
    assert_eq!(real.desired(Color::Blue), 3);
    assert_eq!(real.desired(Color::Green), 0);
    // The fakes' own world never scaled blue, yet all four tests passed on it.
    assert_eq!(f.world.desired(Color::Blue), 0);
    let on_blue: Vec<_> = f
        .world
        .changes()
        .into_iter()
        .filter_map(|c| match c {
            Change::Smoke(Some(Color::Blue), name, passed) => Some((name, passed)),
            _ => None,
        })
        .collect();
    assert_eq!(on_blue.len(), 4, "{on_blue:?}");
    assert!(on_blue.iter().all(|(_, passed)| *passed), "{on_blue:?}");
}

#[test]
fn a_smoke_test_configured_to_fail_on_the_new_color_rolls_back_naming_it_alone() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.smoke.fail_on(
            "create-order",
            Some(Color::Blue),
            "HTTP 500 from POST /orders",
        );
        let (_, compute, router) = elsewhere(f);
        f.builder(reference_plan()).compute(compute).router(router)
    });
    let Some(Cause::SmokeTests { total, failed, .. }) = report.rolled_back() else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(*total, 4);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("create-order"), "{failed:?}");
    let summary = &report.reason().unwrap().summary;
    assert!(
        summary.contains("create-order failed: HTTP 500 from POST /orders"),
        "{summary}"
    );
    // The staging run of the same name was not affected.
    assert!(f
        .world
        .changes()
        .iter()
        .all(|c| !matches!(c, Change::Smoke(None, _, false))));
}

#[test]
fn a_smoke_test_configured_to_fail_everywhere_stops_preflight_and_pass_restores_it() {
    let (report, _) = simulate(|f| {
        healthy(f);
        f.smoke.fail("staging-health", "connection refused");
        f.builder(reference_plan())
    });
    let why = &report.reason().expect("stopped").summary;
    assert!(why.contains("connection refused"), "{why}");
    assert!(report.rolled_back().is_some() || report.halted().is_some());

    let (report, _) = simulate(|f| {
        healthy(f);
        f.smoke
            .fail("staging-health", "connection refused")
            .pass("staging-health");
        f.builder(reference_plan())
    });
    assert!(report.succeeded(), "{:?}", report.reason());
}

#[test]
fn a_simulation_cut_at_ten_virtual_minutes_returns_the_report_so_far() {
    let limit = Duration::from_secs(600);
    let (report, f) = simulate_for(limit, |f| {
        healthy(f);
        f.builder(reference_plan())
    });
    assert_eq!(report.outcome, None, "the one-hour soak is not over");
    assert_eq!(report.deployment_id, "sim-1");
    assert!(report.finished_at.is_none());
    let end = SIMULATION_EPOCH.after(limit);
    let last = report.stages.last().expect("stages so far");
    assert!(last.started_at <= end);
    assert!(report.actions.iter().all(|a| a.at <= end));
    // It ran up to the limit: the last stage is one that lasts past it.
    assert!(last.ended_at.is_none());
    assert!(report
        .measurements
        .iter()
        .any(|m| m.to > SIMULATION_EPOCH.after(limit / 2)));
    assert!(report.records > 0);
    // Blue was deployed and smoke-tested; all traffic is not yet settled
    // past the soak, and nothing was scaled down.
    assert_eq!(f.world.desired(Color::Blue), 3);
    assert_eq!(f.world.desired(Color::Green), 3);
}

#[test]
fn a_limit_past_the_end_returns_the_finished_report() {
    let (report, f) = simulate_for(Duration::from_secs(24 * 3600), |f| {
        healthy(f);
        f.builder(reference_plan())
    });
    assert!(report.succeeded());
    let finished = report.finished_at.expect("finished");
    assert!(
        finished.since(SIMULATION_EPOCH) > Duration::from_secs(3600),
        "soak included"
    );
    assert_eq!(f.world.desired(Color::Green), 0);
}

#[test]
fn on_event_sees_each_event_at_its_time_with_the_fakes() {
    let mut soak_started = None;
    let mut times = Vec::new();
    let (report, f) = simulation(|f| {
        healthy(f);
        f.builder(reference_plan())
    })
    .on_event(|m| {
        times.push(m.at);
        if let Event::Stage {
            stage: Stage::Soak { .. },
        } = m.event
        {
            soak_started = Some(m.at);
            // Act on the world through the fakes at that moment.
            m.fakes
                .world
                .lock()
                .colors
                .get_mut(&Color::Blue)
                .unwrap()
                .healthy = Some(1);
        }
    })
    .run();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    let soak_started = soak_started.expect("the soak started");
    assert!(soak_started > SIMULATION_EPOCH);
    let soak = report
        .stages
        .iter()
        .find(|s| s.stage.contains("soak"))
        .expect("a soak stage in the report");
    assert_eq!(soak.started_at, soak_started);
    // Two of three blue targets unhealthy from the soak's start: rolled back.
    assert!(
        matches!(report.rolled_back(), Some(Cause::UnhealthyTargets { .. })),
        "{:?}",
        report.outcome
    );
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
}

#[test]
fn the_timeline_carries_each_change_at_its_virtual_time() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.builder(reference_plan())
    });
    let timeline = f.world.timeline();
    assert_eq!(timeline.len(), f.world.changes().len());
    assert!(timeline.windows(2).all(|w| w[0].0 <= w[1].0));
    let switched = timeline
        .iter()
        .find(|(_, c)| *c == Change::Split(TrafficSplit::all_on(Color::Blue)))
        .map(|(at, _)| *at)
        .expect("the switch");
    let read_back = report
        .splits
        .iter()
        .find(|s| s.split == TrafficSplit::all_on(Color::Blue))
        .expect("read back")
        .at;
    assert!(switched <= read_back && read_back.since(switched) < Duration::from_secs(60));
    let shift_100 = f
        .stages
        .stages()
        .into_iter()
        .find(|(_, s)| matches!(s, Stage::Shift { percent: 100, .. }))
        .expect("the 100% step")
        .0;
    assert!(shift_100 <= switched);
    // Green's scale-down came an hour (the soak) after the switch.
    let scaled_down = timeline
        .iter()
        .find(|(_, c)| *c == Change::Scaled(Color::Green, 0))
        .expect("green scaled down")
        .0;
    assert!(scaled_down.since(switched) >= Duration::from_secs(3600));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_builder_of_the_same_fakes_gets_its_own_deployment_id() {
    let f = Fakes::new();
    healthy(&f);
    let first = f.builder(reference_plan()).build().unwrap();
    assert_eq!(first.deployment_id(), "sim-1");
    let a = first.run().await.unwrap();
    let b = f
        .builder(reference_plan())
        .build()
        .unwrap()
        .run()
        .await
        .unwrap();
    assert_eq!(
        (a.deployment_id.as_str(), b.deployment_id.as_str()),
        ("sim-1", "sim-2")
    );
    assert!(a.succeeded() && b.succeeded());
    // Both are in the one journal, apart.
    let listed = f.journal.deployments(None).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["sim-1", "sim-2"]);
    // Fresh fakes start again at sim-1: ids are unique per fakes (per journal).
    assert_eq!(
        Fakes::new()
            .builder(reference_plan())
            .build()
            .unwrap()
            .deployment_id(),
        "sim-1"
    );
}

/// When the rollback started, from the report's decisions.
fn rollback_at(report: &bluegreen_core::Report) -> Timestamp {
    report
        .decisions
        .iter()
        .find(|d| d.text.starts_with("rollback:"))
        .unwrap_or_else(|| panic!("no rollback in {:#?}", report.decisions))
        .at
}

#[test]
fn an_error_rate_that_rises_after_the_switch_rolls_back_after_the_switch() {
    let (report, f) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.after_switch("error-rate", 0.002, 0.07);
        f.builder(reference_plan())
    });
    let Some(Cause::MetricTrigger { trigger, .. }) = report.rolled_back() else {
        panic!("{:?}", report.outcome)
    };
    assert!(trigger.contains("error-rate"), "{trigger}");
    let switched = f.stages.switched_at().expect("switched");
    let rolled = rollback_at(&report);
    assert!(rolled > switched);
    // The trigger needs five minutes of breach.
    assert!(rolled.since(switched) >= Duration::from_secs(5 * 60));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
}

#[test]
fn a_latency_that_rises_during_the_soak_rolls_back_inside_the_soak() {
    let (report, f) = simulate(|f| {
        f.metrics.constant("error-rate", 0.002);
        f.metrics.during_soak("p95-latency", 180.0, 1500.0);
        f.builder(reference_plan())
    });
    assert!(
        matches!(report.rolled_back(), Some(Cause::MetricTrigger { .. })),
        "{:?}",
        report.outcome
    );
    let rolled = rollback_at(&report);
    let soak = f
        .stages
        .stages()
        .into_iter()
        .find_map(|(at, s)| match s {
            Stage::Soak { until } => Some((at, until)),
            _ => None,
        })
        .expect("the soak started");
    assert!(soak.0 < rolled && rolled <= soak.1, "{soak:?} {rolled:?}");
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
}

#[test]
fn report_helpers_name_the_outcome() {
    let (ok, _) = simulate(|f| {
        healthy(f);
        f.builder(reference_plan())
    });
    assert!(ok.succeeded());
    assert_eq!(
        (ok.rolled_back(), ok.halted(), ok.reason()),
        (None, None, None)
    );

    let (halted, _) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.after_switch("error-rate", 0.002, 0.09);
        f.world.lock().migrations[0].reversible = false;
        f.builder(reference_plan())
    });
    assert!(!halted.succeeded());
    assert_eq!(halted.rolled_back(), None);
    assert!(
        matches!(halted.halted(), Some(Cause::IrreversibleMigrations { .. })),
        "{:?}",
        halted.outcome
    );
    assert!(matches!(halted.outcome, Some(Outcome::Halted { .. })));
    assert!(halted
        .reason()
        .unwrap()
        .summary
        .contains("25 add_order_metadata"));
}

/// The example of `Reason::summary`'s rustdoc, word for word.
#[test]
fn seven_percent_errors_on_the_new_color_read_as_the_summary_example() {
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
    assert_eq!(
        report.reason().expect("rolled back").summary,
        "automatic rollback: error-rate > 5% for 5m; last value 7% over 6 samples"
    );
}

/// A ratio's threshold and value once read "0.0500" and "0.0700"; the
/// reason, the trigger it names, and the Markdown report's reason and
/// evidence lines read them as percents.
#[test]
fn rollback_reason_threshold_has_unit() {
    let (report, _) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.script("error-rate", |q, _| {
            Some(if q.query.contains("color:blue") {
                0.2
            } else {
                0.002
            })
        });
        f.builder(reference_plan())
    });
    let Some(Cause::MetricTrigger { trigger, unit, .. }) = report.rolled_back() else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(trigger, "error-rate > 5% for 5m");
    assert_eq!(*unit, bluegreen_core::plan::Unit::Ratio);
    let summary = &report.reason().expect("rolled back").summary;
    assert_eq!(
        summary,
        "automatic rollback: error-rate > 5% for 5m; last value 20% over 6 samples"
    );
    let md = report.to_markdown();
    assert!(
        md.contains(&format!("- Reason: {summary}")),
        "the Markdown report's reason line: {md}"
    );
    let evidence: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("- error-rate = "))
        .collect();
    assert!(!evidence.is_empty(), "evidence lines: {md}");
    for line in evidence {
        assert!(
            line.starts_with("- error-rate = 20% (") && line.contains("(success < 1%)"),
            "an evidence line reads its value and threshold in percent: {line}"
        );
    }
}

/// The fake router, except that two of blue's targets fail their health checks.
struct BlueMostlyUnhealthy(Arc<bluegreen_core::testing::FakeRouter>);

#[async_trait::async_trait]
impl bluegreen_core::testing::RouterDelegate for BlueMostlyUnhealthy {
    fn inner(&self) -> &dyn bluegreen_core::TrafficRouter {
        &*self.0
    }

    async fn target_health(&self, color: Color) -> bluegreen_core::Result<TargetHealth> {
        let mut h = bluegreen_core::TrafficRouter::target_health(&*self.0, color).await?;
        if color == Color::Blue && h.total > 0 {
            h.healthy = h.total.saturating_sub(2);
        }
        Ok(h)
    }
}

#[test]
fn a_router_delegate_overrides_target_health_alone_and_the_rest_reaches_the_fake() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let router = Delegated(BlueMostlyUnhealthy(f.router.clone()));
        f.builder(reference_plan()).router(Arc::new(router))
    });
    let Some(Cause::UnhealthyTargets {
        color,
        unhealthy,
        total,
        ..
    }) = report.rolled_back()
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!((*color, *unhealthy, *total), (Color::Blue, 2, 3));
    // set_split and current_split went to the fake router: traffic moved
    // to blue and back, as the world shows.
    assert!(f
        .world
        .changes()
        .contains(&Change::Split(TrafficSplit::all_on(Color::Blue))));
    assert_eq!(f.world.split(), TrafficSplit::all_on(Color::Green));
    assert_eq!(f.world.desired(Color::Blue), 0);
}

/// The fake runner, except that the expand phase's verification fails.
struct ExpandVerificationFails(Arc<bluegreen_core::testing::FakeMigrations>);

#[async_trait::async_trait]
impl bluegreen_core::testing::MigrationsDelegate for ExpandVerificationFails {
    fn inner(&self) -> &dyn bluegreen_core::MigrationRunner {
        &*self.0
    }

    async fn verify(
        &self,
        phase: MigrationPhase,
        _ctx: &MigrationContext,
    ) -> bluegreen_core::Result<Vec<VerificationCheck>> {
        Ok(vec![VerificationCheck {
            name: format!("{phase} orders row count"),
            passed: phase != MigrationPhase::Expand,
            detail: "orders: 1000 rows before, 990 after".into(),
        }])
    }
}

#[test]
fn a_migrations_delegate_overrides_verify_alone_and_apply_and_revert_reach_the_fake() {
    let (report, f) = simulate(|f| {
        healthy(f);
        let runner = Delegated(ExpandVerificationFails(f.migrations.clone()));
        f.builder(reference_plan()).migrations(Arc::new(runner))
    });
    assert!(
        matches!(
            report.rolled_back(),
            Some(Cause::MigrationVerification {
                phase: MigrationPhase::Expand,
                ..
            })
        ),
        "{:?}",
        report.outcome
    );
    let changes = f.world.changes();
    assert!(changes.contains(&Change::Migrated(25, MigrationPhase::Expand)));
    assert!(changes.contains(&Change::Reverted(25)));
    assert!(!changes.iter().any(|c| matches!(c, Change::Split(_))));
    assert_eq!(f.world.desired(Color::Blue), 0);
}
