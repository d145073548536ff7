//! The Prometheus source against a real Prometheus server, started by
//! `scripts/services/prometheus.sh`, scraping a `/metrics` endpoint these
//! tests serve; and against wiremock for a 503 a real server will not give
//! on demand.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::Router;
use bluegreen_core::{ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Timestamp};
use bluegreen_prometheus::{Prometheus, QueryMode};

const URL_ENV: &str = "BLUEGREEN_TEST_PROMETHEUS_URL";
const PORT_ENV: &str = "BLUEGREEN_TEST_PROM_SCRAPE_PORT";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/test, which starts Prometheus (scripts/services/prometheus.sh)")
    })
}

/// The service's metrics, as functions of the seconds `t` since it started:
/// 10 requests/s, 0.2 errors/s (a 2% error rate), and per second 100
/// observations of which 90 take ≤ 0.1 s, 8 take 0.25–0.5 s and 2 take 0.5–1 s,
/// so that p95 = 0.25 + 0.25 × (95 − 90) / (98 − 90) = 0.40625 s.
fn exposition(t: f64) -> String {
    format!(
        "# HELP bg_requests_total Requests served.\n\
         # TYPE bg_requests_total counter\n\
         bg_requests_total{{color=\"blue\"}} {}\n\
         # HELP bg_errors_total Requests that failed.\n\
         # TYPE bg_errors_total counter\n\
         bg_errors_total{{color=\"blue\"}} {}\n\
         # HELP bg_request_duration_seconds Request latency.\n\
         # TYPE bg_request_duration_seconds histogram\n\
         bg_request_duration_seconds_bucket{{color=\"blue\",le=\"0.1\"}} {}\n\
         bg_request_duration_seconds_bucket{{color=\"blue\",le=\"0.25\"}} {}\n\
         bg_request_duration_seconds_bucket{{color=\"blue\",le=\"0.5\"}} {}\n\
         bg_request_duration_seconds_bucket{{color=\"blue\",le=\"1\"}} {}\n\
         bg_request_duration_seconds_bucket{{color=\"blue\",le=\"+Inf\"}} {}\n\
         bg_request_duration_seconds_sum{{color=\"blue\"}} {}\n\
         bg_request_duration_seconds_count{{color=\"blue\"}} {}\n\
         # HELP bg_special Gauges with the special values.\n\
         # TYPE bg_special gauge\n\
         bg_special{{kind=\"nan\"}} NaN\n\
         bg_special{{kind=\"pos\"}} +Inf\n\
         bg_special{{kind=\"neg\"}} -Inf\n",
        10.0 * t,
        0.2 * t,
        90.0 * t,
        90.0 * t,
        98.0 * t,
        100.0 * t,
        100.0 * t,
        12.0 * t,
        100.0 * t,
    )
}

/// Serves /metrics on the scrape port, once per test process.
fn scrape_target() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let port: u16 = env(PORT_ENV)
            .parse()
            .unwrap_or_else(|_| panic!("{PORT_ENV} is not a port"));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot serve /metrics on 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new().route(
                    "/metrics",
                    get(move || async move { exposition(start.elapsed().as_secs_f64()) }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
    });
}

fn prometheus() -> Prometheus {
    scrape_target();
    Prometheus::new(env(URL_ENV))
        .unwrap()
        .step(Duration::from_secs(1))
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn last_seconds(check: &str, query: &str, secs: u64) -> MetricQuery {
    let to = now();
    MetricQuery {
        check: check.into(),
        query: query.into(),
        from: Timestamp(to.0 - secs * 1000),
        to,
        color: None,
        baseline: false,
    }
}

fn values(a: &MetricAnswer) -> Vec<f64> {
    match a {
        MetricAnswer::Samples { samples } => samples.iter().map(|s| s.value).collect(),
        MetricAnswer::NoData { .. } => Vec::new(),
    }
}

/// Polls (bounded) until `query` over the last 10 s has at least `n` numeric samples.
async fn await_samples(p: &Prometheus, check: &str, query: &str, n: usize) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let a = p.query(&last_seconds(check, query, 10)).await.unwrap();
        let v: Vec<f64> = values(&a).into_iter().filter(|v| !v.is_nan()).collect();
        if v.len() >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape enough of {query} within 90 s: last answer {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (bounded) until Prometheus holds 8 s of scrapes, so that every
/// 5 s rate window of the last 2 s is fully covered by samples.
async fn await_history(p: &Prometheus) {
    await_samples(p, "history", "bg_requests_total{color=\"blue\"}", 8).await;
}

const ERROR_RATE: &str =
    "sum(rate(bg_errors_total{color=\"blue\"}[5s])) / sum(rate(bg_requests_total{color=\"blue\"}[5s]))";
const P95: &str =
    "histogram_quantile(0.95, sum by (le) (rate(bg_request_duration_seconds_bucket{color=\"blue\"}[5s])))";

#[tokio::test]
async fn a_request_rate_is_measured_from_scraped_counters() {
    let p = prometheus();
    await_history(&p).await;
    let a = p
        .query(&last_seconds(
            "throughput",
            "rate(bg_requests_total{color=\"blue\"}[5s])",
            2,
        ))
        .await
        .unwrap();
    let rates = values(&a);
    assert!(rates.len() >= 2, "one sample per 1 s step: {a:?}");
    for r in &rates {
        assert!(
            (r - 10.0).abs() < 1.0,
            "about 10 requests/s, got {r} in {rates:?}"
        );
    }
    let ratio = await_samples(&p, "error-rate", ERROR_RATE, 3).await;
    for r in &ratio {
        assert!((r - 0.02).abs() < 1e-9, "an error rate of 2%, got {r}");
    }
}

#[tokio::test]
async fn p95_latency_comes_from_a_histogram_quantile() {
    let p = prometheus();
    let q = await_samples(&p, "p95-latency", P95, 3).await;
    for v in &q {
        assert!(
            (v - 0.40625).abs() < 1e-9,
            "p95 = 0.40625 s, got {v} in {q:?}"
        );
    }
}

#[tokio::test]
async fn an_instant_query_reads_nan_and_infinities() {
    let p = prometheus();
    await_samples(&p, "throughput", "bg_requests_total", 1).await;
    let instant = p.clone().mode(QueryMode::Instant);
    let mut q = last_seconds("special", "sort_desc(bg_special)", 10);
    q.from = q.to;
    let a = instant.query(&q).await.unwrap();
    let v = values(&a);
    assert_eq!(
        v.len(),
        3,
        "one sample per series at the window's end: {a:?}"
    );
    assert!(
        v.contains(&f64::INFINITY) && v.contains(&f64::NEG_INFINITY),
        "{v:?}"
    );
    assert!(v.iter().any(|x| x.is_nan()), "{v:?}");
}

#[tokio::test]
async fn an_empty_result_is_no_data() {
    let p = prometheus();
    let a = p
        .query(&last_seconds(
            "error-rate",
            "rate(bg_not_exported_total[5s])",
            10,
        ))
        .await
        .unwrap();
    match a {
        MetricAnswer::NoData { reason } => assert!(reason.contains("no series"), "{reason}"),
        other => panic!("expected NoData, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_query_is_a_permanent_error_with_prometheus_text() {
    let p = prometheus();
    let e = p
        .query(&last_seconds(
            "error-rate",
            "rate(bg_requests_total[5s]",
            10,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!e.is_temporary());
    let text = e.to_string();
    assert!(
        text.contains("HTTP 400") && text.contains("bad_data"),
        "{text}"
    );
    assert!(text.contains("check error-rate"), "{text}");
}

#[tokio::test]
async fn a_query_that_cannot_be_executed_is_a_permanent_error() {
    let p = prometheus();
    await_history(&p).await;
    // rate() drops the metric name, leaving two series with the same labels.
    let e = p
        .query(&last_seconds(
            "error-rate",
            "rate({__name__=~\"bg_requests_total|bg_errors_total\"}[5s])",
            10,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let text = e.to_string();
    assert!(
        text.contains("HTTP 422") && text.contains("execution"),
        "{text}"
    );
    assert!(text.contains("same labelset"), "{text}");
}

#[tokio::test]
async fn prometheus_passes_the_metrics_conformance_suite() {
    let p = prometheus();
    await_samples(&p, "error-rate", ERROR_RATE, 2).await;
    bluegreen_core::testing::conformance::metrics(
        &p,
        &last_seconds("error-rate", ERROR_RATE, 10),
        &last_seconds("error-rate", "bg_not_exported_total", 10),
    )
    .await;
}

#[tokio::test]
async fn a_timed_out_query_is_temporary() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/query_range"))
        .respond_with(ResponseTemplate::new(503).set_body_raw(
            r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let e = Prometheus::new(server.uri())
        .unwrap()
        .query(&last_seconds("p95-latency", P95, 60))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_temporary());
    assert!(
        e.to_string()
            .contains("query timed out in expression evaluation (timeout)"),
        "{e}"
    );
}

/// A proxy in front of Prometheus that throttles: the error is temporary
/// and carries the proxy's Retry-After for the driver's retry policy.
#[tokio::test]
async fn a_throttling_proxy_s_retry_after_is_the_errors_hint() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "7")
                .set_body_string("slow down"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let e = Prometheus::new(server.uri())
        .unwrap()
        .query(&last_seconds("p95-latency", P95, 60))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.is_temporary());
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
    assert!(e.to_string().contains("HTTP 429: slow down"), "{e}");
}

#[tokio::test]
async fn malformed_answers_and_unreachable_servers_are_clear_errors() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1700000000,"fast"]]}]}}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let e = Prometheus::new(server.uri())
        .unwrap()
        .query(&last_seconds("p95-latency", P95, 60))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(e.to_string().contains("\"fast\" is not a number"), "{e}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = Prometheus::new(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .query(&last_seconds("p95-latency", P95, 60))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.is_temporary());

    let e = Prometheus::new("localhost:9090").unwrap_err();
    assert!(e.to_string().contains("base_url"), "{e}");
}
