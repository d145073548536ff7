//! Attacks from the same host, with the real binary: another local user
//! who steers a deployment through its control file, and spec files that
//! would exhaust the deployer (`/dev/zero`, a FIFO, a huge file, deep
//! nesting). Each command runs under `timeout`, so a hang fails the test
//! instead of blocking the run.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use bluegreen_cli::fake::{FakeChange, FakeWorldState};

mod common;

/// Runs `bluegreen ARGS` in `dir` under `timeout`, with the crash hook set
/// if `kill` is given.
fn bluegreen(dir: &Path, args: &[&str], kill: Option<&str>) -> Output {
    common::bluegreen(dir, args, &[(bluegreen_cli::journal::KILL_ENV, kill)])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` is a refused spec: exit 64, a message naming `file` (and
/// where, if given) and containing `why`.
fn assert_refused_spec(out: &Output, file: &str, why: &str) {
    let err = stderr(out);
    assert_ne!(out.status.code(), Some(124), "timed out: {err}");
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("bad spec: {file}:")) && err.contains(why),
        "{err}"
    );
}

#[test]
fn a_spec_that_is_dev_zero_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = bluegreen(dir.path(), &["validate", "/dev/zero"], None);
    assert_refused_spec(
        &out,
        "/dev/zero",
        "is a character device, not a regular file",
    );
}

#[test]
fn a_spec_that_is_a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("spec.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = bluegreen(dir.path(), &["plan", "spec.toml"], None);
    assert_refused_spec(
        &out,
        "spec.toml",
        "is a FIFO (named pipe), not a regular file",
    );
}

#[test]
fn a_spec_of_2_mib_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let line = format!("# {}\n", "x".repeat(1021));
    std::fs::write(dir.path().join("spec.toml"), line.repeat(2048)).unwrap();
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], None);
    assert_refused_spec(
        &out,
        "spec.toml",
        "is 2097152 bytes, more than the limit of 1048576 (1 MiB)",
    );
}

#[test]
fn a_yaml_spec_nested_100k_deep_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    // Flow collections: the YAML parser's time grows with the square of
    // their depth (a minute for this file).
    let flow = format!("scope: {}{}\n", "[".repeat(n), "]".repeat(n));
    std::fs::write(dir.path().join("flow.yaml"), flow).unwrap();
    let out = bluegreen(dir.path(), &["validate", "flow.yaml"], None);
    assert_refused_spec(&out, "flow.yaml:1", "nests more than 64 levels deep");
    // Block sequences, one `- ` each.
    let dashes = format!("scope:\n  {}x\n", "- ".repeat(n));
    std::fs::write(dir.path().join("dashes.yml"), dashes).unwrap();
    let out = bluegreen(dir.path(), &["deploy", "dashes.yml"], None);
    assert_refused_spec(&out, "dashes.yml:2", "nests more than 64 levels deep");
}

#[test]
fn a_toml_spec_nested_100k_deep_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let text = format!("a = {}{}\n", "[".repeat(n), "]".repeat(n));
    std::fs::write(dir.path().join("spec.toml"), text).unwrap();
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], None);
    assert_refused_spec(&out, "spec.toml:1", "recursion limit");
}

/// The fake-target spec of the crash tests with a gate before the first
/// traffic shift: the deployer holds there until a human promotes.
const GATED: &str = r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.fake]
state = "world.json"
paused_time = true
initial_version = "2.4.0"

[deployment]
replicas = 2
strategy = { type = "canary", percent = 20, wait = "2m" }
gates = ["before-shift"]

[[smoke_tests]]
name = "health-check"
url = "{base_url}/health"

[monitoring]
provider = "fake"
fake = { values = { error-rate = 0.002 } }

[[monitoring.checks]]
name = "error-rate"
query = "errors:{color}"
unit = "ratio"
success = "< 0.01"

[timing]
analysis_window = "5m"
soak = "10m"

[journal]
path = "deploy.journal"
"#;

/// A directory every local user may create files in, like `/tmp`
/// (mode 1777), holding the gated spec.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(dir.path().join("spec.toml"), GATED).unwrap();
    dir
}

/// Runs `sh -c script` as the user `nobody` (uid 65534), with `args` as
/// `$1`, `$2`...; `false` when this host cannot (not root, no `setpriv`).
fn as_nobody(script: &str, args: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["sh", "-c", script, "sh"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn can_act_as_nobody() -> bool {
    let ok = as_nobody("true", &[]);
    if !ok {
        eprintln!("skipped: acting as another user needs root and setpriv");
    }
    ok
}

fn world(dir: &Path) -> FakeWorldState {
    serde_json::from_str(&std::fs::read_to_string(dir.join("world.json")).unwrap()).unwrap()
}

fn traffic_moved(dir: &Path) -> bool {
    world(dir)
        .changes
        .iter()
        .any(|c| matches!(c, FakeChange::Split { .. }))
}

/// The journal append (1-based) whose record entered the hold at the gate,
/// and the deployment's id, from an uninterrupted run nobody promotes.
fn gate_hold() -> u64 {
    let probe = shared_dir();
    let out = bluegreen(probe.path(), &["deploy", "spec.toml"], None);
    assert_ne!(out.status.code(), Some(124), "timed out: {}", stderr(&out));
    let text = std::fs::read_to_string(probe.path().join("deploy.journal")).unwrap();
    for line in text.lines() {
        if line.contains("\"hold\":\"gate\"") {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            return v["entry"]["seq"].as_u64().unwrap();
        }
    }
    panic!("no hold at the gate in the journal: {text}")
}

#[test]
fn a_promote_another_user_planted_in_the_control_file_does_not_pass_the_gate() {
    if !can_act_as_nobody() {
        return;
    }
    let at_gate = gate_hold();
    let dir = shared_dir();
    let out = bluegreen(
        dir.path(),
        &["deploy", "--id", "d1", "spec.toml"],
        Some(&at_gate.to_string()),
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed while held at the gate"
    );
    assert!(!traffic_moved(dir.path()));
    // Another local user writes a promote for it into the shared directory.
    let control = dir.path().join("deploy.journal.control");
    let planted = "{\"deployment_id\":\"d1\",\"control\":{\"control\":\"promote\"}}\n";
    assert!(as_nobody(
        "printf '%s' \"$1\" >> \"$2\"",
        &[planted, control.to_str().unwrap()]
    ));
    assert_eq!(std::fs::read_to_string(&control).unwrap(), planted);

    let out = bluegreen(dir.path(), &["resume", "spec.toml"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "refused: {err}");
    assert!(
        err.contains("control file deploy.journal.control is owned by uid 65534"),
        "{err}"
    );
    assert!(
        !traffic_moved(dir.path()),
        "the planted promote was not applied"
    );
    let journal = std::fs::read_to_string(dir.path().join("deploy.journal")).unwrap();
    assert!(!journal.contains("\"control\":\"promote\""), "{journal}");
    // Nor does an operator's promote go into the planted file.
    let out = bluegreen(dir.path(), &["promote", "--id", "d1", "spec.toml"], None);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&control).unwrap(), planted);
}

#[test]
fn a_control_file_another_user_created_before_the_deploy_stops_it_before_it_acts() {
    if !can_act_as_nobody() {
        return;
    }
    let dir = shared_dir();
    let control = dir.path().join("deploy.journal.control");
    // Created empty, writable by all, to append a promote at the gate later.
    assert!(as_nobody(
        "touch \"$1\" && chmod 666 \"$1\"",
        &[control.to_str().unwrap()]
    ));
    let out = bluegreen(dir.path(), &["deploy", "--id", "d1", "spec.toml"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "refused: {err}");
    assert!(
        err.contains("control file deploy.journal.control is owned by uid 65534"),
        "{err}"
    );
    let acted = std::fs::read_to_string(dir.path().join("world.json"))
        .ok()
        .map(|t| serde_json::from_str::<FakeWorldState>(&t).unwrap().changes);
    assert!(
        acted.as_ref().is_none_or(|c| c.is_empty()),
        "nothing was done: {acted:?}"
    );
}
