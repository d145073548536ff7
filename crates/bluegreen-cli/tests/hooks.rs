//! `[[hooks]]` and `[production_checks]` in a spec: bad input is refused
//! by `bluegreen validate` with exit 64 and the field named.

mod common;

use std::path::Path;

use common::{bluegreen, text};

fn local_example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/local.toml"
    ))
    .unwrap()
}

/// `bluegreen validate` of the local example with `extra` appended: its
/// exit code and its stderr.
fn validate_with(extra: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let spec = local_example().replace(
        "path = \"../target/bluegreen/demo-app.journal\"",
        "path = \"demo.journal\"",
    );
    std::fs::write(dir.path().join("spec.toml"), format!("{spec}\n{extra}")).unwrap();
    let out = bluegreen(Path::new(dir.path()), &["validate", "spec.toml"], &[]);
    (out.status.code(), text(&out.stderr) + &text(&out.stdout))
}

#[test]
fn the_local_example_with_its_hooks_validates() {
    let (code, out) = validate_with("");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_hook_at_an_unknown_point_is_refused_naming_point() {
    let (code, out) =
        validate_with("[[hooks]]\nname = \"x\"\npoint = \"before_lunch\"\ncommand = [\"true\"]\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("hooks[2]"), "{out}");
    assert!(
        out.contains("point: unknown hook point \"before_lunch\""),
        "{out}"
    );
    assert!(
        out.contains("before_traffic"),
        "the points are listed: {out}"
    );
}

#[test]
fn a_hook_whose_command_does_not_exist_is_refused_naming_its_command() {
    let (code, out) = validate_with(
        "[[hooks]]\nname = \"x\"\npoint = \"on_finish\"\ncommand = [\"./no-such-hook.sh\"]\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("hooks[2].command[0]"), "{out}");
    assert!(out.contains("no-such-hook.sh"), "{out}");
}

#[test]
fn a_hook_with_neither_command_nor_url_is_refused() {
    let (code, out) = validate_with("[[hooks]]\nname = \"x\"\npoint = \"on_finish\"\n");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("give `command`"), "{out}");
}

#[test]
fn a_webhook_hook_with_a_bad_url_is_refused_naming_its_url() {
    let (code, out) = validate_with(
        "[[hooks]]\nname = \"cmdb\"\npoint = \"on_finish\"\nurl = \"cmdb.example.com/x\"\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("hooks[2].url"), "{out}");
}

#[test]
fn a_production_check_naming_no_smoke_test_is_refused() {
    let (code, out) = validate_with(
        "[production_checks]\nurl = \"http://127.0.0.1:8080\"\nsmoke_tests = [\"health\", \"nope\"]\n",
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("production_checks.smoke_tests[1]"), "{out}");
    assert!(out.contains("\"nope\""), "{out}");
}

/// `bluegreen plan` of the order-api example (two webhook hooks), in
/// `format`: its exit code, its stdout and its stderr.
fn plan_order_api(format: &str) -> (Option<i32>, String, String) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/order-api.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = bluegreen(
        dir.path(),
        &["plan", spec.to_str().unwrap(), "--output", format],
        &[],
    );
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn plan_listed_hooks_only_as_stages_and_calls() {
    let (code, out, err) = plan_order_api("text");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\nHooks ("), "{out}");
    assert!(
        out.contains(
            "  record-change at before_traffic: timeout 30s, 2 retries, idempotent (run again on resume)"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "  open-incident at after_rollback: timeout 30s, 0 retries, not idempotent (a resume halts rather than run it twice)"
        ),
        "{out}"
    );
}

#[test]
fn plan_json_lacked_the_declared_hooks() {
    let (code, out, err) = plan_order_api("json");
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("plan --output json is JSON");
    let hooks = v["planned_hooks"].as_array().expect("planned_hooks");
    assert_eq!(hooks.len(), 2, "{v:#}");
    assert_eq!(hooks[0]["name"], "record-change");
    assert_eq!(hooks[0]["point"], "before_traffic");
    assert_eq!(hooks[0]["timeout"], "30s");
    assert_eq!(hooks[0]["retries"], 2);
    assert_eq!(hooks[0]["idempotent"], true);
    assert_eq!(hooks[1]["name"], "open-incident");
    assert_eq!(hooks[1]["point"], "after_rollback");
    assert_eq!(hooks[1]["idempotent"], false);
}
