//! What the CLI's integration tests share: the real binary run under
//! `timeout`, a small fake-target spec, and fresh databases on the
//! PostgreSQL server scripts/test starts.
// Each test file uses a part of it.
#![allow(dead_code)]

#[cfg(not(feature = "testing"))]
compile_error!(
    "the bluegreen-cli tests drive the fake target and the journal kill switch: run them with `--features testing` (scripts/test uses --all-features)"
);

use std::path::Path;
use std::process::{Command, Output};

/// A fake-target spec: a world kept in `world.json`, virtual time, a canary
/// of 20% for 2 minutes and one check. Tests append the sections they need.
pub const FAKE_SPEC: &str = r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.fake]
state = "world.json"
paused_time = true
initial_version = "2.4.0"

[deployment]
replicas = 2
strategy = { type = "canary", percent = 20, wait = "2m" }

[monitoring]
provider = "fake"
fake = { values = { error-rate = 0.002 } }

[[monitoring.checks]]
name = "error-rate"
query = "errors:{color}"
unit = "ratio"
success = "< 0.01"
"#;

/// Runs `bluegreen ARGS` in `dir` under `timeout` (a hang fails rather than
/// blocks), with each of `env` set (`Some`) or removed (`None`); the crash
/// hook `KILL_ENV` is removed unless `env` sets it.
pub fn bluegreen(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", "120", env!("CARGO_BIN_EXE_bluegreen")])
        .args(args)
        .current_dir(dir)
        .env_remove(bluegreen_cli::journal::KILL_ENV);
    for (name, value) in env {
        match value {
            Some(v) => c.env(name, v),
            None => c.env_remove(name),
        };
    }
    c.output().expect("the bluegreen binary runs")
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The test server's URL with its CA as `sslrootcert` (TLS verified, the
/// default `verify-full`); fails loudly when scripts/test did not start it.
pub fn server_url() -> String {
    let url = std::env::var("BLUEGREEN_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "BLUEGREEN_TEST_PG_URL is not set: run scripts/test, which starts PostgreSQL \
             (scripts/services/postgres.sh) and exports it"
        )
    });
    let ca = std::env::var("BLUEGREEN_TEST_PG_CA").unwrap_or_else(|_| {
        panic!("BLUEGREEN_TEST_PG_CA is not set: run scripts/test (scripts/services/postgres.sh exports it)")
    });
    format!("{url}?sslrootcert={ca}")
}

/// A fresh database `bgt_cli_NAME` on the test server, as a URL with the
/// server URL's parameters.
pub async fn fresh_database(name: &str) -> String {
    let server = server_url();
    let name = format!("bgt_cli_{name}");
    let admin =
        bluegreen_postgres::Database::from_url(&server).expect("BLUEGREEN_TEST_PG_URL parses");
    let client = admin.connect().await.expect("connect to the test server");
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop an earlier run's database");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server.as_str(), String::new()),
    };
    let (prefix, _) = base.rsplit_once('/').expect("the URL names a database");
    format!("{prefix}/{name}{query}")
}
