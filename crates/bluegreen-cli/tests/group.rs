//! Coordinated deployments through the binary: one spec with a `[group]` and
//! two `[[services]]` on fake targets (each a world in its own file, virtual
//! time). A good group succeeds with both services moved; a group with one
//! bad member rolls both back; a group killed with SIGKILL mid-deployment
//! resumes with every effect done exactly once; an abort or a promote sent to
//! a group whose deployer died at a gate is applied when it is resumed, and
//! one sent to a live group deployer is reported taken; bad group specs are
//! refused with their location.

#[cfg(not(feature = "testing"))]
compile_error!(
    "the bluegreen-cli tests drive the fake target and the journal kill switch: run them with `--features testing` (scripts/test uses --all-features)"
);

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use bluegreen_cli::fake::{FakeChange, FakeWorldState};
use bluegreen_core::Color;

const CANARY: &str = r#"{ type = "canary", percent = 20, wait = "2m" }"#;

fn member(service: &str, error_rate: f64) -> String {
    member_with(service, error_rate, CANARY)
}

fn member_with(service: &str, error_rate: f64, strategy: &str) -> String {
    format!(
        r#"
[[services]]
[services.scope]
service = "{service}"
version = "2.5.0"
image = "{service}:2.5.0"

[services.target.fake]
state = "{service}.world.json"
paused_time = true
initial_version = "2.4.0"
migrations = [{{ version = 25, name = "add_column", phase = "expand" }}]

[services.deployment]
replicas = 2
strategy = {strategy}

[services.migrations]
runner = "fake"
backup_min_entries = 100

[[services.smoke_tests]]
name = "health-check"
url = "{{base_url}}/health"

[services.monitoring]
provider = "fake"
fake = {{ values = {{ error-rate = {error_rate}, p95-latency = 180.0 }} }}

[[services.monitoring.checks]]
name = "error-rate"
query = "errors:{{color}}"
unit = "ratio"
success = "< 0.01"

[[services.rollback_triggers]]
type = "metric"
check = "error-rate"
breach = "> 0.05"
for = "3m"

[services.timing]
analysis_window = "5m"
soak = "10m"
"#
    )
}

fn spec(payments_error_rate: f64) -> String {
    format!(
        "[group]\nname = \"checkout\"\nbarrier_timeout = \"20m\"\n{}{}\n[journal]\npath = \"checkout.journal\"\n",
        member("order-api", 0.002),
        member("payment-api", payments_error_rate)
    )
}

fn bluegreen(dir: &Path, args: &[&str], kill: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
    c.current_dir(dir).args(args);
    match kill {
        Some(k) => c.env(bluegreen_cli::journal::KILL_ENV, k),
        None => c.env_remove(bluegreen_cli::journal::KILL_ENV),
    };
    c.output().expect("the bluegreen binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup(payments_error_rate: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("group.toml"), spec(payments_error_rate)).unwrap();
    dir
}

fn world(dir: &Path, service: &str) -> FakeWorldState {
    let path = dir.join(format!("{service}.world.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn count(w: &FakeWorldState, c: &FakeChange) -> usize {
    w.changes.iter().filter(|x| *x == c).count()
}

fn report_json(dir: &Path) -> serde_json::Value {
    let out = bluegreen(dir, &["report", "group.toml", "--format", "json"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn assert_moved_exactly_once(dir: &Path, label: &str) {
    for service in ["order-api", "payment-api"] {
        let w = world(dir, service);
        assert_eq!(
            w.blue_percent, 100,
            "{label} {service}: all traffic on blue"
        );
        assert_eq!(w.colors[&Color::Blue].desired, 2, "{label} {service}");
        assert_eq!(w.colors[&Color::Green].desired, 0, "{label} {service}");
        for c in [
            FakeChange::Migrated { version: 25 },
            FakeChange::Split { blue: 20 },
            FakeChange::Split { blue: 100 },
            FakeChange::Scaled {
                color: Color::Green,
                count: 0,
            },
        ] {
            assert_eq!(
                count(&w, &c),
                1,
                "{label} {service}: {c:?} exactly once in {:?}",
                w.changes
            );
        }
    }
}

#[test]
fn a_group_deploys_both_services_together() {
    let dir = setup(0.002);
    let out = bluegreen(dir.path(), &["validate", "group.toml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("group checkout: 2 services [order-api, payment-api]"),
        "{}",
        text(&out)
    );
    let out = bluegreen(dir.path(), &["deploy", "group.toml", "--id", "g1"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("g1: succeeded"), "{}", text(&out));
    // Progress lines name their member.
    assert!(
        stdout.contains("[payment-api] traffic confirmed: blue 20%"),
        "{}",
        text(&out)
    );
    assert_moved_exactly_once(dir.path(), "uninterrupted");
    let r = report_json(dir.path());
    assert_eq!(r["outcome"], "succeeded");
    assert_eq!(r["report"]["members"][0]["deployment_id"], "g1/order-api");
    assert_eq!(
        r["report"]["members"][1]["report"]["outcome"]["outcome"],
        "succeeded"
    );
    // A reader that goes away (`bluegreen report | head`) ends the report
    // quietly, never with a panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .current_dir(dir.path())
        .args(["report", "group.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{:?} {}",
        out.status,
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        text(&out)
    );
    // The example group spec is valid.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/checkout-group.toml");
    let out = bluegreen(dir.path(), &["validate", example.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bluegreen(dir.path(), &["status", "group.toml"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("g1: group checkout — succeeded"),
        "{}",
        text(&out)
    );
}

#[test]
fn one_bad_member_rolls_the_whole_group_back() {
    let dir = setup(0.08);
    let out = bluegreen(dir.path(), &["deploy", "group.toml", "--id", "g1"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rolled back because payment-api rolled back: analysis failed at the end of traffic step 1 (20%): error-rate = 8% "),
        "{}",
        text(&out)
    );
    for service in ["order-api", "payment-api"] {
        let w = world(dir.path(), service);
        assert_eq!(w.blue_percent, 0, "{service}: traffic back on green");
        assert_eq!(w.colors[&Color::Blue].desired, 0, "{service}");
        assert_eq!(w.colors[&Color::Green].desired, 2, "{service}");
        assert_eq!(
            count(&w, &FakeChange::Split { blue: 20 }),
            1,
            "{service}: the canary moved together"
        );
        assert_eq!(
            count(&w, &FakeChange::Split { blue: 100 }),
            0,
            "{service}: never fully shifted"
        );
    }
    // The report rebuilt from the journal names the member that failed.
    let r = report_json(dir.path());
    assert_eq!(r["outcome"], "rolled_back");
    assert_eq!(r["trigger"]["member"], "payment-api");
    let order = &r["report"]["members"][0]["report"]["outcome"]["reason"]["summary"];
    assert!(
        order
            .as_str()
            .unwrap()
            .contains("group checkout: member payment-api rolled back: analysis failed"),
        "{order}"
    );
}

#[test]
fn a_group_killed_mid_deployment_resumes_with_every_effect_once() {
    // The uninterrupted run tells how many appends there are.
    let base = setup(0.002);
    let out = bluegreen(base.path(), &["deploy", "group.toml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report_json(base.path());
    let total: u64 = (0..2)
        .map(|i| {
            r["report"]["members"][i]["report"]["records"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(total > 40, "{total}");
    // The first appends (leases, starts, preflight), then about 40 points
    // spread over the whole run, each a fresh group.
    let points: Vec<u64> = (2..8)
        .chain((8..total).step_by((total / 40).max(1) as usize))
        .collect();
    for n in points {
        for mode in ["before", "after"] {
            let dir = setup(0.002);
            let kill = format!("{n}:{mode}");
            let out = bluegreen(dir.path(), &["deploy", "group.toml"], Some(&kill));
            assert_eq!(
                out.status.signal(),
                Some(9),
                "kill at {kill}: {}",
                text(&out)
            );
            let out = bluegreen(dir.path(), &["resume", "group.toml"], None);
            let label = format!("killed {mode} append {n} of {total}");
            assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
            assert_moved_exactly_once(dir.path(), &label);
        }
    }
}

#[test]
fn bad_group_specs_are_refused_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, body: &str, expect: &[&str]| {
        std::fs::write(dir.path().join(name), body).unwrap();
        let out = bluegreen(dir.path(), &["validate", name], None);
        assert_eq!(out.status.code(), Some(64), "{name}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        for e in expect {
            assert!(err.contains(e), "{name}: {e:?} not in {err}");
        }
    };
    let mismatched = format!(
        "[group]\nname = \"checkout\"\n{}{}",
        member("order-api", 0.002),
        member_with("payment-api", 0.002, r#"{ type = "all-at-once" }"#)
    );
    let line_of =
        |text: &str, needle: &str| text[..text.rfind(needle).unwrap()].matches('\n').count() + 1;
    let line = line_of(&mismatched, "strategy = { type = \"all-at-once\" }");
    check(
        "steps.toml",
        &mismatched,
        &[
            &format!("steps.toml:{line}"),
            "services[1].deployment.strategy",
            "shifts traffic in steps [100] but order-api in [20, 100]",
        ],
    );
    check(
        "typo.toml",
        &spec(0.002).replacen("barrier_timeout", "barier_timeout", 1),
        &[
            "typo.toml:3",
            "unknown field `barier_timeout`",
            "did you mean `barrier_timeout`?",
        ],
    );
    let twice = format!(
        "[group]\nname = \"checkout\"\n{}{}",
        member("order-api", 0.002),
        member("order-api", 0.002)
    );
    check(
        "twice.toml",
        &twice,
        &[
            "services[1].scope.service",
            "\"order-api\" is already services[0]",
        ],
    );
    let own_journal = format!(
        "[group]\nname = \"checkout\"\n{}\n[services.journal]\npath = \"own.journal\"\n{}",
        member("order-api", 0.002),
        member("payment-api", 0.002)
    );
    check(
        "journal.toml",
        &own_journal,
        &["services[0].journal", "move [journal] to the top level"],
    );
    check(
        "lonely.toml",
        &format!(
            "[group]\nname = \"checkout\"\n{}",
            member("order-api", 0.002)
        ),
        &["services", "needs at least two"],
    );
    check(
        "duration.toml",
        &spec(0.002).replacen("soak = \"10m\"", "soak = \"ten minutes\"", 1),
        &["services[0].timing.soak", "expected a duration"],
    );
}

/// The group spec with a gate before the first traffic shift in every
/// member, so a deployer holds there until a human promotes.
fn gated_spec(paused_time: bool) -> String {
    spec(0.002)
        .replace(
            "[services.deployment]\n",
            "[services.deployment]\ngates = [\"before-shift\"]\n",
        )
        .replace(
            "paused_time = true",
            &format!("paused_time = {paused_time}"),
        )
}

fn setup_gated(paused_time: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("group.toml"), gated_spec(paused_time)).unwrap();
    dir
}

/// The journal lines of members entering a hold at their gate.
fn gate_holds(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("checkout.journal"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"hold\":\"gate\""))
        .map(String::from)
        .collect()
}

/// The journal append (1-based, counted over every member, as the kill
/// switch counts them) whose record put the last member on hold at its
/// gate, from an uninterrupted run (no one promotes it: it rolls back at
/// the hold timeout).
fn last_gate_hold_append() -> u64 {
    let probe = setup_gated(true);
    let out = bluegreen(probe.path(), &["deploy", "group.toml"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let journal = std::fs::read_to_string(probe.path().join("checkout.journal")).unwrap();
    let mut appends = 0;
    let mut last = None;
    for line in journal.lines() {
        if line.starts_with(r#"{"line":"entry""#) {
            appends += 1;
            if line.contains("\"hold\":\"gate\"") {
                last = Some(appends);
            }
        }
    }
    last.expect("the members hold at their gate")
}

/// A gated group whose deployer was killed with SIGKILL while both members
/// were held at their gate.
fn killed_at_the_gate() -> tempfile::TempDir {
    let at = last_gate_hold_append();
    let dir = setup_gated(true);
    let out = bluegreen(
        dir.path(),
        &["deploy", "group.toml", "--id", "g1"],
        Some(&at.to_string()),
    );
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert_eq!(
        gate_holds(dir.path()).len(),
        2,
        "killed with both members held at their gate"
    );
    dir
}

#[test]
fn an_abort_sent_to_a_group_after_its_deployer_died_is_applied_on_resume() {
    let dir = killed_at_the_gate();
    let out = bluegreen(
        dir.path(),
        &["abort", "group.toml", "--reason", "bad canary"],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout.contains("g1: no running group deployer took abort (\"bad canary\")")
            && stdout.contains("applies to every member when the group is resumed"),
        "{}",
        text(&out)
    );

    let out = bluegreen(dir.path(), &["resume", "group.toml"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "rolled back: {}", text(&out));
    assert!(
        stdout.contains("applying abort (\"bad canary\") sent to the group while no deployer ran"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("rolled back: aborted by an operator: bad canary"),
        "the abort, not the hold timeout, rolled the group back: {}",
        text(&out)
    );
    for service in ["order-api", "payment-api"] {
        let w = world(dir.path(), service);
        assert!(
            !w.changes
                .iter()
                .any(|c| matches!(c, FakeChange::Split { .. })),
            "{service}: no traffic moved: {:?}",
            w.changes
        );
        assert_eq!(w.blue_percent, 0, "{service}: traffic stays on green");
        assert_eq!(w.colors[&Color::Blue].desired, 0, "{service}");
        assert_eq!(w.colors[&Color::Green].desired, 2, "{service}");
        assert_eq!(
            count(&w, &FakeChange::Reverted { version: 25 }),
            1,
            "{service}: its migration reverted once: {:?}",
            w.changes
        );
    }
    // The report rebuilt from the journal records the operator's abort.
    let r = report_json(dir.path());
    assert_eq!(r["outcome"], "rolled_back");
    assert_eq!(r["trigger"]["member"], serde_json::Value::Null);
    assert_eq!(r["trigger"]["reason"], "aborted by an operator: bad canary");
    for i in 0..2 {
        assert_eq!(
            r["report"]["members"][i]["report"]["outcome"]["reason"]["summary"],
            "manual abort: bad canary",
            "{}",
            r["report"]["members"][i]["service"]
        );
    }
    // Finished: a second resume applies nothing again.
    let out = bluegreen(dir.path(), &["resume", "group.toml"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("g1 already finished: rolled_back"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_promote_sent_to_a_group_after_its_deployer_died_is_applied_on_resume() {
    let dir = killed_at_the_gate();
    let out = bluegreen(dir.path(), &["promote", "group.toml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("g1: no running group deployer took promote"),
        "{}",
        text(&out)
    );
    // Without the promote, both members would roll back at the hold timeout.
    let out = bluegreen(dir.path(), &["resume", "group.toml"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "succeeded: {}", text(&out));
    assert!(
        stdout.contains("applying promote sent to the group while no deployer ran"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("g1: succeeded"), "{}", text(&out));
    assert_moved_exactly_once(dir.path(), "promoted on resume");
    // Each member took the promote once: at its gate.
    let journal = std::fs::read_to_string(dir.path().join("checkout.journal")).unwrap();
    for service in ["order-api", "payment-api"] {
        let promotes: Vec<&str> = journal
            .lines()
            .filter(|l| {
                l.contains(&format!("\"deployment_id\":\"g1/{service}\""))
                    && l.contains(r#""input":{"input":"control","control":{"control":"promote"}}"#)
            })
            .collect();
        assert_eq!(promotes.len(), 1, "{service}: {promotes:?}");
        assert!(
            promotes[0].contains("promoted past the gate before-shift by a human"),
            "{service}: {}",
            promotes[0]
        );
    }
}

#[test]
fn an_abort_sent_to_a_live_group_deployer_is_reported_taken_by_every_member() {
    // Real time: the deployer holds at the gate until it is told otherwise.
    let dir = setup_gated(false);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .current_dir(dir.path())
        .args(["deploy", "group.toml", "--id", "g1"])
        .env_remove(bluegreen_cli::journal::KILL_ENV)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while gate_holds(dir.path()).len() < 2 {
        if child.try_wait().unwrap().is_some() || start.elapsed().as_secs() >= 60 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "both members reach their gate: {:?} {}",
                out.status,
                text(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = bluegreen(
        dir.path(),
        &[
            "abort",
            "group.toml",
            "--reason",
            "bad canary",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["group_id"], "g1", "{v}");
    assert_eq!(v["taken"], true, "{v}");
    for m in v["members"].as_array().unwrap() {
        assert_eq!(m["taken"], true, "{v}");
        assert_eq!(m["effect"], "rolling back", "{v}");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "rolled back: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("rolled back: aborted by an operator: bad canary"),
        "{}",
        text(&out)
    );
    // Taken by the live deployer, so a resume has nothing to apply.
    let out = bluegreen(dir.path(), &["resume", "group.toml"], None);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("applying"),
        "{}",
        text(&out)
    );
}
