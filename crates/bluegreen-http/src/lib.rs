#![doc = include_str!("../README.md")]

mod check;
pub mod pagerduty;
mod suite;
pub mod webhook;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::{Error, Result, SecretSource, SmokeOutcome, SmokeTarget, SmokeTest};

use bluegreen_core::error::source_chain;
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::redact::Redactor;
pub use check::{
    defaults, FieldExpectation, FollowRedirects, HeaderValueSpec, HttpCheck, Rule, VARIABLES,
};
pub use suite::{SmokeSuite, SuiteReport, TestResult};

const PROVIDER: &str = "http";
/// The longest part of a response body shown in a failure, in characters.
const BODY_SNIPPET: usize = 200;
/// The longest JSON value or URL shown in a detail, in characters.
const VALUE_SNIPPET: usize = 80;

/// An [`HttpCheck`] ready to run: a [`SmokeTest`] over reqwest (rustls).
///
/// Smoke tests must be safe to repeat; the check itself sends exactly what it
/// describes, once per attempt.
#[derive(Clone)]
pub struct HttpSmokeTest {
    check: Arc<HttpCheck>,
    secrets: Option<Arc<dyn SecretSource>>,
    client: reqwest::Client,
}

impl fmt::Debug for HttpSmokeTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The check holds secret names only, never values.
        f.debug_struct("HttpSmokeTest")
            .field("check", &self.check)
            .field("secrets", &self.secrets.is_some())
            .finish()
    }
}

fn invalid(check: &str, message: impl fmt::Display) -> Error {
    Error::invalid_input(format!("smoke test {check}: {message}"))
        .with_provider(PROVIDER)
        .with_operation("smoke_test")
}

impl HttpSmokeTest {
    /// Validates `check` (see [`HttpCheck::validate`]) and prepares its client.
    ///
    /// The client itself follows no redirect: reqwest's redirect policies
    /// can refuse a hop but not change the headers it carries, and a
    /// redirect this check allows ([`FollowRedirects::SameOrigin`]) must be
    /// sent without the headers that come from secrets, so
    /// [`run`](SmokeTest::run) follows those itself, hop by hop.
    pub fn new(check: HttpCheck) -> Result<Self> {
        check.validate().map_err(|m| invalid(&check.name, m))?;
        let client = http::client(
            PROVIDER,
            concat!("bluegreen-http/", env!("CARGO_PKG_VERSION")),
            Redirects::Never,
        )?;
        Ok(HttpSmokeTest {
            check: Arc::new(check),
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

    /// The check.
    pub fn check(&self) -> &HttpCheck {
        &self.check
    }

    /// The URL this check calls for `target`.
    pub fn url_for(&self, target: &SmokeTarget) -> Result<String> {
        let c = &self.check;
        let base = target.base_url.as_deref().map(|b| b.trim_end_matches('/'));
        let color = target.color.map(|c| c.as_str());
        check::render("url", &c.url, |name| match name {
            "base_url" => base,
            "service" => Some(target.service.as_str()),
            "color" => color,
            "version" => Some(target.version.as_str()),
            _ => None,
        })
        .map_err(|m| {
            let m = if base.is_none() && c.url.contains("{base_url}") {
                format!(
                    "url: no base URL is known for {} (set colors.<color>.base_url in the plan)",
                    color.unwrap_or("staging")
                )
            } else {
                m
            };
            invalid(&c.name, m)
        })
    }

    async fn prepare(&self, target: &SmokeTarget) -> Result<Prepared> {
        let c = &self.check;
        let url = self.url_for(target)?;
        let base = target.base_url.as_deref().map(|b| b.trim_end_matches('/'));
        let color = target.color.map(|c| c.as_str());
        let vars = |name: &str| match name {
            "base_url" => base,
            "service" => Some(target.service.as_str()),
            "color" => color,
            "version" => Some(target.version.as_str()),
            _ => None,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        let mut secrets = Vec::new();
        let mut secret_headers = Vec::new();
        for (name, spec) in &c.headers {
            let header_name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(&c.name, format!("headers: {name:?} is not a header name")))?;
            let (value, sensitive) = match spec {
                HeaderValueSpec::Value(v) => (
                    check::render(&format!("headers.{name}"), v, vars)
                        .map_err(|m| invalid(&c.name, m))?,
                    false,
                ),
                HeaderValueSpec::Secret { secret, format } => {
                    let source = self.secrets.as_ref().ok_or_else(|| {
                        invalid(
                            &c.name,
                            format!("headers.{name} needs secret {secret}, but no SecretSource was given"),
                        )
                    })?;
                    let value = source.get(secret).await.map_err(|e| {
                        Error::new(
                            e.kind(),
                            format!(
                                "smoke test {}: headers.{name}: cannot read secret {secret}: {}",
                                c.name,
                                e.message()
                            ),
                        )
                        .with_status(e.status())
                        .with_provider(PROVIDER)
                        .with_operation("smoke_test")
                    })?;
                    let exposed = value.expose().to_string();
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
                invalid(
                    &c.name,
                    format!(
                        "headers.{name}: the value has characters not allowed in an HTTP header"
                    ),
                )
            })?;
            hv.set_sensitive(sensitive);
            if sensitive {
                secret_headers.push(header_name.clone());
            }
            headers.insert(header_name, hv);
        }
        let body = match &c.body {
            Some(b) => Some(
                serde_json::to_vec(
                    &check::render_json("body", b, &vars).map_err(|m| invalid(&c.name, m))?,
                )
                .map_err(|e| invalid(&c.name, format!("body: {e}")))?,
            ),
            None => None,
        };
        let mut expectations = Vec::with_capacity(c.expect_json.len());
        for (i, e) in c.expect_json.iter().enumerate() {
            let rule = match &e.rule {
                Rule::Equals(v) => Rule::Equals(
                    check::render_json(&format!("expect_json[{i}].equals"), v, &vars)
                        .map_err(|m| invalid(&c.name, m))?,
                ),
                other => other.clone(),
            };
            expectations.push(FieldExpectation {
                field: e.field.clone(),
                rule,
            });
        }
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).map_err(|_| {
            invalid(
                &c.name,
                format!("method: {:?} is not an HTTP method", c.method),
            )
        })?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| invalid(&c.name, format!("url: {url:?} is not a URL ({e})")))?;
        Ok(Prepared {
            method,
            url,
            headers,
            secret_headers,
            body,
            expectations,
            redactor: Redactor::new(secrets),
        })
    }

    /// One attempt: `Ok(detail)` when it passed, `Err(reason)` when not.
    ///
    /// The check's timeout bounds the whole attempt, redirects included.
    async fn attempt(&self, p: &Prepared) -> (Duration, std::result::Result<String, String>) {
        let c = &self.check;
        let r = &p.redactor;
        let start = Instant::now();
        let deadline = start + c.timeout;
        let timed_out = || format!("no answer within {}", humantime::format_duration(c.timeout));
        let mut hop = Hop {
            method: p.method.clone(),
            url: p.url.clone(),
            headers: p.headers.clone(),
            body: p.body.clone(),
        };
        let mut followed = 0usize;
        let (resp, redirect) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (start.elapsed(), Err(timed_out()));
            }
            let mut req = self
                .client
                .request(hop.method.clone(), hop.url.clone())
                .headers(hop.headers.clone())
                .timeout(left);
            if let Some(body) = &hop.body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let took = start.elapsed();
                    let why = if e.is_timeout() {
                        timed_out()
                    } else if e.is_connect() {
                        format!("cannot connect: {}", source_chain(&e.without_url()))
                    } else {
                        format!("request failed: {}", source_chain(&e.without_url()))
                    };
                    return (took, Err(why));
                }
            };
            let Some(location) = redirect_target(&resp) else {
                break (resp, None);
            };
            let next = match location {
                Ok(next) => next,
                Err(raw) => {
                    let note = format!(
                        "a redirect whose Location {:?} is not a URL, not followed",
                        r.mask_and_cut(&raw, VALUE_SNIPPET)
                    );
                    break (resp, Some(note));
                }
            };
            let shown = r.mask_and_cut(next.as_str(), VALUE_SNIPPET);
            let refused = match c.follow_redirects {
                FollowRedirects::Never => Some(format!(
                    "a redirect to {shown}, not followed (follow_redirects is never)"
                )),
                FollowRedirects::SameOrigin if next.origin() != p.url.origin() => Some(format!(
                    "a redirect to {shown}, not followed: another origin than {}",
                    p.url.origin().ascii_serialization()
                )),
                FollowRedirects::SameOrigin if followed >= defaults::MAX_REDIRECTS => {
                    return (
                        start.elapsed(),
                        Err(format!(
                            "more than {} redirects (the last to {shown})",
                            defaults::MAX_REDIRECTS
                        )),
                    );
                }
                FollowRedirects::SameOrigin => None,
            };
            if let Some(note) = refused {
                break (resp, Some(note));
            }
            // Secrets are for the URL the check names, not for wherever it
            // sends us: none goes with any redirect.
            for name in &p.secret_headers {
                hop.headers.remove(name);
            }
            let status = resp.status();
            if matches!(status.as_u16(), 301..=303) {
                if hop.method != reqwest::Method::HEAD {
                    hop.method = reqwest::Method::GET;
                }
                hop.body = None;
            }
            hop.url = next;
            followed += 1;
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await;
        let took = start.elapsed();
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                let why = if e.is_timeout() {
                    timed_out()
                } else {
                    format!(
                        "HTTP {status}, reading the body failed: {}",
                        source_chain(&e.without_url())
                    )
                };
                return (took, Err(why));
            }
        };
        let got = match &redirect {
            Some(note) => format!("HTTP {status}, {note}"),
            None => format!("HTTP {status}"),
        };
        if status != c.expect_status {
            return (
                took,
                Err(format!(
                    "expected HTTP {}, got {status}{}: {}",
                    c.expect_status,
                    redirect.map(|n| format!(", {n}")).unwrap_or_default(),
                    snippet(r, &body)
                )),
            );
        }
        let mut observed = vec![got.clone()];
        if followed > 0 {
            observed[0] = format!(
                "{got} after {followed} same-origin redirect{} to {}",
                if followed == 1 { "" } else { "s" },
                r.mask_and_cut(hop.url.as_str(), VALUE_SNIPPET)
            );
        }
        if !p.expectations.is_empty() {
            let json: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        took,
                        Err(format!(
                            "{got}, but the body is not JSON ({e}): {}",
                            snippet(r, &body)
                        )),
                    )
                }
            };
            for e in &p.expectations {
                match judge(r, &json, e) {
                    Ok(seen) => observed.push(seen),
                    Err(why) => return (took, Err(format!("{got}, but {why}"))),
                }
            }
        }
        if let Some(budget) = c.latency_budget {
            if took > budget {
                return (
                    took,
                    Err(format!(
                        "HTTP {status} in {}ms, over its latency budget of {}ms",
                        took.as_millis(),
                        budget.as_millis()
                    )),
                );
            }
        }
        (took, Ok(observed.join(", ")))
    }
}

/// What one request of an attempt sends; redirects change it.
struct Hop {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body: Option<Vec<u8>>,
}

/// Where a redirect answer points: `None` when `resp` is not a redirect
/// (`301`, `302`, `303`, `307`, `308` with a `Location`), `Err` with the raw
/// value when the location is not a URL.
fn redirect_target(resp: &reqwest::Response) -> Option<std::result::Result<reqwest::Url, String>> {
    if !matches!(resp.status().as_u16(), 301..=303 | 307 | 308) {
        return None;
    }
    let raw = resp.headers().get(reqwest::header::LOCATION)?;
    let text = String::from_utf8_lossy(raw.as_bytes()).into_owned();
    Some(resp.url().join(&text).map_err(|_| text))
}

struct Prepared {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    /// The headers whose values come from secrets: never sent on a redirect.
    secret_headers: Vec<reqwest::header::HeaderName>,
    body: Option<Vec<u8>>,
    expectations: Vec<FieldExpectation>,
    /// Masks the secret values sent with this request out of every text.
    redactor: Redactor,
}

fn judge(
    r: &Redactor,
    json: &serde_json::Value,
    e: &FieldExpectation,
) -> std::result::Result<String, String> {
    let short = |v: &serde_json::Value| r.mask_and_cut(&v.to_string(), VALUE_SNIPPET);
    let found = check::lookup_path(json, &e.field);
    match (&e.rule, found) {
        (Rule::Exists(true), Some(v)) => Ok(format!("{} = {}", e.field, short(v))),
        (Rule::Exists(true), None) => Err(format!("{} is missing", e.field)),
        (Rule::Exists(false), None) => Ok(format!("{} absent", e.field)),
        (Rule::Exists(false), Some(v)) => {
            Err(format!("{} should be absent, got {}", e.field, short(v)))
        }
        (_, None) => Err(format!("{} is missing (expected {e})", e.field)),
        (Rule::Equals(want), Some(v)) if v == want => Ok(format!("{} = {}", e.field, short(v))),
        (Rule::Equals(want), Some(v)) => {
            Err(format!("{}: expected {want}, got {}", e.field, short(v)))
        }
        (Rule::LessThan(n), Some(v)) => match v.as_f64() {
            Some(x) if x < *n => Ok(format!("{} = {x}", e.field)),
            Some(x) => Err(format!("{}: expected < {n}, got {x}", e.field)),
            None => Err(format!(
                "{}: expected a number < {n}, got {}",
                e.field,
                short(v)
            )),
        },
        (Rule::GreaterThan(n), Some(v)) => match v.as_f64() {
            Some(x) if x > *n => Ok(format!("{} = {x}", e.field)),
            Some(x) => Err(format!("{}: expected > {n}, got {x}", e.field)),
            None => Err(format!(
                "{}: expected a number > {n}, got {}",
                e.field,
                short(v)
            )),
        },
    }
}

/// The start of a response body for a failure: secrets masked, then cut.
fn snippet(r: &Redactor, body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.is_empty() {
        "(empty body)".into()
    } else {
        r.mask_and_cut(s, BODY_SNIPPET)
    }
}

#[async_trait]
impl SmokeTest for HttpSmokeTest {
    fn name(&self) -> &str {
        &self.check.name
    }

    /// Runs the check against `target`, retrying a failed attempt up to
    /// `retries` times with doubling backoff. A failed check is `Ok` with
    /// `passed: false` and the last reason; `Err` is for a check that cannot
    /// run (an unknown template variable, no base URL, a missing secret).
    /// The duration is the latency of the last attempt; secrets are redacted
    /// from every detail.
    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome> {
        let c = &self.check;
        let p = self.prepare(target).await?;
        let attempts = c.retries.saturating_add(1);
        let mut wait = c.backoff;
        let mut last = (Duration::ZERO, String::new());
        for n in 1..=attempts {
            let (took, result) = self.attempt(&p).await;
            match result {
                Ok(detail) => {
                    let detail = if n > 1 {
                        format!("{detail} (attempt {n} of {attempts})")
                    } else {
                        detail
                    };
                    return Ok(SmokeOutcome {
                        passed: true,
                        duration: took,
                        detail: p.redactor.mask(&detail),
                    });
                }
                Err(why) => {
                    let why = p.redactor.mask(&why);
                    tracing::info!(check = %c.name, attempt = n, attempts, reason = %why, "smoke test attempt failed");
                    last = (took, why);
                }
            }
            if n < attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        let (took, why) = last;
        Ok(SmokeOutcome {
            passed: false,
            duration: took,
            detail: if attempts > 1 {
                format!("{why} (after {attempts} attempts)")
            } else {
                why
            },
        })
    }
}
