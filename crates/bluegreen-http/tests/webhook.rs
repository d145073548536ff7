//! Webhook hooks against a real HTTP server (axum on a loopback port).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bluegreen_core::plan::HookPoint;
use bluegreen_core::provider::{Hook, HookContext};
use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::Color;
use bluegreen_http::webhook::{Webhook, WebhookHook};
use bluegreen_http::HeaderValueSpec;

const TOKEN: &str = "wh-live-2b9e44f01c";

type Seen = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

/// A server on a free port answering `status` with a body that repeats
/// the Authorization header (as a careless endpoint might); returns its
/// base URL and what it received.
async fn server(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                move |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let json = serde_json::from_str(&body).unwrap_or_default();
                    seen.lock().unwrap().push((auth.clone(), json));
                    (
                        status,
                        format!("received with {}", auth.unwrap_or_default()),
                    )
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn context() -> HookContext {
    HookContext {
        deployment_id: "dep-7".into(),
        service: "order-api".into(),
        version: "2.5.0".into(),
        point: HookPoint::BeforeTraffic,
        old: Some(Color::Green),
        new: Some(Color::Blue),
        new_percent: None,
        outcome: None,
    }
}

fn hook(base: &str) -> WebhookHook {
    let mut w = Webhook::post("notify-cmdb", format!("{base}/hook"));
    w.headers.insert(
        "Authorization".into(),
        HeaderValueSpec::Secret {
            secret: "prod/cmdb-token".into(),
            format: Some("Bearer {secret}".into()),
        },
    );
    let secrets = FakeSecrets::new();
    secrets.insert("prod/cmdb-token", TOKEN, None);
    WebhookHook::new(w).unwrap().with_secrets(Arc::new(secrets))
}

#[tokio::test]
async fn a_webhook_posts_the_hook_context_with_its_secret_header_and_passes_on_2xx() {
    let (base, seen) = server(StatusCode::OK).await;
    let outcome = hook(&base).run(&context()).await.unwrap();
    assert!(outcome.passed, "{}", outcome.detail);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (auth, body) = &seen[0];
    assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(body["hook"], "notify-cmdb");
    assert_eq!(body["point"], "before_traffic");
    assert_eq!(body["new"], "blue");
    assert_eq!(body["version"], "2.5.0");
    assert!(
        outcome.detail.contains("answered 200 OK"),
        "{}",
        outcome.detail
    );
    assert!(
        !outcome.detail.contains(TOKEN),
        "masked: {}",
        outcome.detail
    );
}

#[tokio::test]
async fn a_webhook_answering_500_fails_with_its_body_and_the_secret_masked() {
    let (base, _) = server(StatusCode::INTERNAL_SERVER_ERROR).await;
    let outcome = hook(&base).run(&context()).await.unwrap();
    assert!(!outcome.passed);
    let d = &outcome.detail;
    assert!(d.contains("answered 500 Internal Server Error"), "{d}");
    assert!(d.contains("received with Bearer "), "{d}");
    assert!(!d.contains(TOKEN), "masked: {d}");
}

#[tokio::test]
async fn a_webhook_nobody_listens_to_cannot_run_and_names_it() {
    // A port just freed: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let err = hook(&format!("http://127.0.0.1:{port}"))
        .run(&context())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("webhook notify-cmdb"), "{err}");
}

#[test]
fn a_webhook_with_a_url_that_is_not_http_is_refused_naming_the_field() {
    let err = WebhookHook::new(Webhook::post("x", "ftp://example.com")).unwrap_err();
    assert!(err.to_string().contains("url:"), "{err}");
}
