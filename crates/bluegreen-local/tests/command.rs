//! Command smoke tests and checks with real processes: shell scripts written
//! to a temp dir and run by `sh`, with `printf` and `sleep`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluegreen_core::provider::{MetricAnswer, MetricQuery, MetricsSource};
use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::{Color, ErrorKind, SecretSource, SmokeTarget, SmokeTest, Timestamp};
use bluegreen_local::command::{
    CommandCheck, CommandMetrics, CommandSmokeTest, Exit, Report, TestStatus,
};

const TOKEN: &str = "tok-live-8c1f0e93d2";

fn target() -> SmokeTarget {
    SmokeTarget {
        service: "order-api".into(),
        color: Some(Color::Blue),
        base_url: Some("http://127.0.0.1:9/".into()),
        version: "2.5.0".into(),
    }
}

/// A script at `dir/name` run by `sh`, as a check named `name`.
fn script(dir: &Path, name: &str, body: &str) -> CommandCheck {
    std::fs::write(dir.join(name), body).expect("write script");
    let mut c = CommandCheck::new(name, ["sh", name]);
    c.working_dir = Some(dir.to_path_buf());
    c.timeout = Duration::from_secs(20);
    c
}

fn secrets() -> Arc<dyn SecretSource> {
    let s = FakeSecrets::new();
    s.insert("prod/order-api/smoke-token", TOKEN, None);
    Arc::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_exiting_0_passes_with_the_url_filled_in_as_one_argument() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(
        dir.path(),
        "smoke.sh",
        "printf 'args=%s|%s|%s\\n' \"$1\" \"$2\" \"$3\"\nprintf 'color=%s version=%s\\n' \"$BLUEGREEN_COLOR\" \"$BLUEGREEN_VERSION\"\n",
    );
    c.command = ["sh", "smoke.sh", "--url", "{url}", "a b; echo injected"]
        .map(String::from)
        .to_vec();
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    assert_eq!(run.exit, Exit::Code(0));
    assert_eq!(
        run.tail,
        "args=--url|http://127.0.0.1:9|a b; echo injected\ncolor=blue version=2.5.0"
    );
    assert!(
        outcome
            .detail
            .starts_with("`sh smoke.sh --url http://127.0.0.1:9 \"a b; echo injected\"` exited with code 0 after"),
        "{}",
        outcome.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_suite_reports_its_exit_code_and_a_masked_tail_of_its_output() {
    let dir = tempfile::tempdir().unwrap();
    // 62 lines on stdout, the secret in the last two, then one on stderr
    // (later: the two pipes are read apart, so only time orders them).
    let mut c = script(
        dir.path(),
        "fail.sh",
        "i=1\nwhile [ $i -le 60 ]; do printf 'line %s\\n' $i; i=$((i+1)); done\nprintf 'using token %s\\n' \"$SMOKE_TOKEN\"\nprintf '%s\\n' \"$SMOKE_TOKEN$SMOKE_TOKEN\"\nsleep 0.3\nprintf 'POST /orders -> 500\\n' >&2\nexit 3\n",
    );
    c.secrets
        .insert("SMOKE_TOKEN".into(), "prod/order-api/smoke-token".into());
    let test = CommandSmokeTest::new(c).unwrap().with_secrets(secrets());
    let (outcome, run) = test.run_detailed(&target()).await.unwrap();
    assert!(!outcome.passed);
    assert_eq!(run.exit, Exit::Code(3));
    assert!(
        outcome
            .detail
            .starts_with("`sh fail.sh` exited with code 3 after"),
        "{}",
        outcome.detail
    );
    let lines: Vec<&str> = run.tail.lines().collect();
    assert_eq!(lines.len(), 40, "{}", run.tail);
    assert_eq!(lines[0], "…line 24");
    assert_eq!(
        &lines[37..],
        [
            "using token [redacted]",
            "[redacted][redacted]",
            "POST /orders -> 500"
        ]
    );
    assert!(!outcome.detail.contains(&TOKEN[..6]), "{}", outcome.detail);
    assert!(outcome.detail.ends_with("\n    POST /orders -> 500"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_suite_is_killed_at_its_timeout_with_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The script starts a grandchild that would outlive it, then hangs.
    let mut c = script(
        dir.path(),
        "hang.sh",
        "sleep 300 &\nprintf '%s' $! > grandchild.pid\nprintf 'waiting for the order service\\n'\nsleep 300\n",
    );
    c.timeout = Duration::from_millis(800);
    let started = Instant::now();
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!outcome.passed);
    assert_eq!(run.exit, Exit::TimedOut);
    assert!(
        outcome
            .detail
            .contains("timed out after 800ms (its process group was killed)"),
        "{}",
        outcome.detail
    );
    assert_eq!(run.tail, "waiting for the order service");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // The grandchild is gone: no /proc entry, or a zombie waiting for init.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        match stat {
            Err(_) => break,
            Ok(s) if s.split_whitespace().nth(2) == Some("Z") => break,
            Ok(s) => assert!(
                Instant::now() < deadline,
                "grandchild {pid} still runs: {s}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_failing_once_passes_on_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(
        dir.path(),
        "flaky.sh",
        "if [ -e ran-once ]; then printf 'second run ok\\n'; exit 0; fi\n: > ran-once\nprintf 'first run fails\\n'\nexit 1\n",
    );
    c.retries = 2;
    c.backoff = Duration::from_millis(50);
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    assert_eq!(run.tail, "second run ok");
    assert!(
        outcome.detail.contains("(attempt 2 of 3)"),
        "{}",
        outcome.detail
    );

    // With no retries, the first failure is the verdict.
    std::fs::remove_file(dir.path().join("ran-once")).unwrap();
    let c = script(
        dir.path(),
        "flaky.sh",
        &std::fs::read_to_string(dir.path().join("flaky.sh")).unwrap(),
    );
    let outcome = CommandSmokeTest::new(c)
        .unwrap()
        .run(&target())
        .await
        .unwrap();
    assert!(!outcome.passed);
    assert!(
        outcome.detail.contains("exited with code 1"),
        "{}",
        outcome.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_explicit_the_deployers_variables_stay_out_and_secrets_come_in() {
    // Set once here for this test binary; no other test reads them.
    std::env::set_var(
        "BLUEGREEN_JOURNAL_URL",
        "postgres://deployer:hunter2@db/journal",
    );
    std::env::set_var("COMMAND_TEST_PASSED_THROUGH", "tz-like");
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(
        dir.path(),
        "env.sh",
        "printf 'journal=[%s]\\n' \"$BLUEGREEN_JOURNAL_URL\"\nprintf 'passed=[%s]\\n' \"$COMMAND_TEST_PASSED_THROUGH\"\nprintf 'plain=[%s]\\n' \"$TARGET\"\n[ \"$SMOKE_TOKEN\" = \"$EXPECTED_PREFIX-8c1f0e93d2\" ] && printf 'token seen\\n'\nprintf 'path=%s\\n' \"${PATH:+set}\"\nenv | sed 's/=.*//' | sort | tr '\\n' ' '\n",
    );
    c.env.insert("TARGET".into(), "{url}/api".into());
    c.env.insert("EXPECTED_PREFIX".into(), "tok-live".into());
    c.pass_env.push("COMMAND_TEST_PASSED_THROUGH".into());
    c.secrets
        .insert("SMOKE_TOKEN".into(), "prod/order-api/smoke-token".into());
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .with_secrets(secrets())
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    let lines: Vec<&str> = run.tail.lines().collect();
    assert_eq!(
        &lines[..5],
        [
            "journal=[]",
            "passed=[tz-like]",
            "plain=[http://127.0.0.1:9/api]",
            "token seen",
            "path=set"
        ]
    );
    // Every variable the command had, by name (sh adds PWD and the like).
    let names: Vec<&str> = lines[5].split_whitespace().collect();
    for expected in [
        "PATH",
        "COMMAND_TEST_PASSED_THROUGH",
        "TARGET",
        "EXPECTED_PREFIX",
        "SMOKE_TOKEN",
        "BLUEGREEN_URL",
        "BLUEGREEN_COLOR",
        "BLUEGREEN_SERVICE",
        "BLUEGREEN_VERSION",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for name in &names {
        assert!(
            [
                "PATH",
                "COMMAND_TEST_PASSED_THROUGH",
                "TARGET",
                "EXPECTED_PREFIX",
                "SMOKE_TOKEN",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(name)
                || name.starts_with("BLUEGREEN_") && *name != "BLUEGREEN_JOURNAL_URL",
            "{name} leaked into the command's environment: {names:?}"
        );
    }

    // A secret that cannot be read stops the run, naming the variable.
    let mut c = script(dir.path(), "true.sh", "exit 0\n");
    c.secrets
        .insert("DB_PASSWORD".into(), "prod/missing".into());
    let e = CommandSmokeTest::new(c)
        .unwrap()
        .with_secrets(secrets())
        .run(&target())
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("secrets.DB_PASSWORD: cannot read secret prod/missing"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junit_report_is_summed_up_with_each_tests_name_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="smoke" tests="4">
  <testcase classname="orders" name="creates an order" time="0.120"/>
  <testcase classname="orders" name="retrieves it" time="0.034"/>
  <testcase classname="health" name="is healthy" time="0.002"/>
  <testcase classname="db" name="connects" time="1.5"/>
</testsuite></testsuites>"#;
    std::fs::write(dir.path().join("expected.xml"), xml).unwrap();
    // A stale report from an earlier run is removed before the command runs.
    std::fs::create_dir(dir.path().join("reports")).unwrap();
    std::fs::write(dir.path().join("reports/smoke.xml"), "<stale/>").unwrap();
    let mut c = script(
        dir.path(),
        "junit.sh",
        "cp expected.xml reports/smoke.xml\n",
    );
    c.junit = Some("reports/smoke.xml".into());
    let (outcome, run) = CommandSmokeTest::new(c.clone())
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed);
    let s = run.tests.expect("a summary").expect("parsed");
    assert_eq!((s.passed(), s.ran()), (4, 4));
    assert_eq!(s.tests[0].name, "orders.creates an order");
    assert_eq!(s.tests[3].time, Some(Duration::from_millis(1500)));
    assert!(
        outcome.detail.contains("; 4/4 passed (JUnit): ✓ orders.creates an order 0.120 s, ✓ orders.retrieves it 0.034 s, ✓ health.is healthy 0.002 s, ✓ db.connects 1.500 s; no output"),
        "{}",
        outcome.detail
    );

    // A failing case is shown as failed; the exit code stays the verdict.
    let failing = xml.replace(
        r#"name="retrieves it" time="0.034"/>"#,
        r#"name="retrieves it" time="0.034"><failure message="404"/></testcase>"#,
    );
    std::fs::write(dir.path().join("expected.xml"), failing).unwrap();
    std::fs::write(
        dir.path().join("junit.sh"),
        "cp expected.xml reports/smoke.xml\nexit 1\n",
    )
    .unwrap();
    let (outcome, run) = CommandSmokeTest::new(c.clone())
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(!outcome.passed);
    let s = run.tests.unwrap().unwrap();
    assert_eq!((s.passed(), s.ran()), (3, 4));
    assert_eq!(s.tests[1].status, TestStatus::Failed);
    assert!(
        outcome.detail.contains("3/4 passed (JUnit)"),
        "{}",
        outcome.detail
    );

    // A command that writes no report: said so, and the stale one is gone.
    std::fs::write(dir.path().join("junit.sh"), "exit 0\n").unwrap();
    let outcome = CommandSmokeTest::new(c)
        .unwrap()
        .run(&target())
        .await
        .unwrap();
    assert!(outcome.passed);
    assert!(
        outcome.detail.contains("reports/smoke.xml not read"),
        "{}",
        outcome.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_on_stdout_is_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(
        dir.path(),
        "tap.sh",
        "printf 'TAP version 14\\n1..4\\nok 1 - health check\\n  ---\\n  duration_ms: 4.2\\n  ...\\nok 2 - create order\\nok 3 - retrieve order\\nok 4 - db connectivity\\n'\n",
    );
    c.report = Report::Tap;
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed);
    let s = run.tests.unwrap().unwrap();
    assert_eq!(s.to_string(), "4/4 passed (TAP): ✓ health check 0.004 s, ✓ create order, ✓ retrieve order, ✓ db connectivity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_is_an_error_naming_the_program() {
    let c = CommandCheck::new("suite", ["no-such-smoke-runner-xyz", "--url", "{url}"]);
    let e = CommandSmokeTest::new(c)
        .unwrap()
        .run(&target())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.message()
            .contains("command[0]: the program \"no-such-smoke-runner-xyz\" is not on PATH"),
        "{e}"
    );
}

fn query(check: &str, q: &str) -> MetricQuery {
    MetricQuery {
        check: check.into(),
        query: q.into(),
        from: Timestamp(1_700_000_000_000),
        to: Timestamp(1_700_000_060_000),
        color: None,
        baseline: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_command_prints_the_number_the_check_compares() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(
        dir.path(),
        "rate.sh",
        "printf 'querying %s for %s from %s to %s\\n' \"$1\" \"$2\" \"$3\" \"$4\" >&2\nprintf 'measured:\\n0.004\\n'\n",
    );
    c.command = ["sh", "rate.sh", "{query}", "{check}", "{from}", "{to}"]
        .map(String::from)
        .to_vec();
    let m = CommandMetrics::new(c).unwrap();
    let answer = m
        .query(&query("error-rate", "errors:order-api:blue"))
        .await
        .unwrap();
    let MetricAnswer::Samples { samples } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].value, 0.004);
    assert_eq!(samples[0].at, Timestamp(1_700_000_060_000));
    // And the core's condition judges it against the threshold.
    let below: bluegreen_core::plan::Condition = "< 0.01".parse().unwrap();
    assert!(below.holds(samples[0].value));

    // Nothing printed is no data, never zero.
    std::fs::write(dir.path().join("rate.sh"), "exit 0\n").unwrap();
    assert!(matches!(
        m.query(&query("error-rate", "q")).await.unwrap(),
        MetricAnswer::NoData { .. }
    ));
    // Not a number, or a failed command: errors naming the check and command.
    std::fs::write(dir.path().join("rate.sh"), "printf 'n/a\\n'\n").unwrap();
    let e = m.query(&query("error-rate", "q")).await.unwrap_err();
    assert!(
        e.message().contains("check error-rate: `sh rate.sh q error-rate 1700000000 1700000060` printed \"n/a\" as its last line, not a number"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("rate.sh"),
        "printf 'no metrics backend\\n' >&2; exit 2\n",
    )
    .unwrap();
    let e = m.query(&query("error-rate", "q")).await.unwrap_err();
    assert!(e.message().contains("exited with code 2"), "{e}");
    assert!(e.message().contains("no metrics backend"), "{e}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn under_paused_time_the_timeout_is_real_time_not_skipped_past() {
    // The fake target runs deployments under paused time; a command there
    // must get its real seconds, not time out the moment the runtime idles.
    let dir = tempfile::tempdir().unwrap();
    let mut c = script(dir.path(), "slow.sh", "sleep 0.3\nprintf 'done\\n'\n");
    c.timeout = Duration::from_secs(5);
    let (outcome, run) = CommandSmokeTest::new(c)
        .unwrap()
        .run_detailed(&target())
        .await
        .unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    assert_eq!(run.tail, "done");
    assert!(
        run.duration >= Duration::from_millis(300),
        "{:?}",
        run.duration
    );
}
