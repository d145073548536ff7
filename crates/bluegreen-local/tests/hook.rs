//! Lifecycle hooks as real processes: a command that writes a file, one
//! that exits non-zero, one that sleeps past its timeout, and a deployment
//! whose hook hangs (the engine's reason names the hook and the timeout).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluegreen_core::plan::{HookPoint, LifecycleHook};
use bluegreen_core::provider::{Hook, HookContext};
use bluegreen_core::testing::{reference_plan, simulate, FakeSecrets};
use bluegreen_core::{Cause, Color, SecretSource};
use bluegreen_local::command::{CommandCheck, CommandHook};

const TOKEN: &str = "hk-live-51d0a7c3e2";

fn context(point: HookPoint) -> HookContext {
    HookContext {
        deployment_id: "dep-1".into(),
        service: "order-api".into(),
        version: "2.5.0".into(),
        point,
        old: Some(Color::Green),
        new: Some(Color::Blue),
        new_percent: Some(100),
        outcome: None,
    }
}

/// A script at `dir/name` run by `sh`, as a hook named `name`.
fn script(dir: &Path, name: &str, body: &str) -> CommandCheck {
    std::fs::write(dir.join(name), body).expect("write script");
    let mut c = CommandCheck::new(name, ["sh", name]);
    c.working_dir = Some(dir.to_path_buf());
    c.timeout = Duration::from_secs(20);
    c
}

fn secrets() -> Arc<dyn SecretSource> {
    let s = FakeSecrets::new();
    s.insert("prod/order-api/hook-token", TOKEN, None);
    Arc::new(s)
}

#[tokio::test]
async fn a_command_hook_is_told_its_point_and_colors_and_writes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut check = script(
        dir.path(),
        "record.sh",
        "printf '%s %s %s->%s %s%%\\n' \"$BLUEGREEN_HOOK_POINT\" \"$1\" \"$BLUEGREEN_OLD_COLOR\" \"$BLUEGREEN_NEW_COLOR\" \"$BLUEGREEN_PERCENT\" > ran.txt\necho recorded\n",
    );
    check.command.push("{version}".into());
    let hook = CommandHook::new(check).unwrap();
    let outcome = hook.run(&context(HookPoint::AfterTraffic)).await.unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    let written = std::fs::read_to_string(dir.path().join("ran.txt")).unwrap();
    assert_eq!(written, "after_traffic 2.5.0 green->blue 100%\n");
    assert!(
        outcome.detail.contains("exited with code 0"),
        "{}",
        outcome.detail
    );
    assert!(outcome.detail.contains("recorded"), "{}", outcome.detail);
    assert_eq!(outcome.attempts, 1);
}

#[tokio::test]
async fn a_command_hook_that_exits_non_zero_fails_with_its_output_tail_and_the_secret_masked() {
    let dir = tempfile::tempdir().unwrap();
    let mut check = script(
        dir.path(),
        "fail.sh",
        "echo \"calling with $HOOK_TOKEN\"\necho 'cache warm-up refused' >&2\nexit 3\n",
    );
    check
        .secrets
        .insert("HOOK_TOKEN".into(), "prod/order-api/hook-token".into());
    let hook = CommandHook::new(check).unwrap().with_secrets(secrets());
    let outcome = hook.run(&context(HookPoint::BeforeTraffic)).await.unwrap();
    assert!(!outcome.passed);
    let d = &outcome.detail;
    assert!(d.contains("`sh fail.sh` exited with code 3"), "{d}");
    assert!(d.contains("cache warm-up refused"), "{d}");
    assert!(!d.contains(TOKEN), "the secret is masked: {d}");
    assert!(d.contains("calling with"), "{d}");
}

#[tokio::test]
async fn a_command_hook_that_sleeps_past_its_timeout_is_killed_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut check = script(dir.path(), "slow.sh", "sleep 30\n");
    check.timeout = Duration::from_millis(300);
    let hook = CommandHook::new(check).unwrap();
    let started = Instant::now();
    let outcome = hook.run(&context(HookPoint::BeforeScaleUp)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed, not waited for"
    );
    assert!(!outcome.passed);
    assert!(
        outcome
            .detail
            .contains("timed out after 300ms (its process group was killed)"),
        "{}",
        outcome.detail
    );
}

#[tokio::test]
async fn a_command_hook_whose_program_does_not_exist_cannot_run_and_names_it() {
    let check = CommandCheck::new("ghost", ["./no-such-hook-program"]);
    let hook = CommandHook::new(check).unwrap();
    let err = hook
        .run(&context(HookPoint::BeforeScaleUp))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-hook-program"), "{err}");
    assert!(err.to_string().contains("command[0]"), "{err}");
}

#[test]
fn a_deployment_whose_command_hook_hangs_rolls_back_naming_the_hook_and_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut check = script(dir.path(), "warm-cache", "sleep 30\n");
    check.timeout = Duration::from_millis(500);
    let hook = Arc::new(CommandHook::new(check).unwrap());
    let mut plan = reference_plan();
    let mut spec = LifecycleHook::new("warm-cache", HookPoint::BeforeTraffic);
    spec.timeout = Duration::from_millis(500);
    plan.hooks = vec![spec];
    let started = Instant::now();
    let (report, f) = simulate(|f| {
        f.metrics
            .constant("error-rate", 0.002)
            .constant("p95-latency", 180.0);
        f.builder(plan).hook(hook)
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    let Some(Cause::HookFailed { hook, point, .. }) = report.rolled_back() else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(
        (hook.as_str(), *point),
        ("warm-cache", HookPoint::BeforeTraffic)
    );
    let why = &report.reason().unwrap().summary;
    assert!(
        why.contains("hook warm-cache (before_traffic) failed"),
        "{why}"
    );
    assert!(why.contains("timed out after 500ms"), "{why}");
    assert_eq!(
        f.world.split().percent(Color::Green),
        100,
        "no traffic moved"
    );
    assert_eq!(report.hooks.len(), 1, "the run is in the report");
}
