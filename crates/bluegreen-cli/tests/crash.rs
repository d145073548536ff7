//! Crash safety with real processes: `bluegreen deploy` of a fake-target spec
//! (a world kept in a file, virtual time) is killed with SIGKILL at every
//! journal append in turn, before and after the append reaches the journal;
//! then `bluegreen resume` runs it to the end. Every run must succeed with
//! each non-idempotent action done exactly once, as the world file recorded
//! it. Once with the file journal, once with the Postgres journal (the server
//! scripts/test starts, a fresh database per run).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use bluegreen_cli::fake::{FakeChange, FakeWorldState};

mod common;
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

/// The variable the Postgres-journal spec reads its journal URL from.
const JOURNAL_URL_ENV: &str = "BLUEGREEN_CRASH_JOURNAL_URL";

/// Where a run keeps its journal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JournalKind {
    File,
    Postgres,
}

/// One deployment's directory, spec and journal.
struct Run {
    dir: tempfile::TempDir,
    /// The Postgres journal's database URL.
    url: Option<String>,
}

impl Run {
    fn new(kind: JournalKind, spec: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let url = (kind == JournalKind::Postgres).then(fresh_database);
        let spec = match kind {
            JournalKind::File => spec.to_string(),
            JournalKind::Postgres => {
                format!("{spec}kind = \"postgres\"\nurl = {{ env = \"{JOURNAL_URL_ENV}\" }}\n")
            }
        };
        std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
        Run { dir, url }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn bluegreen(&self, args: &[&str], kill: Option<&str>) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
        c.current_dir(self.path()).args(args).arg("spec.toml");
        match kill {
            Some(k) => c.env(bluegreen_cli::journal::KILL_ENV, k),
            None => c.env_remove(bluegreen_cli::journal::KILL_ENV),
        };
        match &self.url {
            Some(u) => c.env(JOURNAL_URL_ENV, u),
            None => c.env_remove(JOURNAL_URL_ENV),
        };
        c.output().expect("the bluegreen binary runs")
    }

    /// Journal records of the latest deployment, as `bluegreen status` reads them.
    fn appends(&self) -> usize {
        let out = self.bluegreen(&["status", "--output", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status prints JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v["records"].as_u64().expect("records") as usize
    }
}

/// A fresh database on the server scripts/services/postgres.sh started,
/// as a URL for the deployer (TLS verified against the server's CA), named
/// after this process and a counter.
fn fresh_database() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "crash_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(common::fresh_database(&name))
}

fn world(dir: &Path) -> FakeWorldState {
    serde_json::from_str(&std::fs::read_to_string(dir.join("world.json")).unwrap()).unwrap()
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

fn killed_at_every_append_resumes_to_success(kind: JournalKind) {
    // The uninterrupted run tells how many appends there are.
    let base = Run::new(kind, SPEC);
    let out = base.bluegreen(&["deploy"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_done_exactly_once(&world(base.path()), "uninterrupted");
    let total = base.appends();
    assert!(
        total > 10,
        "a whole deployment appends many records, got {total}"
    );

    let mut runs = 0;
    for n in 1..=total {
        for mode in ["before", "after"] {
            let run = Run::new(kind, SPEC);
            let kill = format!("{n}:{mode}");
            let out = run.bluegreen(&["deploy"], Some(&kill));
            assert_eq!(
                out.status.signal(),
                Some(9),
                "kill at {kill}: killed by SIGKILL; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = run.bluegreen(&["resume"], None);
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
                assert!(world(run.path()).changes.is_empty(), "{label}");
                continue;
            }
            assert_eq!(
                out.status.code(),
                Some(0),
                "{label}: resume succeeds; stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_done_exactly_once(&world(run.path()), &label);
            runs += 1;
        }
    }
    eprintln!("{runs} killed-and-resumed deployments, {total} append points");
}

#[test]
fn a_deployer_killed_at_every_journal_append_resumes_to_success_with_each_action_once() {
    killed_at_every_append_resumes_to_success(JournalKind::File);
}

#[test]
fn with_the_postgres_journal_a_deployer_killed_at_every_append_resumes_to_success_with_each_action_once(
) {
    killed_at_every_append_resumes_to_success(JournalKind::Postgres);
}

#[test]
fn resume_with_a_different_spec_is_refused_clearly() {
    let run = Run::new(JournalKind::File, SPEC);
    let out = run.bluegreen(&["deploy"], Some("8"));
    assert_eq!(out.status.signal(), Some(9));
    std::fs::write(
        run.path().join("spec.toml"),
        SPEC.replace("version = \"2.5.0\"", "version = \"2.6.0\""),
    )
    .unwrap();
    let out = run.bluegreen(&["resume"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("different plan"), "{err}");
    // Nothing past the crash happened.
    assert_eq!(world(run.path()).blue_percent, 0);
}

/// The journal append (1-based, the `Started` record is the first) whose
/// record entered the first hold at a gate, read from the file journal.
fn hold_append(dir: &Path) -> u64 {
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
fn an_abort_sent_after_the_deployer_died_at_a_gate_is_applied_on_resume() {
    let spec = SPEC.replace(
        "[deployment]\n",
        "[deployment]\ngates = [\"before-shift\"]\n",
    );
    // Where the deployer reaches the gate.
    let probe = Run::new(JournalKind::File, &spec);
    probe.bluegreen(&["deploy"], None);
    let at_gate = hold_append(probe.path());

    let run = Run::new(JournalKind::File, &spec);
    let out = run.bluegreen(&["deploy"], Some(&at_gate.to_string()));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed while held at the gate"
    );
    let out = run.bluegreen(&["abort", "--reason", "bad canary"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("no running deployer took abort (\"bad canary\")")
            && text.contains("applies when the deployment is resumed"),
        "{text}"
    );
    let out = run.bluegreen(&["resume"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "rolled back: {text}");
    assert!(
        text.contains("applying abort (\"bad canary\") sent while no deployer ran"),
        "{text}"
    );
    assert!(text.contains("manual abort: bad canary"), "{text}");
    let w = world(run.path());
    assert!(
        !w.changes
            .iter()
            .any(|c| matches!(c, FakeChange::Split { .. })),
        "no traffic moved: {:?}",
        w.changes
    );
    // A later promote finds nothing to promote: the deployment is over.
    let out = run.bluegreen(&["promote"], None);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    let out = run.bluegreen(&["status", "--output", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "rolled_back", "{v}");
}
