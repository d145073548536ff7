//! Secret headers stay with the host they were meant for, and secret values
//! never show, not even in part, in what a check reports.
//!
//! The servers are real HTTP servers (axum) that answer what each test
//! scripts and record every request they get. The other host is a second
//! loopback address, `127.0.0.2` (Linux routes all of 127/8 to `lo`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bluegreen_core::testing::FakeSecrets;
use bluegreen_core::{Color, SmokeTarget, SmokeTest};
use bluegreen_http::{
    defaults, FieldExpectation, FollowRedirects, HeaderValueSpec, HttpCheck, HttpSmokeTest, Rule,
    SmokeSuite,
};

/// 19 characters, like the token the issue saw cut to 15.
const API_KEY: &str = "key-live-93b1c0d5e2";
const TEST_TOKEN: &str = "tok-test-5f2c9a1e77";
/// Where a path echoes the `X-Api-Key` it was sent.
const ECHO: &str = "{x-api-key}";

/// One scripted answer.
#[derive(Clone)]
struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Server {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    base_url: String,
}

impl Server {
    /// Scripts `path`'s answer.
    fn on(&self, path: &str, status: u16, location: Option<&str>, body: &str) -> &Self {
        self.answers.lock().unwrap().insert(
            path.into(),
            Answer {
                status,
                location: location.map(Into::into),
                body: body.into(),
            },
        );
        self
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

/// An unscripted path answers like a healthy color, so a redirect the check
/// should not have followed would pass.
async fn answer(
    State(s): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: body.to_vec(),
    });
    let scripted = s.answers.lock().unwrap().get(uri.path()).cloned();
    let a = scripted.unwrap_or(Answer {
        status: 200,
        location: None,
        body: r#"{"status": "healthy", "version": "2.5.0"}"#.into(),
    });
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut resp = (
        StatusCode::from_u16(a.status).unwrap(),
        a.body.replace(ECHO, key),
    )
        .into_response();
    if let Some(l) = a.location {
        resp.headers_mut().insert("location", l.parse().unwrap());
    }
    resp
}

/// Starts a server on `ip`, on a free port.
async fn serve(ip: &str) -> Server {
    let ip: IpAddr = ip.parse().unwrap();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server {
        base_url: format!("http://{addr}"),
        ..Server::default()
    };
    let router = Router::new().fallback(answer).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    server
}

fn target(base_url: &str) -> SmokeTarget {
    SmokeTarget {
        service: "order-api".into(),
        color: Some(Color::Blue),
        base_url: Some(base_url.into()),
        version: "2.5.0".into(),
    }
}

/// A check of `path` sending two secret headers and a plain one.
fn check(path: &str, follow: FollowRedirects) -> HttpCheck {
    let mut c = HttpCheck::get("health", format!("{{base_url}}{path}"));
    c.headers.insert(
        "X-Api-Key".into(),
        HeaderValueSpec::Secret {
            secret: "API_KEY".into(),
            format: None,
        },
    );
    c.headers.insert(
        "Authorization".into(),
        HeaderValueSpec::Secret {
            secret: "TEST_TOKEN".into(),
            format: Some("Bearer {secret}".into()),
        },
    );
    c.headers.insert(
        "X-Trace".into(),
        HeaderValueSpec::Value("smoke-{color}".into()),
    );
    c.retries = 0;
    c.timeout = Duration::from_secs(10);
    c.follow_redirects = follow;
    c
}

fn test_of(c: HttpCheck) -> HttpSmokeTest {
    let s = FakeSecrets::new();
    s.insert("API_KEY", API_KEY, None)
        .insert("TEST_TOKEN", TEST_TOKEN, None);
    HttpSmokeTest::new(c).unwrap().with_secrets(Arc::new(s))
}

/// Whether a request carried a secret value in any header.
fn carries_a_secret(seen: &Seen) -> bool {
    seen.headers.values().any(|v| {
        let v = String::from_utf8_lossy(v.as_bytes());
        v.contains(API_KEY) || v.contains(TEST_TOKEN)
    })
}

#[tokio::test]
async fn a_redirect_to_another_host_or_port_never_carries_a_secret_header() {
    for other_ip in ["127.0.0.2", "127.0.0.1"] {
        for follow in [FollowRedirects::Never, FollowRedirects::SameOrigin] {
            let home = serve("127.0.0.1").await;
            // Another host, or the same host on another port: another origin.
            let other = serve(other_ip).await;
            let away = other.url("/collect");
            home.on("/health", 302, Some(&away), "moved")
                // A same-origin hop first, then away.
                .on("/bounce", 307, Some("/health"), "");
            for path in ["/health", "/bounce"] {
                let out = test_of(check(path, follow))
                    .run(&target(&home.base_url))
                    .await
                    .unwrap();
                let leaked: Vec<_> = other.seen().into_iter().filter(carries_a_secret).collect();
                assert!(
                    leaked.is_empty(),
                    "{other_ip}, {follow:?}, {path}: the other origin got the secret: {leaked:?}"
                );
                assert!(
                    other.seen().is_empty(),
                    "{other_ip}, {follow:?}, {path}: a redirect to another origin was followed"
                );
                assert!(!out.passed, "{}", out.detail);
                let why = match follow {
                    FollowRedirects::Never => " (follow_redirects is never)".to_string(),
                    FollowRedirects::SameOrigin => {
                        format!(": another origin than {}", home.base_url)
                    }
                };
                let (status, to) = match (follow, path) {
                    (FollowRedirects::Never, "/bounce") => (307, home.url("/health")),
                    _ => (302, away.clone()),
                };
                assert_eq!(
                    out.detail,
                    format!(
                        "expected HTTP 200, got {status}, a redirect to {to}, not followed{why}: {}",
                        if status == 302 { "moved" } else { "(empty body)" }
                    ),
                    "{other_ip}, {follow:?}, {path}"
                );
            }
            // The secrets did go where they were meant for: the first request.
            let first = &home.seen()[0];
            assert_eq!(first.headers["x-api-key"], API_KEY);
            assert_eq!(
                first.headers["authorization"],
                format!("Bearer {TEST_TOKEN}").as_str()
            );
        }
    }
}

#[tokio::test]
async fn a_same_origin_redirect_with_the_opt_in_reaches_its_target_without_the_secrets() {
    let home = serve("127.0.0.1").await;
    home.on("/old", 301, Some("/health"), "")
        .on("/old-down", 302, Some("/down"), "")
        .on("/down", 503, None, "maintenance");
    let mut c = check("/old", FollowRedirects::SameOrigin);
    c.expect_json = vec![
        FieldExpectation {
            field: "status".into(),
            rule: Rule::Equals("healthy".into()),
        },
        FieldExpectation {
            field: "version".into(),
            rule: Rule::Equals("{version}".into()),
        },
    ];
    let out = test_of(c.clone())
        .run(&target(&home.base_url))
        .await
        .unwrap();
    assert!(out.passed, "{}", out.detail);
    assert_eq!(
        out.detail,
        format!(
            r#"HTTP 200 after 1 same-origin redirect to {}, status = "healthy", version = "2.5.0""#,
            home.url("/health")
        )
    );
    let seen = home.seen();
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/old", "/health"]);
    assert!(carries_a_secret(&seen[0]));
    assert!(
        !carries_a_secret(&seen[1]),
        "the redirect carried a secret: {:?}",
        seen[1].headers
    );
    assert!(!seen[1].headers.contains_key("x-api-key"));
    assert!(!seen[1].headers.contains_key("authorization"));
    assert_eq!(
        seen[1].headers["x-trace"], "smoke-blue",
        "plain headers are kept"
    );

    // The outcome is what the target answers.
    c.url = "{base_url}/old-down".into();
    let out = test_of(c.clone())
        .run(&target(&home.base_url))
        .await
        .unwrap();
    assert!(!out.passed);
    assert_eq!(out.detail, "expected HTTP 200, got 503: maintenance");

    // Without the opt-in the redirect is the answer.
    c.url = "{base_url}/old".into();
    c.follow_redirects = FollowRedirects::Never;
    let out = test_of(c.clone())
        .run(&target(&home.base_url))
        .await
        .unwrap();
    assert!(!out.passed);
    assert_eq!(
        out.detail,
        format!(
            "expected HTTP 200, got 301, a redirect to {}, not followed (follow_redirects is never): (empty body)",
            home.url("/health")
        )
    );
    let mut c = check("/old", FollowRedirects::Never);
    c.expect_status = 301;
    let out = test_of(c).run(&target(&home.base_url)).await.unwrap();
    assert!(out.passed, "{}", out.detail);
}

#[tokio::test]
async fn a_followed_303_becomes_a_get_without_the_body_and_a_307_repeats_the_post() {
    let home = serve("127.0.0.1").await;
    home.on("/see-other", 303, Some("/done"), "")
        .on("/temporary", 307, Some("/done"), "")
        .on("/done", 200, None, "{}");
    for (path, method, body) in [
        ("/see-other", "GET", &b""[..]),
        (
            "/temporary",
            "POST",
            &br#"{"customer_id":"test_customer_123"}"#[..],
        ),
    ] {
        let mut c = check(path, FollowRedirects::SameOrigin);
        c.method = "POST".into();
        c.body = Some(serde_json::json!({"customer_id": "test_customer_123"}));
        let out = test_of(c).run(&target(&home.base_url)).await.unwrap();
        assert!(out.passed, "{path}: {}", out.detail);
        let seen = home.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.path, "/done");
        assert_eq!(last.method, method, "{path}");
        assert_eq!(last.body, body, "{path}");
        assert!(!carries_a_secret(last), "{path}");
    }
}

#[tokio::test]
async fn a_redirect_loop_ends_after_the_limit() {
    let home = serve("127.0.0.1").await;
    home.on("/loop", 302, Some("/loop"), "");
    let out = test_of(check("/loop", FollowRedirects::SameOrigin))
        .run(&target(&home.base_url))
        .await
        .unwrap();
    assert!(!out.passed);
    assert_eq!(
        out.detail,
        format!(
            "more than {} redirects (the last to {})",
            defaults::MAX_REDIRECTS,
            home.url("/loop")
        )
    );
    assert_eq!(home.seen().len(), defaults::MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn an_unknown_redirect_policy_is_refused_naming_the_choices() {
    let e = serde_json::from_str::<HttpCheck>(
        r#"{"name": "health", "url": "{base_url}/health", "follow_redirects": "always"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown variant `always`, expected `never` or `same_origin`"),
        "{e}"
    );
    let c: HttpCheck = serde_json::from_str(
        r#"{"name": "health", "url": "{base_url}/health", "follow_redirects": "same_origin"}"#,
    )
    .unwrap();
    assert_eq!(c.follow_redirects, FollowRedirects::SameOrigin);
    let c: HttpCheck =
        serde_json::from_str(r#"{"name": "health", "url": "{base_url}/health"}"#).unwrap();
    assert_eq!(c.follow_redirects, FollowRedirects::Never, "the default");
}

/// Every prefix of `API_KEY` at least 4 characters long that `text` shows.
fn shown_prefixes(text: &str) -> Vec<&'static str> {
    (4..=API_KEY.len())
        .map(|n| &API_KEY[..n])
        .filter(|p| text.contains(p))
        .collect()
}

#[tokio::test]
async fn a_token_straddling_the_cut_of_a_failing_body_is_masked_whole() {
    let home = serve("127.0.0.1").await;
    // The body is cut at 200 characters: 15 of the key's 19 fall before it.
    let body = format!("{}{ECHO} and the rest of the page", "a".repeat(185));
    home.on("/echo", 500, None, &body);
    // A JSON value is cut at 80 characters (its opening quote included): 10
    // of the key's characters fall before it.
    let json = format!(r#"{{"token": "{}{ECHO}-and-more"}}"#, "b".repeat(69));
    home.on("/echo-json", 200, None, &json);
    // A server that echoes the start of the key only, right at the cut.
    let partial = format!("{}{}zzzzzzzzzz", "c".repeat(190), &API_KEY[..10]);
    home.on("/echo-partial", 500, None, &partial);

    let mut json_check = check("/echo-json", FollowRedirects::Never);
    json_check.name = "json".into();
    json_check.expect_json = vec![FieldExpectation {
        field: "token".into(),
        rule: Rule::Equals("expected".into()),
    }];
    let mut body_check = check("/echo", FollowRedirects::Never);
    body_check.name = "body".into();
    let mut partial_check = check("/echo-partial", FollowRedirects::Never);
    partial_check.name = "partial".into();
    let s = FakeSecrets::new();
    s.insert("API_KEY", API_KEY, None)
        .insert("TEST_TOKEN", TEST_TOKEN, None);
    let report = SmokeSuite::from_checks([body_check, json_check, partial_check])
        .unwrap()
        .with_secrets(Arc::new(s))
        .run(&target(&home.base_url))
        .await;
    let text = report.to_string();
    assert_eq!(report.passed(), 0, "{text}");
    assert!(
        shown_prefixes(&text).is_empty(),
        "shown: {:?} in {text}",
        shown_prefixes(&text)
    );
    let details: Vec<_> = report.results.iter().map(|r| &r.outcome.detail).collect();
    assert_eq!(
        details[0],
        &format!(
            "expected HTTP 200, got 500: {}[redacted] and …",
            "a".repeat(185)
        ),
        "the key is masked whole, then the body is cut"
    );
    assert_eq!(
        details[1],
        &format!(
            r#"HTTP 200, but token: expected "expected", got "{}[redacted]…"#,
            "b".repeat(69)
        )
    );
    assert_eq!(
        details[2],
        &format!("expected HTTP 200, got 500: {}[redacted]…", "c".repeat(190)),
        "the key's prefix left at the cut is masked"
    );
}
