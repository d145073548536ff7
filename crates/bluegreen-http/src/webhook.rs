//! Lifecycle hooks as HTTP webhooks: a request to a URL at a hook point,
//! carrying the [`HookContext`] as its JSON body.
//!
//! ```
//! use bluegreen_http::webhook::{Webhook, WebhookHook};
//! use bluegreen_http::HeaderValueSpec;
//!
//! let mut w = Webhook::post("notify-cmdb", "https://cmdb.example.com/deployments");
//! w.headers.insert(
//!     "Authorization".into(),
//!     HeaderValueSpec::Secret { secret: "prod/cmdb-token".into(), format: Some("Bearer {secret}".into()) },
//! );
//! let hook = WebhookHook::new(w)?;
//! # Ok::<(), bluegreen_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::provider::{Hook, HookContext, HookOutcome};
use bluegreen_core::redact::Redactor;
use bluegreen_core::{Error, Result, SecretSource};
use serde::{Deserialize, Serialize};

use crate::HeaderValueSpec;

const OPERATION: &str = "webhook";

/// One webhook: where the request goes, how, with which headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The hook's name, as plans refer to it.
    pub name: String,
    /// The URL, e.g. `https://cmdb.example.com/deployments`.
    pub url: String,
    /// The method (default `POST`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers; a value from a secret is masked in every detail.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueSpec>,
    /// The time limit of the request (the plan's hook timeout; the engine
    /// bounds the attempt as well).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_method() -> String {
    "POST".into()
}

fn default_timeout() -> Duration {
    bluegreen_core::plan::defaults::HOOK_TIMEOUT
}

impl Webhook {
    /// A `POST` to `url` with no headers and the default timeout.
    pub fn post(name: impl Into<String>, url: impl Into<String>) -> Self {
        Webhook {
            name: name.into(),
            url: url.into(),
            method: default_method(),
            headers: BTreeMap::new(),
            timeout: default_timeout(),
        }
    }

    /// Checks the fields; the error starts with the field (`url`, `method`,
    /// `headers.X`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "url: {:?} is not an http:// or https:// URL",
                http::host_of(&self.url)
            ));
        }
        reqwest::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("method: {:?} is not an HTTP method", self.method))?;
        for name in self.headers.keys() {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than zero".into());
        }
        Ok(())
    }
}

/// A [`Webhook`] as a lifecycle [`Hook`]: a 2xx answer passes; any other
/// status fails with the start of the body (secrets masked) in the detail;
/// a request that cannot be made (no route, TLS, DNS, the timeout) is an
/// error. The body is the [`HookContext`] as JSON with `hook` (the name)
/// added. Redirects are not followed (a header from a secret would go with
/// them).
#[derive(Clone)]
pub struct WebhookHook {
    webhook: Arc<Webhook>,
    secrets: Option<Arc<dyn SecretSource>>,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The webhook holds secret names only, never values.
        f.debug_struct("WebhookHook")
            .field("webhook", &self.webhook)
            .field("secrets", &self.secrets.is_some())
            .finish()
    }
}

fn error(name: &str, e: Error) -> Error {
    let message = format!("webhook {name}: {}", e.message());
    Error::new(e.kind(), message)
        .with_status(e.status())
        .with_provider(crate::PROVIDER)
        .with_operation(OPERATION)
}

impl WebhookHook {
    /// Validates `webhook` and prepares its client.
    pub fn new(webhook: Webhook) -> Result<Self> {
        webhook
            .validate()
            .map_err(|m| error(&webhook.name, Error::invalid_input(m)))?;
        let client = http::client(
            crate::PROVIDER,
            concat!("bluegreen-http/", env!("CARGO_PKG_VERSION")),
            Redirects::Never,
        )?;
        Ok(WebhookHook {
            webhook: Arc::new(webhook),
            secrets: None,
            client,
        })
    }

    /// Where header secrets are read.
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// The webhook.
    pub fn webhook(&self) -> &Webhook {
        &self.webhook
    }
}

#[async_trait]
impl Hook for WebhookHook {
    fn name(&self) -> &str {
        &self.webhook.name
    }

    async fn run(&self, context: &HookContext) -> Result<HookOutcome> {
        let w = &self.webhook;
        let mut headers = reqwest::header::HeaderMap::new();
        let mut secrets = Vec::new();
        for (name, spec) in &w.headers {
            let header =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    error(
                        &w.name,
                        Error::invalid_input(format!("headers: {name:?} is not a header name")),
                    )
                })?;
            let (value, sensitive) = match spec {
                HeaderValueSpec::Value(v) => (v.clone(), false),
                HeaderValueSpec::Secret { secret, format } => {
                    let source = self.secrets.as_ref().ok_or_else(|| {
                        error(
                            &w.name,
                            Error::invalid_input(format!(
                                "headers.{name} needs secret {secret}, but no SecretSource was given"
                            )),
                        )
                    })?;
                    let v = source.get(secret).await.map_err(|e| {
                        error(
                            &w.name,
                            Error::new(
                                e.kind(),
                                format!(
                                    "headers.{name}: cannot read secret {secret}: {}",
                                    e.message()
                                ),
                            )
                            .with_status(e.status()),
                        )
                    })?;
                    let exposed = v.expose().to_string();
                    if !exposed.is_empty() {
                        secrets.push(exposed.clone());
                    }
                    let full = match format {
                        Some(f) => f.replace("{secret}", &exposed),
                        None => exposed,
                    };
                    (full, true)
                }
            };
            let mut hv = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                error(
                    &w.name,
                    Error::invalid_input(format!(
                        "headers.{name}: the value has characters not allowed in an HTTP header"
                    )),
                )
            })?;
            hv.set_sensitive(sensitive);
            headers.insert(header, hv);
        }
        let redactor = Redactor::new(secrets);
        let method = reqwest::Method::from_bytes(w.method.as_bytes()).map_err(|_| {
            error(
                &w.name,
                Error::invalid_input(format!("method: {:?} is not an HTTP method", w.method)),
            )
        })?;
        let mut body = serde_json::to_value(context).unwrap_or_default();
        if let Some(o) = body.as_object_mut() {
            o.insert("hook".into(), serde_json::Value::String(w.name.clone()));
        }
        let host = http::host_of(&w.url).to_string();
        let started = Instant::now();
        let response = self
            .client
            .request(method.clone(), &w.url)
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .timeout(w.timeout)
            .send()
            .await
            .map_err(|e| error(&w.name, http::transport_error(e, &host)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let took = started.elapsed();
        let shown = redactor.mask_and_cut(text.trim(), crate::BODY_SNIPPET);
        let mut detail = format!(
            "{method} {host} answered {status} in {} ms",
            took.as_millis()
        );
        if !shown.is_empty() {
            detail.push_str(&format!("; body: {shown}"));
        }
        Ok(HookOutcome {
            passed: status.is_success(),
            duration: took,
            detail,
            attempts: 1,
        })
    }
}
