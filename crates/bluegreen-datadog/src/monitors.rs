//! Alerts as evidence: Datadog monitors with given tags that are in Alert
//! state (`GET /api/v1/monitor?monitor_tags=…`).

use async_trait::async_trait;
use bluegreen_core::{
    Error, MetricAnswer, MetricQuery, MetricsSource, NotedAnswer, Result, Sample,
};
use reqwest::Method;
use serde::Deserialize;

use crate::client::{Auth, Call, PROVIDER};
use crate::logs::named;
use crate::Datadog;

/// Monitors read per page.
pub const PAGE_SIZE: usize = 100;
/// Pages read at most: a tag query matching more than
/// `PAGE_SIZE * MAX_PAGES` monitors is an error (narrow the tags).
pub const MAX_PAGES: usize = 10;

/// A [`MetricsSource`] answering how many Datadog monitors carrying every
/// tag of the query are in `Alert` state. Made by [`Datadog::monitors`].
///
/// # Queries
///
/// Monitor tags, comma separated, e.g. `service:order-api,severity:critical`
/// (sent as `monitor_tags`, which a monitor must all carry).
///
/// # Answer
///
/// One sample at the window's end, the count in `Alert` now, with a note
/// naming them (`in Alert: #123 High error rate on order-api`), which the
/// measurement and a rollback trigger's reason show. Pair it with
/// `success = "< 1"` for "no critical alerts fired". `Warn` and `No Data`
/// monitors are not counted; they are named in the note.
///
/// # No data
///
/// A tag query that matches no monitor is [`MetricAnswer::NoData`] naming
/// the check and the tags, never a pass. Read-only, so safe to repeat.
#[derive(Clone, Debug)]
pub struct DatadogMonitors {
    dd: Datadog,
}

impl DatadogMonitors {
    pub(crate) fn new(dd: Datadog) -> Self {
        DatadogMonitors { dd }
    }
}

/// The parts of a monitor that are used.
#[derive(Debug, Deserialize)]
pub struct Monitor {
    /// Its id.
    pub id: u64,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// `Alert`, `Warn`, `No Data`, `OK`, …
    #[serde(default)]
    pub overall_state: Option<String>,
}

/// Reads a `GET /api/v1/monitor` answer.
pub fn decode_monitors(body: &[u8]) -> Result<Vec<Monitor>> {
    serde_json::from_slice(body).map_err(|e| {
        Error::invalid_response(format!("the monitors answer cannot be read: {e}"))
            .with_provider(PROVIDER)
            .with_operation("query")
    })
}

/// The answer for `monitors` read for the tags `tags`.
pub fn verdict(q: &MetricQuery, tags: &str, monitors: &[Monitor]) -> NotedAnswer {
    if monitors.is_empty() {
        return MetricAnswer::NoData {
            reason: format!(
                "check {:?}: no Datadog monitor carries the tags {tags}",
                q.check
            ),
        }
        .into();
    }
    let named = |state: &str| -> Vec<String> {
        monitors
            .iter()
            .filter(|m| m.overall_state.as_deref() == Some(state))
            .map(|m| format!("#{} {}", m.id, m.name))
            .collect()
    };
    let alert = named("Alert");
    let mut note = Vec::new();
    for (label, list) in [
        ("in Alert", &alert),
        ("Warn", &named("Warn")),
        ("No Data", &named("No Data")),
    ] {
        if !list.is_empty() {
            note.push(format!("{label}: {}", list.join(", ")));
        }
    }
    NotedAnswer {
        answer: MetricAnswer::Samples {
            samples: vec![Sample {
                at: q.to,
                value: alert.len() as f64,
            }],
        },
        note: (!note.is_empty()).then(|| note.join("; ")),
    }
}

#[async_trait]
impl MetricsSource for DatadogMonitors {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        Ok(self.query_noted(q).await?.answer)
    }

    async fn query_noted(&self, q: &MetricQuery) -> Result<NotedAnswer> {
        let tags: Vec<&str> = q
            .query
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if tags.is_empty() {
            return Err(named(q, Error::invalid_input(
                "the monitors query is empty; expected monitor tags, e.g. `service:order-api,severity:critical`",
            )));
        }
        let tags = tags.join(",");
        let mut all = Vec::new();
        for page in 0..MAX_PAGES {
            let params = [
                ("monitor_tags", tags.clone()),
                ("page", page.to_string()),
                ("page_size", PAGE_SIZE.to_string()),
            ];
            let body = self
                .dd
                .inner
                .http
                .send(Call {
                    op: "query",
                    method: Method::GET,
                    path: "/api/v1/monitor",
                    query: &params,
                    json: None,
                    auth: Auth::ApiAndApp,
                    timeout: self.dd.inner.query_timeout,
                })
                .await
                .map_err(|e| named(q, e))?
                .0;
            let got = decode_monitors(&body).map_err(|e| named(q, e))?;
            let last = got.len() < PAGE_SIZE;
            all.extend(got);
            if last {
                return Ok(verdict(q, &tags, &all));
            }
        }
        Err(named(
            q,
            Error::invalid_input(format!(
                "more than {} monitors carry the tags {tags}: narrow them",
                PAGE_SIZE * MAX_PAGES
            )),
        ))
    }
}
