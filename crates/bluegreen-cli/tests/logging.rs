//! Warnings reach the user (issue 17, item 7), with the real binary: a torn
//! journal line is a warning on stderr by default, `RUST_LOG=error`
//! silences it, `--output json` makes it a JSON line, and a warning that
//! carries the journal URL does not show its password.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fresh_database, text, FAKE_SPEC};

/// The fake-target spec with its journal at `state/deploy.journal`.
fn spec() -> String {
    format!("{FAKE_SPEC}\n[journal]\npath = \"state/deploy.journal\"\n")
}

const TORN: &str = "journal has a torn last line";

/// Runs `bluegreen ARGS` in `dir` with `RUST_LOG` as given (unset if None).
fn bluegreen(dir: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    common::bluegreen(dir, args, &[("RUST_LOG", rust_log)])
}

/// A directory with the spec, one finished deployment, and a journal
/// whose last line a crash cut short.
fn torn_journal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec()).unwrap();
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let journal = dir.path().join("state/deploy.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(br#"{"seq":99,"deployment_id":"dep-"#);
    std::fs::write(&journal, bytes).unwrap();
    dir
}

#[test]
fn a_torn_journal_line_is_a_warning_on_stderr_by_default() {
    let dir = torn_journal();
    let out = bluegreen(dir.path(), &["status", "spec.toml"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("WARN") && err.contains(TORN), "{err}");
    assert!(
        err.contains("deploy.journal"),
        "the warning names the file: {err}"
    );
    assert!(
        !text(&out.stdout).contains(TORN),
        "stdout keeps the command's own output"
    );
}

#[test]
fn rust_log_error_silences_the_torn_line_warning() {
    let dir = torn_journal();
    let out = bluegreen(dir.path(), &["status", "spec.toml"], Some("error"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains(TORN), "{err}");
    // The same journal with RUST_LOG asking for warnings shows it: the
    // silence above is RUST_LOG's doing, not a missing subscriber.
    let out = bluegreen(dir.path(), &["status", "spec.toml"], Some("warn"));
    let err = text(&out.stderr);
    assert!(err.contains(TORN), "{err}");
}

#[test]
fn with_output_json_the_torn_line_warning_is_a_json_line() {
    let dir = torn_journal();
    let out = bluegreen(
        dir.path(),
        &["--output", "json", "status", "spec.toml"],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains(TORN))
        .unwrap_or_else(|| panic!("no warning on stderr: {err}"));
    let v: serde_json::Value = serde_json::from_str(warning)
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {warning}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert!(
        v["fields"]["message"].as_str().unwrap().contains(TORN),
        "{v}"
    );
    // stdout is still the command's JSON alone.
    let stdout = text(&out.stdout);
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(status["outcome"], "succeeded");
}

/// The password of `scheme://user:password@host/...`, as written.
fn password(url: &str) -> String {
    let (_, rest) = url.split_once("://").unwrap();
    let (creds, _) = rest.rsplit_once('@').unwrap();
    creds.split_once(':').unwrap().1.to_string()
}

/// The application shares its database with the journal and logs its
/// connection string from its config file before it crashes: the local
/// target's crash warning shows the last log lines, and with them the URL.
/// The CLI knows the journal URL and masks its password.
#[tokio::test]
async fn a_crashed_instance_logging_the_journal_url_does_not_show_its_password() {
    let url = fresh_database("journal_url_redacted").await;
    let secret = password(&url);
    assert!(
        secret.len() >= 4,
        "the test server's password is too short to mask"
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("app.conf");
    std::fs::write(&conf, &url).unwrap();
    let spec = format!(
        r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api"

[target.local]
command = ["sh", "-c", "echo \"connecting to $(cat '{conf}')\"; exit 1"]
load_workers = 0

[monitoring]
provider = "local"

[[monitoring.checks]]
name = "error-rate"
query = "error_rate:{{color}}"
unit = "ratio"
success = "< 0.01"

[journal]
kind = "postgres"
url = {{ env = "BLUEGREEN_JOURNAL_URL" }}
"#,
        conf = conf.display()
    );
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["deploy", "spec.toml"])
        .current_dir(dir.path())
        .env("BLUEGREEN_JOURNAL_URL", &url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bluegreen binary runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The crash is warned at once; the deployer would then wait 30 s for
    // the serving color before giving up: stop it once the warning is in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut err = String::new();
    while Instant::now() < deadline && !err.contains("connecting to") {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            err.push_str(&line);
            err.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        err.push_str(&line);
        err.push('\n');
    }
    assert!(
        err.contains("instance exited on its own") && err.contains("connecting to"),
        "the crash is warned with the instance's last log lines: {err}"
    );
    assert!(
        !err.contains(&secret),
        "the journal URL's password shows: {}",
        err.replace(&secret, "<the password>")
    );
    assert!(err.contains("[redacted]"), "{err}");
}
