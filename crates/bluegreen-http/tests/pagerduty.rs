//! The PagerDuty sink against a server that answers with the Events API v2's
//! public shapes (POST /v2/enqueue, 202 `{"status":"success",...}`, 400
//! `{"status":"invalid event",...}`, 429), served by wiremock.

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::driver::RetryPolicy;
use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::{ErrorKind, ErrorStatus, EventSink, Notification, Severity};
use bluegreen_http::pagerduty::{PagerDuty, PagerDutySeverity};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const SECRET: &str = "prod/pagerduty/routing-key";

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(json!({
        "status": "success",
        "message": "Event processed",
        "dedup_key": "dep-42",
    }))
}

fn notification(title: &str, tag: &str, severity: Severity) -> Notification {
    Notification {
        deployment_id: "dep-42".into(),
        service: "order-api".into(),
        version: "2.5.0".into(),
        title: title.into(),
        text: "order-api 2.5.0 rolling back: error-rate > 5% for 5m".into(),
        severity,
        tags: vec![tag.into(), "service:order-api".into()],
        cause: None,
    }
}

fn rollback() -> Notification {
    notification(
        "Deployment Rollback",
        "deployment:rollback",
        Severity::Warning,
    )
}

async fn pager(server: &MockServer) -> PagerDuty {
    let secrets = FakeSecrets::new();
    secrets.insert(SECRET, KEY, None);
    PagerDuty::new(Arc::new(secrets), SECRET)
        .unwrap()
        .plain_http_endpoint_for_tests(&format!("{}/v2/enqueue", server.uri()))
        .unwrap()
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            jitter: false,
        })
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.url.path(), "/v2/enqueue");
            assert_eq!(r.method.as_str(), "POST");
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_rollback_triggers_an_alert_keyed_by_the_deployment_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    pager(&server).await.notify(&rollback()).await.unwrap();
    let sent = bodies(&server).await;
    assert_eq!(sent.len(), 1);
    let b = &sent[0];
    assert_eq!(b["routing_key"], KEY);
    assert_eq!(b["event_action"], "trigger");
    assert_eq!(b["dedup_key"], "dep-42");
    assert_eq!(
        b["payload"]["severity"], "warning",
        "the notification's own"
    );
    assert_eq!(b["payload"]["source"], "order-api");
    assert_eq!(b["payload"]["component"], "order-api");
    let summary = b["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "Deployment Rollback — order-api 2.5.0: order-api 2.5.0 rolling back: error-rate > 5%"
        ),
        "{summary}"
    );
    assert_eq!(b["payload"]["custom_details"]["deployment_id"], "dep-42");
}

#[tokio::test]
async fn a_halt_pages_with_the_configured_severity_and_source() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    let p = pager(&server)
        .await
        .severity(PagerDutySeverity::Critical)
        .source("deployer.ci.internal");
    let halted = notification("Deployment Halted", "deployment:halted", Severity::Error);
    p.notify(&halted).await.unwrap();
    let b = &bodies(&server).await[0];
    assert_eq!(b["event_action"], "trigger");
    assert_eq!(b["payload"]["severity"], "critical");
    assert_eq!(b["payload"]["source"], "deployer.ci.internal");
}

#[tokio::test]
async fn success_resolves_the_deployments_alert() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    let done = notification(
        "Deployment Complete",
        "deployment:success",
        Severity::Success,
    );
    pager(&server).await.notify(&done).await.unwrap();
    let b = &bodies(&server).await[0];
    assert_eq!(b["event_action"], "resolve");
    assert_eq!(b["dedup_key"], "dep-42");
    assert_eq!(b["routing_key"], KEY);
    assert!(
        b.get("payload").is_none(),
        "a resolve carries no payload: {b}"
    );
}

#[tokio::test]
async fn a_start_or_a_traffic_step_pages_nobody() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    let p = pager(&server).await;
    p.notify(&notification(
        "Deployment Start",
        "deployment:start",
        Severity::Info,
    ))
    .await
    .unwrap();
    p.notify(&notification(
        "Deployment Step",
        "deployment:step",
        Severity::Info,
    ))
    .await
    .unwrap();
    assert!(bodies(&server).await.is_empty());
}

#[tokio::test]
async fn a_throttled_event_is_retried_and_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    pager(&server).await.notify(&rollback()).await.unwrap();
    let sent = bodies(&server).await;
    assert_eq!(sent.len(), 3, "429, then 503, then 202");
    assert!(sent.iter().all(|b| b["dedup_key"] == "dep-42"));
}

#[tokio::test]
async fn a_throttled_event_waits_the_retry_after_hint_before_the_next_attempt() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    // The policy's own backoff is 10 ms; the hint asks for a second.
    pager(&server).await.notify(&rollback()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(bodies(&server).await.len(), 2);
}

#[tokio::test]
async fn a_server_failing_past_the_retries_is_a_persistent_unavailable_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).set_body_string("bad gateway"))
        .mount(&server)
        .await;
    let e = pager(&server).await.notify(&rollback()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.status(), ErrorStatus::Persistent);
    assert_eq!(
        bodies(&server).await.len(),
        3,
        "the policy's three attempts"
    );
    assert!(e.to_string().contains("502"), "{e}");
}

#[tokio::test]
async fn an_invalid_event_is_not_retried_and_its_error_never_shows_the_routing_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": [format!("routing_key {KEY} is not an integration key")],
        })))
        .mount(&server)
        .await;
    let e = pager(&server).await.notify(&rollback()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(bodies(&server).await.len(), 1, "a 400 is not retried");
    let text = e.to_string();
    assert!(
        text.contains("400") && text.contains("invalid event"),
        "{text}"
    );
    assert!(text.contains(SECRET), "names the secret: {text}");
    assert!(!text.contains(&KEY[..8]), "{text}");
    let p = pager(&server).await;
    assert!(!format!("{p:?}").contains(&KEY[..8]));
}

#[test]
fn a_plain_http_endpoint_is_refused() {
    let secrets = Arc::new(FakeSecrets::new());
    let e = PagerDuty::new(secrets.clone(), SECRET)
        .unwrap()
        .endpoint("http://events.pagerduty.com/v2/enqueue")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("must be https"), "{e}");
    PagerDuty::new(secrets, SECRET)
        .unwrap()
        .endpoint("https://events.eu.pagerduty.com/v2/enqueue")
        .unwrap();
}
