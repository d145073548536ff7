#![doc = include_str!("../README.md")]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::http::{self, Redirects};
use bluegreen_core::{
    Error, ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Result, Sample, Timestamp,
};
use serde::Deserialize;

const PROVIDER: &str = "prometheus";

/// The step of range queries, unless set.
pub const DEFAULT_STEP: Duration = Duration::from_secs(15);
/// How long a query may take, unless set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which Prometheus endpoint answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryMode {
    /// A range query over the window (`/api/v1/query_range`), or an instant
    /// query at its end when the window is empty. The default.
    #[default]
    Auto,
    /// Always an instant query at the window's end (`/api/v1/query`): one
    /// sample per series. Write the window into the query, e.g. `[5m]`.
    Instant,
    /// Always a range query over the window (`/api/v1/query_range`).
    Range,
}

/// Prometheus as a [`MetricsSource`]. Every call is read-only and safe to repeat.
///
/// * Sample values are strings in Prometheus' answers; `NaN`, `+Inf` and
///   `-Inf` are read as such (the engine leaves NaN out of its evidence).
/// * A result without series, or whose series have no samples, is
///   [`MetricAnswer::NoData`], never zero.
/// * Samples of several series are all kept, sorted by time.
/// * HTTP 400 (`bad_data`) and 422 (`execution`) are permanent
///   [`ErrorKind::InvalidInput`] errors carrying Prometheus' error text;
///   503 (the query timed out or was aborted) and other 5xx are temporary
///   [`ErrorKind::Unavailable`]; an unreachable server is temporary; a TLS
///   failure is permanent.
#[derive(Clone)]
pub struct Prometheus {
    client: reqwest::Client,
    base_url: String,
    mode: QueryMode,
    step: Duration,
    timeout: Duration,
}

impl fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prometheus")
            .field("base_url", &self.base_url)
            .field("mode", &self.mode)
            .field("step", &self.step)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
        .with_provider(PROVIDER)
        .with_operation("query")
}

impl Prometheus {
    /// Prometheus at `base_url`, e.g. `http://127.0.0.1:9090`, with the
    /// default mode, step and timeout.
    pub fn new(base_url: impl Into<String>) -> Result<Self> {
        let base_url = base_url.into().trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || base_url.len() < 9
        {
            return Err(Error::invalid_input(format!(
                "base_url: {base_url:?} is not an http:// or https:// URL"
            ))
            .with_provider(PROVIDER)
            .with_operation("configure"));
        }
        // Prometheus is sent no secret, so a redirect (a proxy in front of
        // it) is followed.
        let client = http::client(
            PROVIDER,
            concat!("bluegreen-prometheus/", env!("CARGO_PKG_VERSION")),
            Redirects::Follow,
        )?;
        Ok(Prometheus {
            client,
            base_url,
            mode: QueryMode::Auto,
            step: DEFAULT_STEP,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets which endpoint answers.
    #[must_use]
    pub fn mode(mut self, mode: QueryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the step of range queries (at least one millisecond).
    #[must_use]
    pub fn step(mut self, step: Duration) -> Self {
        self.step = step.max(Duration::from_millis(1));
        self
    }

    /// Sets the time limit of one query (also sent as Prometheus' `timeout`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        http::transport_error(e, http::host_of(&self.base_url))
            .with_provider(PROVIDER)
            .with_operation("query")
    }
}

fn secs(t: Timestamp) -> String {
    format!("{}.{:03}", t.0 / 1000, t.0 % 1000)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Series {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(f64, String)>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// Reads a Prometheus sample value: a decimal, `NaN`, `+Inf`, `Inf` or `-Inf`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    }
}

fn sample(at: f64, value: &str, label: &str) -> Result<Sample> {
    let v = parse_value(value).ok_or_else(|| {
        error(
            ErrorKind::InvalidResponse,
            format!("{label}: sample value {value:?} is not a number"),
        )
    })?;
    if !at.is_finite() || at < 0.0 {
        return Err(error(
            ErrorKind::InvalidResponse,
            format!("{label}: sample time {at} is not a time"),
        ));
    }
    Ok(Sample {
        at: Timestamp((at * 1000.0).round() as u64),
        value: v,
    })
}

fn label(metric: &std::collections::BTreeMap<String, String>) -> String {
    let name = metric.get("__name__").cloned().unwrap_or_default();
    let labels: Vec<String> = metric
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn answer(data: Data, check: &str) -> Result<MetricAnswer> {
    let bad = |m: String| error(ErrorKind::InvalidResponse, format!("check {check}: {m}"));
    let mut samples = Vec::new();
    let series_count;
    match data.result_type.as_str() {
        "vector" | "matrix" => {
            let series: Vec<Series> = serde_json::from_value(data.result).map_err(|e| {
                bad(format!(
                    "a {} result that does not parse: {e}",
                    data.result_type
                ))
            })?;
            series_count = series.len();
            for s in &series {
                let l = label(&s.metric);
                if let Some((at, v)) = &s.value {
                    samples.push(sample(*at, v, &l)?);
                }
                for (at, v) in &s.values {
                    samples.push(sample(*at, v, &l)?);
                }
            }
        }
        "scalar" => {
            let (at, v): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| bad(format!("a scalar result that does not parse: {e}")))?;
            series_count = 1;
            samples.push(sample(at, &v, "scalar")?);
        }
        "string" => {
            return Err(error(
                ErrorKind::InvalidInput,
                format!("check {check}: the query returns a string, not a number"),
            ))
        }
        other => return Err(bad(format!("unknown result type {other:?}"))),
    }
    if samples.is_empty() {
        return Ok(MetricAnswer::NoData {
            reason: if series_count == 0 {
                "Prometheus returned no series for this query and window".into()
            } else {
                format!("{series_count} series, but no samples in the window")
            },
        });
    }
    samples.sort_by_key(|s| s.at);
    Ok(MetricAnswer::Samples { samples })
}

#[async_trait]
impl MetricsSource for Prometheus {
    /// Evaluates `query` over its window; read-only and safe to repeat.
    async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer> {
        if query.query.trim().is_empty() {
            return Err(error(
                ErrorKind::InvalidInput,
                format!("check {}: the query is empty", query.check),
            ));
        }
        if query.to < query.from {
            return Err(error(
                ErrorKind::InvalidInput,
                format!(
                    "check {}: the window ends ({}) before it starts ({})",
                    query.check, query.to, query.from
                ),
            ));
        }
        let instant = match self.mode {
            QueryMode::Instant => true,
            QueryMode::Range => false,
            QueryMode::Auto => query.to == query.from,
        };
        let timeout = format!("{}ms", self.timeout.as_millis().max(1));
        let (path, params) = if instant {
            (
                "/api/v1/query",
                vec![
                    ("query", query.query.clone()),
                    ("time", secs(query.to)),
                    ("timeout", timeout),
                ],
            )
        } else {
            (
                "/api/v1/query_range",
                vec![
                    ("query", query.query.clone()),
                    ("start", secs(query.from)),
                    ("end", secs(query.to)),
                    ("step", format!("{}ms", self.step.as_millis())),
                    ("timeout", timeout),
                ],
            )
        };
        let resp = self
            .client
            .get(format!("{}{path}", self.base_url))
            .query(&params)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        // A proxy in front of Prometheus may throttle (429) or ask for a
        // pause (503) with Retry-After: the hint goes to the retry policy.
        let hint = http::retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        let parsed: std::result::Result<ApiResponse, _> = serde_json::from_slice(&body);
        let api_error = |p: &ApiResponse| {
            format!(
                "{} ({})",
                p.error.as_deref().unwrap_or("no error text"),
                p.error_type.as_deref().unwrap_or("no error type")
            )
        };
        let snippet = || {
            let s = String::from_utf8_lossy(&body);
            s.trim().chars().take(300).collect::<String>()
        };
        let check = &query.check;
        let detail = match &parsed {
            Ok(p) if p.status != "success" => api_error(p),
            Ok(_) => String::new(),
            Err(_) => snippet(),
        };
        if !(200..=299).contains(&status) {
            let kind = http::status_kind(status);
            let message = match status {
                400 => format!("Prometheus rejected the query of check {check} (HTTP 400): {detail}"),
                422 => format!(
                    "Prometheus could not execute the query of check {check} (HTTP 422): {detail}"
                ),
                503 => format!(
                    "Prometheus timed out or aborted the query of check {check} (HTTP 503): {detail}"
                ),
                401 | 403 => format!("Prometheus refused the request (HTTP {status}): {detail}"),
                404 => format!(
                    "HTTP 404 from {}{path} (is the base URL right?): {detail}",
                    self.base_url
                ),
                500..=599 => format!("Prometheus is unavailable (HTTP {status}): {detail}"),
                _ => format!("Prometheus answered HTTP {status}: {detail}"),
            };
            let e = error(kind, message);
            return Err(match hint {
                Some(wait) => e.with_retry_after(wait),
                None => e,
            });
        }
        let parsed = parsed.map_err(|e| {
            error(
                ErrorKind::InvalidResponse,
                format!("{path} answered malformed JSON: {e}"),
            )
        })?;
        if parsed.status != "success" {
            return Err(error(
                ErrorKind::InvalidInput,
                format!(
                    "Prometheus rejected the query of check {check}: {}",
                    api_error(&parsed)
                ),
            ));
        }
        for w in &parsed.warnings {
            tracing::warn!(check = %check, warning = %w, "Prometheus warned about a query");
        }
        let data = parsed.data.ok_or_else(|| {
            error(
                ErrorKind::InvalidResponse,
                format!("{path} answered success without data"),
            )
        })?;
        answer(data, check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values_are_read() {
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_value("0.40625"), Some(0.40625));
        assert_eq!(parse_value("1e-3"), Some(0.001));
        assert_eq!(parse_value("fast"), None);
    }

    #[test]
    fn an_empty_result_is_no_data() {
        let data = Data {
            result_type: "matrix".into(),
            result: serde_json::json!([]),
        };
        assert!(matches!(
            answer(data, "c").unwrap(),
            MetricAnswer::NoData { .. }
        ));
    }

    #[test]
    fn a_scalar_is_one_sample() {
        let data = Data {
            result_type: "scalar".into(),
            result: serde_json::json!([1700000000.5, "NaN"]),
        };
        match answer(data, "c").unwrap() {
            MetricAnswer::Samples { samples } => {
                assert_eq!(samples.len(), 1);
                assert_eq!(samples[0].at, Timestamp(1_700_000_000_500));
                assert!(samples[0].value.is_nan());
            }
            other => panic!("{other:?}"),
        }
    }
}
