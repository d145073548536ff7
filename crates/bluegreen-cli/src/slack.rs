//! A Slack incoming-webhook [`EventSink`]: one message per notification.
//!
//! The webhook URL is a credential: it is read from a [`SecretSource`] on
//! every call (so rotation needs no restart) and never appears in errors,
//! logs or `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::provider::{EventSink, Notification, SecretSource, Severity};
use bluegreen_core::{Error, ErrorKind, Result};

const PROVIDER: &str = "slack";

/// Posts notifications to a Slack incoming webhook.
#[derive(Clone)]
pub struct SlackWebhook {
    secrets: Arc<dyn SecretSource>,
    url_secret: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for SlackWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackWebhook")
            .field("url_secret", &self.url_secret)
            .finish_non_exhaustive()
    }
}

impl SlackWebhook {
    /// A sink whose webhook URL is the secret `url_secret` of `secrets`.
    pub fn new(secrets: Arc<dyn SecretSource>, url_secret: impl Into<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("cannot build an HTTP client: {e}"),
                )
                .with_provider(PROVIDER)
                .with_operation("build")
            })?;
        Ok(SlackWebhook {
            secrets,
            url_secret: url_secret.into(),
            http,
        })
    }

    /// The message body Slack receives for `n`.
    pub fn payload(n: &Notification) -> serde_json::Value {
        let icon = match n.severity {
            Severity::Info => ":information_source:",
            Severity::Success => ":white_check_mark:",
            Severity::Warning => ":warning:",
            Severity::Error => ":rotating_light:",
            Severity::Critical => ":sos:",
        };
        serde_json::json!({
            "text": format!("{icon} *{}* — {} {}\n{}", n.title, n.service, n.version, n.text),
        })
    }
}

#[async_trait]
impl EventSink for SlackWebhook {
    async fn notify(&self, n: &Notification) -> Result<()> {
        let op = "notify";
        let url = self.secrets.get(&self.url_secret).await?;
        let res = self
            .http
            .post(url.expose())
            .json(&Self::payload(n))
            .send()
            .await
            .map_err(|e| {
                // reqwest errors carry the URL: keep it out of the message.
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Unavailable
                };
                Error::new(
                    kind,
                    format!(
                        "posting to the Slack webhook (secret {:?}) failed: {}",
                        self.url_secret,
                        e.without_url()
                    ),
                )
                .with_provider(PROVIDER)
                .with_operation(op)
            })?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let body = res.text().await.unwrap_or_default();
        let kind = match status.as_u16() {
            429 => ErrorKind::RateLimited,
            403 | 404 | 410 => ErrorKind::PermissionDenied,
            400 => ErrorKind::InvalidInput,
            s if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        Err(Error::new(
            kind,
            format!(
                "the Slack webhook (secret {:?}) answered {status}: {}",
                self.url_secret,
                body.chars().take(200).collect::<String>()
            ),
        )
        .with_provider(PROVIDER)
        .with_operation(op))
    }
}
