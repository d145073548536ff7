//! Bad input that misled a user, each run through the real binary: the
//! message names what is wrong and where, and the exit code says whether
//! anything changed.

mod common;

use std::path::Path;

use bluegreen_cli::cli::{EXIT_BAD_SPEC, EXIT_ROLLED_BACK, EXIT_SUCCEEDED};
use common::{bluegreen, text, FAKE_SPEC};

fn dir_with(spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    dir
}

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = bluegreen(dir, args, &[]);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

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
