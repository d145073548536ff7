#![doc = include_str!("../README.md")]

mod alarms;
mod logs;
mod metrics;
mod query;

pub use alarms::CloudWatchAlarms;
pub use logs::CloudWatchLogs;
pub use metrics::{CloudWatchMetrics, DEFAULT_PERIOD};

use bluegreen_core::Error;

/// The provider name used in errors.
pub const PROVIDER: &str = "cloudwatch";

/// The IAM actions this crate calls, as listed in `docs/iam-policy.json`.
pub const IAM_ACTIONS: &[&str] = &[
    "cloudwatch:DescribeAlarms",
    "cloudwatch:GetMetricData",
    "logs:DescribeLogStreams",
    "logs:FilterLogEvents",
];

/// `error` with the check it was for named first, the way every error of
/// this crate reads (`check "error-rate": …`).
pub(crate) fn with_check(check: &str, error: Error) -> Error {
    let mut e = Error::new(
        error.kind(),
        format!("check {check:?}: {}", error.message()),
    )
    .with_status(error.status())
    .with_provider(PROVIDER);
    if !error.operation().is_empty() {
        e = e.with_operation(error.operation().to_string());
    }
    match error.retry_after() {
        Some(wait) => e.with_retry_after(wait),
        None => e,
    }
}
