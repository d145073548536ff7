//! The lint of expand migrations, through the real binary: `validate` names
//! each finding's file:line and rule, and `deploy` is refused before it
//! changes anything (exit 4). The lint only parses: no database is needed.

mod common;

use common::{bluegreen, text, FAKE_SPEC};

const MIGRATIONS: &str = r#"
[migrations]
runner = "postgres"
database_url = { env = "DATABASE_URL" }
directory = "migrations"
backup = false
"#;

/// A directory with the fake-target spec, its `[migrations]` and the files.
fn spec_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spec.toml"),
        format!("{FAKE_SPEC}{MIGRATIONS}"),
    )
    .unwrap();
    let m = dir.path().join("migrations");
    std::fs::create_dir(&m).unwrap();
    for (name, sql) in files {
        std::fs::write(m.join(name), sql).unwrap();
    }
    dir
}

const ADD: (&str, &str) = (
    "0001_add_metadata.up.sql",
    "ALTER TABLE orders ADD COLUMN metadata jsonb;\n",
);
const DROP: &str =
    "-- bluegreen: phase=expand\nALTER TABLE orders ADD COLUMN note text;\nALTER TABLE orders DROP COLUMN legacy_flag;\n";

#[test]
fn validate_fails_naming_file_line_and_rule_of_an_expand_file_that_drops_a_column() {
    let dir = spec_with(&[ADD, ("0002_drop_legacy.up.sql", DROP)]);
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_BAD_SPEC),
        "{stdout}\n{stderr}"
    );
    let at = format!(
        "{}:3: ban-drop-column: drops column orders.legacy_flag, which the old color still reads and writes",
        std::path::Path::new("migrations")
            .join("0002_drop_legacy.up.sql")
            .display()
    );
    assert!(stderr.contains(&at), "{stderr}");
    assert!(!stdout.contains("valid —"), "{stdout}");
    assert!(!stderr.contains("0001_add_metadata"), "{stderr}");
}

#[test]
fn validate_passes_the_same_drop_waived_with_a_reason_or_in_a_contract_file() {
    let waived = "-- bluegreen: phase=expand\nALTER TABLE orders ADD COLUMN note text;\n-- bluegreen:allow ban-drop-column: the old release never reads legacy_flag\nALTER TABLE orders DROP COLUMN legacy_flag;\n";
    let contract = "-- bluegreen: phase=contract\nALTER TABLE orders DROP COLUMN legacy_flag;\n";
    for sql in [waived, contract] {
        let dir = spec_with(&[ADD, ("0002_drop_legacy.up.sql", sql)]);
        let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{sql}\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // Without a reason, the waiver is itself an error, and waives nothing.
    let bare = "ALTER TABLE orders ADD COLUMN note text;\n-- bluegreen:allow ban-drop-column\nALTER TABLE orders DROP COLUMN legacy_flag;\n";
    let dir = spec_with(&[("0002_drop_legacy.up.sql", bare)]);
    let out = bluegreen(dir.path(), &["validate", "spec.toml"], &[]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("0002_drop_legacy.up.sql:2: invalid-waiver")
            && stderr.contains("0002_drop_legacy.up.sql:3: ban-drop-column"),
        "{stderr}"
    );
}

#[test]
fn deploy_of_an_expand_file_that_drops_a_column_is_refused_before_anything_changes() {
    let dir = spec_with(&[ADD, ("0002_drop_legacy.up.sql", DROP)]);
    let out = bluegreen(
        dir.path(),
        &["deploy", "spec.toml"],
        &[("DATABASE_URL", Some("postgres://nobody@127.0.0.1:9/none"))],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("refused, nothing was changed")
            && stderr.contains("0002_drop_legacy.up.sql:3: ban-drop-column"),
        "{stderr}"
    );
    assert!(!stdout.contains("deploying"), "{stdout}");
    // Nothing was touched: no fake world written, no journal opened.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["migrations", "spec.toml"]);
}
