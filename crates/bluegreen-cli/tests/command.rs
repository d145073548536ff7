//! Command smoke tests and checks through the real binary and the fake
//! target: the commands themselves are real processes.

mod common;

use common::{bluegreen, text, FAKE_SPEC};

const TOKEN: &str = "smoke-tok-71d0c2e4a9";

fn write(dir: &std::path::Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

#[test]
fn a_failing_command_smoke_test_rolls_the_deployment_back_naming_the_command_and_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        r#"{FAKE_SPEC}
[[smoke_tests]]
name = "smoke-suite"
command = ["sh", "scripts/smoke.sh", "--color", "{{color}}", "--version", "{{version}}"]
timeout = "20s"
secrets = {{ SMOKE_TOKEN = {{ env = "TEST_SMOKE_TOKEN" }} }}
"#
    );
    write(dir.path(), "spec.toml", &spec);
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    write(
        dir.path(),
        "scripts/smoke.sh",
        "printf 'health: ok\\n'\nprintf 'POST /api/orders with %s -> 500\\n' \"$SMOKE_TOKEN\" >&2\nexit 4\n",
    );
    let out = bluegreen(
        dir.path(),
        &["deploy", "spec.toml"],
        &[("TEST_SMOKE_TOKEN", Some(TOKEN))],
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("finished: rolled_back"), "{stdout}");
    assert!(
        stdout.contains(
            "reason: smoke tests on the new color blue: 1 of 1 failed: smoke-suite failed: `sh scripts/smoke.sh --color blue --version 2.5.0` exited with code 4"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("POST /api/orders with [redacted] -> 500"),
        "{stdout}"
    );
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains(&TOKEN[..8]), "the token shows: {shown}");
    }
    // The traffic never left the old color, which serves 2.4.0 at full
    // scale; the new color is scaled back to 0.
    let world = std::fs::read_to_string(dir.path().join("world.json")).unwrap();
    let world: serde_json::Value = serde_json::from_str(&world).unwrap();
    assert_eq!(world["blue_percent"], 0, "{world}");
    assert_eq!(world["colors"]["green"]["desired"], 2, "{world}");
    assert_eq!(world["colors"]["green"]["version"], "2.4.0", "{world}");
    assert_eq!(world["colors"]["blue"]["desired"], 0, "{world}");
}

#[test]
fn a_check_answered_by_a_command_printing_a_number_decides_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FAKE_SPEC.replace(
        "[[monitoring.checks]]\nname = \"error-rate\"",
        "[[monitoring.checks]]\nname = \"error-rate\"\nsource = \"rate-script\"\nmin_samples = 1",
    );
    assert_ne!(spec, FAKE_SPEC);
    let spec = format!(
        "{spec}\n[[monitoring.commands]]\nname = \"rate-script\"\ncommand = [\"sh\", \"rate.sh\", \"{{query}}\"]\ntimeout = \"10s\"\n"
    );
    write(dir.path(), "spec.toml", &spec);
    write(
        dir.path(),
        "rate.sh",
        "printf '%s\\n' \"$1\" >> asked\nprintf '0.004\\n'\n",
    );
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    // The command was asked for the new color's query.
    let asked = std::fs::read_to_string(dir.path().join("asked")).unwrap();
    assert!(asked.lines().any(|l| l == "errors:blue"), "{asked}");

    // The same check over the threshold rolls back.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "spec.toml", &spec);
    write(dir.path(), "rate.sh", "printf '0.2\\n'\n");
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], &[]);
    let stdout = text(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("error-rate"), "{stdout}");
}

#[test]
fn a_command_that_does_not_exist_fails_validate_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "{FAKE_SPEC}\n[[smoke_tests]]\nname = \"smoke-suite\"\ncommand = [\"no-such-smoke-runner\", \"--url\", \"{{url}}\"]\n"
    );
    write(dir.path(), "spec.toml", &spec);
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("smoke_tests[0].command[0]"), "{err}");
    assert!(
        err.contains("\"no-such-smoke-runner\" is not on PATH"),
        "{err}"
    );

    // An unknown placeholder and a plain-text secret name their fields too.
    let spec = format!(
        "{FAKE_SPEC}\n[[smoke_tests]]\nname = \"smoke-suite\"\ncommand = [\"sh\", \"-c\", \"true\", \"{{host}}\"]\n"
    );
    write(dir.path(), "spec.toml", &spec);
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("smoke_tests[0].command[3]"), "{err}");
    assert!(err.contains("{host}"), "{err}");
    let spec = format!(
        "{FAKE_SPEC}\n[[smoke_tests]]\nname = \"smoke-suite\"\ncommand = [\"true\"]\nsecrets = {{ TOKEN = \"hunter2-plain\" }}\n"
    );
    write(dir.path(), "spec.toml", &spec);
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("secrets.TOKEN"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
