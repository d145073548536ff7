//! `[[monitoring.sources]]`: CloudWatch metrics, logs and alarms and Datadog
//! logs and monitors as named metrics sources of checks, in the spec and in
//! examples/order-api.toml.

use bluegreen_cli::spec::{SourceKind, Spec};

fn example() -> String {
    std::fs::read_to_string(format!(
        "{}/../../examples/order-api.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn the_order_api_example_reads_the_alb_from_cloudwatch_logs_and_monitors() {
    let spec = Spec::from_str(&example(), "order-api.toml").unwrap();
    let kinds: Vec<(&str, SourceKind)> = spec
        .monitoring
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("cloudwatch", SourceKind::Cloudwatch),
            ("app-logs", SourceKind::CloudwatchLogs),
            ("monitors", SourceKind::DatadogMonitors)
        ]
    );
    let plan = spec.plan().unwrap();
    let check = |name: &str| {
        plan.analysis
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(
        check("alb-error-rate").source.as_deref(),
        Some("cloudwatch")
    );
    assert!(check("alb-error-rate").query.starts_with("alb-error-rate "));
    assert_eq!(
        check("alb-p95-latency").source.as_deref(),
        Some("cloudwatch")
    );
    assert_eq!(check("error-logs").source.as_deref(), Some("app-logs"));
    assert_eq!(check("critical-alerts").source.as_deref(), Some("monitors"));
    assert_eq!(check("critical-alerts").min_samples, Some(1));
    assert!(plan
        .rollback_triggers
        .iter()
        .any(|t| t.describe().starts_with("critical-alerts > 0")));
}

fn refused(text: &str) -> String {
    let e = Spec::from_str(text, "order-api.toml")
        .and_then(|s| s.plan().map(|_| s))
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    e.to_string()
}

#[test]
fn a_cloudwatch_source_without_an_aws_target_names_the_field() {
    let text = r#"
[scope]
service = "demo"
version = "2"
image = "demo"

[target.fake]
state = "world.json"

[monitoring]
provider = "fake"
fake = { values = { errors = 0.0 } }

[[monitoring.sources]]
name = "app-logs"
kind = "cloudwatch-logs"

[[monitoring.checks]]
name = "errors"
source = "app-logs"
query = "logs group=/ecs/demo pattern=ERROR"
success = "< 1"
"#;
    let e = refused(text);
    assert!(e.contains("monitoring.sources[0].kind"), "{e}");
    assert!(e.contains("[target.ecs]"), "{e}");
}

#[test]
fn a_check_naming_an_unknown_source_lists_the_sources() {
    let text = example().replace("source = \"monitors\"", "source = \"monitor\"");
    let e = refused(&text);
    assert!(e.contains("no metrics source named \"monitor\""), "{e}");
    assert!(e.contains("monitors"), "{e}");
}

#[test]
fn a_datadog_source_without_an_application_key_names_the_field() {
    let text = example().replace(
        ", app_key = { secret = \"prod/order-api/datadog-app-key\" }",
        "",
    );
    let e = refused(&text);
    // The monitoring provider's own check names app_key first.
    assert!(e.contains("app_key"), "{e}");
}
