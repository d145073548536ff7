//! Alarms as evidence: named CloudWatch alarms in ALARM state.

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use aws_types::SdkConfig;
use bluegreen_core::{
    Error, MetricAnswer, MetricQuery, MetricsSource, NotedAnswer, Result, Sample,
};

use crate::query::Words;
use crate::{with_check, PROVIDER};

/// DescribeAlarms pages read at most (100 alarms a page).
pub const MAX_PAGES: usize = 10;

/// A [`MetricsSource`] answering how many of the named CloudWatch alarms
/// (metric and composite) are in ALARM state, read with `DescribeAlarms`.
///
/// # Queries
///
/// `alarms names="order-api-5xx,order-api-latency"` (exact names, comma
/// separated, at most 100) or `alarms prefix=order-api-{color}-` (every
/// alarm whose name starts so).
///
/// # Answer
///
/// One sample at the window's end whose value is the count in ALARM state
/// now, with a note naming them (`in ALARM: order-api-5xx`), which the
/// measurement and a rollback trigger's reason show. Pair it with
/// `success = "< 1"` (and a trigger `breach = ">= 1"`) for "no critical
/// alerts fired". An alarm that went to ALARM and back to OK between two
/// readings is not seen; the check's interval bounds that gap.
///
/// # Errors and no data
///
/// A query that matches no alarm, or names one that does not exist, is
/// [`MetricAnswer::NoData`] naming the check and the missing names, never a
/// pass. Alarms in INSUFFICIENT_DATA are not counted but are named in the
/// note. Read-only, so safe to repeat.
#[derive(Debug, Clone)]
pub struct CloudWatchAlarms {
    cloudwatch: aws_sdk_cloudwatch::Client,
}

impl CloudWatchAlarms {
    /// A source on the account and region of `config`.
    pub fn new(config: &SdkConfig) -> Self {
        CloudWatchAlarms {
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
        }
    }
}

enum Select {
    Names(Vec<String>),
    Prefix(String),
}

fn select(check: &str, text: &str) -> Result<Select> {
    let w = Words::parse(check, text)?;
    if w.kind != "alarms" {
        return Err(with_check(check, Error::invalid_input(format!(
            "`{}` is not a CloudWatch alarms query; expected `alarms names=\"A,B\"` or `alarms prefix=P`",
            w.kind
        ))));
    }
    w.only(check, &["names", "prefix"])?;
    match (w.get("names"), w.get("prefix")) {
        (Some(n), None) => {
            let names: Vec<String> = n
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() || names.len() > 100 {
                return Err(with_check(
                    check,
                    Error::invalid_input(format!(
                        "names: between 1 and 100 alarm names, comma separated (got {})",
                        names.len()
                    )),
                ));
            }
            Ok(Select::Names(names))
        }
        (None, Some(p)) if !p.is_empty() => Ok(Select::Prefix(p.to_string())),
        _ => Err(with_check(
            check,
            Error::invalid_input("an alarms query takes exactly one of names=\"A,B\" or prefix=P"),
        )),
    }
}

/// Alarm names and states read, in name order.
fn verdict(
    check: &str,
    asked: &Select,
    seen: &[(String, StateValue)],
    at: bluegreen_core::Timestamp,
) -> NotedAnswer {
    let missing: Vec<&str> = match asked {
        Select::Names(names) => names
            .iter()
            .filter(|n| !seen.iter().any(|(s, _)| s == *n))
            .map(String::as_str)
            .collect(),
        Select::Prefix(_) => Vec::new(),
    };
    if seen.is_empty() || !missing.is_empty() {
        let what = match asked {
            Select::Names(_) => format!("no alarm named {}", missing.join(", ")),
            Select::Prefix(p) => format!("no alarm whose name starts with {p:?}"),
        };
        return MetricAnswer::NoData {
            reason: format!("check {check:?}: CloudWatch has {what}"),
        }
        .into();
    }
    let firing: Vec<&str> = seen
        .iter()
        .filter(|(_, s)| *s == StateValue::Alarm)
        .map(|(n, _)| n.as_str())
        .collect();
    let unknown: Vec<&str> = seen
        .iter()
        .filter(|(_, s)| *s == StateValue::InsufficientData)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut note = Vec::new();
    if !firing.is_empty() {
        note.push(format!("in ALARM: {}", firing.join(", ")));
    }
    if !unknown.is_empty() {
        note.push(format!("INSUFFICIENT_DATA: {}", unknown.join(", ")));
    }
    NotedAnswer {
        answer: MetricAnswer::Samples {
            samples: vec![Sample {
                at,
                value: firing.len() as f64,
            }],
        },
        note: (!note.is_empty()).then(|| note.join("; ")),
    }
}

#[async_trait]
impl MetricsSource for CloudWatchAlarms {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        Ok(self.query_noted(q).await?.answer)
    }

    async fn query_noted(&self, q: &MetricQuery) -> Result<NotedAnswer> {
        let asked = select(&q.check, &q.query)?;
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(with_check(
                    &q.check,
                    Error::unavailable(format!(
                        "DescribeAlarms had more than {MAX_PAGES} pages: narrow the prefix"
                    )),
                ));
            }
            let mut call = self
                .cloudwatch
                .describe_alarms()
                .alarm_types(AlarmType::MetricAlarm)
                .alarm_types(AlarmType::CompositeAlarm)
                .set_next_token(token.take());
            call = match &asked {
                Select::Names(n) => call.set_alarm_names(Some(n.clone())),
                Select::Prefix(p) => call.alarm_name_prefix(p),
            };
            let out = call.send().await.map_err(|e| {
                with_check(
                    &q.check,
                    bluegreen_aws::sdk_error(
                        PROVIDER,
                        e,
                        "query",
                        "cloudwatch:DescribeAlarms",
                        &q.query,
                    ),
                )
            })?;
            for a in out.metric_alarms() {
                if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                    seen.push((n.to_string(), s.clone()));
                }
            }
            for a in out.composite_alarms() {
                if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                    seen.push((n.to_string(), s.clone()));
                }
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        seen.dedup_by(|a, b| a.0 == b.0);
        Ok(verdict(&q.check, &asked, &seen, q.to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_core::Timestamp;

    #[test]
    fn the_note_names_the_alarms_in_alarm_and_a_missing_name_is_no_data() {
        let asked = select("alerts", "alarms names=\"a-5xx, a-latency\"").unwrap();
        let seen = vec![
            ("a-5xx".to_string(), StateValue::Alarm),
            ("a-latency".to_string(), StateValue::Ok),
        ];
        let n = verdict("alerts", &asked, &seen, Timestamp(5));
        assert_eq!(n.note.as_deref(), Some("in ALARM: a-5xx"));
        assert_eq!(
            n.answer,
            MetricAnswer::Samples {
                samples: vec![Sample {
                    at: Timestamp(5),
                    value: 1.0
                }]
            }
        );
        let n = verdict("alerts", &asked, &seen[..1], Timestamp(5));
        match n.answer {
            MetricAnswer::NoData { reason } => {
                assert!(reason.contains("\"alerts\""), "{reason}");
                assert!(reason.contains("no alarm named a-latency"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let e = select("alerts", "alarms").err().unwrap();
        assert!(e.message().contains("exactly one of names"), "{e}");
    }
}
