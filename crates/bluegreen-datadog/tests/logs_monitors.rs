//! Datadog Logs counts and monitors in Alert state, against a real HTTP
//! server (wiremock) answering in the shapes of Datadog's API reference
//! (Logs: Aggregate events; Monitors: Get all monitor details).

use std::sync::Arc;

use async_trait::async_trait;
use bluegreen_core::testing::conformance;
use bluegreen_core::{
    Error, ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Result, SecretMetadata,
    SecretSource, SecretValue, Timestamp,
};
use bluegreen_datadog::Datadog;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const FROM: u64 = 1_700_000_000_000;
const TO: u64 = 1_700_000_300_000;

struct Keys;

#[async_trait]
impl SecretSource for Keys {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        match name {
            "api" => Ok(SecretValue::new("api-key-0123456789abcdef")),
            "app" => Ok(SecretValue::new("app-key-fedcba9876543210")),
            other => Err(Error::not_found(format!("secret {other} does not exist"))),
        }
    }
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.get(name).await?;
        Ok(SecretMetadata {
            name: name.into(),
            last_rotated: None,
        })
    }
}

fn client(server: &MockServer) -> Datadog {
    Datadog::builder()
        .base_url(server.uri())
        .keys(Arc::new(Keys), "api", "app")
        .build()
        .unwrap()
}

fn fixture(name: &str) -> ResponseTemplate {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    ResponseTemplate::new(200).set_body_raw(text, "application/json")
}

fn q(check: &str, query: &str) -> MetricQuery {
    MetricQuery {
        check: check.into(),
        query: query.into(),
        from: Timestamp(FROM),
        to: Timestamp(TO),
        color: None,
        baseline: false,
    }
}

fn value(a: &MetricAnswer) -> f64 {
    match a {
        MetricAnswer::Samples { samples } => {
            assert_eq!(samples.len(), 1);
            assert_eq!(samples[0].at, Timestamp(TO));
            samples[0].value
        }
        MetricAnswer::NoData { reason } => panic!("no data: {reason}"),
    }
}

#[tokio::test]
async fn error_logs_of_the_new_color_are_counted_with_the_aggregate_api() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/logs/analytics/aggregate"))
        .and(header("DD-APPLICATION-KEY", "app-key-fedcba9876543210"))
        .and(body_partial_json(serde_json::json!({
            "compute": [{"aggregation": "count", "type": "total"}],
            "filter": {"from": FROM.to_string(), "to": TO.to_string(),
                       "query": "(service:order-api color:green) (status:error)"}
        })))
        .respond_with(fixture("logs_aggregate_count.json"))
        .expect(1)
        .mount(&server)
        .await;
    let a = client(&server)
        .logs()
        .query(&q(
            "error-logs",
            "service:order-api color:green | status:error",
        ))
        .await
        .unwrap();
    assert_eq!(value(&a), 7.0);
}

#[tokio::test]
async fn a_scope_that_logged_nothing_is_no_data_and_a_clean_one_counts_zero() {
    let server = MockServer::start().await;
    // Nothing matches the error query; the scope alone has events.
    Mock::given(method("POST"))
        .and(body_partial_json(serde_json::json!({"filter": {"query": "(service:order-api color:green) (status:error)"}})))
        .respond_with(fixture("logs_aggregate_empty.json"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            serde_json::json!({"filter": {"query": "service:order-api color:green"}}),
        ))
        .respond_with(fixture("logs_aggregate_count.json"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            serde_json::json!({"filter": {"query": "service:order-api color:purple"}}),
        ))
        .respond_with(fixture("logs_aggregate_empty.json"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_partial_json(serde_json::json!({"filter": {"query": "(service:order-api color:purple) (status:error)"}})))
        .respond_with(fixture("logs_aggregate_empty.json"))
        .mount(&server)
        .await;
    let logs = client(&server).logs();
    let clean = logs
        .query(&q(
            "error-logs",
            "service:order-api color:green | status:error",
        ))
        .await
        .unwrap();
    assert_eq!(value(&clean), 0.0);
    let silent = logs
        .query(&q(
            "error-logs",
            "service:order-api color:purple | status:error",
        ))
        .await
        .unwrap();
    let MetricAnswer::NoData { reason } = silent else {
        panic!("{silent:?}")
    };
    assert!(
        reason.contains("\"error-logs\"") && reason.contains("color:purple"),
        "{reason}"
    );
    // The conformance suite on the same server.
    let report = conformance::check_metrics(
        &logs,
        &q("error-logs", "service:order-api color:green | status:error"),
        &q(
            "error-logs",
            "service:order-api color:purple | status:error",
        ),
        &conformance::Capabilities::all(),
    )
    .await;
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_count_datadog_stopped_at_its_time_limit_is_an_error_naming_the_check() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fixture("logs_aggregate_timeout.json"))
        .mount(&server)
        .await;
    let e = client(&server)
        .logs()
        .query(&q("error-logs", "service:order-api | status:error"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_temporary());
    assert!(e.message().starts_with("check \"error-logs\""), "{e}");
    assert!(e.message().contains("\"timeout\""), "{e}");
}

#[tokio::test]
async fn monitors_in_alert_are_counted_and_named() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/monitor"))
        .and(query_param(
            "monitor_tags",
            "service:order-api,severity:critical",
        ))
        .and(query_param("page", "0"))
        .respond_with(fixture("monitors_order_api.json"))
        .expect(1)
        .mount(&server)
        .await;
    let n = client(&server)
        .monitors()
        .query_noted(&q("alerts", "service:order-api, severity:critical"))
        .await
        .unwrap();
    assert_eq!(value(&n.answer), 1.0);
    assert_eq!(
        n.note.as_deref(),
        Some("in Alert: #1201 High error rate on order-api; Warn: #1203 order-api DB pool")
    );
}

#[tokio::test]
async fn a_monitor_query_that_matches_nothing_is_no_data_naming_the_check() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/monitor"))
        .and(query_param("monitor_tags", "service:nope"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("[]", "application/json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/monitor"))
        .and(query_param("monitor_tags", "service:order-api"))
        .respond_with(fixture("monitors_order_api.json"))
        .mount(&server)
        .await;
    let monitors = client(&server).monitors();
    let a = monitors.query(&q("alerts", "service:nope")).await.unwrap();
    let MetricAnswer::NoData { reason } = a else {
        panic!("{a:?}")
    };
    assert!(
        reason.contains("\"alerts\"") && reason.contains("service:nope"),
        "{reason}"
    );
    let report = conformance::check_metrics(
        &monitors,
        &q("alerts", "service:order-api"),
        &q("alerts", "service:nope"),
        &conformance::Capabilities::all(),
    )
    .await;
    assert!(report.passed(), "{report}");
}
