//! A tiny HTTP service to deploy: its version, failure rate and latency come
//! from the environment. The binary `bluegreen-demo-app` runs it; examples
//! may also run it from their own executable (see [`run_if_requested`]).
//!
//! | variable        | meaning                                             | default |
//! |-----------------|-----------------------------------------------------|---------|
//! | `PORT`          | the port to listen on (127.0.0.1)                   | required |
//! | `APP_VERSION`   | the version it reports (else `BLUEGREEN_VERSION`)   | `dev`   |
//! | `FAILURE_RATE`  | the fraction of requests answered 500, 0–1          | `0`     |
//! | `LATENCY_MS`    | added latency per request, in milliseconds          | `0`     |
//! | `HEALTH_FAIL`   | `1`: `/health` always answers 503                   | unset   |
//!
//! Routes: `GET /health` (200 `ok`), `GET /slow?ms=N` (answers after N ms),
//! `GET /crash` (the process exits without answering: a backend that dies
//! mid-request), and anything else: `{"version":..,"color":..,"instance":..}`,
//! or a 500 at the failure rate. SIGTERM stops accepting connections and lets
//! requests in flight finish.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The argument with which an example's own executable runs the demo app.
pub const DEMO_APP_ARG: &str = "--bluegreen-demo-app";

/// The demo app's settings, read from the environment.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The port.
    pub port: u16,
    /// The version reported.
    pub version: String,
    /// The color, from `BLUEGREEN_COLOR`.
    pub color: String,
    /// The instance, from `BLUEGREEN_INSTANCE`.
    pub instance: String,
    /// The fraction of requests that fail.
    pub failure_rate: f64,
    /// Added latency.
    pub latency: Duration,
    /// `/health` fails.
    pub health_fail: bool,
}

impl DemoConfig {
    /// Reads the settings; the error names the variable.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let port = var("PORT")
            .ok_or("PORT is not set: the demo app needs the port to listen on")?
            .trim()
            .parse::<u16>()
            .map_err(|e| format!("PORT: not a port number: {e}"))?;
        let failure_rate = match var("FAILURE_RATE") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| {
                    format!("FAILURE_RATE {v:?}: expected a fraction between 0 and 1")
                })?,
            None => 0.0,
        };
        let latency = match var("LATENCY_MS") {
            Some(v) => Duration::from_secs_f64(
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .ok_or_else(|| format!("LATENCY_MS {v:?}: expected milliseconds, 0 or more"))?
                    / 1000.0,
            ),
            None => Duration::ZERO,
        };
        Ok(DemoConfig {
            port,
            version: var("APP_VERSION")
                .or_else(|| var("BLUEGREEN_VERSION"))
                .unwrap_or_else(|| "dev".into()),
            color: var("BLUEGREEN_COLOR").unwrap_or_else(|| "none".into()),
            instance: var("BLUEGREEN_INSTANCE").unwrap_or_else(|| "0".into()),
            failure_rate,
            latency,
            health_fail: matches!(var("HEALTH_FAIL").as_deref(), Some("1" | "true")),
        })
    }
}

/// If this process was started with [`DEMO_APP_ARG`] as its first argument,
/// runs the demo app and exits; otherwise returns. Lets an example be both
/// the deployer and the app it deploys.
pub fn run_if_requested() {
    if std::env::args().nth(1).as_deref() == Some(DEMO_APP_ARG) {
        std::process::exit(main_from_env());
    }
}

/// Runs the demo app from the environment on its own runtime until SIGTERM;
/// returns the process exit code.
pub fn main_from_env() -> i32 {
    let config = match DemoConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bluegreen-demo-app: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluegreen-demo-app: cannot start a runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bluegreen-demo-app: {e}");
            1
        }
    }
}

/// Serves until SIGTERM or SIGINT, then finishes requests in flight.
pub async fn serve(config: DemoConfig) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!(
        "bluegreen-demo-app {} ({} instance {}) listening on 127.0.0.1:{} (failure rate {}, latency {:?})",
        config.version, config.color, config.instance, config.port, config.failure_rate, config.latency
    );
    let config = std::sync::Arc::new(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let config = config.clone();
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |req| {
                        let config = config.clone();
                        async move { Ok::<_, Infallible>(answer(&config, req).await) }
                    }));
                let conn = graceful.watch(conn);
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    println!("bluegreen-demo-app: stopping, finishing requests in flight");
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    println!("bluegreen-demo-app: stopped");
    Ok(())
}

async fn answer(config: &DemoConfig, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/health" => {
            if config.health_fail {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "unhealthy (HEALTH_FAIL)\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        "/crash" => {
            eprintln!("bluegreen-demo-app: /crash requested, exiting mid-request");
            std::process::exit(3);
        }
        path => {
            let mut wait = config.latency;
            if path == "/slow" {
                let ms = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(500);
                wait += Duration::from_millis(ms);
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let body = format!(
                "{{\"version\":\"{}\",\"color\":\"{}\",\"instance\":\"{}\"}}\n",
                config.version, config.color, config.instance
            );
            if config.failure_rate > 0.0 && rand::random::<f64>() < config.failure_rate {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "application/json", body)
            } else {
                reply(StatusCode::OK, "application/json", body)
            }
        }
    }
}
