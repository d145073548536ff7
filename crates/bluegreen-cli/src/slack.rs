//! A Slack incoming-webhook [`EventSink`]: one message per notification.
//!
//! The webhook URL is a credential: it is read from a [`SecretSource`] on
//! every call (so rotation needs no restart) and never appears in errors,
//! logs or `Debug` output: Slack's reply is masked before it is cut, and
//! redirects are not followed (reqwest would name the URL in `Referer`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::provider::{EventSink, Notification, SecretSource, Severity};
use bluegreen_core::{Error, ErrorKind, Result};

const PROVIDER: &str = "slack";

/// The time limit of one post: a notification never holds a deployment up.
const TIMEOUT: Duration = Duration::from_secs(10);

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
        // A redirect would carry the webhook URL to another host in
        // `Referer`: the URL goes to its own host only.
        let http = http::client(
            PROVIDER,
            concat!("bluegreen/", env!("CARGO_PKG_VERSION")),
            Redirects::Never,
        )?;
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
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                // The message names the host, never the URL (a credential).
                let e = http::transport_error(e, http::host_of(url.expose()));
                Error::new(
                    e.kind(),
                    format!(
                        "posting to the Slack webhook (secret {:?}) failed: {}",
                        self.url_secret,
                        e.message()
                    ),
                )
                .with_status(e.status())
                .with_provider(PROVIDER)
                .with_operation(op)
            })?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let hint = http::retry_after(res.headers());
        let body = res.text().await.unwrap_or_default();
        let kind = match status.as_u16() {
            // A removed or revoked webhook answers 404 or 410.
            404 | 410 => ErrorKind::PermissionDenied,
            code => http::status_kind(code),
        };
        let e = Error::new(
            kind,
            format!(
                "the Slack webhook (secret {:?}) answered {status}: {}",
                self.url_secret,
                masked_reply(&body, url.expose())
            ),
        )
        .with_provider(PROVIDER)
        .with_operation(op);
        // Slack's 429 says when to post again; the sink makes one attempt.
        Err(match hint {
            Some(wait) => e.with_retry_after(wait),
            None => e,
        })
    }
}

/// The most of a reply an error shows.
const REPLY_CHARS: usize = 200;

/// `reply` with the webhook URL masked, and the parts of it a server may echo
/// (its path and query, its last path segment, its query values), then cut to
/// [`REPLY_CHARS`]: masked first, so a cut never leaves part of the URL.
fn masked_reply(reply: &str, url: &str) -> String {
    let url = url.trim();
    let mut parts = vec![url.to_string()];
    if let Ok(u) = reqwest::Url::parse(url) {
        parts.push(u.as_str().to_string());
        parts.push(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        });
        parts.extend(
            u.path_segments()
                .and_then(|mut s| s.next_back())
                .map(str::to_string),
        );
        parts.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
    }
    // Short parts (`/`, `services`) are no secret. The redactor masks the
    // longest first, so a part is masked whole, not around a shorter one.
    parts.retain(|p| p.chars().count() > 8);
    // One character is left for the `…` of a cut reply; a prefix of a part
    // left at the cut is masked too.
    bluegreen_core::redact::Redactor::new(parts).mask_and_cut(reply, REPLY_CHARS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str =
        "https://hooks.slack.com/services/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3";
    const TOKEN: &str = "xoxsecret24charstoken0123";

    fn shows_part_of_the_token(text: &str) -> bool {
        (4..=TOKEN.len()).any(|n| text.contains(&TOKEN[..n]))
    }

    #[test]
    fn slack_reply_echoing_the_webhook_url_across_the_cut_is_masked_before_cutting() {
        // The token straddles character 200: cut first, its first 10
        // characters would show.
        let before = REPLY_CHARS - (URL.len() - TOKEN.len()) - 10;
        let reply = format!("{}{URL} rest", "x".repeat(before));
        let shown = masked_reply(&reply, URL);
        assert!(!shows_part_of_the_token(&shown), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.chars().count() <= REPLY_CHARS);
        for reply in [
            // A proxy's 404 page echoing the path, or the token alone.
            "Cannot POST /services/T0AAAAAAA/B0BBBBBBB/xoxsecret24charstoken0123".to_string(),
            format!("invalid_token: {TOKEN}"),
        ] {
            let shown = masked_reply(&reply, URL);
            assert!(!shows_part_of_the_token(&shown), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert_eq!(masked_reply("no_service", URL), "no_service");
        // A reply that echoed only the start of the token, right where the
        // cut falls: the part left at the cut is masked too.
        for n in 4..TOKEN.len() {
            let reply = format!(
                "{}{}zzzzzzzzzz",
                "x".repeat(REPLY_CHARS - 1 - n),
                &TOKEN[..n]
            );
            let shown = masked_reply(&reply, URL);
            assert!(!shows_part_of_the_token(&shown), "prefix of {n}: {shown}");
            // The marker may be longer than the part it replaces.
            assert!(
                shown.chars().count() <= REPLY_CHARS + "[redacted]".len(),
                "{shown}"
            );
            assert!(shown.ends_with("[redacted]…"), "{shown}");
        }
    }

    /// A webhook URL whose server answers one post with `answer` (a raw
    /// HTTP/1.1 response).
    fn answering_once(answer: &'static str) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let home = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/services/T0AAAAAAA/B0BBBBBBB/{TOKEN}",
            home.local_addr().unwrap()
        );
        let server = std::thread::spawn(move || {
            let (mut c, _) = home.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            c.write_all(answer.as_bytes()).unwrap();
        });
        (url, server)
    }

    async fn post_to(url: &str) -> Error {
        let secrets = bluegreen_core::testing::FakeSecrets::new();
        secrets.insert("slack-url", url, None);
        let sink = SlackWebhook::new(Arc::new(secrets), "slack-url").unwrap();
        let n = Notification {
            deployment_id: "d-1".into(),
            service: "order-api".into(),
            version: "2.5.0".into(),
            title: "Deployment Start".into(),
            text: String::new(),
            severity: Severity::Info,
            tags: vec![],
            cause: None,
        };
        sink.notify(&n).await.unwrap_err()
    }

    #[tokio::test]
    async fn slack_throttling_is_temporary_with_its_retry_after_as_the_hint() {
        let (url, server) = answering_once(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let e = post_to(&url).await;
        server.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert!(!shows_part_of_the_token(&e.to_string()), "{e}");
    }

    #[tokio::test]
    async fn slack_removed_webhook_is_permission_denied_not_retried() {
        let (url, server) = answering_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nConnection: close\r\n\r\nno_service\r\n",
        );
        let e = post_to(&url).await;
        server.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("no_service"), "{e}");
    }

    #[tokio::test]
    async fn slack_redirect_to_another_host_is_not_followed() {
        use std::io::{Read, Write};
        use std::net::TcpListener;
        // Another host (Linux routes all of 127/8 to lo), counting connections.
        let other = TcpListener::bind("127.0.0.2:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let away = format!("http://{}/collect", other.local_addr().unwrap());
        let home = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/services/T0AAAAAAA/B0BBBBBBB/{TOKEN}",
            home.local_addr().unwrap()
        );
        let server = std::thread::spawn(move || {
            let (mut c, _) = home.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: {away}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            c.write_all(answer.as_bytes()).unwrap();
        });
        let secrets = bluegreen_core::testing::FakeSecrets::new();
        secrets.insert("slack-url", &url, None);
        let sink = SlackWebhook::new(Arc::new(secrets), "slack-url").unwrap();
        let n = Notification {
            deployment_id: "d-1".into(),
            service: "order-api".into(),
            version: "2.5.0".into(),
            title: "Deployment Start".into(),
            text: String::new(),
            severity: Severity::Info,
            tags: vec![],
            cause: None,
        };
        let e = sink.notify(&n).await.unwrap_err();
        server.join().unwrap();
        assert!(
            other.accept().is_err(),
            "the redirect to another host was followed (with the URL in Referer)"
        );
        assert!(e.to_string().contains("answered 302 Found"), "{e}");
        assert!(!shows_part_of_the_token(&e.to_string()), "{e}");
    }
}
