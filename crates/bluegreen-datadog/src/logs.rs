//! Logs as evidence: the count of a Datadog Logs query over the window,
//! from the logs aggregate API (`POST /api/v2/logs/analytics/aggregate`,
//! `compute: [{aggregation: "count", type: "total"}]`).

use async_trait::async_trait;
use bluegreen_core::{Error, MetricAnswer, MetricQuery, MetricsSource, Result, Sample};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Auth, Call, PROVIDER};
use crate::Datadog;

/// A [`MetricsSource`] answering how many log events match a Datadog Logs
/// search query over the window. Made by [`Datadog::logs`]; shares its
/// keys, site and connection pool.
///
/// # Queries
///
/// `SCOPE | MATCH`, e.g. `service:order-api color:{color} | status:error`:
/// the count is of events matching both; when it is zero, a second count of
/// the scope alone tells silence from health: a scope that logged nothing
/// in the window is [`MetricAnswer::NoData`], never 0. A query without `|`
/// is counted as it stands and zero is a count of 0.
///
/// # Answer
///
/// One sample at the window's end, the count. Pair it with
/// `success = "< 1"` for "application logs show no errors". The window is
/// sent as millisecond timestamps (`filter.from`, `filter.to`).
///
/// # Errors
///
/// An answer whose `meta.status` is not `done` (Datadog stopped at its
/// time limit) is a temporary error: a partial count is no evidence. HTTP
/// errors map as for metric queries (the application key needs
/// `logs_read_data`). Read-only, so safe to repeat.
#[derive(Clone, Debug)]
pub struct DatadogLogs {
    dd: Datadog,
}

impl Datadog {
    /// This client as a logs-count source ([`DatadogLogs`]).
    pub fn logs(&self) -> DatadogLogs {
        DatadogLogs { dd: self.clone() }
    }

    /// The monitors of a tag query as an alerts source
    /// ([`DatadogMonitors`](crate::DatadogMonitors)).
    pub fn monitors(&self) -> crate::DatadogMonitors {
        crate::DatadogMonitors::new(self.clone())
    }
}

/// The request body.
#[derive(Debug, Serialize)]
pub(crate) struct AggregateRequest<'a> {
    pub compute: [Compute; 1],
    pub filter: Filter<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Compute {
    pub aggregation: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct Filter<'a> {
    pub from: String,
    pub to: String,
    pub query: &'a str,
}

/// The parts of the answer that are used.
#[derive(Debug, Deserialize)]
pub(crate) struct AggregateResponse {
    #[serde(default)]
    pub data: Option<AggregateData>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AggregateData {
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Bucket {
    #[serde(default)]
    pub computes: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Meta {
    #[serde(default)]
    pub status: Option<String>,
}

/// The count in an aggregate answer: the sum of `c0` over its buckets (one
/// bucket without `group_by`; none when nothing matched).
pub fn decode_count(body: &[u8]) -> Result<u64> {
    let r: AggregateResponse = serde_json::from_slice(body).map_err(|e| {
        Error::invalid_response(format!("the logs aggregate answer cannot be read: {e}"))
            .with_provider(PROVIDER)
            .with_operation("query")
    })?;
    if let Some(status) = r.meta.and_then(|m| m.status) {
        if status != "done" {
            return Err(Error::unavailable(format!(
                "the logs aggregate answer is {status:?}, not done: a partial count is no evidence"
            ))
            .with_provider(PROVIDER)
            .with_operation("query"));
        }
    }
    let mut n = 0u64;
    for b in r.data.map(|d| d.buckets).unwrap_or_default() {
        match b.computes.get("c0") {
            None => {}
            Some(v) => {
                n += v
                    .as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .ok_or_else(|| {
                        Error::invalid_response(format!(
                            "the logs aggregate count {v} is not a count"
                        ))
                        .with_provider(PROVIDER)
                        .with_operation("query")
                    })? as u64
            }
        }
    }
    Ok(n)
}

impl DatadogLogs {
    async fn count(&self, q: &MetricQuery, query: &str) -> Result<u64> {
        let request = AggregateRequest {
            compute: [Compute {
                aggregation: "count",
                kind: "total",
            }],
            filter: Filter {
                from: q.from.0.to_string(),
                to: q.to.0.to_string(),
                query,
            },
        };
        let json = serde_json::to_vec(&request)
            .map_err(|e| Error::invalid_input(e.to_string()).with_provider(PROVIDER))?;
        let body = self
            .dd
            .inner
            .http
            .send(Call {
                op: "query",
                method: Method::POST,
                path: "/api/v2/logs/analytics/aggregate",
                query: &[],
                json: Some(json),
                auth: Auth::ApiAndApp,
                timeout: self.dd.inner.query_timeout,
            })
            .await
            .map_err(|e| named(q, e))?
            .0;
        decode_count(&body).map_err(|e| named(q, e))
    }
}

/// `error` with the check named first.
pub(crate) fn named(q: &MetricQuery, error: Error) -> Error {
    let e = Error::new(
        error.kind(),
        format!("check {:?}: {}", q.check, error.message()),
    )
    .with_status(error.status())
    .with_provider(PROVIDER)
    .with_operation("query");
    match error.retry_after() {
        Some(wait) => e.with_retry_after(wait),
        None => e,
    }
}

#[async_trait]
impl MetricsSource for DatadogLogs {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        if q.to <= q.from {
            return Err(named(q, Error::invalid_input("the window is empty")));
        }
        let (scope, matched) = match q.query.split_once('|') {
            Some((scope, m)) => (
                Some(scope.trim()),
                format!("({}) ({})", scope.trim(), m.trim()),
            ),
            None => (None, q.query.trim().to_string()),
        };
        if matched.trim().is_empty() || scope.is_some_and(str::is_empty) {
            return Err(named(q, Error::invalid_input(
                "the logs query is empty; expected `SCOPE | MATCH`, e.g. `service:api color:green | status:error`",
            )));
        }
        let n = self.count(q, &matched).await?;
        if n == 0 {
            if let Some(scope) = scope {
                if self.count(q, scope).await? == 0 {
                    return Ok(MetricAnswer::NoData {
                        reason: format!(
                            "check {:?}: no log event matches {scope:?} in the window",
                            q.check
                        ),
                    });
                }
            }
        }
        tracing::debug!(check = %q.check, count = n, "Datadog logs answer");
        Ok(MetricAnswer::Samples {
            samples: vec![Sample {
                at: q.to,
                value: n as f64,
            }],
        })
    }
}
