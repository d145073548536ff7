//! A minimal HTTP smoke test for local deployments: `GET` a path on the
//! target's base URL, expect a 2xx, and optionally that the body names the
//! version being deployed.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::{Error, Result, SmokeOutcome, SmokeTarget, SmokeTest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::PROVIDER;

/// `GET <base_url><path>` must answer 2xx within the timeout (and, if
/// [`expect_version`](Self::expect_version), contain the target's version).
#[derive(Debug, Clone)]
pub struct HttpCheck {
    name: String,
    path: String,
    expect_version: bool,
    timeout: Duration,
}

impl HttpCheck {
    /// A check named `name` on `path`, with a 5 s timeout.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        HttpCheck {
            name: name.into(),
            path: path.into(),
            expect_version: false,
            timeout: Duration::from_secs(5),
        }
    }

    /// Also require the body to contain the version being deployed.
    pub fn expect_version(mut self) -> Self {
        self.expect_version = true;
        self
    }
}

#[async_trait]
impl SmokeTest for HttpCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome> {
        let err = |m: String| {
            Error::invalid_input(m)
                .with_provider(PROVIDER)
                .with_operation("smoke test")
        };
        let base = target.base_url.as_deref().ok_or_else(|| {
            err(format!(
                "smoke test {}: the target has no base URL",
                self.name
            ))
        })?;
        let hostport = base
            .strip_prefix("http://")
            .ok_or_else(|| {
                err(format!(
                    "smoke test {}: base URL {base:?} is not http://",
                    self.name
                ))
            })?
            .trim_end_matches('/');
        let start = Instant::now();
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(hostport).await?;
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: bluegreen-smoke\r\n\r\n",
                self.path
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        let answer = tokio::time::timeout(self.timeout, fetch).await;
        let duration = start.elapsed();
        let (passed, detail) = match answer {
            Err(_) => (
                false,
                format!("GET {} timed out after {:?}", self.path, self.timeout),
            ),
            Ok(Err(e)) => (false, format!("GET {}: {e}", self.path)),
            Ok(Ok(text)) => {
                let status = text.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                let ok_status = status.starts_with('2');
                let ok_version = !self.expect_version || body.contains(&target.version);
                let mut d = format!("GET {} -> {status}", self.path);
                if self.expect_version {
                    d.push_str(&format!(
                        ", version {} {}",
                        target.version,
                        if ok_version { "found" } else { "missing" }
                    ));
                }
                (ok_status && ok_version, d)
            }
        };
        Ok(SmokeOutcome {
            passed,
            duration,
            detail,
        })
    }
}
