//! Bad input that misled a user, each run through the real binary: the
//! message names what is wrong and where, and the exit code says whether
//! anything changed.

mod common;

use std::path::Path;

use bluegreen_cli::cli::{EXIT_BAD_SPEC, EXIT_REFUSED, EXIT_ROLLED_BACK, EXIT_SUCCEEDED};
use common::{bluegreen, text, FAKE_SPEC};

/// Writes `spec` as `spec.toml` in a fresh directory.
fn dir_with(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    dir
}

/// `bluegreen validate spec.toml` in `dir`: (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bluegreen(dir, args, &[]);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Asserts `spec` is refused by `validate` with exit 64 naming `field`
/// and containing `words`.
fn refused(spec: &str, field: &str, words: &[&str]) -> String {
    let dir = dir_with(spec);
    let (code, stdout, stderr) = run(dir.path(), &["validate", "spec.toml"]);
    assert_eq!(code, EXIT_BAD_SPEC, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(": {field}: ")),
        "names {field}: {stderr}"
    );
    for w in words {
        assert!(stderr.contains(w), "says {w:?}: {stderr}");
    }
    stderr
}

/// An ECS + ALB spec on an emulator endpoint.
fn ecs_spec(endpoint: &str) -> String {
    format!(
        r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.ecs]
cluster = "production"
region = "us-east-1"
services = {{ blue = "order-api-blue", green = "order-api-green" }}
endpoint_url = "{endpoint}"

[target.alb]
listener_arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/prod/1/2"
target_groups = {{ blue = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/blue/1", green = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/2" }}

[monitoring]
provider = "prometheus"
prometheus = {{ url = "http://127.0.0.1:9" }}

[[monitoring.checks]]
name = "error-rate"
query = "errors"
unit = "ratio"
success = "< 0.01"
"#
    )
}

#[test]
fn a_plain_text_bearer_token_in_a_smoke_test_header_is_refused() {
    let spec = format!(
        "{FAKE_SPEC}\n[[smoke_tests]]\nname = \"create-order\"\nurl = \"{{base_url}}/api/orders\"\nheaders = {{ Authorization = \"Bearer s3cr3t-token\" }}\n"
    );
    let e = refused(
        &spec,
        "smoke_tests[0].headers.Authorization",
        &["plain text", "secret ="],
    );
    assert!(!e.contains("s3cr3t-token"), "never echoes it: {e}");
    // The same header from the secret store passes.
    let ok = spec.replace(
        "\"Bearer s3cr3t-token\"",
        "{ secret = \"prod/order-api/token\", format = \"Bearer {secret}\" }",
    );
    let dir = dir_with(&ok);
    let (code, stdout, stderr) = run(dir.path(), &["validate", "spec.toml"]);
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
}

#[test]
fn an_empty_green_target_group_is_refused_by_validate_naming_the_field() {
    let spec = ecs_spec("http://127.0.0.1:9").replace(
        "green = \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/2\"",
        "green = \"\"",
    );
    let e = refused(
        &spec,
        "target.alb.target_groups.green",
        &["must not be empty"],
    );
    let line = spec
        .lines()
        .position(|l| l.starts_with("target_groups"))
        .unwrap()
        + 1;
    assert!(e.contains(&format!("spec.toml:{line}:")), "{e}");
}

#[test]
fn a_database_url_with_a_password_in_env_is_refused() {
    let spec = format!(
        "{FAKE_SPEC}\n[env]\nDATABASE_URL = \"postgres://admin:hunter2@db/orders\"\nLOG_LEVEL = \"info\"\n"
    );
    let e = refused(&spec, "env.DATABASE_URL", &["password", "[[secrets]]"]);
    assert!(!e.contains("hunter2"), "never echoes it: {e}");
    // Without a password it is plain configuration.
    let dir = dir_with(&spec.replace("admin:hunter2@", "admin@"));
    let (code, stdout, stderr) = run(dir.path(), &["validate", "spec.toml"]);
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
}

#[test]
fn a_step_list_ending_at_60_percent_says_the_percents_are_cumulative() {
    let spec = FAKE_SPEC.replace(
        "strategy = { type = \"canary\", percent = 20, wait = \"2m\" }",
        "strategy = { type = \"steps\", steps = [{ percent = 20, wait = \"1m\" }, { percent = 40, wait = \"1m\" }, { percent = 60, wait = \"1m\" }] }",
    );
    let e = refused(
        &spec,
        "deployment.strategy.steps[2].percent",
        &[
            "the percents are cumulative: the last step must be 100%",
            "60%",
        ],
    );
    assert!(!e.contains("add up to 100"), "{e}");
}

#[test]
fn steps_of_10_for_1s_then_60_name_the_missing_100_percent_not_the_wait() {
    let spec = FAKE_SPEC.replace(
        "strategy = { type = \"canary\", percent = 20, wait = \"2m\" }",
        "strategy = { type = \"steps\", steps = [{ percent = 10, wait = \"1s\" }, { percent = 60 }] }",
    );
    let e = refused(
        &spec,
        "deployment.strategy.steps[1].percent",
        &["the last step must be 100%"],
    );
    assert!(!e.contains("positive duration"), "{e}");
}

const MIGRATIONS: &str = r#"
[migrations]
runner = "postgres"
database_url = { env = "DATABASE_URL" }
directory = "migrations"
"#;

#[test]
fn a_migrations_directory_that_does_not_exist_fails_validate_and_plan_naming_it() {
    let dir = dir_with(&format!("{FAKE_SPEC}{MIGRATIONS}"));
    for cmd in ["validate", "plan"] {
        let (code, stdout, stderr) = run(dir.path(), &[cmd, "spec.toml"]);
        assert_eq!(code, EXIT_BAD_SPEC, "{cmd}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("migrations.directory")
                && stderr.contains(&dir.path().join("migrations").display().to_string())
                && stderr.contains("does not exist"),
            "{cmd}: {stderr}"
        );
    }
}

#[test]
fn plan_lists_the_migrations_that_would_run() {
    let dir = dir_with(&format!("{FAKE_SPEC}{MIGRATIONS}"));
    let m = dir.path().join("migrations");
    std::fs::create_dir(&m).unwrap();
    for (f, sql) in [
        (
            "0025_add_order_metadata.up.sql",
            "ALTER TABLE orders ADD COLUMN metadata jsonb;",
        ),
        (
            "0025_add_order_metadata.down.sql",
            "ALTER TABLE orders DROP COLUMN metadata;",
        ),
        (
            "0026_drop_legacy_status.up.sql",
            "-- bluegreen: phase=contract\nALTER TABLE orders DROP COLUMN legacy_status;",
        ),
    ] {
        std::fs::write(m.join(f), sql).unwrap();
    }
    let (code, stdout, stderr) = run(dir.path(), &["plan", "spec.toml"]);
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
    let at = stdout
        .find("Migrations that would run")
        .unwrap_or_else(|| panic!("{stdout}"));
    let listed: Vec<&str> = stdout[at..].lines().skip(1).take(2).collect();
    assert_eq!(
        listed,
        [
            "  25 add_order_metadata (expand)",
            "  26 drop_legacy_status (contract, irreversible)"
        ],
        "{stdout}"
    );
}

/// A fake-target spec that rolls back once traffic moved: the error rate
/// breaks the trigger during the canary.
fn rolling_back_spec() -> String {
    FAKE_SPEC.replace("error-rate = 0.002", "error-rate = 0.2")
        + r#"
[[rollback_triggers]]
type = "metric"
check = "error-rate"
breach = "> 0.05"
for = "1m"

[[acceptance]]
name = "Blue environment deployed and stable (2 tasks running)"
expect = "new-color-running"
"#
}

#[test]
fn acceptance_after_a_rollback_reports_the_instances_that_ran_not_the_last_request() {
    let dir = dir_with(&rolling_back_spec());
    let (code, stdout, stderr) = run(dir.path(), &["deploy", "spec.toml"]);
    assert_eq!(code, EXIT_ROLLED_BACK, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("- [x] Blue environment deployed and stable (2 tasks running) — new color ran 2 of 2 instances (scaled to 0 afterwards)"),
        "{stdout}"
    );
}

/// `FAKE_SPEC` with its journal in `deploy.journal`.
fn journaled_spec() -> String {
    format!("{FAKE_SPEC}\n[journal]\npath = \"deploy.journal\"\n")
}

#[test]
fn resume_continues_the_latest_unfinished_deployment_not_a_newer_finished_one() {
    // dep-a: its deployer killed at its sixth journal append.
    let a = dir_with(&journaled_spec());
    let killed = bluegreen(
        a.path(),
        &["deploy", "--id", "dep-a", "spec.toml"],
        &[(bluegreen_cli::journal::KILL_ENV, Some("6"))],
    );
    assert_ne!(killed.status.code(), Some(EXIT_SUCCEEDED));
    // dep-b, started later, finished.
    let b = dir_with(&journaled_spec());
    let (code, stdout, stderr) = run(b.path(), &["deploy", "--id", "dep-b", "spec.toml"]);
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
    // One journal holding both, dep-b the newer.
    let mut journal = std::fs::read(a.path().join("deploy.journal")).unwrap();
    journal.extend(std::fs::read(b.path().join("deploy.journal")).unwrap());
    std::fs::write(a.path().join("deploy.journal"), journal).unwrap();

    let (code, stdout, stderr) = run(a.path(), &["resume", "spec.toml"]);
    assert!(
        stdout.contains("resuming order-api 2.5.0 as dep-a"),
        "{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("already finished"), "{stdout}");
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
}

#[test]
fn a_second_deployer_is_refused_first_and_names_the_holder_s_host_user_and_pid() {
    // The first deployer in real time, held in a ten-minute canary.
    let spec = journaled_spec()
        .replace("paused_time = true", "paused_time = false")
        .replace("wait = \"2m\"", "wait = \"10m\"");
    let dir = dir_with(&spec);
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["deploy", "--id", "dep-first", "spec.toml"])
        .current_dir(dir.path())
        .env_remove(bluegreen_cli::journal::KILL_ENV)
        .env("USER", "alice")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.path().join("deploy.journal");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"started\"")) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the first deployer did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second = bluegreen(
        dir.path(),
        &["deploy", "--id", "dep-second", "spec.toml"],
        &[("USER", Some("bob"))],
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let (stdout, stderr) = (text(&second.stdout), text(&second.stderr));
    assert_eq!(
        second.status.code(),
        Some(EXIT_REFUSED),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("deploying"),
        "refused before anything: {stdout}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for words in [
        "refused, nothing was changed",
        "dep-first",
        "user alice",
        &format!("on host {}", host.trim()),
        &format!("pid {}", first.id()),
    ] {
        assert!(stderr.contains(words), "says {words:?}: {stderr}");
    }
}

#[test]
fn a_deployment_refused_in_preflight_exits_apart_from_one_rolled_back_after_traffic_moved() {
    // A secret due for rotation: preflight refuses before any change.
    let dir = dir_with(&format!(
        "{FAKE_SPEC}\n[[secrets]]\nname = \"prod/order-api/db-password\"\nenv = \"DB_PASSWORD\"\nrotation = \"1h\"\n"
    ));
    let (code, stdout, stderr) = run(dir.path(), &["deploy", "spec.toml"]);
    assert_eq!(code, EXIT_REFUSED, "{stdout}\n{stderr}");
    assert!(stdout.contains("prod/order-api/db-password"), "{stdout}");
    let world: bluegreen_cli::fake::FakeWorldState =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("world.json")).unwrap())
            .unwrap();
    assert_eq!(world.changes, [], "nothing was changed");
    assert_eq!(world.blue_percent, 0);
    // `status` of it exits the same way.
    let (code, stdout, stderr) = run(dir.path(), &["status", "spec.toml"]);
    assert_eq!(code, EXIT_REFUSED, "{stdout}\n{stderr}");

    // The canary's error rate rolls back after traffic moved: exit 1.
    let dir = dir_with(&rolling_back_spec());
    let (code, stdout, stderr) = run(dir.path(), &["deploy", "spec.toml"]);
    assert_eq!(code, EXIT_ROLLED_BACK, "{stdout}\n{stderr}");
}

#[test]
fn an_endpoint_url_refusing_connections_is_named_with_connection_refused_in_preflight() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = dir_with(&ecs_spec(&endpoint));
    let started = std::time::Instant::now();
    let out = bluegreen(
        dir.path(),
        &["deploy", "spec.toml"],
        &[
            ("AWS_ACCESS_KEY_ID", Some("test")),
            ("AWS_SECRET_ACCESS_KEY", Some("test")),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&endpoint) && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "said at once, not after retries: {:?}",
        started.elapsed()
    );
}

/// Processes whose environment names `pid` as their deployer.
fn instances_of(pid: u32) -> Vec<u32> {
    let needle = format!("{}={pid}", bluegreen_local::DEPLOYER_PID_ENV);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn resume_of_a_killed_local_deployment_says_it_cannot_resume_and_stops_the_old_instances() {
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/local.toml"
    ))
    .unwrap()
    // Its journal here, and a resumed deployer that waits seconds, not
    // minutes, for the killed one's calls to land.
    .replace("[journal]\n", "[journal]\nlease_ttl = \"2s\"\n")
    .replace("[deployment]\n", "[deployment]\ncall_timeout = \"1s\"\n");
    let spec = match spec.split_once("\npath = ") {
        Some((head, tail)) => format!(
            "{head}\npath = \"deploy.journal\"\n{}",
            tail.split_once('\n').map_or("", |t| t.1)
        ),
        None => spec,
    };
    let dir = dir_with(&spec);
    // Killed once the new color's instances run (its smoke tests started).
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["deploy", "spec.toml"])
        .current_dir(dir.path())
        .env(bluegreen_cli::journal::KILL_ENV, "12")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let left = instances_of(pid);
    assert!(
        !left.is_empty(),
        "the killed deployer left instances running"
    );

    let (code, stdout, stderr) = run(dir.path(), &["resume", "spec.toml"]);
    assert!(
        stdout.contains("is a local deployment, which cannot resume where it stopped")
            && stdout.contains(&format!("deployer (pid {pid})"))
            && stdout.contains(&format!("Stopped the {} instance(s)", left.len())),
        "{stdout}\n{stderr}"
    );
    assert_eq!(instances_of(pid), Vec::<u32>::new(), "none left running");
    assert!(
        [EXIT_SUCCEEDED, EXIT_ROLLED_BACK].contains(&code),
        "the record is finished: {code}\n{stdout}\n{stderr}"
    );
}

/// The fake-target spec with migration 24 (applied in the new world when
/// `applied`) and 25 (pending), and `[preflight] migrations_applied = [24]`.
fn preflight_migration_spec(applied: bool) -> String {
    format!(
        "{FAKE_SPEC}
[migrations]
runner = \"fake\"

[[target.fake.migrations]]
version = 24
name = \"add_order_index\"
applied = {applied}

[[target.fake.migrations]]
version = 25
name = \"add_order_metadata\"

[preflight]
migrations_applied = [24]
"
    )
}

#[test]
fn a_migration_the_release_needs_but_not_applied_was_found_only_after_changes() {
    let dir = dir_with(&preflight_migration_spec(false));
    let (code, stdout, stderr) = run(dir.path(), &["deploy", "spec.toml"]);
    assert_eq!(code, EXIT_REFUSED, "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("preflight.migrations_applied"), "{all}");
    assert!(
        all.contains("migration 024 must already be applied"),
        "{all}"
    );
    let world: bluegreen_cli::fake::FakeWorldState =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("world.json")).unwrap())
            .unwrap();
    assert_eq!(world.changes, [], "nothing was changed");
    assert_eq!(
        world.applied,
        Vec::<u64>::new(),
        "025 was not applied either"
    );
    assert_eq!(world.blue_percent, 0);

    // Applied already: preflight passes and the deployment runs to its end,
    // applying 025 only.
    let dir = dir_with(&preflight_migration_spec(true));
    let (code, stdout, stderr) = run(dir.path(), &["deploy", "spec.toml"]);
    assert_eq!(code, EXIT_SUCCEEDED, "{stdout}\n{stderr}");
    let world: bluegreen_cli::fake::FakeWorldState =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("world.json")).unwrap())
            .unwrap();
    assert_eq!(world.applied, [24, 25]);
}
