//! The proxy's own measurements: per color, requests, 5xx responses and a
//! latency histogram, kept in time buckets so that any recent window can be
//! queried, and answered as a [`MetricsSource`].
//!
//! # Query syntax
//!
//! A query is `NAME:COLOR`, for example `error_rate:blue`. In a plan, write
//! the color as the template variable, `error_rate:{color}`: the engine fills
//! in the new color before it asks. Whitespace around the parts is ignored;
//! `NAME{color="blue"}` and `NAME{color=blue}` are accepted as well.
//!
//! | name         | value over the query window                          | unit         |
//! |--------------|------------------------------------------------------|--------------|
//! | `requests`   | requests answered                                    | count        |
//! | `rps`        | requests per second                                  | number       |
//! | `errors`     | responses with a 5xx status (the proxy's 502s too)   | count        |
//! | `error_rate` | `errors / requests`                                  | ratio 0–1    |
//! | `p50_ms`     | median latency                                       | milliseconds |
//! | `p95_ms`     | 95th percentile latency                              | milliseconds |
//! | `p99_ms`     | 99th percentile latency                              | milliseconds |
//! | `mean_ms`    | mean latency                                         | milliseconds |
//!
//! Each answer is one sample covering the whole window, stamped at the
//! window's end. A window in which the color answered no request is
//! [`MetricAnswer::NoData`], never zero. Latency percentiles come from a
//! histogram with bins 25% wide, so they are accurate to within 25%.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bluegreen_core::{
    Color, Error, MetricAnswer, MetricQuery, MetricsSource, Result, Sample, Timestamp,
};

use crate::PROVIDER;

/// The default width of one time bucket.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_millis(100);
/// The default time the measurements are kept for.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(10 * 60);

/// The smallest latency bin's upper bound, in milliseconds.
const FIRST_BOUND_MS: f64 = 0.05;
/// Each bin's upper bound is this factor times the previous one.
const BIN_FACTOR: f64 = 1.25;
/// Number of latency bins; the last one is open-ended (about 90 s and up).
const BINS: usize = 72;

fn bin_upper_ms(i: usize) -> f64 {
    FIRST_BOUND_MS * BIN_FACTOR.powi(i as i32)
}

fn bin_of(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms <= FIRST_BOUND_MS {
        return 0;
    }
    let i = ((ms / FIRST_BOUND_MS).ln() / BIN_FACTOR.ln()).ceil() as usize;
    i.min(BINS - 1)
}

/// What is measured for one color over some time.
#[derive(Clone)]
struct Tally {
    requests: u64,
    errors: u64,
    latency_sum: Duration,
    bins: [u32; BINS],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            errors: 0,
            latency_sum: Duration::ZERO,
            bins: [0; BINS],
        }
    }
}

impl Tally {
    /// The `q` quantile (0–1) in milliseconds, interpolated inside its bin.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.bins.iter().map(|b| u64::from(*b)).sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0);
        let mut seen = 0.0;
        for (i, count) in self.bins.iter().enumerate() {
            let c = f64::from(*count);
            if c > 0.0 && seen + c >= rank {
                let lower = if i == 0 { 0.0 } else { bin_upper_ms(i - 1) };
                let upper = bin_upper_ms(i);
                return Some(lower + (upper - lower) * ((rank - seen) / c));
            }
            seen += c;
        }
        Some(bin_upper_ms(BINS - 1))
    }

    fn mean_ms(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_sum.as_secs_f64() * 1000.0 / self.requests as f64)
    }
}

/// `Bucket::slot` of a bucket never used.
const EMPTY: u64 = u64::MAX;
/// `Bucket::slot` of a bucket a recorder is clearing for a new time slot.
const CLEARING: u64 = u64::MAX - 1;

/// One time bucket of a color, recorded into without a lock.
struct Bucket {
    /// The bucket's index since the epoch (`ms / resolution`), or [`EMPTY`]
    /// or [`CLEARING`].
    slot: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency_ns: AtomicU64,
    bins: [AtomicU32; BINS],
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            slot: AtomicU64::new(EMPTY),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            bins: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_ns
            .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
        self.bins[bin_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.latency_ns.store(0, Ordering::Relaxed);
        for b in &self.bins {
            b.store(0, Ordering::Relaxed);
        }
    }

    fn add_to(&self, t: &mut Tally) {
        t.requests += self.requests.load(Ordering::Relaxed);
        t.errors += self.errors.load(Ordering::Relaxed);
        t.latency_sum += Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed));
        for (a, b) in t.bins.iter_mut().zip(self.bins.iter()) {
            *a = a.saturating_add(b.load(Ordering::Relaxed));
        }
    }
}

/// A color's figures since the start, recorded into without a lock.
struct Total {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_ns: AtomicU64,
    bins: [AtomicU64; BINS],
}

impl Total {
    fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_ns
            .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
        self.bins[bin_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    fn tally(&self) -> Tally {
        let mut t = Tally {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_sum: Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)),
            bins: [0; BINS],
        };
        for (a, b) in t.bins.iter_mut().zip(self.bins.iter()) {
            *a = u32::try_from(b.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        }
        t
    }
}

/// One color's measurements. Recording takes no lock (the proxy's workers
/// record concurrently); the totals are exact, and a window misses only a
/// request recorded at the very moment another thread clears its bucket
/// for a new time slot.
struct Series {
    ring: Box<[Bucket]>,
    total: Total,
}

/// The per-color measurements of a [`LocalProxy`](crate::LocalProxy); also a
/// [`MetricsSource`] (see the module docs for the query syntax).
///
/// Cloning is cheap and shares the measurements.
#[derive(Clone)]
pub struct ProxyMetrics {
    inner: std::sync::Arc<MetricsInner>,
}

struct MetricsInner {
    resolution_ms: u64,
    blue: Series,
    green: Series,
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics")
            .field("resolution_ms", &self.inner.resolution_ms)
            .finish_non_exhaustive()
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new(DEFAULT_RESOLUTION, DEFAULT_RETENTION)
    }
}

/// A summary of one color's measurements over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorFigures {
    /// Requests answered.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// `errors / requests`, when there were requests.
    pub error_rate: Option<f64>,
    /// Median latency in ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile latency in ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
}

impl ProxyMetrics {
    /// Measurements in buckets of `resolution`, kept for `retention`.
    pub fn new(resolution: Duration, retention: Duration) -> Self {
        let resolution_ms = (resolution.as_millis() as u64).max(1);
        let len = (retention.as_millis() as u64 / resolution_ms).clamp(1, 1 << 20) as usize + 1;
        let series = || Series {
            ring: (0..len).map(|_| Bucket::new()).collect(),
            total: Total {
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency_ns: AtomicU64::new(0),
                bins: std::array::from_fn(|_| AtomicU64::new(0)),
            },
        };
        ProxyMetrics {
            inner: std::sync::Arc::new(MetricsInner {
                resolution_ms,
                blue: series(),
                green: series(),
            }),
        }
    }

    fn series(&self, color: Color) -> &Series {
        match color {
            Color::Blue => &self.inner.blue,
            Color::Green => &self.inner.green,
        }
    }

    /// Records one answered request of `color`, now.
    pub fn record(&self, color: Color, status: u16, latency: Duration) {
        self.record_at(
            color,
            Timestamp::from_system_time(SystemTime::now()),
            status,
            latency,
        );
    }

    /// Records one answered request of `color` at `at`.
    pub fn record_at(&self, color: Color, at: Timestamp, status: u16, latency: Duration) {
        let slot = at.0 / self.inner.resolution_ms;
        let s = self.series(color);
        s.total.record(status, latency);
        let b = &s.ring[(slot % s.ring.len() as u64) as usize];
        let current = b.slot.load(Ordering::Acquire);
        if current != slot {
            if current == CLEARING || (current != EMPTY && current > slot) {
                // Another recorder is clearing the bucket, or it already
                // holds a later time slot: this request counts in the total.
                return;
            }
            match b
                .slot
                .compare_exchange(current, CLEARING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    b.clear();
                    b.slot.store(slot, Ordering::Release);
                }
                Err(now) if now == slot => {}
                Err(_) => return,
            }
        }
        b.record(status, latency);
    }

    fn window(&self, color: Color, from: Timestamp, to: Timestamp) -> Tally {
        let res = self.inner.resolution_ms;
        let first = from.0 / res;
        let last = to.0 / res;
        let s = self.series(color);
        let len = s.ring.len() as u64;
        let first = first.max(last.saturating_sub(len - 1));
        let mut out = Tally::default();
        for slot in first..=last {
            let b = &s.ring[(slot % len) as usize];
            if b.slot.load(Ordering::Acquire) == slot {
                b.add_to(&mut out);
            }
        }
        out
    }

    fn figures(t: &Tally) -> ColorFigures {
        ColorFigures {
            requests: t.requests,
            errors: t.errors,
            error_rate: (t.requests > 0).then(|| t.errors as f64 / t.requests as f64),
            p50_ms: t.quantile_ms(0.50),
            p95_ms: t.quantile_ms(0.95),
            p99_ms: t.quantile_ms(0.99),
        }
    }

    /// `color`'s figures between `from` and `to`.
    pub fn figures_between(&self, color: Color, from: Timestamp, to: Timestamp) -> ColorFigures {
        Self::figures(&self.window(color, from, to))
    }

    /// `color`'s figures over the last `window`.
    pub fn recent(&self, color: Color, window: Duration) -> ColorFigures {
        let now = Timestamp::from_system_time(SystemTime::now());
        let from = Timestamp(now.0.saturating_sub(window.as_millis() as u64));
        self.figures_between(color, from, now)
    }

    /// `color`'s figures since the proxy started.
    pub fn total(&self, color: Color) -> ColorFigures {
        Self::figures(&self.series(color).total.tally())
    }

    /// The measurements in the Prometheus text exposition format (version
    /// 0.0.4): totals since start as counters, a cumulative latency
    /// histogram, and p50/p95/p99 over the last minute as gauges.
    pub fn prometheus_text(&self, split: Option<bluegreen_core::TrafficSplit>) -> String {
        let mut out = String::new();
        let totals: Vec<(Color, Tally)> = Color::ALL
            .iter()
            .map(|c| (*c, self.series(*c).total.tally()))
            .collect();
        out.push_str("# HELP bluegreen_proxy_requests_total Requests answered through the proxy, per color.\n");
        out.push_str("# TYPE bluegreen_proxy_requests_total counter\n");
        for (c, t) in &totals {
            let _ = writeln!(
                out,
                "bluegreen_proxy_requests_total{{color=\"{c}\"}} {}",
                t.requests
            );
        }
        out.push_str("# HELP bluegreen_proxy_responses_5xx_total Responses with a 5xx status, per color (the proxy's own 502s included).\n");
        out.push_str("# TYPE bluegreen_proxy_responses_5xx_total counter\n");
        for (c, t) in &totals {
            let _ = writeln!(
                out,
                "bluegreen_proxy_responses_5xx_total{{color=\"{c}\"}} {}",
                t.errors
            );
        }
        out.push_str("# HELP bluegreen_proxy_request_duration_seconds Latency of requests through the proxy, per color.\n");
        out.push_str("# TYPE bluegreen_proxy_request_duration_seconds histogram\n");
        for (c, t) in &totals {
            let mut cum = 0u64;
            for (i, n) in t.bins.iter().enumerate().take(BINS - 1) {
                cum += u64::from(*n);
                let _ = writeln!(
                    out,
                    "bluegreen_proxy_request_duration_seconds_bucket{{color=\"{c}\",le=\"{:.6}\"}} {cum}",
                    bin_upper_ms(i) / 1000.0
                );
            }
            let _ = writeln!(
                out,
                "bluegreen_proxy_request_duration_seconds_bucket{{color=\"{c}\",le=\"+Inf\"}} {}",
                t.requests
            );
            let _ = writeln!(
                out,
                "bluegreen_proxy_request_duration_seconds_sum{{color=\"{c}\"}} {:.6}",
                t.latency_sum.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "bluegreen_proxy_request_duration_seconds_count{{color=\"{c}\"}} {}",
                t.requests
            );
        }
        out.push_str("# HELP bluegreen_proxy_latency_ms Latency percentiles over the last minute, per color.\n");
        out.push_str("# TYPE bluegreen_proxy_latency_ms gauge\n");
        for c in Color::ALL {
            let f = self.recent(c, Duration::from_secs(60));
            for (q, v) in [("0.5", f.p50_ms), ("0.95", f.p95_ms), ("0.99", f.p99_ms)] {
                if let Some(v) = v {
                    let _ = writeln!(
                        out,
                        "bluegreen_proxy_latency_ms{{color=\"{c}\",quantile=\"{q}\"}} {v:.3}"
                    );
                }
            }
        }
        if let Some(split) = split {
            out.push_str("# HELP bluegreen_proxy_traffic_weight_percent The traffic split in force, per color.\n");
            out.push_str("# TYPE bluegreen_proxy_traffic_weight_percent gauge\n");
            for c in Color::ALL {
                let _ = writeln!(
                    out,
                    "bluegreen_proxy_traffic_weight_percent{{color=\"{c}\"}} {}",
                    split.percent(c)
                );
            }
        }
        out
    }
}

/// The measurement names a query may use.
pub const QUERY_NAMES: [&str; 8] = [
    "requests",
    "rps",
    "errors",
    "error_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
];

/// Parses `NAME:COLOR` (or `NAME{color="COLOR"}`).
pub fn parse_query(text: &str) -> Result<(&'static str, Color)> {
    let bad = |why: String| {
        Error::invalid_input(format!(
            "metric query {text:?}: {why}; expected NAME:COLOR such as error_rate:blue, with NAME one of {}",
            QUERY_NAMES.join(", ")
        ))
        .with_provider(PROVIDER)
        .with_operation("query")
    };
    let t = text.trim();
    let (name, color) = if let Some((n, rest)) = t.split_once('{') {
        let inner = rest
            .strip_suffix('}')
            .ok_or_else(|| bad("a label set must end with }".into()))?;
        let value = inner
            .trim()
            .strip_prefix("color")
            .and_then(|r| r.trim_start().strip_prefix('='))
            .ok_or_else(|| bad("the only label is color".into()))?;
        (n.trim(), value.trim().trim_matches('"'))
    } else if let Some((n, c)) = t.split_once(':') {
        (n.trim(), c.trim())
    } else {
        return Err(bad("no color given".into()));
    };
    let name = QUERY_NAMES
        .iter()
        .find(|q| **q == name)
        .ok_or_else(|| bad(format!("unknown measurement {name:?}")))?;
    let color: Color = color
        .parse()
        .map_err(|_| bad(format!("unknown color {color:?}")))?;
    Ok((name, color))
}

#[async_trait]
impl MetricsSource for ProxyMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer> {
        let (name, color) = parse_query(&query.query)?;
        if query.to < query.from {
            return Err(Error::invalid_input(format!(
                "metric query {:?}: the window ends ({}) before it starts ({})",
                query.query, query.to, query.from
            ))
            .with_provider(PROVIDER)
            .with_operation("query"));
        }
        let t = self.window(color, query.from, query.to);
        if t.requests == 0 {
            return Ok(MetricAnswer::NoData {
                reason: format!(
                    "the proxy answered no request for {color} between {} and {}",
                    query.from, query.to
                ),
            });
        }
        let secs = query
            .window()
            .as_secs_f64()
            .max(self.inner.resolution_ms as f64 / 1000.0);
        let value = match name {
            "requests" => t.requests as f64,
            "rps" => t.requests as f64 / secs,
            "errors" => t.errors as f64,
            "error_rate" => t.errors as f64 / t.requests as f64,
            "p50_ms" => t.quantile_ms(0.50).unwrap_or(f64::NAN),
            "p95_ms" => t.quantile_ms(0.95).unwrap_or(f64::NAN),
            "p99_ms" => t.quantile_ms(0.99).unwrap_or(f64::NAN),
            _ => t.mean_ms().unwrap_or(f64::NAN),
        };
        Ok(MetricAnswer::Samples {
            samples: vec![Sample {
                at: query.to,
                value,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_syntax_names_the_measurement_and_the_color() {
        assert_eq!(
            parse_query("error_rate:blue").unwrap(),
            ("error_rate", Color::Blue)
        );
        assert_eq!(
            parse_query(" p95_ms : green ").unwrap(),
            ("p95_ms", Color::Green)
        );
        assert_eq!(
            parse_query("p99_ms{color=\"blue\"}").unwrap(),
            ("p99_ms", Color::Blue)
        );
        let e = parse_query("latency:blue").unwrap_err();
        assert!(
            e.to_string().contains("unknown measurement \"latency\""),
            "{e}"
        );
        assert!(parse_query("error_rate").is_err());
        assert!(parse_query("error_rate:purple").is_err());
    }

    #[test]
    fn concurrent_recording_takes_no_lock_and_the_totals_are_exact() {
        let m = ProxyMetrics::new(Duration::from_millis(1), Duration::from_millis(50));
        std::thread::scope(|s| {
            for t in 0..4u16 {
                let m = m.clone();
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        let status = if i % 100 == 0 { 500 + t } else { 200 };
                        m.record(
                            Color::Blue,
                            status,
                            Duration::from_micros(u64::from(i % 700)),
                        );
                    }
                });
            }
        });
        let total = m.total(Color::Blue);
        assert_eq!((total.requests, total.errors), (80_000, 800));
        assert_eq!(m.total(Color::Green).requests, 0);
        let recent = m.recent(Color::Blue, Duration::from_secs(60));
        assert!(recent.requests <= 80_000, "{recent:?}");
    }

    #[test]
    fn percentiles_come_from_the_histogram_within_a_bin() {
        let m = ProxyMetrics::default();
        let at = Timestamp(1_000_000);
        for i in 1..=100u64 {
            m.record_at(Color::Blue, at, 200, Duration::from_millis(i));
        }
        let f = m.figures_between(Color::Blue, at, at);
        assert_eq!(f.requests, 100);
        let p95 = f.p95_ms.unwrap();
        assert!((95.0 / 1.25..=95.0 * 1.25).contains(&p95), "p95 {p95}");
        let p50 = f.p50_ms.unwrap();
        assert!((50.0 / 1.25..=50.0 * 1.25).contains(&p50), "p50 {p50}");
    }

    #[tokio::test]
    async fn a_window_without_requests_is_no_data_and_errors_count_per_color() {
        let m = ProxyMetrics::default();
        let at = Timestamp(5_000_000);
        for i in 0..10 {
            m.record_at(
                Color::Green,
                at,
                if i == 0 { 503 } else { 200 },
                Duration::from_millis(3),
            );
        }
        let q = |text: &str, from: u64, to: u64| MetricQuery {
            check: "c".into(),
            query: text.into(),
            from: Timestamp(from),
            to: Timestamp(to),
            color: None,
            baseline: false,
        };
        match m
            .query(&q("error_rate:green", 4_999_000, 5_000_050))
            .await
            .unwrap()
        {
            MetricAnswer::Samples { samples } => assert_eq!(samples[0].value, 0.1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            m.query(&q("error_rate:blue", 4_999_000, 5_000_050))
                .await
                .unwrap(),
            MetricAnswer::NoData { .. }
        ));
        assert!(matches!(
            m.query(&q("error_rate:green", 6_000_000, 6_001_000))
                .await
                .unwrap(),
            MetricAnswer::NoData { .. }
        ));
        let text = m.prometheus_text(None);
        assert!(
            text.contains("bluegreen_proxy_requests_total{color=\"green\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("bluegreen_proxy_responses_5xx_total{color=\"green\"} 1"),
            "{text}"
        );
    }
}
