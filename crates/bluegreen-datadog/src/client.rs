//! HTTP to Datadog: keys, status codes, rate limits and transport failures,
//! all mapped into [`bluegreen_core::Error`] in this one place.

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::error::source_chain;
use bluegreen_core::http;
use bluegreen_core::redact::Redactor;
use bluegreen_core::{Error, ErrorKind, ErrorStatus, Result, SecretSource, SecretValue};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

pub(crate) const PROVIDER: &str = "datadog";

/// Where the keys come from.
#[derive(Clone)]
pub(crate) struct Keys {
    pub secrets: Arc<dyn SecretSource>,
    pub api_key: String,
    pub app_key: String,
}

/// Which keys a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// API key only (events, validate).
    Api,
    /// API key and application key (queries).
    ApiAndApp,
}

pub(crate) struct Http {
    pub client: reqwest::Client,
    pub base_url: String,
    pub keys: Keys,
}

/// One request to Datadog.
pub(crate) struct Call<'a> {
    /// The operation, for errors.
    pub op: &'static str,
    pub method: Method,
    /// The path below the base URL, e.g. `/api/v1/query`.
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    /// A JSON body.
    pub json: Option<Vec<u8>>,
    pub auth: Auth,
    pub timeout: Duration,
}

/// A successful answer's body.
pub(crate) struct Body(pub Vec<u8>);

fn error(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message)
        .with_provider(PROVIDER)
        .with_operation(op)
}

impl Http {
    fn host(&self) -> &str {
        http::host_of(&self.base_url)
    }

    async fn key(&self, op: &'static str, which: &'static str, name: &str) -> Result<HeaderValue> {
        let value: SecretValue = self.keys.secrets.get(name).await.map_err(|e| {
            error(
                e.kind(),
                op,
                format!(
                    "cannot read the Datadog {which} key from secret {name}: {}",
                    e.message()
                ),
            )
            .with_status(e.status())
        })?;
        let mut header = HeaderValue::from_str(value.expose().trim()).map_err(|_| {
            error(
                ErrorKind::InvalidInput,
                op,
                format!("the Datadog {which} key (secret {name}) contains characters not allowed in an HTTP header"),
            )
        })?;
        header.set_sensitive(true);
        Ok(header)
    }

    async fn headers(&self, op: &'static str, auth: Auth) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        h.insert("DD-API-KEY", self.key(op, "API", &self.keys.api_key).await?);
        if auth == Auth::ApiAndApp {
            h.insert(
                "DD-APPLICATION-KEY",
                self.key(op, "application", &self.keys.app_key).await?,
            );
        }
        h.insert("Accept", HeaderValue::from_static("application/json"));
        Ok(h)
    }

    /// Sends one request and returns the body of a 2xx answer or the mapped
    /// error. One attempt: a 429 is a temporary [`ErrorKind::RateLimited`]
    /// error whose [`retry_after`](Error::retry_after) is the time until the
    /// limit resets, and the caller's [`RetryPolicy`](bluegreen_core::RetryPolicy)
    /// decides whether to wait for it (see `bluegreen_core::retry`).
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Body> {
        let Call {
            op,
            method,
            path,
            query,
            json,
            auth,
            timeout,
        } = call;
        let url = format!("{}{}", self.base_url.trim_end_matches('/'), path);
        let headers = self.headers(op, auth).await?;
        let mut req = self
            .client
            .request(method, &url)
            .headers(headers.clone())
            .query(query)
            .timeout(timeout);
        if let Some(body) = json {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(op, e))?;
        let status = resp.status();
        if status.is_redirection() {
            // The client follows no redirect (see `DatadogBuilder::build`):
            // the keys go to the configured site and nowhere else.
            return Err(self.redirect_error(op, status, &resp, &headers));
        }
        let resp_headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.transport(op, e))?;
        if status.is_success() {
            return Ok(Body(body.to_vec()));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let limit = RateLimit::from_headers(&resp_headers);
            return Err(error(
                ErrorKind::RateLimited,
                op,
                format!(
                    "Datadog rate limit {}reached; it resets in {}s",
                    limit
                        .name
                        .as_deref()
                        .map(|n| format!("{n:?} "))
                        .unwrap_or_default(),
                    limit.reset.as_secs(),
                ),
            )
            .with_status(ErrorStatus::Temporary)
            .with_retry_after(limit.reset));
        }
        Err(self.status_error(op, status, &body, auth, &headers).await)
    }

    /// A 3xx answer, never followed: names the status and the origin it
    /// pointed to (not its path or query, and never a key).
    fn redirect_error(
        &self,
        op: &'static str,
        status: StatusCode,
        resp: &reqwest::Response,
        sent: &HeaderMap,
    ) -> Error {
        let code = status.as_u16();
        let to = match resp.headers().get(reqwest::header::LOCATION) {
            None => "without a Location".to_string(),
            Some(raw) => match std::str::from_utf8(raw.as_bytes())
                .ok()
                .and_then(|l| resp.url().join(l.trim()).ok())
            {
                None => "whose Location is not a URL".to_string(),
                Some(url) => {
                    let shown = shown_origin(&url);
                    let lower = shown.to_ascii_lowercase();
                    let has_key = ["DD-API-KEY", "DD-APPLICATION-KEY"].iter().any(|h| {
                        sent.get(*h).and_then(|v| v.to_str().ok()).is_some_and(|k| {
                            !k.is_empty() && lower.contains(&k.to_ascii_lowercase())
                        })
                    });
                    if has_key {
                        "a redirect to a URL that contains a key (not shown)".to_string()
                    } else {
                        format!("a redirect to {shown}")
                    }
                }
            },
        };
        error(
            ErrorKind::Other,
            op,
            format!(
                "Datadog answered HTTP {code}, {to}, not followed: the API keys go only to the configured site, {}",
                self.host()
            ),
        )
        .with_status(ErrorStatus::Permanent)
    }

    async fn status_error(
        &self,
        op: &'static str,
        status: StatusCode,
        body: &[u8],
        auth: Auth,
        sent: &HeaderMap,
    ) -> Error {
        // A body may echo a key (an invalid key quoted back): mask the keys
        // that were sent, then cut, so no part of one is shown.
        let keys = ["DD-API-KEY", "DD-APPLICATION-KEY"]
            .iter()
            .filter_map(|h| sent.get(*h).and_then(|v| v.to_str().ok()))
            .map(str::to_string);
        let text = Redactor::new(keys).mask_and_cut(&error_text(body), ERROR_TEXT_CHARS);
        let code = status.as_u16();
        let kind = http::status_kind(code);
        let message = match kind {
            ErrorKind::PermissionDenied => {
                let which = self.which_key(auth).await;
                format!("Datadog refused the request (HTTP {code}: {text}): {which}")
            }
            ErrorKind::InvalidInput => {
                format!("Datadog rejected the request (HTTP {code}): {text}")
            }
            ErrorKind::NotFound => format!(
                "Datadog answered HTTP 404 for {} (is the base URL right?): {text}",
                self.base_url
            ),
            ErrorKind::Unavailable => {
                format!("Datadog is unavailable (HTTP {code}): {text}")
            }
            _ => format!("Datadog answered HTTP {code}: {text}"),
        };
        error(kind, op, message)
    }

    /// After a 403: which key was refused, found by asking `GET /api/v1/validate`,
    /// which checks the API key alone. Never prints a key.
    async fn which_key(&self, auth: Auth) -> String {
        let api = format!("the API key (secret {})", self.keys.api_key);
        if auth == Auth::Api {
            return format!("{api} is wrong or revoked");
        }
        let app = format!("the application key (secret {})", self.keys.app_key);
        let Ok(headers) = self.headers("validate", Auth::Api).await else {
            return format!("{api} or {app} is wrong");
        };
        let url = format!("{}/api/v1/validate", self.base_url.trim_end_matches('/'));
        match self
            .client
            .get(url)
            .headers(headers)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => format!(
                "{api} is valid, so {app} is wrong, revoked, or lacks the timeseries_query permission"
            ),
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                format!("{api} is wrong or revoked (GET /api/v1/validate refused it)")
            }
            Ok(r) => format!(
                "{api} or {app} is wrong (GET /api/v1/validate answered HTTP {})",
                r.status().as_u16()
            ),
            Err(e) => format!(
                "{api} or {app} is wrong (could not ask GET /api/v1/validate: {})",
                source_chain(&e)
            ),
        }
    }

    /// A transport failure: TLS (permanent), timeout, or an unreachable host
    /// (temporary); see [`http::transport_error`].
    pub(crate) fn transport(&self, op: &'static str, e: reqwest::Error) -> Error {
        http::transport_error(e, self.host())
            .with_provider(PROVIDER)
            .with_operation(op)
    }
}

/// The rate-limit headers of a 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub reset: Duration,
    pub name: Option<String>,
}

impl RateLimit {
    fn from_headers(h: &HeaderMap) -> RateLimit {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
        let secs = |n: &str| {
            get(n)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
        };
        // X-RateLimit-Reset is the time in seconds until the limit resets; without
        // it, the period is the longest we could have to wait.
        let reset = secs("X-RateLimit-Reset")
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
            .or_else(|| http::retry_after(h))
            .or_else(|| {
                secs("X-RateLimit-Period").map(|s| Duration::from_secs_f64(s.min(86_400.0)))
            })
            .unwrap_or(Duration::from_secs(1));
        RateLimit {
            reset,
            name: get("X-RateLimit-Name").map(str::to_string),
        }
    }
}

/// `scheme://host[:port]/` of `url`, with `…` for any path or query: where a
/// redirect pointed, without what it carried.
fn shown_origin(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if url.path() == "/" && url.query().is_none() {
        ""
    } else {
        "…"
    };
    format!("{}://{host}{port}/{rest}", url.scheme())
}

/// The most characters of Datadog's error text an error shows.
const ERROR_TEXT_CHARS: usize = 300;

/// Datadog's error text from a body: `{"errors": [..]}`, `{"errors": ".."}`,
/// `{"error": ".."}`, or the body, uncut (the caller masks, then cuts).
pub(crate) fn error_text(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let pick = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Array(a) if !a.is_empty() => Some(
                a.iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        };
        if let Some(s) = v
            .get("errors")
            .and_then(pick)
            .or_else(|| v.get("error").and_then(pick))
        {
            return s;
        }
    }
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.is_empty() {
        "(empty body)".into()
    } else {
        // Bounded before masking, far above what is shown.
        s.chars().take(64 * 1024).collect()
    }
}
