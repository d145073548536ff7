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
