//! `bluegreen plan --rehearse` and `bluegreen approve --as NAME`, with the
//! real binary on the fake target.

mod common;

use std::path::Path;

use common::{bluegreen, text, FAKE_SPEC};

fn write_spec(dir: &Path, extra: &str) {
    std::fs::write(dir.join("spec.toml"), format!("{FAKE_SPEC}{extra}")).unwrap();
}

const IRREVERSIBLE: &str = r#"
[migrations]
runner = "fake"
backup_min_entries = 1

[[target.fake.migrations]]
version = 25
name = "add_order_metadata"

[[target.fake.migrations]]
version = 26
name = "drop_legacy_status"
reversible = false
"#;

#[test]
fn plan_rehearse_times_each_stages_rollback_and_halts_after_an_irreversible_migration() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), IRREVERSIBLE);
    let out = bluegreen(dir.path(), &["plan", "--rehearse", "spec.toml"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("Rollback rehearsal of order-api 2.5.0"),
        "{stdout}"
    );
    // Before the migrations: rolled back with nothing to undo.
    let preflight = block(&stdout, "failure in preflight");
    assert!(preflight.contains("=> rolled back after 0s"), "{preflight}");
    // The canary's watch: traffic back at once, drained 30 s, then halted
    // at the revert because 26 cannot be undone.
    let watch = block(&stdout, "failure in watch_step_0");
    assert!(
        watch.contains("traffic set to blue 0% / green 100%")
            || watch.contains("traffic set to green 100% / blue 0%"),
        "{watch}"
    );
    assert!(watch.contains("drain for 30s"), "{watch}");
    assert!(
        watch.contains("=> HALTS after 30s at rollback_revert_migrations"),
        "{watch}"
    );
    assert!(watch.contains("26 drop_legacy_status"), "{watch}");
    assert!(
        watch.contains("traffic back in 0s (within the 1m target)"),
        "{watch}"
    );
    // Past the point of no return.
    let down = block(&stdout, "failure in scale_down_old");
    assert!(down.contains("=> HALTS"), "{down}");
}

/// The lines of the rehearsal's block whose heading contains `heading`.
fn block<'a>(stdout: &'a str, heading: &str) -> &'a str {
    let start = stdout
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{stdout}"));
    let rest = &stdout[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn plan_rehearse_of_an_invalid_spec_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), "\n[timing]\nrollback_window = \"0s\"\n");
    let out = bluegreen(dir.path(), &["plan", "--rehearse", "spec.toml"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("timing.rollback_window"), "{stderr}");
}

const APPROVALS: &str = r#"
[[approvals]]
gate = "before-shift"
groups = [
  { role = "engineers", names = ["eng-a", "eng-b", "eng-c"], required = 2 },
  { role = "product owner", names = ["owner"], required = 1 },
]

[journal]
path = "deploy.journal"
"#;

/// The journal record at which the deployer holds at the gate.
fn hold_seq(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("deploy.journal")).unwrap();
    for line in text.lines() {
        if line.contains("\"hold\":\"gate\"") {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            return v["entry"]["seq"].as_u64().unwrap();
        }
    }
    panic!("no hold at a gate in the journal")
}

#[test]
fn approve_as_refuses_an_unknown_name_and_a_repeat_and_three_distinct_approvals_pass_the_gate() {
    // Where a deployer reaches the gate (nobody approves: it times out).
    let probe = tempfile::tempdir().unwrap();
    write_spec(probe.path(), APPROVALS);
    bluegreen(probe.path(), &["deploy", "spec.toml"], &[]);
    let at_gate = hold_seq(probe.path());

    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), APPROVALS);
    let kill = at_gate.to_string();
    let out = bluegreen(
        dir.path(),
        &["deploy", "spec.toml"],
        &[(bluegreen_cli::journal::KILL_ENV, Some(&kill))],
    );
    assert_ne!(out.status.code(), Some(0), "killed at the gate");

    // A name on none of the gate's lists: refused here, naming the gate.
    let out = bluegreen(
        dir.path(),
        &["approve", "--as", "intruder", "spec.toml"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("\"intruder\" is not an approver of gate before-shift (approvers: eng-a, eng-b, eng-c, owner)"),
        "{stderr}"
    );
    for name in ["eng-a", "eng-a", "owner", "eng-c"] {
        let out = bluegreen(dir.path(), &["approve", "--as", name, "spec.toml"], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.contains(&format!("no running deployer took approval by {name}")),
            "{stdout}"
        );
    }
    let out = bluegreen(dir.path(), &["resume", "spec.toml"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let journal = std::fs::read_to_string(dir.path().join("deploy.journal")).unwrap();
    assert!(
        journal.contains("eng-a already approved the gate before-shift"),
        "the repeat is refused"
    );
    assert!(journal.contains("approved by owner (product owner) for the gate before-shift"));
    // Who and when, in the report's recorded state.
    let out = bluegreen(
        dir.path(),
        &["report", "--format", "json", "spec.toml"],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let facts = if report["facts"].is_null() {
        &report["report"]["facts"]
    } else {
        &report["facts"]
    };
    let approvals = facts["approvals"]
        .as_array()
        .unwrap_or_else(|| panic!("no approvals in {report}"));
    let names: Vec<&str> = approvals
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eng-a", "owner", "eng-c"]);
    assert!(approvals.iter().all(|a| a["at"].as_u64().is_some()));
}
