//! Shared helpers: a demo-app compute, a keep-alive HTTP client, waiting.
#![allow(dead_code)]

use std::time::Duration;

use bluegreen_core::{Color, ComputeProvider, Release};
use bluegreen_local::LocalCompute;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The demo app binary built with this crate.
pub const DEMO_APP: &str = env!("CARGO_BIN_EXE_bluegreen-demo-app");

/// A compute running the demo app with quick health checks and a short grace.
pub fn demo_compute() -> LocalCompute {
    LocalCompute::builder()
        .command([DEMO_APP])
        .health_interval(Duration::from_millis(200))
        .grace(Duration::from_secs(3))
        .build()
        .expect("compute")
}

/// A release of the demo app reporting `version`, failing `failure_rate`.
pub fn release(version: &str, failure_rate: f64) -> Release {
    let mut r = Release::new(version, "bluegreen-demo-app");
    r.env.insert("APP_VERSION".into(), version.into());
    r.env
        .insert("FAILURE_RATE".into(), failure_rate.to_string());
    r
}

/// Prepares and scales `color` to `count` instances of `release` and waits
/// until they are stable.
pub async fn deploy(c: &LocalCompute, color: Color, release: &Release, count: u32) {
    c.prepare(color, release).await.expect("prepare");
    c.scale(color, count).await.expect("scale");
    wait_stable(c, color, count).await;
}

/// Waits (up to 30 s) until `color` is stable at `count`.
pub async fn wait_stable(c: &LocalCompute, color: Color, count: u32) {
    for _ in 0..600 {
        let s = c.status(color).await.unwrap();
        if s.is_stable_at(count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{color} not stable at {count}: {:?}; instances {:?}",
        c.status(color).await.unwrap(),
        c.instances(color)
    );
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(HttpConnector::new())
}

/// One GET: status, the answering color (header) and the body.
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, Option<String>, String), String> {
    let resp = client
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let color = resp
        .headers()
        .get(bluegreen_local::COLOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok((status, color, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.split_whitespace().nth(2).is_none_or(|st| st != "Z"),
        Err(_) => false,
    }
}
