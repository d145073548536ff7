//! HTTP smoke tests against a real local HTTP server (axum) that each test
//! makes healthy, slow, wrong or failing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::{Color, ErrorKind, SmokeTarget, SmokeTest};
use bluegreen_http::{HttpCheck, HttpSmokeTest, SmokeSuite};
use serde_json::{json, Value};

const TEST_TOKEN: &str = "tok-test-5f2c9a1e77";
const INTERNAL_TOKEN: &str = "int-7b1d44e0c3";

/// What the service under test does; each test sets what it needs.
#[derive(Default)]
struct Behaviour {
    version: String,
    /// Every answer waits this long first.
    delay: Duration,
    /// The next this-many `/health` answers are 503.
    health_failures: u32,
    /// `POST /api/orders` answers 500.
    orders_broken: bool,
}

#[derive(Clone, Default)]
struct App {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicU32>,
}

impl App {
    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }
    async fn enter(&self) -> Duration {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.behaviour.lock().unwrap().delay
    }
}

fn authorised(h: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    let got = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if got == format!("Bearer {TEST_TOKEN}") {
        Ok(())
    } else {
        // A careless service that echoes what it was sent.
        Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad token", "received": got})),
        ))
    }
}

async fn health(State(app): State<App>) -> (StatusCode, Json<Value>) {
    tokio::time::sleep(app.enter().await).await;
    let mut b = app.behaviour.lock().unwrap();
    if b.health_failures > 0 {
        b.health_failures -= 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"status": "healthy", "version": b.version, "database": "connected"})),
    )
}

async fn create_order(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    tokio::time::sleep(app.enter().await).await;
    if let Err(e) = authorised(&headers) {
        return e;
    }
    if app.behaviour.lock().unwrap().orders_broken {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "payment provider unreachable"})),
        );
    }
    assert_eq!(body["customer_id"], "test_customer_123");
    (
        StatusCode::CREATED,
        Json(json!({"order_id": "test_order_123", "status": "completed"})),
    )
}

async fn get_order(State(app): State<App>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    tokio::time::sleep(app.enter().await).await;
    if let Err(e) = authorised(&headers) {
        return e;
    }
    (
        StatusCode::OK,
        Json(
            json!({"order_id": "test_order_123", "items": [{"product_id": "prod_456", "quantity": 1}]}),
        ),
    )
}

async fn db_check(State(app): State<App>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    tokio::time::sleep(app.enter().await).await;
    if headers
        .get("x-internal-token")
        .and_then(|v| v.to_str().ok())
        != Some(INTERNAL_TOKEN)
    {
        return (StatusCode::FORBIDDEN, Json(json!({"error": "forbidden"})));
    }
    (
        StatusCode::OK,
        Json(json!({"database": "connected", "latency_ms": 8})),
    )
}

/// Starts the service on a free loopback port; returns its base URL.
async fn serve(version: &str) -> (App, String) {
    let app = App::default();
    app.set(|b| b.version = version.into());
    let router = Router::new()
        .route("/health", get(health))
        .route("/api/orders", post(create_order))
        .route("/api/orders/test_order_123", get(get_order))
        .route("/api/internal/db-check", get(db_check))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (app, format!("http://{addr}"))
}

fn target(base_url: &str) -> SmokeTarget {
    SmokeTarget {
        service: "order-api".into(),
        color: Some(Color::Blue),
        base_url: Some(base_url.into()),
        version: "2.5.0".into(),
    }
}

fn secrets() -> Arc<FakeSecrets> {
    let s = FakeSecrets::new();
    s.insert("TEST_TOKEN", TEST_TOKEN, None)
        .insert("INTERNAL_TOKEN", INTERNAL_TOKEN, None);
    Arc::new(s)
}

/// The example's four reference checks, with a short backoff for tests.
fn reference_checks() -> Vec<HttpCheck> {
    let mut checks: Vec<HttpCheck> =
        serde_json::from_str(include_str!("../examples/reference_smoke_tests.json")).unwrap();
    for c in &mut checks {
        c.backoff = Duration::from_millis(10);
    }
    checks
}

fn check(name: &str) -> HttpCheck {
    reference_checks()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap()
}

fn test_of(c: HttpCheck) -> HttpSmokeTest {
    HttpSmokeTest::new(c).unwrap().with_secrets(secrets())
}

#[tokio::test]
async fn the_reference_suite_passes_against_a_healthy_color() {
    let (app, url) = serve("2.5.0").await;
    let suite = SmokeSuite::from_checks(reference_checks())
        .unwrap()
        .with_secrets(secrets());
    let report = suite.run(&target(&url)).await;
    let text = report.to_string();
    assert!(report.all_passed(), "{text}");
    assert_eq!(report.summary(), "All smoke tests passed (4/4)");
    let lines = report.lines();
    for (line, title) in lines.iter().zip([
        "Health check",
        "Create order",
        "Retrieve order",
        "Database connectivity",
    ]) {
        assert!(
            line.starts_with(&format!("✓ {title} passed (")) && line.ends_with("ms)"),
            "{line}"
        );
    }
    assert!(
        text.contains("\n\nAll smoke tests passed (4/4)\nTotal time: "),
        "{text}"
    );
    assert_eq!(
        app.requests.load(Ordering::SeqCst),
        4,
        "one request per check"
    );
    println!("{text}");
}

#[tokio::test]
async fn a_color_running_the_wrong_version_fails_the_health_check() {
    let (app, url) = serve("2.4.0").await;
    let mut c = check("health");
    c.retries = 1;
    let out = test_of(c).run(&target(&url)).await.unwrap();
    assert!(!out.passed);
    assert!(
        out.detail
            .contains(r#"version: expected "2.5.0", got "2.4.0" (after 2 attempts)"#),
        "{}",
        out.detail
    );
    assert_eq!(app.requests.load(Ordering::SeqCst), 2, "retried once");
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_then_fails_and_the_suite_says_so() {
    let (app, url) = serve("2.5.0").await;
    app.set(|b| b.orders_broken = true);
    let mut checks = reference_checks();
    checks[1].retries = 2;
    let report = SmokeSuite::from_checks(checks)
        .unwrap()
        .with_secrets(secrets())
        .run(&target(&url))
        .await;
    assert!(!report.all_passed());
    assert_eq!(report.passed(), 3);
    assert_eq!(report.summary(), "Smoke tests failed (3/4 passed)");
    let line = &report.lines()[1];
    assert!(line.starts_with("✗ Create order failed ("), "{line}");
    assert!(
        line.contains("expected HTTP 201, got 500: {\"error\":\"payment provider unreachable\"} (after 3 attempts)"),
        "{line}"
    );
    assert_eq!(
        app.requests.load(Ordering::SeqCst),
        3 + 3,
        "3 attempts for orders, 1 each for the rest"
    );
}

#[tokio::test]
async fn a_color_still_starting_passes_on_a_retry() {
    let (app, url) = serve("2.5.0").await;
    app.set(|b| b.health_failures = 2);
    let out = test_of(check("health")).run(&target(&url)).await.unwrap();
    assert!(out.passed, "{}", out.detail);
    assert!(out.detail.ends_with("(attempt 3 of 4)"), "{}", out.detail);
    assert!(
        out.detail.contains(r#"status = "healthy""#),
        "{}",
        out.detail
    );
    assert_eq!(app.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_answer_over_its_latency_budget_fails() {
    let (_app, url) = serve("2.5.0").await;
    _app.set(|b| b.delay = Duration::from_millis(400));
    let mut c = check("health");
    c.latency_budget = Some(Duration::from_millis(100));
    c.retries = 0;
    let out = test_of(c).run(&target(&url)).await.unwrap();
    assert!(!out.passed);
    assert!(
        out.detail.contains("over its latency budget of 100ms"),
        "{}",
        out.detail
    );
    assert!(out.duration >= Duration::from_millis(400));
}

#[tokio::test]
async fn a_hung_endpoint_times_out() {
    let (app, url) = serve("2.5.0").await;
    app.set(|b| b.delay = Duration::from_secs(5));
    let mut c = check("health");
    c.timeout = Duration::from_millis(200);
    c.retries = 0;
    let out = test_of(c).run(&target(&url)).await.unwrap();
    assert!(!out.passed);
    assert_eq!(out.detail, "no answer within 200ms");
}

#[tokio::test]
async fn an_unreachable_color_fails_the_check() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = check("health");
    c.retries = 0;
    let out = test_of(c)
        .run(&target(&format!("http://127.0.0.1:{port}")))
        .await
        .unwrap();
    assert!(!out.passed);
    assert!(out.detail.starts_with("cannot connect"), "{}", out.detail);
}

#[tokio::test]
async fn secrets_are_sent_but_never_shown() {
    let (_app, url) = serve("2.5.0").await;
    // The service expects another token and echoes the header it got.
    let wrong = FakeSecrets::new();
    wrong.insert("TEST_TOKEN", "tok-rotated-99ab", None);
    let mut c = check("retrieve-order");
    c.retries = 0;
    let t = HttpSmokeTest::new(c).unwrap().with_secrets(Arc::new(wrong));
    let out = t.run(&target(&url)).await.unwrap();
    assert!(!out.passed);
    assert!(
        out.detail.contains("expected HTTP 200, got 401"),
        "{}",
        out.detail
    );
    assert!(out.detail.contains("Bearer [redacted]"), "{}", out.detail);
    assert!(!out.detail.contains("tok-rotated-99ab"), "{}", out.detail);
    assert!(!format!("{t:?}").contains("tok-rotated-99ab"));
}

#[tokio::test]
async fn a_url_naming_an_unknown_variable_is_a_clear_error() {
    let c = HttpCheck::get("health", "{base_url}/health?region={region}");
    let e = HttpSmokeTest::new(c).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string()
            .contains("smoke test health: url: unknown template variable {region}"),
        "{e}"
    );
}

#[tokio::test]
async fn a_check_that_cannot_run_is_an_error_not_a_pass() {
    let (_app, url) = serve("2.5.0").await;
    // No base URL for the color.
    let mut t = target(&url);
    t.base_url = None;
    let e = test_of(check("health")).run(&t).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("no base URL is known for blue"),
        "{e}"
    );
    // A secret that does not exist.
    let e = HttpSmokeTest::new(check("db-check"))
        .unwrap()
        .with_secrets(Arc::new(FakeSecrets::new()))
        .run(&target(&url))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("cannot read secret INTERNAL_TOKEN"),
        "{e}"
    );
    // No secret source at all.
    let e = HttpSmokeTest::new(check("db-check"))
        .unwrap()
        .run(&target(&url))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no SecretSource"), "{e}");
}

#[tokio::test]
async fn the_health_check_helper_checks_status_and_release_version() {
    let (_app, url) = serve("2.5.0").await;
    let out = HttpSmokeTest::new(HttpCheck::health("{base_url}/health"))
        .unwrap()
        .run(&target(&format!("{url}/")))
        .await
        .unwrap();
    assert!(out.passed, "{}", out.detail);
    assert_eq!(
        out.detail,
        r#"HTTP 200, status = "healthy", version = "2.5.0""#
    );
}
