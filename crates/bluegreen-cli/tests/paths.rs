//! Paths in a spec resolve against the spec's directory, not the working
//! directory (issue 17, item 8), and one that leaves it is printed in full
//! by `validate` and `plan`, with the real binary.

use std::path::Path;
use std::process::Output;

mod common;
use common::{text, FAKE_SPEC as SPEC};

fn bluegreen(cwd: &Path, args: &[&str]) -> Output {
    common::bluegreen(cwd, args, &[])
}

#[test]
fn relative_paths_resolve_next_to_the_spec_from_another_working_directory() {
    let root = tempfile::tempdir().unwrap();
    let deploy = root.path().join("deploy");
    let cwd = root.path().join("elsewhere");
    std::fs::create_dir_all(deploy.join("migrations")).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    let spec = format!(
        "{SPEC}\n[migrations]\nrunner = \"fake\"\ndirectory = \"migrations\"\nbackup = false\n\n[journal]\npath = \"state/deploy.journal\"\n"
    );
    std::fs::write(deploy.join("spec.toml"), spec).unwrap();
    let out = bluegreen(&cwd, &["deploy", "../deploy/spec.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(deploy.join("state/deploy.journal").is_file());
    assert!(deploy.join("world.json").is_file());
    assert!(!cwd.join("state").exists() && !cwd.join("world.json").exists());
    let out = bluegreen(
        &cwd,
        &["--output", "json", "validate", "../deploy/spec.toml"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let migrations = &v["paths"][1];
    assert_eq!(migrations["field"], "migrations.directory", "{v}");
    assert_eq!(migrations["outside_spec_dir"], false, "{v}");
    assert_eq!(
        Path::new(migrations["path"].as_str().unwrap()),
        Path::new("../deploy/migrations"),
        "{v}"
    );
}

#[test]
fn a_path_that_leaves_the_spec_directory_is_printed_in_full_by_validate_and_plan() {
    let root = tempfile::tempdir().unwrap();
    let deploy = root.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    // validate refuses a migrations.directory that does not exist.
    std::fs::create_dir_all(root.path().join("shared/migrations")).unwrap();
    let spec = format!(
        "{SPEC}\n[migrations]\nrunner = \"fake\"\ndirectory = \"../shared/migrations\"\nbackup = false\n\n[journal]\npath = \"../../journals/order-api.journal\"\n"
    );
    std::fs::write(deploy.join("spec.toml"), spec).unwrap();
    let root = root.path().canonicalize().unwrap();
    let migrations = root.join("shared/migrations").display().to_string();
    let journal = root
        .parent()
        .unwrap()
        .join("journals/order-api.journal")
        .display()
        .to_string();
    for cmd in ["validate", "plan"] {
        let out = bluegreen(&deploy, &[cmd, "spec.toml"]);
        let shown = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", text(&out.stderr));
        for full in [&migrations, &journal] {
            assert!(
                shown.contains(&format!("{full} (outside the spec's directory)")),
                "{cmd} prints {full} in full: {shown}"
            );
        }
    }
}
