//! Lifecycle hooks and production checks in virtual time: where they run,
//! what their failure decides before and past the point of no return, and
//! what a resume does with a hook whose outcome was never journaled.
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::machine::{Action, SmokeScope};
use bluegreen_core::plan::{HookPoint, LifecycleHook, ProductionChecks, Strategy};
use bluegreen_core::testing::{reference_plan, simulate, CrashingJournal, Fakes, HookBehaviour};
use bluegreen_core::{Cause, Color, Journal, Outcome, Plan, Record, Report};

fn healthy(f: &Fakes) {
    f.metrics
        .constant("error-rate", 0.002)
        .constant("p95-latency", 180.0);
}

fn with_hooks(hooks: &[(&str, HookPoint)]) -> Plan {
    let mut plan = reference_plan();
    plan.hooks = hooks
        .iter()
        .map(|(n, p)| LifecycleHook::new(*n, *p))
        .collect();
    plan
}

fn points(f: &Fakes) -> Vec<(String, HookPoint)> {
    f.hooks
        .runs()
        .into_iter()
        .map(|(n, c)| (n, c.point))
        .collect()
}

#[test]
fn hooks_run_once_each_at_their_points_in_procedure_order() {
    let mut plan = with_hooks(&[
        ("notify-done", HookPoint::OnFinish),
        ("warm-cache", HookPoint::BeforeTraffic),
        ("register-targets", HookPoint::BeforeScaleUp),
        ("seed-check", HookPoint::AfterScaleUp),
        ("step-annotate", HookPoint::AfterTrafficStep),
        ("full-annotate", HookPoint::AfterTraffic),
        ("drain-queues", HookPoint::BeforeScaleDown),
        ("page-oncall", HookPoint::AfterRollback),
    ]);
    plan.strategy = Strategy::Canary {
        percent: 10,
        wait: Duration::from_secs(300),
    };
    let (report, f) = simulate(|f| {
        healthy(f);
        f.builder(plan)
    });
    assert!(report.succeeded(), "{:?}", report.outcome);
    let ran = points(&f);
    let expect = |n: &str, p| (n.to_string(), p);
    assert_eq!(
        ran,
        vec![
            expect("register-targets", HookPoint::BeforeScaleUp),
            expect("seed-check", HookPoint::AfterScaleUp),
            expect("warm-cache", HookPoint::BeforeTraffic),
            expect("step-annotate", HookPoint::AfterTrafficStep),
            expect("step-annotate", HookPoint::AfterTrafficStep),
            expect("full-annotate", HookPoint::AfterTraffic),
            expect("drain-queues", HookPoint::BeforeScaleDown),
            expect("notify-done", HookPoint::OnFinish),
        ],
        "after_rollback never runs on a success"
    );
    let runs = f.hooks.runs();
    let told = |i: usize| runs[i].1.clone();
    assert_eq!(told(0).new, Some(Color::Blue));
    assert_eq!(told(3).new_percent, Some(10), "after the canary step");
    assert_eq!(told(4).new_percent, Some(100), "after the full step");
    assert_eq!(told(7).outcome.as_deref(), Some("succeeded"));
    assert_eq!(report.hooks.len(), 8, "each run is in the report");
    assert!(report
        .hooks
        .iter()
        .all(|h| h.outcome.passed && h.outcome.attempts == 1));
    let md = report.to_markdown();
    assert!(md.contains("## Hooks"), "{md}");
    assert!(md.contains("✓ warm-cache at before_traffic"), "{md}");
}

#[test]
fn a_before_traffic_hook_that_fails_rolls_back_naming_the_hook() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.hooks.set(
            "warm-cache",
            HookBehaviour::Fail("`./warm.sh` exited with code 3; output tail: cache down".into()),
        );
        f.builder(with_hooks(&[("warm-cache", HookPoint::BeforeTraffic)]))
    });
    let Some(Cause::HookFailed {
        hook,
        point,
        attempts,
        detail,
    }) = report.rolled_back()
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(
        (hook.as_str(), *point, *attempts),
        ("warm-cache", HookPoint::BeforeTraffic, 1)
    );
    assert!(detail.contains("exited with code 3"), "{detail}");
    assert_eq!(
        f.world.split().percent(Color::Green),
        100,
        "no traffic moved"
    );
    assert_eq!(
        f.world.desired(Color::Blue),
        0,
        "the new color is scaled down"
    );
    assert_eq!(f.world.desired(Color::Green), 3);
    assert!(!report.hooks[0].outcome.passed);
}

#[test]
fn an_on_finish_hook_that_fails_after_success_halts_past_the_point_of_no_return() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.hooks.set(
            "notify-done",
            HookBehaviour::Fail("HTTP 500 from the CMDB".into()),
        );
        f.builder(with_hooks(&[("notify-done", HookPoint::OnFinish)]))
    });
    let Some(Cause::PastPointOfNoReturn { failure }) = report.halted() else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        failure.contains("hook notify-done (on_finish) failed"),
        "{failure}"
    );
    assert!(failure.contains("HTTP 500 from the CMDB"), "{failure}");
    assert_eq!(
        f.world.split().percent(Color::Blue),
        100,
        "the release stays"
    );
    assert_eq!(
        f.world.desired(Color::Green),
        0,
        "the old color was scaled down"
    );
    assert_eq!(
        f.hooks.count("notify-done"),
        1,
        "on_finish runs once, not again on the halt"
    );
}

#[test]
fn a_before_scale_down_hook_that_fails_rolls_back_while_the_old_color_can_serve() {
    let (report, f) = simulate(|f| {
        healthy(f);
        f.hooks.set(
            "drain-queues",
            HookBehaviour::Error("no such program".into()),
        );
        f.builder(with_hooks(&[("drain-queues", HookPoint::BeforeScaleDown)]))
    });
    let Some(Cause::HookFailed { hook, detail, .. }) = report.rolled_back() else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(hook, "drain-queues");
    assert!(
        detail.contains("could not run: ") && detail.contains("no such program"),
        "{detail}"
    );
    assert_eq!(
        f.world.split().percent(Color::Green),
        100,
        "traffic back on green"
    );
    assert_eq!(
        f.world.desired(Color::Green),
        3,
        "green was never scaled down"
    );
}

#[test]
fn a_hook_that_hangs_past_its_timeout_fails_naming_the_hook_and_the_timeout() {
    let mut plan = with_hooks(&[("register-targets", HookPoint::BeforeScaleUp)]);
    plan.hooks[0].timeout = Duration::from_secs(10);
    plan.hooks[0].retries = 1;
    let (report, f) = simulate(|f| {
        healthy(f);
        f.hooks.set("register-targets", HookBehaviour::Hang);
        f.builder(plan)
    });
    let why = &report.reason().expect("rolled back").summary;
    assert!(
        matches!(report.rolled_back(), Some(Cause::HookFailed { .. })),
        "{why}"
    );
    assert!(
        why.contains("hook register-targets (before_scale_up) failed after 2 attempts"),
        "{why}"
    );
    assert!(
        why.contains("no result within its timeout of 10s (hooks[0].timeout)"),
        "{why}"
    );
    assert_eq!(f.hooks.count("register-targets"), 2, "one retry");
    assert_eq!(f.world.desired(Color::Blue), 0, "nothing was scaled up");
}

#[test]
fn a_hook_that_fails_once_passes_on_its_retry() {
    let mut plan = with_hooks(&[("warm-cache", HookPoint::BeforeTraffic)]);
    plan.hooks[0].retries = 2;
    let (report, f) = simulate(|f| {
        healthy(f);
        f.hooks.set("warm-cache", HookBehaviour::FailTimes(1));
        f.builder(plan)
    });
    assert!(report.succeeded(), "{:?}", report.outcome);
    assert_eq!(f.hooks.count("warm-cache"), 2);
    assert_eq!(report.hooks[0].outcome.attempts, 2);
}

#[test]
fn after_rollback_and_on_finish_hooks_run_after_a_rollback_told_the_outcome() {
    let (report, f) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.after_switch("error-rate", 0.002, 0.09);
        f.builder(with_hooks(&[
            ("page-oncall", HookPoint::AfterRollback),
            ("notify-done", HookPoint::OnFinish),
        ]))
    });
    assert!(
        matches!(report.rolled_back(), Some(Cause::MetricTrigger { .. })),
        "{:?}",
        report.outcome
    );
    let runs = f.hooks.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].0.as_str(), runs[0].1.point),
        ("page-oncall", HookPoint::AfterRollback)
    );
    assert_eq!(runs[1].1.point, HookPoint::OnFinish);
    assert_eq!(runs[1].1.outcome.as_deref(), Some("rolled_back"));
    assert_eq!(runs[0].1.new_percent, Some(0), "traffic was back on green");
}

#[test]
fn an_after_rollback_hook_that_fails_halts_with_the_rollback_done() {
    let (report, f) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.after_switch("error-rate", 0.002, 0.09);
        f.hooks
            .set("page-oncall", HookBehaviour::Fail("pager API 503".into()));
        f.builder(with_hooks(&[("page-oncall", HookPoint::AfterRollback)]))
    });
    let Some(Cause::RollbackIncomplete { failure, .. }) = report.halted() else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        failure.contains("hook page-oncall (after_rollback) failed: pager API 503"),
        "{failure}"
    );
    assert_eq!(f.world.split().percent(Color::Green), 100);
    assert_eq!(f.world.desired(Color::Blue), 0);
}

// ------------------------------------------------------------------ resume --

/// The index of the journal record that issued the hook `name` in an
/// uninterrupted run: the deployer is killed at the append after it, the
/// hook's outcome.
fn record_issuing(plan: &Plan, name: &str) -> usize {
    let rt = runtime();
    rt.block_on(async {
        let f = Fakes::new();
        healthy(&f);
        f.builder(plan.clone())
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        let entries = f.journal.read("sim-1").await.unwrap();
        entries
            .iter()
            .position(|e| match &e.record {
                Record::Step { commands, .. } => commands
                    .iter()
                    .any(|c| matches!(&c.action, Action::RunHook { hook, .. } if hook == name)),
                _ => false,
            })
            .expect("the hook was issued")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs `plan`, kills the deployer right after the hook `name` was issued
/// (its intent journaled, its outcome not), resumes, and returns the
/// resumed report and how often the hook ran.
fn crash_during_hook(plan: Plan, name: &str) -> (Report, usize) {
    let at = record_issuing(&plan, name);
    let rt = runtime();
    rt.block_on(async {
        let f = Fakes::new();
        healthy(&f);
        let dying = Arc::new(CrashingJournal::new(f.journal.clone(), at + 1));
        let first = f
            .builder(plan.clone())
            .journal(dying)
            .build()
            .unwrap()
            .run()
            .await;
        assert!(first.is_err(), "the first deployer was killed");
        assert_eq!(f.hooks.count(name), 1, "the hook ran before the kill");
        let report = f
            .builder(plan)
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
            .unwrap();
        (report, f.hooks.count(name))
    })
}

#[test]
fn a_resume_never_runs_a_hook_that_is_not_idempotent_a_second_time_and_halts_naming_it() {
    let plan = with_hooks(&[("register-targets", HookPoint::BeforeScaleUp)]);
    let (report, runs) = crash_during_hook(plan, "register-targets");
    assert_eq!(runs, 1, "not run again");
    let Some(Cause::HookInterrupted { hook, point }) = report.halted() else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(
        (hook.as_str(), *point),
        ("register-targets", HookPoint::BeforeScaleUp)
    );
    let why = &report.reason().unwrap().summary;
    assert!(
        why.contains("not idempotent, so it is not run again"),
        "{why}"
    );
}

#[test]
fn a_resume_runs_an_idempotent_hook_again_and_goes_on() {
    let mut plan = with_hooks(&[("register-targets", HookPoint::BeforeScaleUp)]);
    plan.hooks[0].idempotent = true;
    let (report, runs) = crash_during_hook(plan, "register-targets");
    assert_eq!(runs, 2, "run again after the resume");
    assert_eq!(report.outcome, Some(Outcome::Succeeded));
}

// -------------------------------------------------------- production checks --

fn with_production(plan: &mut Plan) {
    plan.production_checks = Some(ProductionChecks {
        url: "https://order-api.example.com".into(),
        smoke_tests: vec!["prod-smoke".into()],
    });
}

#[test]
fn production_checks_run_through_the_public_url_after_each_traffic_change() {
    let mut plan = reference_plan();
    with_production(&mut plan);
    plan.strategy = Strategy::Canary {
        percent: 10,
        wait: Duration::from_secs(300),
    };
    let (report, _) = simulate(|f| {
        healthy(f);
        f.smoke
            .script("prod-smoke", |t| match (&t.base_url, t.color) {
                (Some(u), None) if u == "https://order-api.example.com" => Ok(()),
                other => Err(format!("reached {other:?}")),
            });
        f.builder(plan)
    });
    assert!(report.succeeded(), "{:?}", report.outcome);
    let production: Vec<_> = report
        .smoke_tests
        .iter()
        .filter(|r| r.scope == SmokeScope::Production)
        .collect();
    assert_eq!(production.len(), 2, "after 10% and after 100%");
    assert!(production
        .iter()
        .all(|r| r.results.iter().all(|t| t.passed())));
    let md = report.to_markdown();
    assert!(md.contains("## Production checks"), "{md}");
}

#[test]
fn a_production_check_failing_after_the_switch_rolls_back() {
    let mut plan = reference_plan();
    with_production(&mut plan);
    let (report, f) = simulate(|f| {
        healthy(f);
        f.smoke.script("prod-smoke", |t| {
            if t.version == "2.5.0" {
                Err("HTTP 502 from https://order-api.example.com/health".into())
            } else {
                Ok(())
            }
        });
        f.builder(plan)
    });
    let Some(Cause::ProductionSmokeTests {
        after, url, failed, ..
    }) = report.rolled_back()
    else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(after, "the traffic change to 100% on blue");
    assert_eq!(url, "https://order-api.example.com");
    assert!(failed[0].contains("HTTP 502"), "{failed:?}");
    assert_eq!(f.world.split().percent(Color::Green), 100);
    let production: Vec<_> = report
        .smoke_tests
        .iter()
        .filter(|r| r.scope == SmokeScope::Production)
        .collect();
    assert_eq!(
        production.len(),
        2,
        "after the switch, and after the rollback (which passed)"
    );
    assert!(production[1].results[0].passed());
}

#[test]
fn a_production_check_failing_after_a_rollback_halts_critical_with_both_colors_up() {
    let mut plan = reference_plan();
    with_production(&mut plan);
    let (report, f) = simulate(|f| {
        f.metrics.constant("p95-latency", 180.0);
        f.metrics.after_switch("error-rate", 0.002, 0.09);
        // Passes through production on the new release, fails on the old.
        f.smoke.script("prod-smoke", |t| {
            if t.version == "2.4.0" {
                Err("HTTP 503 from https://order-api.example.com/health".into())
            } else {
                Ok(())
            }
        });
        f.builder(plan)
    });
    let Some(Cause::ProductionSmokeTests { after, .. }) = report.halted() else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        after.starts_with("the rollback (for: automatic rollback"),
        "{after}"
    );
    assert_eq!(
        f.world.split().percent(Color::Green),
        100,
        "traffic stays on green"
    );
    assert_eq!(
        f.world.desired(Color::Blue),
        3,
        "blue is left up for a human"
    );
    let halted = f
        .events
        .sent()
        .into_iter()
        .find(|n| n.title == "Deployment Halted")
        .expect("a halt notification");
    assert!(
        halted.tags.contains(&"severity:critical".to_string()),
        "{:?}",
        halted.tags
    );
}
