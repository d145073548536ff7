#![doc = include_str!("../README.md")]

pub(crate) mod client;
pub mod logs;
pub mod monitors;
pub mod query;
mod secrets;
pub mod series;
mod site;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::{
    Error, EventSink, MetricAnswer, MetricQuery, MetricsSource, Notification, Result, SecretSource,
    Severity,
};
use reqwest::Method;
use serde::Serialize;

use client::{Auth, Call, Http, Keys, PROVIDER};
pub use logs::DatadogLogs;
pub use monitors::DatadogMonitors;
pub use query::QueryApi;
pub use secrets::{EnvSecrets, API_KEY_ENV, APP_KEY_ENV};
pub use site::{Site, SITE_ENV};

/// How long a query may take, unless set.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long posting an event may take, unless set: short, so that a slow
/// Datadog never holds a deployment up.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Datadog as a [`MetricsSource`] (v1 query, v2 timeseries formulas) and an
/// [`EventSink`] (v1 events). Cheap to clone; clones share one connection pool.
///
/// Every call is read-only or, for events, harmless to repeat (a duplicate event).
///
/// Each call makes one request: a 429 comes back at once as a temporary
/// [`ErrorKind::RateLimited`](bluegreen_core::ErrorKind) error whose
/// [`retry_after`](bluegreen_core::Error::retry_after) is the time until the
/// limit resets (`X-RateLimit-Reset`, else `Retry-After`, else
/// `X-RateLimit-Period`), and the driver's
/// [`RetryPolicy`](bluegreen_core::RetryPolicy) waits at least that long
/// before it queries again (see `bluegreen_core::retry`).
#[derive(Clone)]
pub struct Datadog {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    site: Option<Site>,
    api: QueryApi,
    settle: Duration,
    v2_interval: Option<Duration>,
    query_timeout: Duration,
    event_timeout: Duration,
    event_source: String,
}

impl std::fmt::Debug for Datadog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datadog")
            .field("base_url", &self.inner.http.base_url)
            .field("site", &self.inner.site)
            .field("api_key_secret", &self.inner.http.keys.api_key)
            .field("app_key_secret", &self.inner.http.keys.app_key)
            .field("api", &self.inner.api)
            .field("settle", &self.inner.settle)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Datadog`]. Every setting has a default: the site from `DD_SITE`
/// (else `datadoghq.com`), keys from the environment variables `DD_API_KEY`
/// and `DD_APP_KEY`.
#[must_use]
pub struct DatadogBuilder {
    site: Option<Site>,
    base_url: Option<String>,
    secrets: Arc<dyn SecretSource>,
    api_key: String,
    app_key: String,
    api: QueryApi,
    settle: Duration,
    v2_interval: Option<Duration>,
    query_timeout: Duration,
    event_timeout: Duration,
    event_source: String,
}

impl Default for DatadogBuilder {
    fn default() -> Self {
        DatadogBuilder {
            site: None,
            base_url: None,
            secrets: Arc::new(EnvSecrets),
            api_key: API_KEY_ENV.into(),
            app_key: APP_KEY_ENV.into(),
            api: QueryApi::Auto,
            settle: Duration::ZERO,
            v2_interval: None,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            event_timeout: DEFAULT_EVENT_TIMEOUT,
            event_source: "bluegreen".into(),
        }
    }
}

impl DatadogBuilder {
    /// The site, overriding `DD_SITE`.
    pub fn site(mut self, site: Site) -> Self {
        self.site = Some(site);
        self
    }

    /// A base URL used instead of the site's API host (a proxy, or a test
    /// server), e.g. `http://127.0.0.1:8080`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Where the keys are read, and under which secret names (defaults:
    /// the environment, `DD_API_KEY` and `DD_APP_KEY`). Keys are read on
    /// every call, so rotation needs no restart.
    pub fn keys(
        mut self,
        secrets: Arc<dyn SecretSource>,
        api_key_secret: impl Into<String>,
        app_key_secret: impl Into<String>,
    ) -> Self {
        self.secrets = secrets;
        self.api_key = api_key_secret.into();
        self.app_key = app_key_secret.into();
        self
    }

    /// Which endpoint answers plain queries; see [`QueryApi`].
    pub fn api(mut self, api: QueryApi) -> Self {
        self.api = api;
        self
    }

    /// How long after its bucket's end a point still counts as incomplete
    /// (ingestion delay). Zero by default; see [`series`] for the rule.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The rollup interval asked of `POST /api/v2/query/timeseries`
    /// (Datadog chooses when unset).
    pub fn v2_interval(mut self, interval: Duration) -> Self {
        self.v2_interval = Some(interval);
        self
    }

    /// The time limit of one query.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The time limit of posting one event.
    pub fn event_timeout(mut self, timeout: Duration) -> Self {
        self.event_timeout = timeout;
        self
    }

    /// The `source_type_name` of posted events (default `bluegreen`).
    pub fn event_source(mut self, source: impl Into<String>) -> Self {
        self.event_source = source.into();
        self
    }

    /// Builds the client. Fails on an unknown `DD_SITE` or a base URL that is
    /// not `http://` or `https://`. The client follows no redirects: a 3xx
    /// answer is a permanent error naming where it pointed, so the keys are
    /// sent only to the site or base URL configured here.
    pub fn build(self) -> Result<Datadog> {
        let (site, base_url) = match self.base_url {
            Some(url) => {
                let url = url.trim().trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
                    return Err(Error::invalid_input(format!(
                        "base_url: {url:?} is not an http:// or https:// URL"
                    ))
                    .with_provider(PROVIDER)
                    .with_operation("configure"));
                }
                (self.site, url)
            }
            None => {
                let site = match self.site {
                    Some(s) => s,
                    None => Site::from_env()?,
                };
                (Some(site), site.api_base_url())
            }
        };
        // reqwest keeps custom headers such as DD-API-KEY on a redirect to
        // another host; a 3xx is an error instead (see `client`).
        let client = http::client(
            PROVIDER,
            concat!("bluegreen-datadog/", env!("CARGO_PKG_VERSION")),
            Redirects::Never,
        )?;
        Ok(Datadog {
            inner: Arc::new(Inner {
                http: Http {
                    client,
                    base_url,
                    keys: Keys {
                        secrets: self.secrets,
                        api_key: self.api_key,
                        app_key: self.app_key,
                    },
                },
                site,
                api: self.api,
                settle: self.settle,
                v2_interval: self.v2_interval,
                query_timeout: self.query_timeout,
                event_timeout: self.event_timeout,
                event_source: self.event_source,
            }),
        })
    }
}

impl Datadog {
    /// A builder with the defaults.
    pub fn builder() -> DatadogBuilder {
        DatadogBuilder::default()
    }

    /// Datadog from the environment: `DD_SITE`, `DD_API_KEY`, `DD_APP_KEY`.
    pub fn from_env() -> Result<Datadog> {
        Datadog::builder().build()
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.http.base_url
    }

    async fn query_v1(&self, q: &MetricQuery, text: &str) -> Result<MetricAnswer> {
        let op = "query";
        let params = [
            ("from", (q.from.0 / 1000).to_string()),
            ("to", q.to.0.div_ceil(1000).to_string()),
            ("query", text.to_string()),
        ];
        let body = self
            .inner
            .http
            .send(Call {
                op,
                method: Method::GET,
                path: "/api/v1/query",
                query: &params,
                json: None,
                auth: Auth::ApiAndApp,
                timeout: self.inner.query_timeout,
            })
            .await?
            .0;
        let answer = series::decode_v1(&body, q, self.inner.settle)?;
        log_answer(q, &answer);
        Ok(answer)
    }

    async fn query_v2(
        &self,
        q: &MetricQuery,
        queries: &[(String, String)],
        formula: Option<&str>,
    ) -> Result<MetricAnswer> {
        let op = "query";
        let interval = self.inner.v2_interval.map(|d| d.as_millis() as u64);
        let request = series::V2Request {
            data: series::V2RequestData {
                kind: "timeseries_request",
                attributes: series::V2RequestAttributes {
                    from: q.from.0,
                    to: q.to.0,
                    interval,
                    queries: queries
                        .iter()
                        .map(|(name, query)| series::V2Query {
                            data_source: "metrics",
                            name,
                            query,
                        })
                        .collect(),
                    formulas: formula
                        .map(|f| vec![series::V2Formula { formula: f }])
                        .unwrap_or_default(),
                },
            },
        };
        let json = serde_json::to_vec(&request).map_err(|e| invalid(op, e.to_string()))?;
        let body = self
            .inner
            .http
            .send(Call {
                op,
                method: Method::POST,
                path: "/api/v2/query/timeseries",
                query: &[],
                json: Some(json),
                auth: Auth::ApiAndApp,
                timeout: self.inner.query_timeout,
            })
            .await?
            .0;
        let answer = series::decode_v2(&body, q, interval, self.inner.settle)?;
        log_answer(q, &answer);
        Ok(answer)
    }
}

fn log_answer(q: &MetricQuery, answer: &MetricAnswer) {
    match answer {
        MetricAnswer::Samples { samples } => {
            tracing::debug!(check = %q.check, samples = samples.len(), "Datadog answer")
        }
        MetricAnswer::NoData { reason } => {
            tracing::debug!(check = %q.check, reason = %reason, "Datadog answer: no data")
        }
    }
}

fn invalid(op: &'static str, message: String) -> Error {
    Error::invalid_response(message)
        .with_provider(PROVIDER)
        .with_operation(op)
}

#[async_trait]
impl MetricsSource for Datadog {
    /// Queries Datadog for `query` over its window; read-only and safe to repeat.
    /// See [`query`] for which endpoint answers, and [`series`] for which points count.
    async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer> {
        let parsed = query::parse(&query.query, self.inner.api).map_err(|m| {
            Error::invalid_input(format!("check {}: {m}", query.check))
                .with_provider(PROVIDER)
                .with_operation("query")
        })?;
        if query.to <= query.from {
            return Err(Error::invalid_input(format!(
                "check {}: the window {}..{} is empty",
                query.check, query.from, query.to
            ))
            .with_provider(PROVIDER)
            .with_operation("query"));
        }
        match parsed {
            query::Parsed::V1(text) => self.query_v1(query, &text).await,
            query::Parsed::V2 { queries, formula } => {
                self.query_v2(query, &queries, formula.as_deref()).await
            }
        }
    }
}

/// The body of `POST /api/v1/events`.
#[derive(Debug, Serialize)]
struct EventBody<'a> {
    title: &'a str,
    text: &'a str,
    alert_type: &'static str,
    tags: Vec<String>,
    aggregation_key: &'a str,
    source_type_name: &'a str,
}

/// Datadog's `alert_type` for a notification's severity. Datadog's events
/// API has no `alert_type` above `error`, so [`Severity::Critical`] is sent
/// as `error`; the engine tags such notifications `severity:critical`.
pub fn alert_type(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Success => "success",
        Severity::Warning => "warning",
        Severity::Error | Severity::Critical => "error",
    }
}

/// The tags of an event: the notification's own, then `service:`, `version:`
/// and `deployment_id:` unless already there.
pub fn event_tags(n: &Notification) -> Vec<String> {
    let mut tags = n.tags.clone();
    for (key, value) in [
        ("service", &n.service),
        ("version", &n.version),
        ("deployment_id", &n.deployment_id),
    ] {
        let prefix = format!("{key}:");
        if !value.is_empty() && !tags.iter().any(|t| t.starts_with(&prefix)) {
            tags.push(format!("{prefix}{value}"));
        }
    }
    tags
}

#[async_trait]
impl EventSink for Datadog {
    /// Posts the notification to `POST /api/v1/events` with its `alert_type`
    /// and tags, aggregated by deployment id. One attempt: never waits on a rate
    /// limit, and gives up after the event timeout. A failure is returned (without
    /// keys); the engine logs it and never fails or holds a deployment for it.
    async fn notify(&self, n: &Notification) -> Result<()> {
        let op = "notify";
        let body = EventBody {
            title: &n.title,
            text: &n.text,
            alert_type: alert_type(n.severity),
            tags: event_tags(n),
            aggregation_key: &n.deployment_id,
            source_type_name: &self.inner.event_source,
        };
        let json = serde_json::to_vec(&body).map_err(|e| invalid(op, e.to_string()))?;
        let result = self
            .inner
            .http
            .send(Call {
                op,
                method: Method::POST,
                path: "/api/v1/events",
                query: &[],
                json: Some(json),
                auth: Auth::Api,
                timeout: self.inner.event_timeout,
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(
                    deployment = %n.deployment_id,
                    title = %n.title,
                    error = %e,
                    "could not post the deployment event to Datadog; the deployment goes on"
                );
                Err(e)
            }
        }
    }
}
