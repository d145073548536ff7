//! The HTML report in a real browser: Debian's chromium, headless, which
//! scripts/test installs (scripts/services/chromium.sh) and names in
//! BLUEGREEN_TEST_CHROMIUM. The report of a simulated deployment that rolled
//! back is screenshotted and its DOM read back: the chart's parts (stage
//! bands, the split of each color, breach markers, annotations) and the
//! tables are there, and nothing is loaded from anywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bluegreen_core::machine::{Event, Stage};
use bluegreen_core::testing::{reference_plan, simulate_with};
use bluegreen_core::{Color, Outcome, Report, TrafficSplit};
use common::{bluegreen, text, FAKE_SPEC};

/// The chromium binary; fails loudly when it is missing, as every test that
/// needs a service does: scripts/test installs it and sets
/// BLUEGREEN_TEST_CHROMIUM.
fn chromium() -> PathBuf {
    let path = std::env::var_os("BLUEGREEN_TEST_CHROMIUM").unwrap_or_else(|| {
        panic!(
            "BLUEGREEN_TEST_CHROMIUM is not set: run scripts/test, which installs Debian's \
             chromium (scripts/services/chromium.sh) and exports its path"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "BLUEGREEN_TEST_CHROMIUM names {}, which is not a file: install Debian's chromium \
         (scripts/services/chromium.sh)",
        path.display()
    );
    path
}

/// Runs headless chromium on `page` with `args` under `timeout`, with a
/// profile directory of its own, and returns its stdout.
fn run_chromium(profile: &Path, page: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["--kill-after=10", "120"])
        .arg(chromium())
        // --no-sandbox: scripts/test runs as root, and chromium refuses to
        // start as root with its sandbox on. The page is our own file.
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Takes a 1400x1800 screenshot of `page` and returns the PNG's bytes.
fn screenshot(dir: &Path, page: &Path, name: &str) -> Vec<u8> {
    let png = dir.join(format!("{name}.png"));
    run_chromium(
        &dir.join(format!("profile-{name}")),
        page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,1800",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        png.display()
    );
    bytes
}

/// The DOM chromium built from `page`, serialized.
fn dom(dir: &Path, page: &Path) -> String {
    run_chromium(&dir.join("profile-dom"), page, &["--dump-dom"])
}

/// The element that starts at the first `start` in `dom`, up to its `</g>`
/// (the groups the report wraps around each plotted part hold no `<g>`).
fn group<'d>(dom: &'d str, start: &str) -> &'d str {
    let i = dom
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the DOM"));
    let end = dom[i..].find("</g>").expect("the group is closed");
    &dom[i..i + end]
}

/// The reference plan, whose new color (blue) fails 7% of requests: the
/// error-rate trigger (> 5% for 5 minutes) rolls it back. A human pauses
/// it during the smoke tests (it would hold at the end of the analysis) and
/// takes the pause back at the first breach.
fn rolled_back_report() -> Report {
    let mut resumed = false;
    let (report, _) = simulate_with(
        |f| {
            f.metrics.constant("p95-latency", 180.0);
            f.metrics.script("error-rate", |q, _| {
                Some(if q.query.contains("color:blue") {
                    0.07
                } else {
                    0.002
                })
            });
            f.builder(reference_plan())
        },
        |ev, ctl| match ev {
            Event::Stage {
                stage: Stage::SmokeTests,
            } => {
                ctl.pause();
            }
            Event::Measured { measurement } if measurement.breach && !resumed => {
                resumed = true;
                ctl.resume();
            }
            _ => {}
        },
    );
    assert!(
        matches!(report.outcome, Some(Outcome::RolledBack { .. })),
        "{}",
        report.outcome_name()
    );
    report
}

#[test]
fn a_rolled_back_deployment_renders_in_chromium_with_its_chart_and_tables() {
    let report = rolled_back_report();
    let html = report.to_html();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();

    // Self-contained: nothing to fetch, no script.
    for external in ["<script", "<link", "src=", "@import", "url(", "https://"] {
        assert!(!html.contains(external), "the page holds {external}");
    }
    assert_eq!(
        html.matches("http://").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "the only URL is the SVG namespace"
    );

    // A screenshot of real pixels: the chart and tables, not a blank page.
    let blank = dir.path().join("blank.html");
    std::fs::write(
        &blank,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body></body></html>",
    )
    .unwrap();
    let blank_png = screenshot(dir.path(), &blank, "blank");
    let png = screenshot(dir.path(), &page, "report");
    assert!(
        png.len() > 50_000 && png.len() > 5 * blank_png.len(),
        "the screenshot has content: {} bytes, a blank page {} bytes",
        png.len(),
        blank_png.len()
    );

    let dom = dom(dir.path(), &page);
    assert!(
        dom.contains("<svg id=\"timeline-chart\""),
        "the chart's svg"
    );
    // Stage bands: one per stage, the rollback's included, each drawn.
    let bands = dom.matches("class=\"stage-band\"").count();
    assert_eq!(bands, report.stages.len(), "one band per stage");
    for stage in ["preflight", "smoke_tests", "rollback_restore_traffic"] {
        let band = group(&dom, &format!("data-stage=\"{stage}\""));
        assert!(band.contains("<rect"), "the {stage} band is a rectangle");
    }
    // The split of each color: a line that reaches 0 and 100%.
    for color in [Color::Blue, Color::Green] {
        let series = group(&dom, &format!("<g id=\"split-{color}\""));
        assert!(series.contains("<polyline"), "{color}'s split is a line");
        assert!(series.contains(&format!("traffic on {color}:")), "{series}");
    }
    assert_eq!(
        report.splits.last().map(|s| s.split),
        Some(TrafficSplit::all_on(Color::Green)),
        "the rollback's read-back is the split's last point"
    );
    // Each check's values against its thresholds, with breach markers.
    let values = group(&dom, "class=\"check-series\" data-check=\"error-rate\"");
    assert!(values.contains("<polyline") && values.contains("<circle"));
    assert!(values.contains("7 %"), "values carry their unit: {values}");
    let breach = group(
        &dom,
        "class=\"threshold\" data-check=\"error-rate\" data-kind=\"breach\"",
    );
    assert!(breach.contains("breach &gt; 5 %"), "{breach}");
    let markers = group(&dom, "class=\"breach-markers\" data-check=\"error-rate\"");
    assert!(markers.contains("<line"), "a breach is marked: {markers}");
    // Decisions and the human's control as annotations.
    let rollback = group(&dom, "class=\"annotation\" data-kind=\"rollback\"");
    assert!(rollback.contains("error-rate"), "{rollback}");
    let controls: Vec<&str> = dom
        .match_indices("class=\"annotation\" data-kind=\"control\"")
        .map(|(i, _)| group(&dom[i..], "class"))
        .collect();
    assert_eq!(controls.len(), 2, "pause and resume: {controls:?}");
    assert!(controls[0].contains("human: pause"), "{}", controls[0]);
    assert!(controls[1].contains("human: resume"), "{}", controls[1]);
    assert!(dom.contains("class=\"annotation\" data-kind=\"outcome\""));
    // The tables of the text report.
    for table in [
        "summary\"",
        "evidence",
        "recorded-state",
        "stages",
        "smoke-tests",
        "measurements",
        "decisions",
        "provider-calls",
    ] {
        assert!(dom.contains(&format!("id=\"{table}")), "no {table} table");
    }
    assert!(dom.contains("<td>rollback_restore_traffic</td>"));
    // Values with units, and no Rust Debug rendering anywhere.
    assert!(
        dom.contains("<td>7 %</td>"),
        "a measured value with its unit"
    );
    assert!(dom.contains("ms</td>"), "smoke-test durations in ms");
    for debug in [
        "Some(",
        "None",
        "Color(",
        "Periodic",
        "Final",
        "Inconclusive",
        "RolledBack {",
    ] {
        assert!(!dom.contains(debug), "Debug output {debug} in the page");
    }
}

#[test]
fn report_format_html_of_a_rolled_back_cli_deployment_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    // The new color's error rate fails the canary's evaluation: a rollback.
    let spec = FAKE_SPEC.replace("error-rate = 0.002", "error-rate = 0.07");
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = bluegreen(
        dir.path(),
        &["report", "spec.toml", "--format", "html"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let html = text(&out.stdout);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let dom = dom(dir.path(), &page);
    assert!(dom.contains("<svg id=\"timeline-chart\""));
    assert!(
        dom.contains("class=\"outcome rolled-back\""),
        "the outcome is shown"
    );
    assert!(dom.contains("class=\"stage-band\" data-stage=\"rollback_restore_traffic\""));
    assert!(group(&dom, "<g id=\"split-blue\"").contains("<polyline"));
    assert!(group(&dom, "<g id=\"split-green\"").contains("<polyline"));
    assert!(
        dom.contains("<td>7 %</td>"),
        "the ratio check's value in percent"
    );
    for table in ["stages", "measurements", "decisions", "provider-calls"] {
        assert!(
            dom.contains(&format!("<table id=\"{table}\"")),
            "no {table} table"
        );
    }
}
