//! The Datadog client against a real HTTP server (wiremock) answering with
//! fixtures in the shapes of Datadog's API reference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::driver::{with_retry, RetryPolicy};
use bluegreen_core::{
    Error, ErrorKind, ErrorStatus, EventSink, MetricAnswer, MetricQuery, MetricsSource,
    Notification, Result, SecretMetadata, SecretSource, SecretValue, Severity, Timestamp,
    MAX_RETRY_AFTER,
};
use bluegreen_datadog::{Datadog, QueryApi};
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "api-key-0123456789abcdef";
const APP_KEY: &str = "app-key-fedcba9876543210";
const FROM: u64 = 1_700_000_000_000;
/// The window ends 30 s into the bucket that starts at FROM + 240 s.
const TO: u64 = 1_700_000_270_000;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn json(status: u16, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(fixture(name), "application/json")
}

/// Secrets held in memory, as a user's own store would hand them out.
struct Secrets(HashMap<String, String>);

#[async_trait]
impl SecretSource for Secrets {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        self.0
            .get(name)
            .map(SecretValue::new)
            .ok_or_else(|| Error::not_found(format!("secret {name} does not exist")))
    }
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.get(name).await?;
        Ok(SecretMetadata {
            name: name.into(),
            last_rotated: None,
        })
    }
}

fn secrets() -> Arc<dyn SecretSource> {
    Arc::new(Secrets(HashMap::from([
        (
            "prod/order-api/datadog-api-key".to_string(),
            API_KEY.to_string(),
        ),
        (
            "prod/order-api/datadog-app-key".to_string(),
            APP_KEY.to_string(),
        ),
    ])))
}

fn client(server: &MockServer) -> Datadog {
    client_with(server.uri(), |b| b)
}

fn client_with(
    base: String,
    f: impl FnOnce(bluegreen_datadog::DatadogBuilder) -> bluegreen_datadog::DatadogBuilder,
) -> Datadog {
    f(Datadog::builder()
        .base_url(base)
        .keys(
            secrets(),
            "prod/order-api/datadog-api-key",
            "prod/order-api/datadog-app-key",
        )
        .query_timeout(Duration::from_secs(10)))
    .build()
    .expect("client")
}

fn q(query: &str) -> MetricQuery {
    MetricQuery {
        check: "error-rate".into(),
        query: query.into(),
        from: Timestamp(FROM),
        to: Timestamp(TO),
        color: None,
        baseline: false,
    }
}

const ERRORS_BLUE: &str = "sum:api.errors{service:order-api,color:blue}.as_rate()";

async fn v1(server: &MockServer, query: &str, status: u16, fixture_name: &str) {
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", query))
        .and(header("DD-API-KEY", API_KEY))
        .and(header("DD-APPLICATION-KEY", APP_KEY))
        .respond_with(json(status, fixture_name))
        .mount(server)
        .await;
}

fn values(a: &MetricAnswer) -> Vec<(u64, f64)> {
    match a {
        MetricAnswer::Samples { samples } => samples.iter().map(|s| (s.at.0, s.value)).collect(),
        MetricAnswer::NoData { reason } => panic!("expected samples, got no data: {reason}"),
    }
}

fn assert_no_keys(e: &Error) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(
            !text.contains(API_KEY) && !text.contains(APP_KEY),
            "a key leaked: {text}"
        );
    }
}

#[tokio::test]
async fn v1_drops_nulls_and_the_incomplete_last_point() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .and(query_param("query", ERRORS_BLUE))
        .and(query_param("from", "1700000000"))
        .and(query_param("to", "1700000270"))
        .and(header("DD-API-KEY", API_KEY))
        .and(header("DD-APPLICATION-KEY", APP_KEY))
        .respond_with(json(200, "v1_error_rate.json"))
        .expect(1)
        .mount(&server)
        .await;
    let a = client(&server).query(&q(ERRORS_BLUE)).await.unwrap();
    // The null at +60 s is dropped; the 0.09 at +240 s covers [240 s, 300 s),
    // which ends after the window's end (270 s): incomplete, left out.
    assert_eq!(
        values(&a),
        vec![
            (FROM, 0.004),
            (FROM + 120_000, 0.006),
            (FROM + 180_000, 0.005)
        ]
    );
}

#[tokio::test]
async fn v1_keeps_the_last_point_once_its_bucket_has_ended() {
    let server = MockServer::start().await;
    v1(&server, ERRORS_BLUE, 200, "v1_error_rate.json").await;
    let mut query = q(ERRORS_BLUE);
    query.to = Timestamp(FROM + 300_000);
    let a = client(&server).query(&query).await.unwrap();
    assert_eq!(values(&a).last(), Some(&(FROM + 240_000, 0.09)));
}

#[tokio::test]
async fn v1_several_series_are_all_samples_in_time_order() {
    let server = MockServer::start().await;
    let query = "p95:api.response_time{service:order-api,color:blue} by {host}";
    v1(&server, query, 200, "v1_several_series.json").await;
    let a = client(&server).query(&q(query)).await.unwrap();
    assert_eq!(
        values(&a),
        vec![
            (FROM, 120.0),
            (FROM, 410.0),
            (FROM + 60_000, 130.0),
            (FROM + 60_000, 380.0)
        ]
    );
}

#[tokio::test]
async fn v1_an_empty_series_list_is_no_data_never_zero() {
    let server = MockServer::start().await;
    let query = "sum:api.errors{service:order-api,color:green}.as_rate()";
    v1(&server, query, 200, "v1_empty.json").await;
    match client(&server).query(&q(query)).await.unwrap() {
        MetricAnswer::NoData { reason } => assert!(reason.contains("no series"), "{reason}"),
        other => panic!("expected NoData, got {other:?}"),
    }
}

#[tokio::test]
async fn v2_formula_errors_over_hits_is_posted_and_read() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/query/timeseries"))
        .and(header("DD-API-KEY", API_KEY))
        .and(header("DD-APPLICATION-KEY", APP_KEY))
        .and(body_partial_json(serde_json::json!({
            "data": {
                "type": "timeseries_request",
                "attributes": {
                    "from": FROM,
                    "to": TO,
                    "queries": [
                        {"data_source": "metrics", "name": "errors", "query": "sum:api.errors{service:order-api,color:blue}.as_count()"},
                        {"data_source": "metrics", "name": "hits", "query": "sum:api.hits{service:order-api,color:blue}.as_count()"}
                    ],
                    "formulas": [{"formula": "errors / hits"}]
                }
            }
        })))
        .respond_with(json(200, "v2_error_rate.json"))
        .expect(1)
        .mount(&server)
        .await;
    let a = client(&server)
        .query(&q(
            "errors = sum:api.errors{service:order-api,color:blue}.as_count();
                   hits = sum:api.hits{service:order-api,color:blue}.as_count();
                   errors / hits",
        ))
        .await
        .unwrap();
    // null at +120 s dropped; 0.2 at +240 s incomplete (interval inferred: 60 s).
    assert_eq!(
        values(&a),
        vec![
            (FROM, 0.002),
            (FROM + 60_000, 0.003),
            (FROM + 180_000, 0.004)
        ]
    );
}

#[tokio::test]
async fn v2_for_a_plain_query_when_asked_and_empty_is_no_data() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/query/timeseries"))
        .and(body_partial_json(serde_json::json!({
            "data": {"attributes": {"queries": [{"name": "query1", "query": ERRORS_BLUE}], "interval": 60000}}
        })))
        .respond_with(json(200, "v2_empty.json"))
        .mount(&server)
        .await;
    let dd = client_with(server.uri(), |b| {
        b.api(QueryApi::V2).v2_interval(Duration::from_secs(60))
    });
    assert!(matches!(
        dd.query(&q(ERRORS_BLUE)).await.unwrap(),
        MetricAnswer::NoData { .. }
    ));
}

#[tokio::test]
async fn v2_mismatched_times_and_values_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/query/timeseries"))
        .respond_with(json(200, "v2_mismatched.json"))
        .mount(&server)
        .await;
    let e = client(&server)
        .query(&q("a = sum:x{*}; b = sum:y{*}; a / b"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(e.to_string().contains("2 values for 3 times"), "{e}");
    assert_eq!(e.provider(), "datadog");
    assert_eq!(e.operation(), "query");
}

#[tokio::test]
async fn v1_a_point_without_its_value_is_an_invalid_response() {
    let server = MockServer::start().await;
    v1(&server, "sum:api.errors{*}", 200, "v1_bad_point.json").await;
    let e = client(&server)
        .query(&q("sum:api.errors{*}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(
        e.to_string()
            .contains("point 1 is not a [time, value] pair"),
        "{e}"
    );
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"status": "ok", "series": [{"pointlist": [[1,"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(e.to_string().contains("malformed JSON"), "{e}");
}

#[tokio::test]
async fn a_rejected_query_passes_datadogs_error_text_on() {
    let server = MockServer::start().await;
    v1(&server, "sum:api.errors{", 400, "error_400.json").await;
    let e = client(&server)
        .query(&q("sum:api.errors{"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(
        e.to_string().contains("Rule 'scope_expr' didn't match"),
        "{e}"
    );

    // The same with status "error" in a 200 answer (v1) and an `errors` string (v2).
    v1(
        &server,
        "sum:api.errors{service:order-api",
        200,
        "v1_status_error.json",
    )
    .await;
    let e = client(&server)
        .query(&q("sum:api.errors{service:order-api"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("check error-rate"), "{e}");
    assert!(e.to_string().contains("unable to parse"), "{e}");

    Mock::given(method("POST"))
        .and(path("/api/v2/query/timeseries"))
        .respond_with(json(400, "v2_rejected.json"))
        .mount(&server)
        .await;
    let e = client(&server)
        .query(&q("a = p96:x{*}; b = sum:y{*}; a / b"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("unknown metric aggregator 'p96'"),
        "{e}"
    );
}

/// The policy the driver would run queries under, with a backoff (10 ms)
/// far below the hints, so a wait of a second can only be the hint's.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        jitter: false,
    }
}

/// A 429, then the answer: through the retry policy, as the driver runs a
/// query. Returns the answer's values and how long the query took.
async fn query_after_429(limit: ResponseTemplate) -> (Vec<(u64, f64)>, Duration, usize) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .respond_with(limit)
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    v1(&server, ERRORS_BLUE, 200, "v1_error_rate.json").await;
    let dd = client(&server);
    let query = q(ERRORS_BLUE);
    let started = std::time::Instant::now();
    let a = with_retry(
        &quick_policy(),
        Duration::from_secs(10),
        ("datadog", "query"),
        || dd.query(&query),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    let requests = server.received_requests().await.unwrap().len();
    (values(&a), took, requests)
}

#[tokio::test]
async fn a_throttled_query_with_retry_after_is_retried_after_the_hinted_delay() {
    let (values, took, requests) =
        query_after_429(json(429, "error_429.json").insert_header("Retry-After", "1")).await;
    assert_eq!(values.len(), 3);
    assert_eq!(requests, 2, "one 429, then one retry");
    assert!(
        took >= Duration::from_secs(1),
        "the retry came {took:?} after the 429, before its Retry-After of 1 s"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_throttled_query_is_retried_after_the_rate_limit_reset() {
    let (values, took, requests) = query_after_429(
        json(429, "error_429.json")
            .insert_header("X-RateLimit-Limit", "1600")
            .insert_header("X-RateLimit-Period", "3600")
            .insert_header("X-RateLimit-Remaining", "0")
            .insert_header("X-RateLimit-Reset", "1")
            .insert_header("X-RateLimit-Name", "query_metrics"),
    )
    .await;
    assert_eq!(values.len(), 3);
    assert_eq!(requests, 2, "one 429, then the retry after the reset");
    assert!(took >= Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_rate_limited_query_is_one_request_with_the_reset_as_its_hint() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query"))
        .respond_with(
            json(429, "error_429.json")
                .insert_header("X-RateLimit-Limit", "1600")
                .insert_header("X-RateLimit-Period", "3600")
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Reset", "1740")
                .insert_header("X-RateLimit-Name", "query_metrics"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.is_temporary());
    assert!(e.to_string().contains("resets in 1740s"), "{e}");
    assert!(e.to_string().contains("query_metrics"), "{e}");
    // 29 minutes, capped: the policy never parks a call longer.
    assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER));
}

#[tokio::test]
async fn server_errors_are_temporary() {
    let server = MockServer::start().await;
    v1(&server, ERRORS_BLUE, 500, "error_500.json").await;
    let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_temporary());
    assert!(
        e.to_string().contains("(HTTP 500): Internal Server Error"),
        "{e}"
    );
}

#[tokio::test]
async fn forbidden_names_the_application_key_when_the_api_key_is_valid() {
    let server = MockServer::start().await;
    v1(&server, ERRORS_BLUE, 403, "error_403.json").await;
    Mock::given(method("GET"))
        .and(path("/api/v1/validate"))
        .and(header("DD-API-KEY", API_KEY))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(r#"{"valid": true}"#, "application/json"),
        )
        .mount(&server)
        .await;
    let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert_eq!(e.status(), ErrorStatus::Permanent);
    let text = e.to_string();
    assert!(
        text.contains("the application key (secret prod/order-api/datadog-app-key)")
            && text.contains("API key (secret prod/order-api/datadog-api-key) is valid"),
        "{text}"
    );
    assert_no_keys(&e);
}

#[tokio::test]
async fn forbidden_names_the_api_key_when_validate_refuses_it() {
    let server = MockServer::start().await;
    v1(&server, ERRORS_BLUE, 403, "error_403.json").await;
    Mock::given(method("GET"))
        .and(path("/api/v1/validate"))
        .respond_with(json(403, "error_403.json"))
        .mount(&server)
        .await;
    let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(
        e.to_string()
            .contains("the API key (secret prod/order-api/datadog-api-key) is wrong or revoked"),
        "{e}"
    );
    assert_no_keys(&e);
}

#[tokio::test]
async fn a_missing_key_secret_is_named() {
    let server = MockServer::start().await;
    let dd = Datadog::builder()
        .base_url(server.uri())
        .keys(
            secrets(),
            "prod/order-api/datadog-api-key",
            "prod/order-api/no-such-key",
        )
        .build()
        .unwrap();
    let e = dd.query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string()
            .contains("application key from secret prod/order-api/no-such-key"),
        "{e}"
    );
    assert!(
        server.received_requests().await.unwrap().is_empty(),
        "nothing is sent without keys"
    );
}

#[tokio::test]
async fn an_unreachable_host_is_a_temporary_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dd = client_with(format!("http://127.0.0.1:{port}"), |b| b);
    let e = dd.query(&q(ERRORS_BLUE)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_temporary());
    assert!(
        e.to_string()
            .contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{e}"
    );
    assert_no_keys(&e);
}

#[tokio::test]
async fn a_tls_failure_is_a_permanent_error() {
    // A plain-HTTP server spoken to over https: the TLS handshake fails.
    let server = MockServer::start().await;
    let https = server.uri().replace("http://", "https://");
    let e = client_with(https, |b| b)
        .query(&q(ERRORS_BLUE))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.status(), ErrorStatus::Permanent, "{e}");
    assert!(e.to_string().contains("TLS with 127.0.0.1"), "{e}");
    assert_no_keys(&e);
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let e = Datadog::builder()
        .base_url("ftp://example")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("base_url"), "{e}");

    let server = MockServer::start().await;
    let e = client(&server)
        .query(&q("a = sum:x{*}; a / b; c"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("check error-rate"), "{e}");
}

#[tokio::test]
async fn the_client_passes_the_metrics_conformance_suite() {
    let server = MockServer::start().await;
    let empty = "sum:api.errors{service:order-api,color:green}.as_rate()";
    v1(&server, ERRORS_BLUE, 200, "v1_error_rate.json").await;
    v1(&server, empty, 200, "v1_empty.json").await;
    let dd = client(&server);
    bluegreen_core::testing::conformance::metrics(&dd, &q(ERRORS_BLUE), &q(empty)).await;
}

#[test]
fn debug_shows_secret_names_never_keys() {
    let dd = client_with("http://127.0.0.1:9".into(), |b| b);
    let d = format!("{dd:?}");
    assert!(d.contains("prod/order-api/datadog-api-key"), "{d}");
    assert!(!d.contains(API_KEY) && !d.contains(APP_KEY), "{d}");
}

fn notification(title: &str, severity: Severity, tags: &[&str]) -> Notification {
    Notification {
        deployment_id: "order-api-2.5.0-1".into(),
        service: "order-api".into(),
        version: "2.5.0".into(),
        title: title.into(),
        text: "v2.5.0 deployed successfully to production".into(),
        severity,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        cause: None,
    }
}

#[tokio::test]
async fn events_post_alert_type_and_tags() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/events"))
        .and(header("DD-API-KEY", API_KEY))
        .and(body_partial_json(serde_json::json!({
            "title": "Deployment Complete",
            "text": "v2.5.0 deployed successfully to production",
            "alert_type": "success",
            "tags": ["deployment:success", "version:2.5.0", "service:order-api", "deployment_id:order-api-2.5.0-1"],
            "aggregation_key": "order-api-2.5.0-1"
        })))
        .respond_with(json(202, "event_202.json"))
        .expect(1)
        .mount(&server)
        .await;
    let dd = client(&server);
    dd.notify(&notification(
        "Deployment Complete",
        Severity::Success,
        &["deployment:success", "version:2.5.0"],
    ))
    .await
    .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert!(
        requests[0].headers.get("DD-APPLICATION-KEY").is_none(),
        "events need the API key only"
    );
}

#[tokio::test]
async fn every_severity_has_its_alert_type() {
    let server = MockServer::start().await;
    for (severity, alert) in [
        (Severity::Info, "info"),
        (Severity::Success, "success"),
        (Severity::Warning, "warning"),
        (Severity::Error, "error"),
    ] {
        Mock::given(method("POST"))
            .and(path("/api/v1/events"))
            .and(body_partial_json(
                serde_json::json!({ "alert_type": alert }),
            ))
            .respond_with(json(202, "event_202.json"))
            .expect(1)
            .mount(&server)
            .await;
        client(&server)
            .notify(&notification("Deployment Rollback", severity, &[]))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_failed_event_is_an_error_without_waiting_or_leaking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/events"))
        .respond_with(json(429, "error_429.json").insert_header("X-RateLimit-Reset", "30"))
        .expect(1)
        .mount(&server)
        .await;
    let e = client(&server)
        .notify(&notification("Deployment Start", Severity::Info, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::RateLimited,
        "events never wait for a reset: {e}"
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(e.operation(), "notify");
    assert_no_keys(&e);
}

#[tokio::test]
async fn v2_an_error_text_without_series_is_a_rejected_query() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/query/timeseries"))
        .respond_with(json(200, "v2_rejected.json"))
        .mount(&server)
        .await;
    let e = client(&server)
        .query(&q("a = p96:x{*}; b = sum:y{*}; a / b"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        e.message(),
        "Datadog rejected the query of check error-rate: Error parsing query: unknown metric aggregator 'p96'"
    );
}

/// A second HTTP server on another loopback address (Linux routes all of
/// 127/8 to `lo`): another host, which records every request it gets.
async fn other_host() -> MockServer {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    MockServer::builder().listener(listener).start().await
}

#[tokio::test]
async fn a_redirect_to_another_host_never_receives_the_keys() {
    // A proxy or a misconfigured base URL that redirects: to another host,
    // reqwest would carry DD-API-KEY and DD-APPLICATION-KEY along.
    for (status, what) in [(302, "v1 query"), (307, "v2 query"), (308, "event")] {
        let other = other_host().await;
        let away = format!("{}/collect?from=datadog", other.uri());
        let home = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(status).insert_header("Location", away.as_str()))
            .mount(&home)
            .await;
        let dd = client(&home);
        let e = match what {
            "v1 query" => dd.query(&q(ERRORS_BLUE)).await.unwrap_err(),
            "v2 query" => dd
                .query(&q("a = sum:x{*}; b = sum:y{*}; a / b"))
                .await
                .unwrap_err(),
            _ => dd
                .notify(&notification("Deployment Start", Severity::Info, &[]))
                .await
                .unwrap_err(),
        };
        let reached = other.received_requests().await.unwrap();
        let leaked: Vec<_> = reached
            .iter()
            .filter(|r| {
                r.headers.contains_key("DD-API-KEY") || r.headers.contains_key("DD-APPLICATION-KEY")
            })
            .collect();
        assert!(
            leaked.is_empty(),
            "{what}: the other host got the keys: {leaked:?}"
        );
        assert!(
            reached.is_empty(),
            "{what}: the redirect to another host was followed: {reached:?}"
        );
        assert_eq!(e.status(), ErrorStatus::Permanent, "{what}: {e}");
        assert_eq!(
            e.message(),
            format!(
                "Datadog answered HTTP {status}, a redirect to {}/…, not followed: \
                 the API keys go only to the configured site, {}",
                other.uri(),
                home.address()
            ),
            "{what}"
        );
        assert_no_keys(&e);
        // The keys did go where they were meant for: the one request home got.
        let sent = home.received_requests().await.unwrap();
        assert_eq!(sent.len(), 1, "{what}");
        assert_eq!(sent[0].headers["DD-API-KEY"], API_KEY, "{what}");
    }
}

#[tokio::test]
async fn a_redirect_of_the_validate_call_after_a_403_never_receives_the_key() {
    let other = other_host().await;
    let home = MockServer::start().await;
    v1(&home, ERRORS_BLUE, 403, "error_403.json").await;
    Mock::given(method("GET"))
        .and(path("/api/v1/validate"))
        .respond_with(
            ResponseTemplate::new(301)
                .insert_header("Location", format!("{}/api/v1/validate", other.uri())),
        )
        .mount(&home)
        .await;
    let e = client(&home).query(&q(ERRORS_BLUE)).await.unwrap_err();
    let reached = other.received_requests().await.unwrap();
    assert!(reached.is_empty(), "the redirect was followed: {reached:?}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(
        e.to_string()
            .contains("(GET /api/v1/validate answered HTTP 301)"),
        "{e}"
    );
    assert_no_keys(&e);
}

#[tokio::test]
async fn a_redirect_location_that_carries_a_key_is_not_shown() {
    for location in [
        format!("http://{API_KEY}.example/"),
        format!("https://collector.example/in?k={API_KEY}"),
        "/somewhere/else".to_string(),
    ] {
        let home = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(302).insert_header("Location", location.as_str()))
            .mount(&home)
            .await;
        let e = client(&home).query(&q(ERRORS_BLUE)).await.unwrap_err();
        assert_no_keys(&e);
        let shown = match location.as_str() {
            l if l.starts_with("http://") => "a URL that contains a key (not shown)".to_string(),
            l if l.starts_with("https://") => "https://collector.example/…".to_string(),
            // A relative Location is on the same host: still not followed.
            _ => format!("{}/…", home.uri()),
        };
        assert!(
            e.to_string()
                .contains(&format!("HTTP 302, a redirect to {shown}, not followed")),
            "{location}: {e}"
        );
    }
}

/// A body that quotes a key back, with the key straddling the 300-character
/// cut of the error text: masked first, then cut, so no part of it shows.
#[tokio::test]
async fn a_key_echoed_in_an_error_body_is_masked_before_the_cut() {
    for (pad, quoted) in [(290, API_KEY), (296, APP_KEY), (10, API_KEY)] {
        let server = MockServer::start().await;
        let message = format!(
            "{}{quoted} is not valid here; more text after it",
            "x".repeat(pad)
        );
        Mock::given(method("GET"))
            .and(path("/api/v1/query"))
            .respond_with(ResponseTemplate::new(400).set_body_raw(
                serde_json::json!({ "errors": [message] }).to_string(),
                "application/json",
            ))
            .mount(&server)
            .await;
        let e = client(&server).query(&q(ERRORS_BLUE)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let text = e.to_string();
        for n in 4..=quoted.len() {
            assert!(
                !text.contains(&quoted[..n]),
                "pad {pad}: {n} characters of the key shown in {text}"
            );
        }
        assert!(text.contains("[redacted]"), "{text}");
        assert_no_keys(&e);
    }
}
