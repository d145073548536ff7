//! Logs as evidence: the count of a filter pattern in CloudWatch Logs.

use async_trait::async_trait;
use aws_types::SdkConfig;
use bluegreen_core::{
    Error, MetricAnswer, MetricQuery, MetricsSource, NotedAnswer, Result, Sample,
};

use crate::query::Words;
use crate::{with_check, PROVIDER};

/// FilterLogEvents pages read at most. A count still going after this many
/// pages is reported as "at least" the count so far (a lower bound, which
/// still fails a "no errors" condition).
pub const MAX_PAGES: usize = 20;

/// A [`MetricsSource`] answering how many log events of the new color's
/// log streams match a filter pattern over the window, read with
/// `FilterLogEvents` (paginated, at most [`MAX_PAGES`] pages), in the
/// streams `DescribeLogStreams` lists for the prefix.
///
/// # Queries
///
/// `logs group=/ecs/order-api stream_prefix=order-api-{color}/ pattern=ERROR`:
/// `group` is the log group, `stream_prefix` (optional) the new color's log
/// streams, `pattern` a CloudWatch Logs
/// [filter pattern](https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/FilterAndPatternSyntax.html)
/// (quote it when it holds spaces: `pattern="?ERROR ?FATAL"`).
///
/// # Answer
///
/// One sample at the window's end whose value is the number of matching
/// events with timestamps in `[from, to)`. Pair it with `success = "< 1"` for
/// "application logs show no errors". When nothing matched, one more call
/// (limit 1, no pattern) asks whether the streams logged anything at all in
/// the window: streams that logged nothing are [`MetricAnswer::NoData`]
/// (silence is no evidence of health), never a count of 0.
///
/// # Errors
///
/// A log group that does not exist is a `NotFound` error naming the check
/// and the group; the deployment treats it per its inconclusive policy.
/// Read-only, so safe to repeat.
#[derive(Debug, Clone)]
pub struct CloudWatchLogs {
    logs: aws_sdk_cloudwatchlogs::Client,
}

impl CloudWatchLogs {
    /// A source on the account and region of `config`.
    pub fn new(config: &SdkConfig) -> Self {
        CloudWatchLogs {
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
        }
    }

    /// Events matching `pattern` (`None`: any) in the window, and whether
    /// the count stopped at the page bound.
    /// The names of the streams of `group` starting with `prefix`
    /// (`DescribeLogStreams`, at most [`MAX_PAGES`] pages of 50).
    async fn streams(&self, q: &MetricQuery, group: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .logs
                .describe_log_streams()
                .log_group_name(group)
                .log_stream_name_prefix(prefix)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    with_check(
                        &q.check,
                        bluegreen_aws::sdk_error(
                            PROVIDER,
                            e,
                            "query",
                            "logs:DescribeLogStreams",
                            &format!("log group {group}"),
                        ),
                    )
                })?;
            names.extend(
                out.log_streams()
                    .iter()
                    .filter_map(|s| s.log_stream_name().map(String::from)),
            );
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
        Err(with_check(&q.check, Error::invalid_input(format!(
            "more than {} log streams of {group} start with {prefix:?}: make stream_prefix narrower",
            MAX_PAGES * 50
        ))))
    }

    /// Events matching `pattern` (`None`: any) in the window, in the
    /// streams `names` (100 at a time, as the API takes them; `None`: the
    /// whole group), and whether the count stopped at the page bound.
    async fn count(
        &self,
        q: &MetricQuery,
        group: &str,
        names: Option<&[String]>,
        pattern: Option<&str>,
        limit: Option<i32>,
    ) -> Result<(u64, bool)> {
        let chunks: Vec<Option<Vec<String>>> = match names {
            None => vec![None],
            Some(n) => n.chunks(100).map(|c| Some(c.to_vec())).collect(),
        };
        let mut n = 0u64;
        for chunk in chunks {
            let (got, capped) = self.count_in(q, group, chunk, pattern, limit).await?;
            n += got;
            if capped || (limit.is_some() && n > 0) {
                return Ok((n, capped));
            }
        }
        Ok((n, false))
    }

    async fn count_in(
        &self,
        q: &MetricQuery,
        group: &str,
        names: Option<Vec<String>>,
        pattern: Option<&str>,
        limit: Option<i32>,
    ) -> Result<(u64, bool)> {
        let mut n = 0u64;
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .logs
                .filter_log_events()
                .log_group_name(group)
                .set_log_stream_names(names.clone())
                .set_filter_pattern(pattern.map(String::from))
                .start_time(q.from.0 as i64)
                // endTime is inclusive; the window is [from, to).
                .end_time(q.to.0 as i64 - 1)
                .set_limit(limit)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    with_check(
                        &q.check,
                        bluegreen_aws::sdk_error(
                            PROVIDER,
                            e,
                            "query",
                            "logs:FilterLogEvents",
                            &format!("log group {group}"),
                        ),
                    )
                })?;
            n += out.events().len() as u64;
            if limit.is_some() && n > 0 {
                return Ok((n, false));
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok((n, false)),
            }
        }
        Ok((n, true))
    }
}

#[async_trait]
impl MetricsSource for CloudWatchLogs {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        Ok(self.query_noted(q).await?.answer)
    }

    async fn query_noted(&self, q: &MetricQuery) -> Result<NotedAnswer> {
        let w = Words::parse(&q.check, &q.query)?;
        if w.kind != "logs" {
            return Err(with_check(&q.check, Error::invalid_input(format!(
                "`{}` is not a CloudWatch Logs query; expected `logs group=G [stream_prefix=P] pattern=F`",
                w.kind
            ))));
        }
        w.only(&q.check, &["group", "stream_prefix", "pattern"])?;
        let group = w.need(&q.check, "group")?;
        let pattern = w.need(&q.check, "pattern")?;
        let prefix = w.get("stream_prefix").filter(|p| !p.is_empty());
        if q.to <= q.from {
            return Ok(MetricAnswer::NoData {
                reason: format!("check {:?}: the window is empty", q.check),
            }
            .into());
        }
        let names = match prefix {
            None => None,
            Some(p) => {
                let names = self.streams(q, group, p).await?;
                if names.is_empty() {
                    return Ok(MetricAnswer::NoData {
                        reason: format!(
                            "check {:?}: log group {group} has no stream starting with {p:?}",
                            q.check
                        ),
                    }
                    .into());
                }
                Some(names)
            }
        };
        let names = names.as_deref();
        let (matched, capped) = self.count(q, group, names, Some(pattern), None).await?;
        if matched == 0 && self.count(q, group, names, None, Some(1)).await?.0 == 0 {
            return Ok(MetricAnswer::NoData {
                reason: format!(
                    "check {:?}: log group {group}{} logged nothing in the window",
                    q.check,
                    prefix
                        .map(|p| format!(", streams {p}*"))
                        .unwrap_or_default()
                ),
            }
            .into());
        }
        tracing::debug!(check = %q.check, matched, capped, "CloudWatch Logs answer");
        Ok(NotedAnswer {
            answer: MetricAnswer::Samples {
                samples: vec![Sample {
                    at: q.to,
                    value: matched as f64,
                }],
            },
            note: capped.then(|| {
                format!("at least {matched} events match {pattern:?}: the count stopped after {MAX_PAGES} pages")
            }),
        })
    }
}
