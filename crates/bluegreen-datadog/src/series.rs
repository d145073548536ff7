//! Datadog's response shapes, and how they become samples.
//!
//! # Which points are used
//!
//! * **Nulls are dropped.** Datadog answers `null` for a rollup bucket without data.
//! * **Incomplete rollup points are left out.** A point at time `t` of a series
//!   whose rollup interval is `i` aggregates the bucket `[t, t + i)`. The point
//!   is complete only when its bucket has ended by the cutoff:
//!   `t + i <= to - settle`, where `to` is the end of the query's window and
//!   `settle` is [`DatadogBuilder::settle`](crate::DatadogBuilder::settle)
//!   (zero by default; raise it when ingestion lags behind). A point whose
//!   bucket ends after the cutoff is still being filled (a rate over a few
//!   seconds of a minute, a sum of a partial bucket) and is left out; in
//!   practice that is the last point. The interval is the series' `interval`
//!   (v1), the request's `interval` (v2, when set), or else the smallest gap
//!   between consecutive points; a lone point whose interval cannot be known
//!   is kept.
//! * **No series at all is [`MetricAnswer::NoData`]**, never zero; so is a
//!   response whose every point was null or incomplete.
//! * Samples of several series (a query grouped `by {host}`) are all kept,
//!   sorted by time, so the check's aggregation sees every one.

use std::time::Duration;

use bluegreen_core::{Error, MetricAnswer, MetricQuery, Result, Sample, Timestamp};
use serde::{Deserialize, Serialize};

/// `GET /api/v1/query`: the parts of the response that are used.
#[derive(Debug, Deserialize)]
pub(crate) struct V1Response {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub series: Option<Vec<V1Series>>,
}

/// One series of a v1 answer.
#[derive(Debug, Deserialize)]
pub(crate) struct V1Series {
    #[serde(default)]
    pub pointlist: Vec<Vec<Option<f64>>>,
    /// Seconds between points.
    #[serde(default)]
    pub interval: Option<f64>,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub expression: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// `POST /api/v2/query/timeseries`: the request body.
#[derive(Debug, Serialize)]
pub(crate) struct V2Request<'a> {
    pub data: V2RequestData<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct V2RequestData<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub attributes: V2RequestAttributes<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct V2RequestAttributes<'a> {
    pub from: u64,
    pub to: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    pub queries: Vec<V2Query<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub formulas: Vec<V2Formula<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct V2Query<'a> {
    pub data_source: &'static str,
    pub name: &'a str,
    pub query: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct V2Formula<'a> {
    pub formula: &'a str,
}

/// `POST /api/v2/query/timeseries`: the parts of the response that are used.
#[derive(Debug, Deserialize)]
pub(crate) struct V2Response {
    #[serde(default)]
    pub data: Option<V2Data>,
    #[serde(default)]
    pub errors: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V2Data {
    #[serde(default)]
    pub attributes: Option<V2Attributes>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V2Attributes {
    #[serde(default)]
    pub series: Vec<V2Series>,
    #[serde(default)]
    pub times: Vec<i64>,
    #[serde(default)]
    pub values: Vec<Vec<Option<f64>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V2Series {
    #[serde(default)]
    pub group_tags: Option<Vec<String>>,
    #[serde(default)]
    pub query_index: Option<i64>,
}

/// One series, in a shape common to v1 and v2.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Points {
    /// How the series is named in messages.
    pub label: String,
    /// The rollup interval, when the response says.
    pub interval_ms: Option<u64>,
    /// (milliseconds since the epoch, value or null), in time order.
    pub points: Vec<(u64, Option<f64>)>,
}

impl V1Response {
    /// The series, checked: each point must be `[time, value|null]`.
    pub(crate) fn into_points(self) -> Result<Vec<Points>, String> {
        let mut out = Vec::new();
        for (i, s) in self.series.unwrap_or_default().into_iter().enumerate() {
            let label = s
                .expression
                .clone()
                .or_else(|| s.scope.clone())
                .unwrap_or_else(|| format!("series {i}"));
            let mut points = Vec::with_capacity(s.pointlist.len());
            for (j, p) in s.pointlist.iter().enumerate() {
                match p.as_slice() {
                    [Some(t), v] if t.is_finite() && *t >= 0.0 => points.push((*t as u64, *v)),
                    _ => {
                        return Err(format!(
                            "series {i} ({label}): point {j} is not a [time, value] pair: {p:?}"
                        ))
                    }
                }
            }
            if let Some(n) = s.length {
                if n != points.len() as u64 {
                    return Err(format!(
                        "series {i} ({label}): says length {n} but has {} points",
                        points.len()
                    ));
                }
            }
            let interval_ms = s
                .interval
                .filter(|i| i.is_finite() && *i > 0.0)
                .map(|i| (i * 1000.0) as u64);
            out.push(Points {
                label,
                interval_ms,
                points,
            });
        }
        Ok(out)
    }
}

impl V2Attributes {
    /// The series, checked: one value array per series, one value per time.
    pub(crate) fn into_points(self, interval_ms: Option<u64>) -> Result<Vec<Points>, String> {
        if self.values.len() != self.series.len() {
            return Err(format!(
                "{} series but {} value arrays",
                self.series.len(),
                self.values.len()
            ));
        }
        let mut times = Vec::with_capacity(self.times.len());
        for (j, t) in self.times.iter().enumerate() {
            if *t < 0 {
                return Err(format!("time {j} is negative: {t}"));
            }
            times.push(*t as u64);
        }
        let mut out = Vec::new();
        for (i, (s, values)) in self.series.into_iter().zip(self.values).enumerate() {
            let label = match (&s.query_index, &s.group_tags) {
                (Some(q), Some(tags)) if !tags.is_empty() => {
                    format!("query {q} {}", tags.join(","))
                }
                (Some(q), _) => format!("query {q}"),
                _ => format!("series {i}"),
            };
            if values.len() != times.len() {
                return Err(format!(
                    "series {i} ({label}) has {} values for {} times",
                    values.len(),
                    times.len()
                ));
            }
            out.push(Points {
                label,
                interval_ms,
                points: times.iter().copied().zip(values).collect(),
            });
        }
        Ok(out)
    }
}

fn invalid(message: String) -> Error {
    Error::invalid_response(message)
        .with_provider(crate::client::PROVIDER)
        .with_operation("query")
}

fn rejected(check: &str, text: &str) -> Error {
    Error::invalid_input(format!(
        "Datadog rejected the query of check {check}: {text}"
    ))
    .with_provider(crate::client::PROVIDER)
    .with_operation("query")
}

/// Decodes a `GET /api/v1/query` response body into the answer to `query`,
/// applying the rules above. The client uses it for every v1 answer; it also
/// replays recorded answers (in tests, or simulations under paused time,
/// where no network call can be made).
///
/// Errors: malformed JSON or an impossible series is
/// [`ErrorKind::InvalidResponse`](bluegreen_core::ErrorKind::InvalidResponse);
/// `status: "error"` is [`ErrorKind::InvalidInput`](bluegreen_core::ErrorKind::InvalidInput)
/// with Datadog's error text.
pub fn decode_v1(body: &[u8], query: &MetricQuery, settle: Duration) -> Result<MetricAnswer> {
    let resp: V1Response = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("GET /api/v1/query answered malformed JSON: {e}")))?;
    if resp.status.as_deref() == Some("error")
        || resp.error.as_deref().is_some_and(|e| !e.is_empty())
    {
        return Err(rejected(
            &query.check,
            resp.error.as_deref().unwrap_or("status error"),
        ));
    }
    let points = resp.into_points().map_err(|m| {
        invalid(format!(
            "GET /api/v1/query answered an impossible series: {m}"
        ))
    })?;
    Ok(logged(query, answer(&points, query.to, settle)))
}

/// Decodes a `POST /api/v2/query/timeseries` response body into the answer
/// to `query`, as [`decode_v1`] does; `interval_ms` is the rollup interval
/// the request asked for, if any.
pub fn decode_v2(
    body: &[u8],
    query: &MetricQuery,
    interval_ms: Option<u64>,
    settle: Duration,
) -> Result<MetricAnswer> {
    let resp: V2Response = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "POST /api/v2/query/timeseries answered malformed JSON: {e}"
        ))
    })?;
    let errors = match &resp.errors {
        Some(serde_json::Value::String(e)) => Some(e.clone()),
        Some(serde_json::Value::Array(a)) => Some(
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
    .filter(|e| !e.trim().is_empty());
    let attributes = resp.data.and_then(|d| d.attributes);
    let has_series = attributes.as_ref().is_some_and(|a| !a.series.is_empty());
    if let Some(e) = &errors {
        if !has_series {
            return Err(rejected(&query.check, e));
        }
        tracing::warn!(check = %query.check, error = %e, "Datadog answered with an error beside its series");
    }
    let points = match attributes {
        Some(a) => a.into_points(interval_ms).map_err(|m| {
            invalid(format!(
                "POST /api/v2/query/timeseries answered an impossible series: {m}"
            ))
        })?,
        None => Vec::new(),
    };
    Ok(logged(query, answer(&points, query.to, settle)))
}

fn logged(query: &MetricQuery, (answer, dropped): (MetricAnswer, Dropped)) -> MetricAnswer {
    tracing::debug!(
        check = %query.check,
        null = dropped.null,
        incomplete = dropped.incomplete,
        "Datadog points left out"
    );
    answer
}

/// What was left out of an answer, for logs and the `NoData` reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub null: usize,
    pub incomplete: usize,
}

/// Turns series into an answer, applying the rules of the module docs.
pub(crate) fn answer(
    series: &[Points],
    to: Timestamp,
    settle: Duration,
) -> (MetricAnswer, Dropped) {
    let mut dropped = Dropped::default();
    if series.is_empty() {
        return (
            MetricAnswer::NoData {
                reason: "Datadog returned no series for this query and window".into(),
            },
            dropped,
        );
    }
    let cutoff = to.0.saturating_sub(settle.as_millis() as u64);
    let mut samples = Vec::new();
    for s in series {
        let interval = s.interval_ms.or_else(|| {
            s.points
                .windows(2)
                .map(|w| w[1].0.saturating_sub(w[0].0))
                .filter(|d| *d > 0)
                .min()
        });
        for (at, value) in &s.points {
            let Some(value) = value else {
                dropped.null += 1;
                continue;
            };
            if interval.is_some_and(|i| at.saturating_add(i) > cutoff) {
                dropped.incomplete += 1;
                continue;
            }
            samples.push(Sample {
                at: Timestamp(*at),
                value: *value,
            });
        }
    }
    if samples.is_empty() {
        return (
            MetricAnswer::NoData {
                reason: format!(
                    "{} series, but no complete point with a value ({} null, {} incomplete)",
                    series.len(),
                    dropped.null,
                    dropped.incomplete
                ),
            },
            dropped,
        );
    }
    samples.sort_by_key(|s| s.at);
    (MetricAnswer::Samples { samples }, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(interval_ms: Option<u64>, points: &[(u64, Option<f64>)]) -> Points {
        Points {
            label: "s".into(),
            interval_ms,
            points: points.to_vec(),
        }
    }

    fn values(a: &MetricAnswer) -> Vec<f64> {
        match a {
            MetricAnswer::Samples { samples } => samples.iter().map(|s| s.value).collect(),
            MetricAnswer::NoData { .. } => vec![],
        }
    }

    #[test]
    fn a_point_whose_bucket_ends_after_the_window_is_left_out() {
        // Buckets of 60 s: [0,60), [60,120), [120,180); the window ends at 150 s.
        let s = series(
            Some(60_000),
            &[(0, Some(0.01)), (60_000, Some(0.02)), (120_000, Some(0.9))],
        );
        let (a, d) = answer(std::slice::from_ref(&s), Timestamp(150_000), Duration::ZERO);
        assert_eq!(values(&a), vec![0.01, 0.02]);
        assert_eq!(d.incomplete, 1);
        // The bucket ending exactly at the window's end is complete.
        let (a, _) = answer(std::slice::from_ref(&s), Timestamp(180_000), Duration::ZERO);
        assert_eq!(values(&a), vec![0.01, 0.02, 0.9]);
        // A settle delay moves the cutoff back.
        let (a, _) = answer(&[s], Timestamp(180_000), Duration::from_secs(30));
        assert_eq!(values(&a), vec![0.01, 0.02]);
    }

    #[test]
    fn the_interval_is_inferred_from_the_spacing_when_not_given() {
        let s = series(
            None,
            &[(0, Some(1.0)), (10_000, Some(2.0)), (20_000, Some(3.0))],
        );
        let (a, _) = answer(&[s], Timestamp(25_000), Duration::ZERO);
        assert_eq!(values(&a), vec![1.0, 2.0]);
    }

    #[test]
    fn nulls_are_dropped_and_all_null_is_no_data() {
        let s = series(Some(1000), &[(0, None), (1000, Some(2.0)), (2000, None)]);
        let (a, d) = answer(&[s], Timestamp(10_000), Duration::ZERO);
        assert_eq!(values(&a), vec![2.0]);
        assert_eq!(d.null, 2);
        let s = series(Some(1000), &[(0, None), (1000, None)]);
        let (a, _) = answer(&[s], Timestamp(10_000), Duration::ZERO);
        match a {
            MetricAnswer::NoData { reason } => assert!(reason.contains("2 null"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_series_is_no_data() {
        let (a, _) = answer(&[], Timestamp(10_000), Duration::ZERO);
        assert!(matches!(a, MetricAnswer::NoData { .. }));
    }
}
