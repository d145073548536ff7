//! Retries in one place: a [`RetryPolicy`] decides, from the
//! [`Operation`], the [`Error`] and the attempt, whether a failed call is
//! tried again and after how long; [`with_retry`] runs a call under it.
//!
//! # Who retries
//!
//! * **The driver retries provider calls.** Each command of the state
//!   machine runs under the deployment's policy
//!   ([`Builder::retry`](crate::Builder::retry), default
//!   [`RetryPolicy::default`]), each attempt bounded by the call timeout.
//!   Provider methods are idempotent by contract (see
//!   [`provider`](crate::provider)), except where an [`Operation`] says
//!   otherwise: [`MigrationRunner::backup`](crate::MigrationRunner::backup)
//!   may take a second backup when repeated, so the driver calls it as
//!   [`Operation::non_idempotent`].
//! * **Providers do not retry underneath.** A provider makes one attempt per
//!   call and returns an error whose [`ErrorKind`] and
//!   [`ErrorStatus`](crate::ErrorStatus) say whether another may help, with a
//!   [`retry_after`](Error::retry_after) hint when its backend gave one (an
//!   HTTP `Retry-After`, Datadog's `X-RateLimit-Reset`).
//! * **One exception, set explicitly: the AWS SDK retries one HTTP call.**
//!   An AWS provider operation is several SDK calls (`prepare` four or
//!   more, `drain_period` one per target group); if a throttled call failed
//!   the whole operation, an operation would never get through while every
//!   other call is throttled (measured on moto: the reference deployment
//!   rolls back in preflight with the SDK's retries off, and completes with
//!   1.99× the calls with them on; see `docs/providers.md`). So the
//!   binary's `SdkConfig` sets `RetryConfig::standard()` (3 attempts of one
//!   call) and the driver's policy retries the whole operation: at most
//!   3 × `max_attempts` calls. A call AWS may have applied is never retried
//!   by the SDK when it is not idempotent (`bluegreen-ecs` forbids it for
//!   `RegisterTaskDefinition`).
//! * **Event sinks retry themselves**, under this same policy type: the
//!   driver does not retry a notification (a notification never holds a
//!   deployment up), so a sink that wants retries calls [`with_retry`],
//!   marking the post [`Operation::non_idempotent`] when a repeat would post
//!   twice.
//! * **Not retries of an error**, and so not decided here: the machine's
//!   read-back of a traffic change (a journaled protocol with its own
//!   deterministic waits), a smoke test's or hook's `retries` (a check that
//!   fails is tried again, as the plan says), the Postgres runner's retries
//!   of one statement after `lock_timeout` inside one `apply` call (see
//!   `bluegreen_postgres::MigrationSettings`), and the local proxy's
//!   reconnects (user traffic, not a provider call).
//!
//! # The decision
//!
//! [`RetryPolicy::decide`], in this order:
//!
//! 1. a permanent (or already persistent) error: give up;
//! 2. a non-idempotent operation: retry only a throttled call
//!    ([`ErrorKind::RateLimited`]: refused before it did anything); any
//!    other error (a timeout, a reset connection) may have come after the
//!    call took effect, so give up;
//! 3. `max_attempts` used: give up (the error becomes
//!    [`Persistent`](crate::ErrorStatus::Persistent));
//! 4. otherwise retry after the longer of the backoff and the error's
//!    `retry_after` hint (capped at [`MAX_RETRY_AFTER`](crate::MAX_RETRY_AFTER)).
//!    The backoff is `initial_backoff · 2^attempt`, capped at `max_backoff`,
//!    then, with `jitter`, scaled by a factor in `[0.5, 1]` from a draw in
//!    `[0, 1)` (equal jitter: never shorter than half the backoff).

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind, Result, MAX_RETRY_AFTER};

/// A provider call as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The provider, e.g. `compute`, `datadog`.
    pub provider: &'static str,
    /// The operation, e.g. `scale`, `query`.
    pub name: &'static str,
    /// Whether calling it again after an unknown outcome (a timeout) has the
    /// effect of one call.
    pub idempotent: bool,
}

impl Operation {
    /// An operation that may be repeated (every provider trait method's contract).
    pub const fn idempotent(provider: &'static str, name: &'static str) -> Self {
        Operation {
            provider,
            name,
            idempotent: true,
        }
    }

    /// An operation whose repeat may act twice (take a second backup, post a
    /// second notification): retried only when throttled.
    pub const fn non_idempotent(provider: &'static str, name: &'static str) -> Self {
        Operation {
            provider,
            name,
            idempotent: false,
        }
    }
}

/// `(provider, operation)`, as [`Action::operation`](crate::machine::Action::operation)
/// names it: an idempotent operation.
impl From<(&'static str, &'static str)> for Operation {
    fn from((provider, name): (&'static str, &'static str)) -> Self {
        Operation::idempotent(provider, name)
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Call again after this wait.
    Retry {
        /// The wait before the next attempt.
        after: Duration,
    },
    /// Return the error.
    GiveUp(GiveUp),
}

/// Why a policy gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The error is permanent (or already persistent): a retry cannot help.
    Permanent,
    /// The operation is not idempotent and the error does not show that the
    /// call did nothing.
    NotIdempotent,
    /// Every attempt the policy allows was made.
    Exhausted,
}

/// Retries of temporary errors: capped exponential backoff with jitter, a
/// provider's `retry_after` hint as the floor of the wait. See the
/// [module docs](self) for the decision and for who retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
    /// Jitter: each backoff is drawn from `[backoff/2, backoff]`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// Five attempts, backoff 500 ms doubling to at most 30 s, with jitter:
    /// 3.75 to 7.5 s of waiting in all before a call's fifth attempt,
    /// well inside the one-minute traffic deadline.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before attempt `attempt + 1` (0-based), with a random
    /// jitter draw.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, rand::random::<f64>())
    }

    /// The backoff before attempt `attempt + 1` (0-based) for the jitter
    /// draw `draw` in `[0, 1]` (ignored without jitter): 0 gives half the
    /// backoff, 1 all of it.
    pub fn backoff_with(&self, attempt: u32, draw: f64) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        if self.jitter {
            exp.mul_f64(0.5 + draw.clamp(0.0, 1.0) * 0.5)
        } else {
            exp
        }
    }

    /// Whether `error` after `attempt` (0-based) of an idempotent operation
    /// deserves another try.
    pub fn should_retry(&self, error: &Error, attempt: u32) -> bool {
        let op = Operation::idempotent("", "");
        matches!(
            self.decide(&op, error, attempt, 0.0),
            Decision::Retry { .. }
        )
    }

    /// What to do after `attempt` (0-based) of `op` failed with `error`,
    /// for the jitter draw `draw` in `[0, 1)`. See the [module docs](self).
    pub fn decide(&self, op: &Operation, error: &Error, attempt: u32, draw: f64) -> Decision {
        if !error.is_temporary() {
            return Decision::GiveUp(GiveUp::Permanent);
        }
        if !op.idempotent && error.kind() != ErrorKind::RateLimited {
            return Decision::GiveUp(GiveUp::NotIdempotent);
        }
        if attempt.saturating_add(1) >= self.max_attempts {
            return Decision::GiveUp(GiveUp::Exhausted);
        }
        let after = self
            .backoff_with(attempt, draw)
            .max(error.retry_after().unwrap_or_default());
        Decision::Retry { after }
    }
}

/// Runs `call` under `policy`, each attempt bounded by `timeout`, waiting
/// between attempts what [`RetryPolicy::decide`] says. A timeout is a
/// temporary [`ErrorKind::Timeout`]; a temporary error that outlives the
/// policy comes back [`ErrorStatus::Persistent`](crate::ErrorStatus). A
/// `(provider, operation)` pair is an idempotent [`Operation`].
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    timeout: Duration,
    operation: impl Into<Operation>,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let op = operation.into();
    let mut attempt = 0;
    loop {
        let result = match tokio::time::timeout(timeout, call()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
            .with_provider(op.provider)
            .with_operation(op.name)),
        };
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match policy.decide(&op, &e, attempt, rand::random::<f64>()) {
            Decision::Retry { after } => {
                tracing::debug!(
                    provider = op.provider,
                    operation = op.name,
                    attempt,
                    wait_ms = after.as_millis() as u64,
                    error = %e,
                    "retrying"
                );
                tokio::time::sleep(after).await;
                attempt += 1;
            }
            Decision::GiveUp(GiveUp::Exhausted) => return Err(e.persistent()),
            Decision::GiveUp(_) => return Err(e),
        }
    }
}

/// The wait an HTTP `Retry-After` value asks for at `now` (RFC 9110,
/// section 10.2.3): delay-seconds, or an HTTP date (a date in the past is
/// no wait). Capped at [`MAX_RETRY_AFTER`]. `None` when it is neither form.
/// Providers put it on their error with
/// [`Error::with_retry_after`]; [`RetryPolicy::decide`] waits at least that long.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorStatus, MAX_RETRY_AFTER};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Every rule of the decision, on one policy (3 attempts, 100 ms
    /// doubling to 1 s, with jitter), with fixed jitter draws.
    #[test]
    fn the_policy_decides_from_operation_error_attempt_and_hint() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: ms(100),
            max_backoff: secs(1),
            jitter: true,
        };
        let read = Operation::idempotent("compute", "status");
        let backup = Operation::non_idempotent("migrations", "backup");
        let throttled = || Error::new(ErrorKind::RateLimited, "Rate exceeded");
        let unavailable = || Error::new(ErrorKind::Unavailable, "HTTP 503");
        let timeout = || Error::new(ErrorKind::Timeout, "no answer");
        let denied = || Error::new(ErrorKind::PermissionDenied, "HTTP 403");
        let retry = |after| Decision::Retry { after };
        let give_up = Decision::GiveUp;
        // (operation, error, attempt, jitter draw) -> decision
        let table: Vec<(Operation, Error, u32, f64, Decision)> = vec![
            // Equal jitter: a draw of 0 is half the backoff, of 1 all of it.
            (read, unavailable(), 0, 0.0, retry(ms(50))),
            (read, unavailable(), 0, 0.5, retry(ms(75))),
            (read, unavailable(), 1, 0.0, retry(ms(100))),
            (read, timeout(), 1, 1.0, retry(ms(200))),
            // The last attempt: give up.
            (read, unavailable(), 2, 0.0, give_up(GiveUp::Exhausted)),
            // A permanent kind, or a temporary kind the provider marked permanent.
            (read, denied(), 0, 0.0, give_up(GiveUp::Permanent)),
            (
                read,
                unavailable().with_status(ErrorStatus::Permanent),
                0,
                0.0,
                give_up(GiveUp::Permanent),
            ),
            (
                read,
                unavailable().persistent(),
                0,
                0.0,
                give_up(GiveUp::Permanent),
            ),
            // A provider marks a kind temporary that is not by default.
            (
                read,
                Error::conflict("service is updating").with_status(ErrorStatus::Temporary),
                0,
                1.0,
                retry(ms(100)),
            ),
            // A retry-after hint is the floor of the wait ...
            (
                read,
                throttled().with_retry_after(secs(20)),
                0,
                0.0,
                retry(secs(20)),
            ),
            // ... and a shorter hint does not shorten the backoff.
            (
                read,
                throttled().with_retry_after(ms(10)),
                1,
                0.0,
                retry(ms(100)),
            ),
            // A hint beyond MAX_RETRY_AFTER is cut to it.
            (
                read,
                throttled().with_retry_after(secs(86_400)),
                0,
                0.0,
                retry(MAX_RETRY_AFTER),
            ),
            // Non-idempotent: only a throttled call (refused before acting) is retried.
            (
                backup,
                throttled().with_retry_after(secs(2)),
                0,
                0.0,
                retry(secs(2)),
            ),
            (backup, timeout(), 0, 0.0, give_up(GiveUp::NotIdempotent)),
            (
                backup,
                unavailable(),
                0,
                0.0,
                give_up(GiveUp::NotIdempotent),
            ),
            (backup, throttled(), 2, 0.0, give_up(GiveUp::Exhausted)),
            (backup, denied(), 0, 0.0, give_up(GiveUp::Permanent)),
        ];
        for (op, error, attempt, draw, want) in table {
            assert_eq!(
                policy.decide(&op, &error, attempt, draw),
                want,
                "{} {} after attempt {attempt}, draw {draw}: {error}",
                op.provider,
                op.name
            );
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_jitter_never_halves_it_further() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: ms(500),
            max_backoff: secs(30),
            jitter: false,
        };
        let waits: Vec<Duration> = (0..8).map(|a| policy.backoff_with(a, 0.3)).collect();
        assert_eq!(
            waits,
            [
                ms(500),
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(30),
                secs(30)
            ]
        );
        let jittered = RetryPolicy {
            jitter: true,
            ..policy
        };
        for attempt in 0..40 {
            let b = jittered.backoff(attempt);
            let cap = policy.backoff_with(attempt, 0.0);
            assert!(
                b >= cap / 2 && b <= cap,
                "attempt {attempt}: {b:?} of {cap:?}"
            );
        }
    }

    /// A throttled call that says "retry after 20 s" is not called again
    /// sooner, although the policy's own backoff is 100 ms.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_call_waits_the_providers_retry_after_hint() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: ms(100),
            max_backoff: secs(1),
            jitter: false,
        };
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let mut at = Vec::new();
        let out = with_retry(&policy, secs(5), ("aws", "scale"), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            at.push(started.elapsed());
            async move {
                if n == 0 {
                    Err(Error::new(ErrorKind::RateLimited, "Rate exceeded")
                        .with_retry_after(secs(20)))
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(out, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(at, vec![Duration::ZERO, secs(20)]);
    }

    /// A backup that timed out may still be running: it is not started a
    /// second time; the error comes back as it was (temporary, not persistent).
    #[tokio::test(start_paused = true)]
    async fn a_timed_out_non_idempotent_call_is_made_once() {
        let calls = AtomicU32::new(0);
        let e = with_retry(
            &RetryPolicy::default(),
            secs(1),
            Operation::non_idempotent("migrations", "backup"),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<()>>()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.status(), ErrorStatus::Temporary);
    }

    /// A temporary error still failing after every attempt is persistent.
    #[tokio::test(start_paused = true)]
    async fn a_temporary_error_that_outlives_the_policy_is_persistent() {
        let calls = AtomicU32::new(0);
        let e = with_retry(
            &RetryPolicy::default(),
            secs(1),
            ("router", "set_split"),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Error::unavailable("HTTP 503")) }
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(e.status(), ErrorStatus::Persistent);
    }

    /// A hint beyond [`MAX_RETRY_AFTER`] is capped there.
    #[test]
    fn a_retry_after_hint_is_capped() {
        let e = Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(secs(86_400));
        assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER));
    }
}
