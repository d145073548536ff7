//! The one public error type of bluegreen and its classification.
//!
//! Every provider maps its own failures into [`Error`], with an [`ErrorKind`]
//! that says *what* went wrong and an [`ErrorStatus`] that says whether trying
//! again may help. The driver's [`RetryPolicy`](crate::RetryPolicy) decides on
//! retries from the status alone, never from the message text.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of which provider reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The resource the call names does not exist (a service, a rule, a secret).
    NotFound,
    /// The caller's input is invalid (a plan field, an ARN, a spec file).
    InvalidInput,
    /// The provider answered something that cannot be true: a negative count,
    /// an unknown color, a split that does not add up to 100.
    InvalidResponse,
    /// Credentials were refused or lack a permission.
    PermissionDenied,
    /// The provider asked us to slow down.
    RateLimited,
    /// The provider or the network is unavailable (5xx, connection refused).
    Unavailable,
    /// The call did not finish within its time limit.
    Timeout,
    /// The state of the resource does not allow the call (a rule that forwards
    /// to a third target group, a dirty migration, a changed applied file).
    Conflict,
    /// Another deployer holds the lease on this service.
    LeaseHeld,
    /// This deployer's lease was taken over; its writes are rejected.
    Fenced,
    /// Stored data is damaged (a journal line that does not parse).
    Corrupt,
    /// The operation is not supported by this provider.
    Unsupported,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The status an error of this kind has when the provider does not say.
    pub fn default_status(self) -> ErrorStatus {
        match self {
            ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Timeout => {
                ErrorStatus::Temporary
            }
            _ => ErrorStatus::Permanent,
        }
    }

    /// A short lowercase name, as used in messages and journals.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::InvalidResponse => "invalid response",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::LeaseHeld => "lease held",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether trying the same call again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorStatus {
    /// May succeed if retried (throttling, 5xx, a timeout).
    Temporary,
    /// Will not succeed if retried unchanged.
    Permanent,
    /// Was temporary, and is still failing after the retry policy gave up.
    Persistent,
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorStatus::Temporary => "temporary",
            ErrorStatus::Permanent => "permanent",
            ErrorStatus::Persistent => "persistent",
        })
    }
}

/// The longest provider retry hint honoured: a hint beyond it (a clock skew,
/// a daily quota's reset) is capped, so one answer cannot park a call for
/// long. Five minutes. The wait still counts against the stage's progress
/// deadline (`traffic` is one minute by default): a hint longer than what is
/// left of it ends in that deadline's rollback.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every bluegreen operation.
///
/// It carries the [`ErrorKind`], the [`ErrorStatus`], the provider and the
/// operation it came from, a message, and optionally the underlying source.
/// Messages never contain secret values: providers redact before building one.
#[non_exhaustive]
pub struct Error {
    kind: ErrorKind,
    status: ErrorStatus,
    provider: Cow<'static, str>,
    operation: Cow<'static, str>,
    message: String,
    retry_after: Option<std::time::Duration>,
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind`, with the kind's default status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            status: kind.default_status(),
            provider: Cow::Borrowed(""),
            operation: Cow::Borrowed(""),
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Sets the provider the error came from (e.g. `"ecs"`).
    pub fn with_provider(mut self, provider: impl Into<Cow<'static, str>>) -> Self {
        self.provider = provider.into();
        self
    }

    /// Sets the operation that failed (e.g. `"scale"`).
    pub fn with_operation(mut self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.operation = operation.into();
        self
    }

    /// Sets the status, overriding the kind's default.
    pub fn with_status(mut self, status: ErrorStatus) -> Self {
        self.status = status;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Records the provider's hint of how long to wait before calling again
    /// (an HTTP `Retry-After`, a rate limit's reset time). The driver's
    /// retries wait at least this long; a hint above
    /// [`MAX_RETRY_AFTER`] is capped there.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait.min(MAX_RETRY_AFTER));
        self
    }

    /// The provider's hint of how long to wait before calling again, if it
    /// gave one. See [`with_retry_after`](Self::with_retry_after).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Marks a temporary error as still failing after retries.
    pub fn persistent(mut self) -> Self {
        if self.status == ErrorStatus::Temporary {
            self.status = ErrorStatus::Persistent;
        }
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry may help.
    pub fn status(&self) -> ErrorStatus {
        self.status
    }

    /// True when the status is [`ErrorStatus::Temporary`].
    pub fn is_temporary(&self) -> bool {
        self.status == ErrorStatus::Temporary
    }

    /// The provider that reported the error, or `""`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The operation that failed, or `""`.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The message, without provider and operation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidResponse`] error: the provider
    /// answered something that cannot be true.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse, message)
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for an [`ErrorKind::Unavailable`] (temporary) error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for an [`ErrorKind::Timeout`] (temporary) error.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// Shorthand for an [`ErrorKind::Conflict`] error.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// A serializable summary of this error, for journals and reports.
    pub fn to_record(&self) -> ErrorRecord {
        ErrorRecord {
            kind: self.kind,
            status: self.status,
            provider: self.provider.to_string(),
            operation: self.operation.to_string(),
            message: self.to_string(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("status", &self.status)
            .field("provider", &self.provider)
            .field("operation", &self.operation)
            .field("message", &self.message);
        if let Some(wait) = self.retry_after {
            d.field("retry_after", &wait);
        }
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.provider.is_empty(), self.operation.is_empty()) {
            (false, false) => write!(f, "{} {}: ", self.provider, self.operation)?,
            (false, true) => write!(f, "{}: ", self.provider)?,
            (true, false) => write!(f, "{}: ", self.operation)?,
            (true, true) => {}
        }
        write!(f, "{} ({}, {})", self.message, self.kind, self.status)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        Error::invalid_input(e.to_string()).with_operation("plan")
    }
}

/// The serializable form of an [`Error`], as journals and reports keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Whether a retry may help.
    pub status: ErrorStatus,
    /// The provider it came from.
    pub provider: String,
    /// The operation that failed.
    pub operation: String,
    /// The full message.
    pub message: String,
}

impl fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A plan (or spec) that failed validation: the path of the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// The dotted path of the offending field, e.g. `analysis[1].interval`.
    pub field: String,
    /// What is wrong with it and what was expected.
    pub message: String,
}

impl PlanError {
    /// A new validation error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PlanError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error and its sources, joined by `: `, each shown once: an empty
/// message, or one whose text an earlier part already contains, is left out
/// (reqwest, hyper and the AWS SDK repeat their cause in their own message).
/// The one way every crate renders an error chain for a person.
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(s) = cur {
        let t = s.to_string();
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_repeated_in_its_wrapper_is_shown_once() {
        #[derive(Debug)]
        struct Wrap(std::io::Error, &'static str);
        impl fmt::Display for Wrap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.1)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            source_chain(&Wrap(refused(), "client error (Connect)")),
            "client error (Connect): connection refused"
        );
        assert_eq!(
            source_chain(&Wrap(refused(), "tcp connect error: connection refused")),
            "tcp connect error: connection refused"
        );
        // An empty message (some SDK wrappers display nothing) is left out.
        assert_eq!(source_chain(&Wrap(refused(), "")), "connection refused");
    }

    #[test]
    fn status_comes_from_the_kind_unless_set() {
        assert!(Error::unavailable("down").is_temporary());
        assert!(!Error::not_found("gone").is_temporary());
        let e = Error::new(ErrorKind::Other, "x").with_status(ErrorStatus::Temporary);
        assert!(e.is_temporary());
        assert_eq!(e.persistent().status(), ErrorStatus::Persistent);
    }

    #[test]
    fn display_names_provider_and_operation() {
        let e = Error::not_found("service order-api-blue does not exist")
            .with_provider("ecs")
            .with_operation("status");
        assert_eq!(
            e.to_string(),
            "ecs status: service order-api-blue does not exist (not found, permanent)"
        );
        assert_eq!(e.to_record().provider, "ecs");
    }
}
