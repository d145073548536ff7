//! Crash safety with real processes: `bluegreen deploy` of a fake-target spec
//! (a world kept in a file, virtual time) is killed with SIGKILL at every
//! journal append in turn, before and after the append reaches the disk; then
//! `bluegreen resume` runs it to the end. Every run must succeed with each
//! non-idempotent action done exactly once, as the world file recorded it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use bluegreen_cli::fake::{FakeChange, FakeWorldState};
use bluegreen_core::Color;

const SPEC: &str = r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.fake]
state = "world.json"
paused_time = true
initial_version = "2.4.0"
migrations = [
  { version = 25, name = "add_order_metadata", phase = "expand" },
  { version = 26, name = "drop_legacy_status", phase = "contract", reversible = false },
]

[deployment]
replicas = 3
strategy = { type = "canary", percent = 20, wait = "2m" }

[[secrets]]
name = "prod/order-api/db-password"
env = "DB_PASSWORD"
rotation = "90d"

[migrations]
runner = "fake"
backup_min_entries = 100

[[smoke_tests]]
name = "health-check"
url = "{base_url}/health"

[monitoring]
provider = "fake"
fake = { values = { error-rate = 0.002, p95-latency = 180.0 } }

[[monitoring.checks]]
name = "error-rate"
query = "errors:{color}"
unit = "ratio"
success = "< 0.01"

[[monitoring.checks]]
name = "p95-latency"
query = "p95:{color}"
unit = "milliseconds"
success = "< 500"

[[rollback_triggers]]
type = "metric"
check = "error-rate"
breach = "> 0.05"
for = "5m"

[timing]
analysis_window = "5m"
soak = "10m"

[journal]
path = "deploy.journal"
"#;

fn bluegreen(dir: &Path, args: &[&str], kill: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
    c.current_dir(dir).args(args).arg("spec.toml");
    match kill {
        Some(k) => c.env(bluegreen_cli::journal::KILL_ENV, k),
        None => c.env_remove(bluegreen_cli::journal::KILL_ENV),
    };
    c.output().expect("the bluegreen binary runs")
}

fn world(dir: &Path) -> FakeWorldState {
    serde_json::from_str(&std::fs::read_to_string(dir.join("world.json")).unwrap()).unwrap()
}

fn appends(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("deploy.journal"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"line\":\"entry\""))
        .count()
}

fn count(w: &FakeWorldState, c: &FakeChange) -> usize {
    w.changes.iter().filter(|x| *x == c).count()
}

/// The end state of one successful deployment, whatever the crashes.
fn assert_done_exactly_once(w: &FakeWorldState, label: &str) {
    assert_eq!(w.blue_percent, 100, "{label}: all traffic on blue");
    assert_eq!(w.colors[&Color::Blue].desired, 3, "{label}");
    assert_eq!(w.colors[&Color::Green].desired, 0, "{label}");
    assert_eq!(w.applied, vec![25, 26], "{label}");
    for c in [
        FakeChange::Migrated { version: 25 },
        FakeChange::Migrated { version: 26 },
        FakeChange::Split { blue: 20 },
        FakeChange::Split { blue: 100 },
        FakeChange::Scaled {
            color: Color::Blue,
            count: 3,
        },
        FakeChange::Scaled {
            color: Color::Green,
            count: 0,
        },
    ] {
        assert_eq!(
            count(w, &c),
            1,
            "{label}: {c:?} exactly once in {:?}",
            w.changes
        );
    }
    assert!(
        !w.changes
            .iter()
            .any(|c| matches!(c, FakeChange::Reverted { .. })),
        "{label}: nothing reverted"
    );
}

#[test]
fn a_deployer_killed_at_every_journal_append_resumes_to_success_with_each_action_once() {
    // The uninterrupted run tells how many appends there are.
    let base = tempfile::tempdir().unwrap();
    std::fs::write(base.path().join("spec.toml"), SPEC).unwrap();
    let out = bluegreen(base.path(), &["deploy"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_done_exactly_once(&world(base.path()), "uninterrupted");
    let total = appends(base.path());
    assert!(
        total > 10,
        "a whole deployment appends many records, got {total}"
    );

    let mut runs = 0;
    for n in 1..=total {
        for mode in ["before", "after"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
            let kill = format!("{n}:{mode}");
            let out = bluegreen(dir.path(), &["deploy"], Some(&kill));
            assert_eq!(
                out.status.signal(),
                Some(9),
                "kill at {kill}: killed by SIGKILL; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = bluegreen(dir.path(), &["resume"], None);
            let label = format!("killed {mode} append {n} of {total}");
            if n == 1 && mode == "before" {
                // Nothing was journaled: there is nothing to resume, and
                // nothing was changed.
                assert_eq!(out.status.code(), Some(3), "{label}");
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("no"),
                    "{label}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(world(dir.path()).changes.is_empty(), "{label}");
                continue;
            }
            assert_eq!(
                out.status.code(),
                Some(0),
                "{label}: resume succeeds; stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_done_exactly_once(&world(dir.path()), &label);
            runs += 1;
        }
    }
    eprintln!("{runs} killed-and-resumed deployments, {total} append points");
}

#[test]
fn resume_with_a_different_spec_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let out = bluegreen(dir.path(), &["deploy"], Some("8"));
    assert_eq!(out.status.signal(), Some(9));
    std::fs::write(
        dir.path().join("spec.toml"),
        SPEC.replace("version = \"2.5.0\"", "version = \"2.6.0\""),
    )
    .unwrap();
    let out = bluegreen(dir.path(), &["resume"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("different plan"), "{err}");
    // Nothing past the crash happened.
    assert_eq!(world(dir.path()).blue_percent, 0);
}
