//! What a person reads says what happened: no Rust `Debug` formatting,
//! values in their units, each stage once, and periodic polls folded in
//! the dry run. Run through the real binary.

mod common;

use common::{bluegreen, text, FAKE_SPEC};

/// The fake spec with a p95 check in milliseconds, a trigger, a smoke test
/// and the given error rate.
fn spec(error_rate: f64) -> String {
    FAKE_SPEC.replace(
        "fake = { values = { error-rate = 0.002 } }",
        &format!("fake = {{ values = {{ error-rate = {error_rate}, p95-latency = 180.0 }} }}"),
    ) + r#"
[[monitoring.checks]]
name = "p95-latency"
query = "p95:{color}"
unit = "milliseconds"
success = "< 500"

[[rollback_triggers]]
type = "metric"
check = "error-rate"
breach = "> 0.05"
for = "1m"

[[smoke_tests]]
name = "health-check"
url = "{base_url}/health"
"#
}

/// Fails when `out` holds Rust `Debug` renderings of the engine's types.
fn assert_no_debug(what: &str, out: &str) {
    for debug in [
        "Some(",
        "None",
        "Color(",
        "Periodic",
        "Final |",
        " Pass",
        " Fail",
        "Inconclusive",
        "Completed",
        "InProgress",
        "Abort {",
        "Promote",
        "{ ",
    ] {
        assert!(!out.contains(debug), "{what} shows {debug:?}:\n{out}");
    }
}

#[test]
fn deploy_and_report_show_no_debug_text_and_values_carry_their_units() {
    for (rate, outcome) in [(0.002, "succeeded"), (0.2, "rolled_back")] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.toml"), spec(rate)).unwrap();
        let out = bluegreen(dir.path(), &["deploy", "spec.toml"], &[]);
        let stdout = text(&out.stdout);
        assert!(stdout.contains(outcome), "{stdout}");
        assert_no_debug("deploy", &stdout);
        let measured: Vec<&str> = stdout.lines().filter(|l| l.contains("measured")).collect();
        assert!(!measured.is_empty(), "{stdout}");
        for l in &measured {
            let unit = if l.contains("error-rate") { "%" } else { " ms" };
            assert!(
                l.matches(unit).count() >= 2,
                "value and threshold in {unit:?}: {l}"
            );
        }
        // Each stage once, in order.
        let stages: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_once("  stage ").map(|(_, s)| s))
            .collect();
        assert!(
            stages.windows(2).all(|w| w[0] != w[1]),
            "a stage printed twice in a row: {stages:?}"
        );

        let out = bluegreen(dir.path(), &["report", "spec.toml"], &[]);
        let report = text(&out.stdout);
        assert!(report.contains("- Requested counts: new "), "{report}");
        assert_no_debug("report", &report);
        assert!(
            report.contains(&format!("| periodic | {}% |", rate * 100.0)),
            "the measurements table shows the kind and the value in percent: {report}"
        );
        if outcome == "succeeded" {
            // The final evaluation measures every check, p95 in ms.
            assert!(report.contains("| final | 180 ms |"), "{report}");
        }
    }
}

#[test]
fn plan_prints_each_step_once_and_one_line_per_periodic_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec(0.002)).unwrap();
    let out = bluegreen(dir.path(), &["plan", "spec.toml"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let steps: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Steps: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split(" -> ")
        .collect();
    let mut once = steps.clone();
    once.dedup();
    assert_eq!(steps, once, "each step once");
    for series in ["error-rate: errors:blue", "p95-latency: p95:blue"] {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("metrics.query") && l.contains(series))
            .collect();
        assert_eq!(lines.len(), 1, "{series}: {stdout}");
        assert!(lines[0].contains("until +"), "{}", lines[0]);
    }
    assert_no_debug("plan", &stdout);
}
