//! `bluegreen watch` with the real binary, following a deployment another
//! `bluegreen` process is running: `examples/local.toml` (real processes
//! and a real proxy, in real time) on the file journal, and the fake
//! target on the Postgres journal.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bluegreen, fresh_database, text, FAKE_SPEC};

/// `examples/local.toml` in `dir` with its journal beside it, `FAILURE_RATE`
/// set to `failure_rate`.
fn local_spec(dir: &Path, failure_rate: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/local.toml");
    let text = std::fs::read_to_string(example).expect("examples/local.toml");
    let text = text
        .replace(
            "path = \"../target/bluegreen/demo-app.journal\"",
            "path = \"demo.journal\"",
        )
        .replace(
            "FAILURE_RATE = \"0\"",
            &format!("FAILURE_RATE = \"{failure_rate}\""),
        );
    assert!(
        text.contains("path = \"demo.journal\""),
        "the example's journal path moved"
    );
    let path = dir.join("local.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `bluegreen deploy local.toml --id ID` in `dir`, in the background.
fn start_deploy(dir: &Path, spec: &str, id: &str, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", "120", env!("CARGO_BIN_EXE_bluegreen")])
        .args(["deploy", spec, "--id", id])
        .current_dir(dir)
        .env_remove(bluegreen_cli::journal::KILL_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("the bluegreen binary starts")
}

/// Waits until the journal file holds a record of `id`.
fn wait_for_record(journal: &Path, id: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if std::fs::read_to_string(journal).is_ok_and(|t| t.contains(id)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no record of {id} in {} after 60 s", journal.display());
}

/// The position of each of `parts` in `out`, in order; fails naming the
/// first one missing after the one before.
fn in_order(out: &str, parts: &[&str]) {
    let mut from = 0;
    for p in parts {
        match out[from..].find(p) {
            Some(i) => from += i + p.len(),
            None => panic!("{p:?} is missing after byte {from} of:\n{out}"),
        }
    }
}

/// A `N… left in STAGE` line for a stage with a wait.
fn time_left_line(out: &str) -> Option<&str> {
    out.lines().find(|l| {
        let Some((before, stage)) = l.split_once(" left in ") else {
            return false;
        };
        ["watch_step_0", "analysis", "soak", "scale_down_delay"].contains(&stage)
            && before.rsplit("  ").next().is_some_and(|d| {
                d.ends_with('s') && d.chars().next().is_some_and(|c| c.is_ascii_digit())
            })
    })
}

#[test]
fn watch_follows_a_running_local_deployment_to_its_success() {
    let dir = tempfile::tempdir().unwrap();
    local_spec(dir.path(), "0");
    let deployer = start_deploy(dir.path(), "local.toml", "dep-watched", &[]);
    wait_for_record(&dir.path().join("demo.journal"), "dep-watched");
    // On a terminal too: `script` gives the watch a pseudo-terminal.
    let bin = env!("CARGO_BIN_EXE_bluegreen");
    let tty = Command::new("timeout")
        .args(["--kill-after=10", "120", "script", "-qec"])
        .arg(format!("{bin} watch local.toml --interval 200ms"))
        .arg("/dev/null")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    // The default deployment: the latest unfinished one of the service.
    let w = bluegreen(dir.path(), &["watch", "local.toml", "--plain"], &[]);
    let out = text(&w.stdout);
    let deployed = deployer.wait_with_output().unwrap();
    assert_eq!(
        deployed.status.code(),
        Some(0),
        "the deployment: {}{}",
        text(&deployed.stdout),
        text(&deployed.stderr)
    );
    assert_eq!(w.status.code(), Some(0), "{out}{}", text(&w.stderr));
    assert!(
        out.starts_with("watching demo-app 2.0.0 (dep-watched)"),
        "{out}"
    );
    in_order(
        &out,
        &[
            "stage preflight",
            "stage smoke_tests",
            "stage shift_20",
            "stage watch_step_0 (wait 2s)",
            "stage analysis (wait 3s)",
            "stage soak (wait 3s)",
            "stage scale_down_old",
            "stage done",
            "finished: succeeded",
        ],
    );
    // The example's command smoke test and hooks ran for real, their
    // output journaled.
    in_order(
        &out,
        &[
            "stage smoke_tests",
            "stage hook_before_traffic",
            "stage shift_20",
        ],
    );
    let journal = std::fs::read_to_string(dir.path().join("demo.journal")).unwrap();
    assert!(
        journal.contains("/health -> HTTP/1.0 200 OK"),
        "the command smoke test's output: {journal}"
    );
    assert!(
        journal.contains("before_traffic: demo-app 2.0.0 on blue, green serving"),
        "the before_traffic hook's output"
    );
    assert!(
        journal.contains("on_finish: demo-app 2.0.0 succeeded"),
        "the on_finish hook's output"
    );
    // Each stage once.
    assert_eq!(out.matches("stage scale_down_old").count(), 1, "{out}");
    // The split moves 0/100 -> 20/80 -> 100/0 (blue is the new color).
    in_order(
        &out,
        &[
            "traffic blue   0% [--------------------] 100% green",
            "traffic blue  20% [####----------------]  80% green",
            "traffic blue 100% [####################]   0% green",
        ],
    );
    // Check values in their unit against their thresholds.
    assert!(
        out.contains("check error-rate 0% (success < 1%): pass"),
        "{out}"
    );
    assert!(
        out.lines().any(
            |l| l.contains("check p95-latency ") && l.ends_with(" ms (success < 500 ms): pass")
        ),
        "{out}"
    );
    assert!(time_left_line(&out).is_some(), "no time left shown:\n{out}");

    let tty = tty.wait_with_output().unwrap();
    let screen = text(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{screen}{}", text(&tty.stderr));
    // Redrawn in place: the cursor moves up over the last frame.
    assert!(
        screen.contains("\x1b[") && screen.contains("A\r"),
        "{screen:?}"
    );
    assert!(
        screen.contains("stage    done  — finished: succeeded"),
        "{screen}"
    );
    assert!(
        screen.contains("traffic  blue 100% [████████████████████]   0% green"),
        "{screen}"
    );
    assert!(
        screen.contains("check    error-rate 0% (success < 1%): pass"),
        "{screen}"
    );
    assert!(screen.contains(" left of "), "no wait on screen: {screen}");
}

#[test]
fn watch_exits_with_the_rolled_back_deployments_code() {
    let dir = tempfile::tempdir().unwrap();
    // Half the new release's requests fail: the error-rate trigger
    // (> 0.05, twice) rolls back during the canary.
    local_spec(dir.path(), "0.5");
    let deployer = start_deploy(dir.path(), "local.toml", "dep-failing", &[]);
    wait_for_record(&dir.path().join("demo.journal"), "dep-failing");
    let w = bluegreen(
        dir.path(),
        &[
            "watch",
            "local.toml",
            "--plain",
            "--id",
            "dep-failing",
            "--interval",
            "100ms",
        ],
        &[],
    );
    let out = text(&w.stdout);
    let deployed = deployer.wait_with_output().unwrap();
    assert_eq!(
        deployed.status.code(),
        Some(1),
        "{}",
        text(&deployed.stdout)
    );
    assert_eq!(w.status.code(), Some(1), "{out}{}", text(&w.stderr));
    in_order(
        &out,
        &[
            "traffic blue  20% [####----------------]  80% green",
            "fail, breach",
            "rollback: ",
            "traffic blue   0% [--------------------] 100% green",
            "finished: rolled_back",
        ],
    );
}

#[test]
fn watch_with_no_deployment_in_the_journal_says_so() {
    let dir = tempfile::tempdir().unwrap();
    local_spec(dir.path(), "0");
    let w = bluegreen(dir.path(), &["watch", "local.toml"], &[]);
    assert_eq!(w.status.code(), Some(3));
    assert!(
        text(&w.stderr).contains("no journal at ") && text(&w.stderr).contains("demo.journal"),
        "{}",
        text(&w.stderr)
    );
    // Watching creates no journal.
    assert!(!dir.path().join("demo.journal").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reads_the_postgres_journal_and_never_shows_its_password() {
    let url = fresh_database("watch_journal").await;
    let dir = tempfile::tempdir().unwrap();
    // Real time, a 3 s canary.
    let spec = format!(
        "{}\n[journal]\nkind = \"postgres\"\nurl = {{ env = \"BLUEGREEN_JOURNAL_URL\" }}\n\n[timing]\nanalysis_window = \"1s\"\nsoak = \"1s\"\nscale_down_delay = \"1s\"\ndrain = \"100ms\"\npoll_interval = \"100ms\"\nhealth_interval = \"500ms\"\n",
        FAKE_SPEC
            .replace("paused_time = true", "paused_time = false")
            .replace("wait = \"2m\"", "wait = \"3s\"")
    );
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    let deployer = start_deploy(
        dir.path(),
        "spec.toml",
        "dep-pg-watched",
        &[("BLUEGREEN_JOURNAL_URL", &url)],
    );
    let w = {
        let d = dir.path().to_path_buf();
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            // The deployment's first record may not be written yet.
            std::thread::sleep(Duration::from_millis(1500));
            bluegreen(
                &d,
                &["watch", "spec.toml", "--plain", "--id", "dep-pg-watched"],
                &[("BLUEGREEN_JOURNAL_URL", Some(&u))],
            )
        })
        .await
        .unwrap()
    };
    let out = text(&w.stdout);
    let deployed = deployer.wait_with_output().unwrap();
    assert_eq!(
        deployed.status.code(),
        Some(0),
        "{}{}",
        text(&deployed.stdout),
        text(&deployed.stderr)
    );
    assert_eq!(w.status.code(), Some(0), "{out}{}", text(&w.stderr));
    in_order(
        &out,
        &[
            "watching order-api 2.5.0 (dep-pg-watched)",
            "traffic blue   0% [--------------------] 100% green",
            "traffic blue  20% [####----------------]  80% green",
            "stage watch_step_0 (wait 3s)",
            "stage done",
            "finished: succeeded",
        ],
    );
    assert!(
        out.contains("check error-rate 0.2% (success < 1%): pass"),
        "{out}"
    );
    assert!(time_left_line(&out).is_some(), "no time left shown:\n{out}");
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(creds, _)| creds.split_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("the test server's URL carries a password");
    assert!(!out.contains(&password) && !text(&w.stderr).contains(&password));
}
