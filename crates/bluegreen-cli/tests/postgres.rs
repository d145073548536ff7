//! `[migrations] runner = "postgres"` and `[journal] kind = "postgres"` from a
//! spec, against the server scripts/test starts (BLUEGREEN_TEST_PG_URL), each
//! test in a database of its own.

use std::path::Path;

use bluegreen_cli::providers::assemble;
use bluegreen_cli::{LoadedSpec, Spec};
use bluegreen_core::provider::{MigrationContext, MigrationPhase};

mod common;
use common::fresh_database;

fn spec(url_var: &str) -> String {
    format!(
        r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.fake]
state = "world.json"

[migrations]
runner = "postgres"
database_url = {{ env = "{url_var}" }}
directory = "migrations"
backup = false

[monitoring]
provider = "fake"
fake = {{ values = {{ error-rate = 0.001 }} }}

[[monitoring.checks]]
name = "error-rate"
query = "errors:{{color}}"
unit = "ratio"
success = "< 0.01"
"#
    )
}

fn write_spec(dir: &Path, url_var: &str) -> LoadedSpec {
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("0025_create_orders.up.sql"),
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text);\nINSERT INTO orders VALUES (1, 'new'), (2, 'paid');\n",
    )
    .unwrap();
    std::fs::write(
        migrations.join("0025_create_orders.down.sql"),
        "DROP TABLE orders;\n",
    )
    .unwrap();
    std::fs::write(dir.join("spec.toml"), spec(url_var)).unwrap();
    LoadedSpec::load(&dir.join("spec.toml")).expect("the spec loads")
}

#[tokio::test]
async fn the_postgres_runner_of_a_spec_applies_the_migrations_of_its_directory_once() {
    let url = fresh_database("migrations_from_spec").await;
    let var = "BLUEGREEN_CLI_TEST_MIGRATIONS_URL";
    std::env::set_var(var, &url);
    let dir = tempfile::tempdir().unwrap();
    let loaded = write_spec(dir.path(), var);
    let assembled = assemble(&loaded).await.expect("the providers build");
    let runner = assembled.migrations.clone().expect("a migration runner");

    let status = runner.status().await.expect("status");
    assert!(status.applied.is_empty());
    assert_eq!(
        status.pending.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![25]
    );
    let ctx = MigrationContext {
        deployment_id: "dep-test".into(),
        backup_id: None,
    };
    let applied = runner
        .apply(MigrationPhase::Expand, &ctx)
        .await
        .expect("apply");
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![25]
    );
    // Idempotent: a repeat applies nothing twice.
    let again = runner
        .apply(MigrationPhase::Expand, &ctx)
        .await
        .expect("apply again");
    assert_eq!(
        again.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![25]
    );
    let status = runner.status().await.expect("status");
    assert_eq!(
        status.applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![25]
    );
    assert!(status.pending.is_empty());

    let db = bluegreen_postgres::Database::from_url(&url).unwrap();
    let client = db.connect().await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("the migration created the table")
        .get(0);
    assert_eq!(rows, 2, "the migration ran once");
    assembled.shutdown().await;
}

#[tokio::test]
async fn a_database_url_variable_that_is_not_set_is_named_without_any_value() {
    let var = "BLUEGREEN_CLI_TEST_UNSET_URL";
    std::env::remove_var(var);
    let dir = tempfile::tempdir().unwrap();
    let loaded = write_spec(dir.path(), var);
    let err = match assemble(&loaded).await {
        Ok(_) => panic!("a runner without its URL must not build"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.kind(), bluegreen_core::ErrorKind::NotFound, "{msg}");
    assert!(msg.contains("migrations.database_url"), "{msg}");
    assert!(msg.contains(var), "{msg}");
}

#[test]
fn the_postgres_journal_takes_its_url_from_an_environment_variable_only() {
    let base = spec("X").replace(
        "[migrations]\nrunner = \"postgres\"",
        "[migrations]\nrunner = \"fake\"",
    );
    let base = base.replace(
        "database_url = { env = \"X\" }\ndirectory = \"migrations\"\n",
        "",
    );
    let ok = format!(
        "{base}\n[journal]\nkind = \"postgres\"\nurl = {{ env = \"BLUEGREEN_JOURNAL_URL\" }}\n"
    );
    Spec::from_str(&ok, "spec.toml").expect("an env reference is accepted");

    let stored = ok.replace(
        "{ env = \"BLUEGREEN_JOURNAL_URL\" }",
        "{ secret = \"prod/journal-url\" }",
    );
    let e = Spec::from_str(&stored, "spec.toml").unwrap_err();
    assert_eq!(e.field, "journal.url", "{e}");
    assert!(e.message.contains("environment variable"), "{e}");

    let plain = ok.replace(
        "{ env = \"BLUEGREEN_JOURNAL_URL\" }",
        "\"postgres://u:hunter2@db/journal\"",
    );
    let e = Spec::from_str(&plain, "spec.toml").unwrap_err();
    assert!(e.message.contains("plain text"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let missing = ok.replace("url = { env = \"BLUEGREEN_JOURNAL_URL\" }\n", "");
    let e = Spec::from_str(&missing, "spec.toml").unwrap_err();
    assert_eq!(e.field, "journal.url", "{e}");
}

/// A server that declines TLS (`N` to the SSLRequest); returns every byte
/// the client sent it.
async fn server_declining_tls() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let wait = std::time::Duration::from_secs(2);
        while let Ok(Ok(n)) = tokio::time::timeout(wait, sock.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.len() == 8 {
                sock.write_all(b"N").await.unwrap();
            }
        }
        seen
    });
    (port, task)
}

fn journal_spec(url_var: &str, allow_plaintext: bool) -> String {
    format!(
        "{}\n[journal]\nkind = \"postgres\"\nurl = {{ env = \"{url_var}\" }}\nallow_plaintext = {allow_plaintext}\n",
        spec(url_var)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_url_and_database_url_to_a_server_declining_tls_never_send_the_password() {
    let password = "hunter2-Spec-Secret";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations")).unwrap();

    // The journal's database (no sslmode: verify-full).
    let (port, server) = server_declining_tls().await;
    let var = "BLUEGREEN_CLI_TEST_TLS_JOURNAL_URL";
    std::env::set_var(
        var,
        format!("postgres://deployer:{password}@127.0.0.1:{port}/journal"),
    );
    std::fs::write(dir.path().join("spec.toml"), journal_spec(var, false)).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let db = bluegreen_cli::journal::journal_database(&loaded).expect("the URL parses");
    let err = db.connect().await.unwrap_err();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 8, "only the SSLRequest was sent: {seen:?}");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    assert!(err.to_string().contains("(the default)"), "{err}");
    assert!(!err.to_string().contains(password), "{err}");

    // The migrations' database, through the providers the spec assembles.
    let (port, server) = server_declining_tls().await;
    let var = "BLUEGREEN_CLI_TEST_TLS_MIGRATIONS_URL";
    std::env::set_var(
        var,
        format!("postgres://deployer:{password}@127.0.0.1:{port}/orders"),
    );
    std::fs::write(dir.path().join("spec.toml"), spec(var)).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let assembled = assemble(&loaded).await.expect("the providers build");
    let runner = assembled.migrations.clone().expect("a migration runner");
    let err = runner.status().await.unwrap_err();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 8, "only the SSLRequest was sent: {seen:?}");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    assert!(!err.to_string().contains(password), "{err}");
}

#[tokio::test]
async fn plaintext_to_a_remote_database_needs_allow_plaintext_in_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
    let var = "BLUEGREEN_CLI_TEST_PLAINTEXT_URL";
    std::env::set_var(
        var,
        "postgres://deployer:hunter2-Plain@db.example.internal/orders?sslmode=disable",
    );
    // Journal: refused without the key, naming the field and the key.
    std::fs::write(dir.path().join("spec.toml"), journal_spec(var, false)).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let err = bluegreen_cli::journal::journal_database(&loaded).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("journal.url (BLUEGREEN_CLI_TEST_PLAINTEXT_URL)"),
        "{msg}"
    );
    assert!(msg.contains("allow_plaintext = true"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    std::fs::write(dir.path().join("spec.toml"), journal_spec(var, true)).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    assert!(bluegreen_cli::journal::journal_database(&loaded).is_ok());

    // Migrations: refused when the providers are built, before any connection.
    std::fs::write(dir.path().join("spec.toml"), spec(var)).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let err = match assemble(&loaded).await {
        Ok(_) => panic!("plaintext to a remote host was accepted"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("migrations.database_url"), "{msg}");
    assert!(msg.contains("allow_plaintext = true"), "{msg}");
    let allowed = spec(var).replace("backup = false", "backup = false\nallow_plaintext = true");
    std::fs::write(dir.path().join("spec.toml"), allowed).unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    assert!(assemble(&loaded).await.is_ok());
}

#[tokio::test]
async fn a_migration_below_the_highest_applied_runs_only_with_allow_out_of_order() {
    let url = fresh_database("out_of_order").await;
    let var = "BLUEGREEN_CLI_TEST_OUT_OF_ORDER_URL";
    std::env::set_var(var, &url);
    let dir = tempfile::tempdir().unwrap();
    let loaded = write_spec(dir.path(), var);
    let ctx = MigrationContext {
        deployment_id: "dep-out-of-order".into(),
        backup_id: None,
    };
    let assembled = assemble(&loaded).await.expect("the providers build");
    let runner = assembled.migrations.clone().expect("a migration runner");
    runner
        .apply(MigrationPhase::Expand, &ctx)
        .await
        .expect("0025 applies");
    assembled.shutdown().await;

    // A branch merged late: version 24, below the applied 25.
    std::fs::write(
        dir.path().join("migrations/0024_add_notes.up.sql"),
        "CREATE TABLE notes (id bigint PRIMARY KEY);\n",
    )
    .unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let assembled = assemble(&loaded).await.expect("the providers build");
    let runner = assembled.migrations.clone().expect("a migration runner");
    let err = runner
        .apply(MigrationPhase::Expand, &ctx)
        .await
        .expect_err("out of order is refused by default");
    assert!(
        err.to_string().contains("lower than the highest applied"),
        "{err}"
    );
    assert!(err.to_string().contains("allow_out_of_order"), "{err}");
    assembled.shutdown().await;

    let spec = std::fs::read_to_string(dir.path().join("spec.toml")).unwrap();
    std::fs::write(
        dir.path().join("spec.toml"),
        spec.replace(
            "backup = false",
            "backup = false\nallow_out_of_order = true",
        ),
    )
    .unwrap();
    let loaded = LoadedSpec::load(&dir.path().join("spec.toml")).expect("the spec loads");
    let assembled = assemble(&loaded).await.expect("the providers build");
    let runner = assembled.migrations.clone().expect("a migration runner");
    let applied = runner
        .apply(MigrationPhase::Expand, &ctx)
        .await
        .expect("allowed out of order");
    let mut versions: Vec<_> = applied.iter().map(|m| m.version).collect();
    versions.sort();
    assert_eq!(versions, vec![24, 25]);
    assembled.shutdown().await;
}
