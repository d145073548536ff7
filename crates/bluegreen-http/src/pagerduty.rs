//! Paging: an [`EventSink`] on the PagerDuty Events API v2.
//!
//! [`PagerDuty`] turns a deployment's notifications into PagerDuty alert
//! events, with the deployment id as the `dedup_key`, so every event of one
//! deployment lands on one alert:
//!
//! | notification (its engine tag) | event action |
//! |-------------------------------|--------------|
//! | rollback started (`deployment:rollback`) | `trigger` |
//! | rolled back (`deployment:rolled_back`) | `trigger` (the same alert, updated) |
//! | halted, needs a human (`deployment:halted`) | `trigger` |
//! | succeeded (`deployment:success`) | `resolve` |
//! | anything else (start, steps, holds) | nothing is sent |
//!
//! Each event is one `POST` of JSON to
//! `https://events.pagerduty.com/v2/enqueue` ([`ENQUEUE_URL`]), as PagerDuty's
//! Events API v2 reference describes it: `routing_key`, `event_action`,
//! `dedup_key`, and for a trigger a `payload` with `summary` (at most 1024
//! characters), `source`, `severity` (`critical`, `error`, `warning` or
//! `info`), `component`, `class` and `custom_details`. PagerDuty answers
//! `202 Accepted`; `400` (an invalid event) is not retried; `429` and `5xx`
//! are temporary and retried under a [`RetryPolicy`] (the driver's
//! convention: exponential backoff, a `Retry-After` header as the floor of
//! the wait). Sending an event twice is harmless: PagerDuty folds events
//! with one `dedup_key` into one alert, so a resumed deployment may repeat
//! one.
//!
//! The routing key is a credential: it is read from a [`SecretSource`] on
//! every call (a rotated key needs no restart), never appears in `Debug`,
//! errors or logs (a reply that echoes it is masked), and redirects are not
//! followed (the key is in the body). The endpoint must be `https`; only a
//! test sets a plain-HTTP one, through
//! [`plain_http_endpoint_for_tests`](PagerDuty::plain_http_endpoint_for_tests).
//!
//! ```
//! use std::sync::Arc;
//! use bluegreen_core::{Notification, Severity};
//! use bluegreen_http::pagerduty::{EventAction, PagerDuty, PagerDutySeverity};
//! # use bluegreen_core::{SecretMetadata, SecretSource, SecretValue};
//! # struct Env;
//! # #[async_trait::async_trait]
//! # impl SecretSource for Env {
//! #     async fn get(&self, _: &str) -> bluegreen_core::Result<SecretValue> { Ok(SecretValue::new("k")) }
//! #     async fn metadata(&self, n: &str) -> bluegreen_core::Result<SecretMetadata> {
//! #         Ok(SecretMetadata { name: n.into(), last_rotated: None })
//! #     }
//! # }
//!
//! let pager = PagerDuty::new(Arc::new(Env), "prod/pagerduty/routing-key")
//!     .unwrap()
//!     .severity(PagerDutySeverity::Critical);
//! let rollback = Notification {
//!     deployment_id: "dep-42".into(),
//!     service: "order-api".into(),
//!     version: "2.5.0".into(),
//!     title: "Deployment Rollback".into(),
//!     text: "order-api 2.5.0 rolling back: error-rate > 5% for 5m".into(),
//!     severity: Severity::Warning,
//!     tags: vec!["deployment:rollback".into()],
//!     cause: None,
//! };
//! assert_eq!(PagerDuty::action(&rollback), Some(EventAction::Trigger));
//! let event = pager.event(&rollback, EventAction::Trigger);
//! assert_eq!(event["dedup_key"], "dep-42");
//! assert_eq!(event["payload"]["severity"], "critical");
//! assert!(event.get("routing_key").is_none(), "added when sent, never kept");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::driver::{with_retry, RetryPolicy};
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::redact::Redactor;
use bluegreen_core::{Error, EventSink, Notification, Result, SecretSource, Severity};
use serde::{Deserialize, Serialize};

const PROVIDER: &str = "pagerduty";
const OPERATION: &str = "enqueue";

/// PagerDuty's Events API v2 endpoint for alert events.
pub const ENQUEUE_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The longest `payload.summary` PagerDuty accepts, in characters.
pub const SUMMARY_CHARS: usize = 1024;

/// The longest `dedup_key` PagerDuty accepts, in characters.
pub const DEDUP_KEY_CHARS: usize = 255;

/// The time limit of one attempt: ten seconds, far above the API's usual
/// answer, short enough that a hung call does not outlast its retries.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a reply an error shows, in characters.
const REPLY_CHARS: usize = 200;

/// An Events API v2 `event_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    /// Open (or update) the alert of the deployment.
    Trigger,
    /// Close the alert of the deployment.
    Resolve,
}

impl EventAction {
    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Trigger => "trigger",
            EventAction::Resolve => "resolve",
        }
    }
}

/// A PagerDuty `payload.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PagerDutySeverity {
    /// `critical`.
    Critical,
    /// `error`.
    Error,
    /// `warning`.
    Warning,
    /// `info`.
    Info,
}

impl PagerDutySeverity {
    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PagerDutySeverity::Critical => "critical",
            PagerDutySeverity::Error => "error",
            PagerDutySeverity::Warning => "warning",
            PagerDutySeverity::Info => "info",
        }
    }

    /// The severity of an engine notification: critical, error and warning
    /// as they are, info and success as `info`.
    pub fn of(s: Severity) -> Self {
        match s {
            Severity::Critical => PagerDutySeverity::Critical,
            Severity::Error => PagerDutySeverity::Error,
            Severity::Warning => PagerDutySeverity::Warning,
            Severity::Info | Severity::Success => PagerDutySeverity::Info,
        }
    }
}

/// Pages through the PagerDuty Events API v2. See the [module docs](self).
#[derive(Clone)]
pub struct PagerDuty {
    secrets: Arc<dyn SecretSource>,
    routing_key: String,
    endpoint: reqwest::Url,
    severity: Option<PagerDutySeverity>,
    source: Option<String>,
    retry: RetryPolicy,
    http: reqwest::Client,
}

impl fmt::Debug for PagerDuty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret's name only, never its value.
        f.debug_struct("PagerDuty")
            .field("routing_key_secret", &self.routing_key)
            .field("endpoint", &self.endpoint.as_str())
            .field("severity", &self.severity)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn invalid(message: String) -> Error {
    Error::invalid_input(message)
        .with_provider(PROVIDER)
        .with_operation("configure")
}

impl PagerDuty {
    /// A sink whose routing key (the Events API v2 integration key) is the
    /// secret `routing_key_secret` of `secrets`, posting to [`ENQUEUE_URL`]
    /// with the notification's own severity, the service as the source and
    /// the driver's default [`RetryPolicy`].
    ///
    /// # Errors
    /// [`ErrorKind::Other`] when the TLS backend cannot be initialised.
    pub fn new(
        secrets: Arc<dyn SecretSource>,
        routing_key_secret: impl Into<String>,
    ) -> Result<Self> {
        Ok(PagerDuty {
            secrets,
            routing_key: routing_key_secret.into(),
            endpoint: reqwest::Url::parse(ENQUEUE_URL).expect("a valid URL"),
            severity: None,
            source: None,
            retry: RetryPolicy::default(),
            http: http::client(
                PROVIDER,
                concat!("bluegreen-http/", env!("CARGO_PKG_VERSION")),
                Redirects::Never,
            )?,
        })
    }

    /// Every trigger with this severity instead of the notification's own
    /// (rollbacks are `warning`, halts `error` or `critical`).
    pub fn severity(mut self, severity: PagerDutySeverity) -> Self {
        self.severity = Some(severity);
        self
    }

    /// `payload.source`: where the problem is (the service if not set).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The retries of a temporary failure (429, 5xx, no answer).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Posts to `url` instead of [`ENQUEUE_URL`] (an EU service region, a
    /// proxy).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when `url` is not an `https` URL: the
    /// routing key would travel in plain text.
    pub fn endpoint(self, url: &str) -> Result<Self> {
        let u = reqwest::Url::parse(url)
            .map_err(|e| invalid(format!("pagerduty endpoint {url:?} is not a URL: {e}")))?;
        if u.scheme() != "https" {
            return Err(invalid(format!(
                "pagerduty endpoint {}: must be https (the routing key is sent in the body)",
                http::host_of(url)
            )));
        }
        Ok(PagerDuty {
            endpoint: u,
            ..self
        })
    }

    /// Posts to a plain-HTTP `url`: for tests against a local server only.
    /// [`endpoint`](Self::endpoint) refuses such a URL.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when `url` is not a URL.
    pub fn plain_http_endpoint_for_tests(self, url: &str) -> Result<Self> {
        let u = reqwest::Url::parse(url)
            .map_err(|e| invalid(format!("pagerduty endpoint {url:?} is not a URL: {e}")))?;
        Ok(PagerDuty {
            endpoint: u,
            ..self
        })
    }

    /// What a notification becomes, by its engine tag (see the [module
    /// docs](self)); `None` for those that page nobody.
    pub fn action(n: &Notification) -> Option<EventAction> {
        n.tags.iter().find_map(|t| match t.as_str() {
            "deployment:rollback" | "deployment:rolled_back" | "deployment:halted" => {
                Some(EventAction::Trigger)
            }
            "deployment:success" => Some(EventAction::Resolve),
            _ => None,
        })
    }

    /// The event for `n` without its `routing_key` (added when it is sent).
    pub fn event(&self, n: &Notification, action: EventAction) -> serde_json::Value {
        let dedup_key: String = n.deployment_id.chars().take(DEDUP_KEY_CHARS).collect();
        let mut event = serde_json::json!({
            "event_action": action.as_str(),
            "dedup_key": dedup_key,
        });
        if action == EventAction::Trigger {
            let summary = format!("{} — {} {}: {}", n.title, n.service, n.version, n.text);
            let summary: String = if summary.chars().count() > SUMMARY_CHARS {
                let mut s: String = summary.chars().take(SUMMARY_CHARS - 1).collect();
                s.push('…');
                s
            } else {
                summary
            };
            let severity = self
                .severity
                .unwrap_or_else(|| PagerDutySeverity::of(n.severity));
            event["payload"] = serde_json::json!({
                "summary": summary,
                "source": self.source.clone().unwrap_or_else(|| n.service.clone()),
                "severity": severity.as_str(),
                "component": n.service,
                "class": "deployment",
                "custom_details": {
                    "deployment_id": n.deployment_id,
                    "service": n.service,
                    "version": n.version,
                    "title": n.title,
                    "text": n.text,
                    "tags": n.tags,
                    "cause": n.cause.as_ref().map(|c| c.to_string()),
                },
            });
            event["client"] = "bluegreen".into();
        }
        event
    }

    async fn send(&self, body: &serde_json::Value, key: &str) -> Result<()> {
        let host = http::host_of(self.endpoint.as_str()).to_string();
        let res = self
            .http
            .post(self.endpoint.clone())
            .timeout(ATTEMPT_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                http::transport_error(e, &host)
                    .with_provider(PROVIDER)
                    .with_operation(OPERATION)
            })?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = http::retry_after(res.headers());
        let reply = res.text().await.unwrap_or_default();
        let mut e = Error::new(
            http::status_kind(status.as_u16()),
            format!(
                "PagerDuty ({host}, routing key from secret {:?}) answered {status}: {}",
                self.routing_key,
                Redactor::new([key.to_string()]).mask_and_cut(reply.trim(), REPLY_CHARS - 1)
            ),
        )
        .with_provider(PROVIDER)
        .with_operation(OPERATION);
        if let Some(w) = wait {
            e = e.with_retry_after(w);
        }
        Err(e)
    }
}

#[async_trait]
impl EventSink for PagerDuty {
    /// Sends the event of `n` (nothing for a notification that pages
    /// nobody), retrying a temporary failure under the sink's policy.
    async fn notify(&self, n: &Notification) -> Result<()> {
        let Some(action) = Self::action(n) else {
            return Ok(());
        };
        let key = self.secrets.get(&self.routing_key).await?;
        let mut body = self.event(n, action);
        body["routing_key"] = key.expose().into();
        with_retry(
            &self.retry,
            ATTEMPT_TIMEOUT + Duration::from_secs(1),
            (PROVIDER, OPERATION),
            || self.send(&body, key.expose()),
        )
        .await
    }
}
