//! A small HTTP load generator, for demos, tests and the examples: a number
//! of workers, each on its own keep-alive connection, sending `GET`s as fast
//! as answers come back (or at a pace), and counting every outcome.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::proxy::{COLOR_HEADER, PROXY_ERROR_HEADER};

/// What the load saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadTally {
    /// Answers with a status below 500.
    pub ok: u64,
    /// 5xx answers produced by the application itself.
    pub app_errors: u64,
    /// 5xx answers produced by the proxy (502, 503).
    pub proxy_errors: u64,
    /// Requests that got no HTTP answer at all (refused, reset, closed).
    pub connection_errors: u64,
    /// Answers per color (from the proxy's color header; `direct` without it).
    pub per_color: BTreeMap<String, u64>,
    /// The first few failures, described.
    pub failures: Vec<String>,
}

impl LoadTally {
    /// Every request answered or failed.
    pub fn total(&self) -> u64 {
        self.ok + self.app_errors + self.proxy_errors + self.connection_errors
    }

    /// Failed requests that the application did not produce.
    pub fn failed(&self) -> u64 {
        self.proxy_errors + self.connection_errors
    }

    fn failure(&mut self, what: String) {
        if self.failures.len() < 10 {
            self.failures.push(what);
        }
    }
}

/// Running load; [`stop`](Self::stop) ends it and returns the tally.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    tally: Arc<Mutex<LoadTally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` workers sending `GET url`, each waiting `pace`
    /// between its requests (none: back to back).
    pub fn start(url: &str, workers: usize, pace: Option<Duration>) -> Load {
        let (stop, rx) = watch::channel(false);
        let tally = Arc::new(Mutex::new(LoadTally::default()));
        let uri: http::Uri = url
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1/"));
        let workers = (0..workers.max(1))
            .map(|_| {
                let client: Client<HttpConnector, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(1)
                        .build(HttpConnector::new());
                let uri = uri.clone();
                let tally = tally.clone();
                let rx = rx.clone();
                tokio::spawn(async move {
                    while !*rx.borrow() {
                        let outcome = one(&client, uri.clone()).await;
                        {
                            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                            match outcome {
                                Ok((status, color, proxy_error)) => {
                                    *t.per_color.entry(color).or_default() += 1;
                                    if status < 500 {
                                        t.ok += 1;
                                    } else if proxy_error {
                                        t.proxy_errors += 1;
                                        t.failure(format!("proxy answered {status}"));
                                    } else {
                                        t.app_errors += 1;
                                    }
                                }
                                Err(e) => {
                                    t.connection_errors += 1;
                                    t.failure(e);
                                }
                            }
                        }
                        if let Some(p) = pace {
                            tokio::time::sleep(p).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            workers,
        }
    }

    /// What the load has seen so far.
    pub fn tally(&self) -> LoadTally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the workers, lets their requests in flight finish, and returns the tally.
    pub async fn stop(self) -> LoadTally {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        let t = self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
        t
    }
}

async fn one(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
) -> Result<(u16, String, bool), String> {
    let resp = client
        .get(uri)
        .await
        .map_err(|e| bluegreen_core::error::source_chain(&e))?;
    let status = resp.status().as_u16();
    let color = resp
        .headers()
        .get(COLOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("direct")
        .to_string();
    let proxy_error = resp.headers().contains_key(PROXY_ERROR_HEADER);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, color, proxy_error))
}
