//! `[[monitoring.sources]] kind = "postgres"`: a check read from SQL, its
//! database URL by reference, validation naming `monitoring.sources[i].…`.

use bluegreen_cli::spec::{SourceKind, Spec};

const SPEC: &str = r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.fake]
state = "world.json"

[monitoring]
provider = "fake"
fake = { values = { error-rate = 0.002 } }

[[monitoring.checks]]
name = "db-pool"
source = "orders-db"
query = "select count(*)::float8 / current_setting('max_connections')::float8 from pg_stat_activity"
unit = "ratio"
success = "< 0.8"
min_samples = 1
"#;

fn with_source(source: &str) -> Result<Spec, String> {
    let text = format!("{SPEC}\n[[monitoring.sources]]\nname = \"orders-db\"\n{source}");
    Spec::from_str(&text, "spec.toml")
        .and_then(|s| s.plan().map(|_| s))
        .map_err(|e| e.to_string())
}

#[test]
fn a_pool_use_check_on_a_postgres_source_validates_without_a_fake_value() {
    let spec = with_source(
        "kind = \"postgres\"\ndatabase_url = { env = \"ORDERS_DB_URL\" }\nstatement_timeout = \"2s\"\n",
    )
    .expect("valid");
    let s = &spec.monitoring.sources[0];
    assert_eq!(s.kind, SourceKind::Postgres);
    assert_eq!(s.statement_timeout, Some(std::time::Duration::from_secs(2)));
    let plan = spec.plan().unwrap();
    assert_eq!(plan.analysis[0].source.as_deref(), Some("orders-db"));
}

#[test]
fn a_postgres_source_without_a_database_url_names_the_field() {
    let e = with_source("kind = \"postgres\"\n").unwrap_err();
    assert!(e.contains("monitoring.sources[0].database_url"), "{e}");
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn a_database_url_written_as_plain_text_is_refused_without_echoing_it() {
    let e =
        with_source("kind = \"postgres\"\ndatabase_url = \"postgres://app:hunter2@db/orders\"\n")
            .unwrap_err();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_database_url_on_a_source_that_is_not_postgres_names_the_field() {
    let e =
        with_source("kind = \"cloudwatch-alarms\"\ndatabase_url = { env = \"ORDERS_DB_URL\" }\n")
            .unwrap_err();
    assert!(e.contains("monitoring.sources[0].database_url"), "{e}");
}
