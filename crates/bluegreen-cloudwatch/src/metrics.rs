//! Metrics: GetMetricData, with metric math, and the ALB and ECS presets.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDataResult, MetricStat, ScanBy, StatusCode,
};
use aws_smithy_types::DateTime;
use aws_types::SdkConfig;
use bluegreen_core::{Error, MetricAnswer, MetricQuery, MetricsSource, Result, Sample, Timestamp};

use crate::query::Words;
use crate::{with_check, PROVIDER};

/// The period when a query names none: one minute, CloudWatch's finest
/// standard resolution (ALB and ECS publish per minute).
pub const DEFAULT_PERIOD: u32 = 60;

/// GetMetricData pages read at most: an answer still partial after this
/// many is an error, never a shorter series passed off as the whole.
pub const MAX_PAGES: usize = 10;

/// The id of the series a query returns.
const OUT: &str = "out";

/// A [`MetricsSource`] on CloudWatch metrics (`GetMetricData`).
///
/// # Queries
///
/// A check's query is a kind and `key=value` settings (values with spaces in
/// double quotes); `{service}`, `{color}` and `{version}` are filled in first.
///
/// | kind | settings | value |
/// | --- | --- | --- |
/// | `alb-error-rate` | `load_balancer`, `target_group` | `HTTPCode_Target_5XX_Count` ÷ `RequestCount` per period, a ratio (0.02 is 2%); a period without requests has no point (no data, never 0) |
/// | `alb-p95-ms` | `load_balancer`, `target_group` | p95 of `TargetResponseTime`, in milliseconds (CloudWatch gives seconds) |
/// | `ecs-cpu` | `cluster`, `service` | `CPUUtilization` average, percent |
/// | `ecs-memory` | `cluster`, `service` | `MemoryUtilization` average, percent |
/// | `metric` | `namespace`, `name`, `stat`, `dim.NAME=VALUE`…, `unit` | one metric's statistic |
/// | `math` | `expression`, `m.ID="NAMESPACE METRIC STAT [DIM=VALUE…]"`… | a metric-math expression over the named metrics |
///
/// Every kind takes `period` (seconds, default [`DEFAULT_PERIOD`]) and
/// `scale` (a factor applied to each value, e.g. `1000` for seconds to
/// milliseconds). `load_balancer` is the ALB's dimension value
/// (`app/NAME/ID`) or its ARN; `target_group` is `targetgroup/NAME/ID`, its
/// ARN, or `blue`/`green` (so `target_group={color}`) when the source was
/// given the colors' target groups ([`CloudWatchMetrics::with_target_groups`]).
///
/// ```text
/// alb-error-rate load_balancer=app/web/50dc6c495c0c9188 target_group=targetgroup/order-api-{color}/73e2d6bc24d8a067
/// math expression="100 * e / r" m.e="AWS/ApplicationELB HTTPCode_ELB_5XX_Count Sum LoadBalancer=app/web/1" m.r="AWS/ApplicationELB RequestCount Sum LoadBalancer=app/web/1"
/// ```
///
/// # Which points are used
///
/// Periods are aligned to multiples of the period (since the epoch, as
/// CloudWatch aligns them): the request starts at the first period boundary
/// at or after the window's start and ends at the last boundary at or
/// before the window's end less the settle time. A point at `t` covers
/// `[t, t + period)`, so an incomplete last period is never asked for, and a
/// point outside the aligned range is dropped if CloudWatch sends one. A
/// window shorter than one period, or an answer without points, is
/// [`MetricAnswer::NoData`] naming the check and the metric (an unknown
/// metric, namespace or dimension reads as no data in CloudWatch; the
/// reason says to check them).
///
/// # Errors
///
/// A query that cannot be read is `InvalidInput` naming the check; AWS
/// errors map as [`bluegreen_aws::sdk_error`] says (throttling temporary,
/// access denied names `cloudwatch:GetMetricData`). Read-only, so safe to
/// repeat.
#[derive(Debug, Clone)]
pub struct CloudWatchMetrics {
    cloudwatch: aws_sdk_cloudwatch::Client,
    settle: Duration,
    target_groups: Option<[String; 2]>,
}

impl CloudWatchMetrics {
    /// A source on the account and region of `config`.
    pub fn new(config: &SdkConfig) -> Self {
        CloudWatchMetrics {
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            settle: Duration::ZERO,
            target_groups: None,
        }
    }

    /// The colors' target groups (ARNs or `targetgroup/NAME/ID`), so a
    /// query may say `target_group={color}`: `blue` and `green` then name
    /// these.
    pub fn with_target_groups(mut self, blue: impl Into<String>, green: impl Into<String>) -> Self {
        self.target_groups = Some([blue.into(), green.into()]);
        self
    }

    /// Leaves the last `settle` of every window out before aligning its end,
    /// for metrics that arrive late (zero by default).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }
}

/// What one check asks of GetMetricData.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub queries: Vec<MetricDataQuery>,
    pub period: u32,
    pub scale: f64,
    /// The metric in words, for a reason.
    pub what: String,
}

fn metric(namespace: &str, name: &str, dims: &[(&str, &str)]) -> Metric {
    Metric::builder()
        .namespace(namespace)
        .metric_name(name)
        .set_dimensions(Some(
            dims.iter()
                .map(|(n, v)| Dimension::builder().name(*n).value(*v).build())
                .collect(),
        ))
        .build()
}

fn stat_query(
    id: &str,
    m: Metric,
    stat: &str,
    period: u32,
    unit: Option<&str>,
    out: bool,
) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(m)
                .period(period as i32)
                .stat(stat)
                .set_unit(unit.map(Into::into))
                .build(),
        )
        .return_data(out)
        .build()
}

fn math_query(expression: &str, period: u32) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(OUT)
        .expression(expression)
        .period(period as i32)
        .return_data(true)
        .build()
}

/// The dimension value of an ALB (`app/NAME/ID`) from it or its ARN.
fn load_balancer(v: &str) -> &str {
    v.split_once(":loadbalancer/").map_or(v, |(_, r)| r)
}

/// The dimension value of a target group (`targetgroup/NAME/ID`) from it or its ARN.
fn target_group(v: &str) -> &str {
    v.rsplit_once(':')
        .filter(|(_, r)| r.starts_with("targetgroup/"))
        .map_or(v, |(_, r)| r)
}

impl Request {
    /// Reads the query text of `check`; `target_groups` (blue, green) are
    /// what `target_group=blue|green` names.
    pub fn parse(check: &str, text: &str, target_groups: Option<&[String; 2]>) -> Result<Request> {
        let w = Words::parse(check, text)?;
        let period = w.seconds(check, "period", DEFAULT_PERIOD)?;
        let scale = match w.get("scale") {
            None => 1.0,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    with_check(
                        check,
                        Error::invalid_input(format!("scale=`{s}` is not a number")),
                    )
                })?,
        };
        let alb = |w: &Words| -> Result<(String, String)> {
            w.only(check, &["load_balancer", "target_group", "period", "scale"])?;
            let tg = match (w.need(check, "target_group")?, target_groups) {
                ("blue", Some([b, _])) => b.as_str(),
                ("green", Some([_, g])) => g.as_str(),
                (c @ ("blue" | "green"), None) => {
                    return Err(with_check(check, Error::invalid_input(format!(
                        "target_group={c}: a color names a target group only when the target groups are configured (CloudWatchMetrics::with_target_groups, [target.alb] in a spec); otherwise give targetgroup/NAME/ID or its ARN"
                    ))))
                }
                (other, _) => other,
            };
            Ok((
                load_balancer(w.need(check, "load_balancer")?).to_string(),
                target_group(tg).to_string(),
            ))
        };
        let ecs = |w: &Words| -> Result<(String, String)> {
            w.only(check, &["cluster", "service", "period", "scale"])?;
            Ok((
                w.need(check, "cluster")?.to_string(),
                w.need(check, "service")?.to_string(),
            ))
        };
        let (queries, scale, what) = match w.kind.as_str() {
            "alb-error-rate" => {
                let (lb, tg) = alb(&w)?;
                let dims = [("LoadBalancer", lb.as_str()), ("TargetGroup", tg.as_str())];
                let ns = "AWS/ApplicationELB";
                (
                    vec![
                        stat_query("e", metric(ns, "HTTPCode_Target_5XX_Count", &dims), "Sum", period, None, false),
                        stat_query("r", metric(ns, "RequestCount", &dims), "Sum", period, None, false),
                        // A period without requests has no point: no data, never 0.
                        // ALB publishes no 5XX count in a period without 5XX, hence FILL.
                        math_query("IF(r > 0, FILL(e, 0) / r)", period),
                    ],
                    scale,
                    format!("{ns} HTTPCode_Target_5XX_Count / RequestCount of {tg}"),
                )
            }
            "alb-p95-ms" => {
                let (lb, tg) = alb(&w)?;
                let dims = [("LoadBalancer", lb.as_str()), ("TargetGroup", tg.as_str())];
                let ns = "AWS/ApplicationELB";
                (
                    vec![stat_query(OUT, metric(ns, "TargetResponseTime", &dims), "p95", period, None, true)],
                    // CloudWatch gives seconds.
                    scale * 1000.0,
                    format!("{ns} TargetResponseTime p95 of {tg}"),
                )
            }
            kind @ ("ecs-cpu" | "ecs-memory") => {
                let (cluster, service) = ecs(&w)?;
                let name = if kind == "ecs-cpu" { "CPUUtilization" } else { "MemoryUtilization" };
                let dims = [("ClusterName", cluster.as_str()), ("ServiceName", service.as_str())];
                (
                    vec![stat_query(OUT, metric("AWS/ECS", name, &dims), "Average", period, None, true)],
                    scale,
                    format!("AWS/ECS {name} of {cluster}/{service}"),
                )
            }
            "metric" => {
                w.only(check, &["namespace", "name", "stat", "unit", "period", "scale", "dim.*"])?;
                let ns = w.need(check, "namespace")?;
                let name = w.need(check, "name")?;
                let stat = w.need(check, "stat")?;
                let dims: Vec<(&str, &str)> = w
                    .pairs
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("dim.").map(|d| (d, v.as_str())))
                    .collect();
                (
                    vec![stat_query(OUT, metric(ns, name, &dims), stat, period, w.get("unit"), true)],
                    scale,
                    format!("{ns} {name} {stat}{}", describe_dims(&dims)),
                )
            }
            "math" => {
                let expression = w.need(check, "expression")?;
                let mut queries = Vec::new();
                for (k, v) in &w.pairs {
                    match k.strip_prefix("m.") {
                        Some(id) => queries.push(math_metric(check, id, v, period)?),
                        None if ["expression", "period", "scale"].contains(&k.as_str()) => {}
                        None => {
                            return Err(with_check(check, Error::invalid_input(format!(
                                "the CloudWatch query `math` has no setting `{k}` (it takes expression, m.ID, period, scale)"
                            ))))
                        }
                    }
                }
                if queries.is_empty() {
                    return Err(with_check(check, Error::invalid_input(
                        "the CloudWatch query `math` needs at least one m.ID=\"NAMESPACE METRIC STAT [DIM=VALUE…]\"",
                    )));
                }
                queries.push(math_query(expression, period));
                (queries, scale, format!("the expression {expression}"))
            }
            other => {
                return Err(with_check(check, Error::invalid_input(format!(
                    "`{other}` is not a CloudWatch metrics query; expected one of alb-error-rate, alb-p95-ms, ecs-cpu, ecs-memory, metric, math"
                ))))
            }
        };
        Ok(Request {
            queries,
            period,
            scale,
            what,
        })
    }
}

fn describe_dims(dims: &[(&str, &str)]) -> String {
    if dims.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = dims.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!(" {{{}}}", inner.join(", "))
}

/// `m.ID="NAMESPACE METRIC STAT [DIM=VALUE…]"` of a `math` query.
fn math_metric(check: &str, id: &str, v: &str, period: u32) -> Result<MetricDataQuery> {
    let ok_id = id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && id != OUT;
    if !ok_id {
        return Err(with_check(check, Error::invalid_input(format!(
            "m.{id}: a metric id starts with a lowercase letter and holds letters, digits and _ (and is not `{OUT}`)"
        ))));
    }
    let mut parts = v.split_whitespace();
    let (Some(ns), Some(name), Some(stat)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(with_check(
            check,
            Error::invalid_input(format!(
                "m.{id}=`{v}`: expected \"NAMESPACE METRIC STAT [DIM=VALUE…]\""
            )),
        ));
    };
    let mut dims = Vec::new();
    for d in parts {
        let Some(pair) = d.split_once('=') else {
            return Err(with_check(
                check,
                Error::invalid_input(format!("m.{id}: `{d}` is not a DIMENSION=VALUE")),
            ));
        };
        dims.push(pair);
    }
    Ok(stat_query(
        id,
        metric(ns, name, &dims),
        stat,
        period,
        None,
        false,
    ))
}

/// The aligned request range of `q`, in whole seconds: `[start, end)`, or
/// `None` when the window holds no whole period.
pub(crate) fn aligned(q: &MetricQuery, period: u32, settle: Duration) -> Option<(i64, i64)> {
    let p = i64::from(period);
    let from = (q.from.0 as i64 + 999) / 1000;
    let to = (q.to.0 as i64 - settle.as_millis() as i64) / 1000;
    let start = from.div_euclid(p) * p + if from.rem_euclid(p) == 0 { 0 } else { p };
    let end = to.div_euclid(p) * p;
    (end > start).then_some((start, end))
}

/// The samples of the returned series in `results`, scaled, in time order,
/// inside `[start, end)` whole periods.
pub(crate) fn samples_of(
    results: &[MetricDataResult],
    start: i64,
    end: i64,
    period: u32,
    scale: f64,
    into: &mut Vec<Sample>,
) -> Result<()> {
    for r in results.iter().filter(|r| r.id() == Some(OUT)) {
        if r.status_code() == Some(&StatusCode::InternalError)
            || r.status_code() == Some(&StatusCode::Forbidden)
        {
            let messages: Vec<String> = r
                .messages()
                .iter()
                .map(|m| format!("{}: {}", m.code().unwrap_or("?"), m.value().unwrap_or("")))
                .collect();
            return Err(Error::unavailable(format!(
                "GetMetricData answered {:?}: {}",
                r.status_code().map(|s| s.as_str()).unwrap_or("?"),
                messages.join("; ")
            )));
        }
        let times = r.timestamps();
        let values = r.values();
        if times.len() != values.len() {
            return Err(Error::invalid_response(format!(
                "GetMetricData answered {} timestamps and {} values",
                times.len(),
                values.len()
            )));
        }
        for (t, v) in times.iter().zip(values) {
            let secs = t.secs();
            if secs < start || secs + i64::from(period) > end {
                continue;
            }
            into.push(Sample {
                at: Timestamp(secs as u64 * 1000),
                value: v * scale,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl MetricsSource for CloudWatchMetrics {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        let req = Request::parse(&q.check, &q.query, self.target_groups.as_ref())?;
        let Some((start, end)) = aligned(q, req.period, self.settle) else {
            return Ok(MetricAnswer::NoData {
                reason: format!(
                    "check {:?}: the window holds no whole {}s period of {}",
                    q.check, req.period, req.what
                ),
            });
        };
        let mut samples = Vec::new();
        let mut token: Option<String> = None;
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(with_check(
                    &q.check,
                    Error::unavailable(format!(
                        "GetMetricData was still partial after {MAX_PAGES} pages"
                    ))
                    .with_operation("query"),
                ));
            }
            let out = self
                .cloudwatch
                .get_metric_data()
                .set_metric_data_queries(Some(req.queries.clone()))
                .start_time(DateTime::from_secs(start))
                .end_time(DateTime::from_secs(end))
                .scan_by(ScanBy::TimestampAscending)
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
                            "cloudwatch:GetMetricData",
                            &req.what,
                        ),
                    )
                })?;
            samples_of(
                out.metric_data_results(),
                start,
                end,
                req.period,
                req.scale,
                &mut samples,
            )
            .map_err(|e| with_check(&q.check, e.with_provider(PROVIDER).with_operation("query")))?;
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        samples.sort_by_key(|s| s.at);
        tracing::debug!(check = %q.check, samples = samples.len(), "CloudWatch answer");
        if samples.is_empty() {
            return Ok(MetricAnswer::NoData {
                reason: format!(
                    "check {:?}: CloudWatch has no datapoints of {} in the window (an unknown metric, namespace or dimension reads so too: check them)",
                    q.check, req.what
                ),
            });
        }
        Ok(MetricAnswer::Samples { samples })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from_s: i64, to_s: i64) -> MetricQuery {
        MetricQuery {
            check: "c".into(),
            query: String::new(),
            from: Timestamp(from_s as u64 * 1000),
            to: Timestamp(to_s as u64 * 1000),
            color: None,
            baseline: false,
        }
    }

    #[test]
    fn the_window_is_cut_to_whole_periods_and_the_incomplete_last_one_left_out() {
        // 10:00:30 .. 10:05:10 with 60 s periods: 10:01 .. 10:05.
        let base: i64 = 1_700_000_040; // a multiple of 60
        assert_eq!(
            aligned(&q(base + 30, base + 310), 60, Duration::ZERO),
            Some((base + 60, base + 300))
        );
        // Already aligned: unchanged.
        assert_eq!(
            aligned(&q(base, base + 300), 60, Duration::ZERO),
            Some((base, base + 300))
        );
        // The settle time moves the end back a period.
        assert_eq!(
            aligned(&q(base, base + 300), 60, Duration::from_secs(30)),
            Some((base, base + 240))
        );
        // Shorter than a whole period: nothing to ask.
        assert_eq!(aligned(&q(base + 10, base + 70), 60, Duration::ZERO), None);
    }

    #[test]
    fn presets_ask_for_the_documented_metrics() {
        let r = Request::parse(
            "error-rate",
            "alb-error-rate load_balancer=arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/1 target_group=arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api-green/2",
            None,
        )
        .unwrap();
        assert_eq!(r.queries.len(), 3);
        assert_eq!(r.queries[2].expression(), Some("IF(r > 0, FILL(e, 0) / r)"));
        let e = r.queries[0].metric_stat().unwrap();
        assert_eq!(
            e.metric().unwrap().metric_name(),
            Some("HTTPCode_Target_5XX_Count")
        );
        let dims: Vec<_> = e
            .metric()
            .unwrap()
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap(), d.value().unwrap()))
            .collect();
        assert_eq!(
            dims,
            [
                ("LoadBalancer", "app/web/1"),
                ("TargetGroup", "targetgroup/api-green/2")
            ]
        );
        let p95 = Request::parse(
            "p95",
            "alb-p95-ms load_balancer=app/web/1 target_group=targetgroup/t/2 period=300",
            None,
        )
        .unwrap();
        assert_eq!(p95.scale, 1000.0);
        assert_eq!(p95.period, 300);
        assert_eq!(p95.queries[0].metric_stat().unwrap().stat(), Some("p95"));
        let mem = Request::parse("mem", "ecs-memory cluster=prod service=api-blue", None).unwrap();
        let groups = [
            "targetgroup/api-blue/1".to_string(),
            "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/api-green/2".to_string(),
        ];
        let by_color = Request::parse(
            "e",
            "alb-error-rate load_balancer=app/web/1 target_group=green",
            Some(&groups),
        )
        .unwrap();
        assert!(
            by_color.what.ends_with("of targetgroup/api-green/2"),
            "{}",
            by_color.what
        );
        let e = Request::parse(
            "e",
            "alb-error-rate load_balancer=app/web/1 target_group=green",
            None,
        )
        .unwrap_err();
        assert!(e.message().contains("target_group=green"), "{e}");
        assert_eq!(
            mem.queries[0]
                .metric_stat()
                .unwrap()
                .metric()
                .unwrap()
                .metric_name(),
            Some("MemoryUtilization")
        );
    }

    #[test]
    fn a_bad_query_names_the_check_and_what_it_takes() {
        let e = Request::parse("cpu", "ecs-cpu cluster=prod", None).unwrap_err();
        assert!(e.message().contains("\"cpu\""), "{e}");
        assert!(e.message().contains("needs service="), "{e}");
        let e = Request::parse("cpu", "ecs-cpu cluster=prod service=s colour=x", None).unwrap_err();
        assert!(e.message().contains("no setting `colour`"), "{e}");
        let e = Request::parse("x", "alb-errors load_balancer=a", None).unwrap_err();
        assert!(
            e.message().contains("not a CloudWatch metrics query"),
            "{e}"
        );
        let e =
            Request::parse("x", "math expression=\"a/b\" m.A=\"AWS/X Y Sum\"", None).unwrap_err();
        assert!(e.message().contains("m.A"), "{e}");
        let e = Request::parse(
            "x",
            "metric namespace=AWS/ECS name=CPUUtilization stat=Average period=0",
            None,
        )
        .unwrap_err();
        assert!(e.message().contains("period=`0`"), "{e}");
    }
}
