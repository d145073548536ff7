//! How PostgreSQL, process and file failures map into [`bluegreen_core::Error`].

use bluegreen_core::error::source_chain;
use bluegreen_core::{Error, ErrorKind, ErrorStatus};
use tokio_postgres::error::{DbError, SqlState};

/// The provider name every error of this crate carries.
pub(crate) const PROVIDER: &str = "postgres";

/// The SQLSTATE of `e`, when the server sent one.
pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// True when the server refused a lock within `lock_timeout` (55P03).
pub(crate) fn is_lock_not_available(e: &tokio_postgres::Error) -> bool {
    sqlstate(e) == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// The kind and status of a server error class.
fn classify(code: &str) -> (ErrorKind, ErrorStatus) {
    use ErrorKind::*;
    use ErrorStatus::*;
    match code {
        "55P03" | "57014" => (Timeout, Temporary),
        "40001" | "40P01" => (Conflict, Temporary),
        "3D000" | "42P01" | "42703" | "42883" | "3F000" => (NotFound, Permanent),
        "42501" => (PermissionDenied, Permanent),
        c if c.starts_with("28") => (PermissionDenied, Permanent),
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            (Unavailable, Temporary)
        }
        c if c.starts_with("42") || c.starts_with("22") || c.starts_with("2B") => {
            (InvalidInput, Permanent)
        }
        c if c.starts_with("23") || c.starts_with("25") || c.starts_with("55") => {
            (Conflict, Permanent)
        }
        _ => (Other, Permanent),
    }
}

/// A one-line description of a server error: severity, message, SQLSTATE,
/// detail and hint.
pub(crate) fn describe_db_error(db: &DbError) -> String {
    let mut s = format!(
        "{} {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(d) = db.detail() {
        s.push_str(&format!("; detail: {d}"));
    }
    if let Some(h) = db.hint() {
        s.push_str(&format!("; hint: {h}"));
    }
    s
}

/// Maps a driver error into the public error, with `context` in front of the
/// cause (e.g. `cannot read the ledger of postgres://app@db:5432/orders`).
///
/// `context` must not contain a secret; the driver's own messages never
/// contain the password.
pub(crate) fn map_pg(e: tokio_postgres::Error, operation: &'static str, context: &str) -> Error {
    let (kind, status, cause) = match e.as_db_error() {
        Some(db) => {
            let (k, s) = classify(db.code().code());
            (k, s, describe_db_error(db))
        }
        None if e.is_closed() => (
            ErrorKind::Unavailable,
            ErrorStatus::Temporary,
            "the connection to the server was closed".to_string(),
        ),
        None => {
            let text = source_chain(&e);
            if text.contains("invalid configuration") {
                (ErrorKind::InvalidInput, ErrorStatus::Permanent, text)
            } else if text.contains("certificate") || text.contains("InvalidCertificate") {
                (ErrorKind::PermissionDenied, ErrorStatus::Permanent, text)
            } else if text.contains("timeout") || text.contains("timed out") {
                (ErrorKind::Timeout, ErrorStatus::Temporary, text)
            } else {
                (ErrorKind::Unavailable, ErrorStatus::Temporary, text)
            }
        }
    };
    Error::new(kind, format!("{context}: {cause}"))
        .with_status(status)
        .with_provider(PROVIDER)
        .with_operation(operation)
}

/// An error of `kind` from this provider, for `operation`.
pub(crate) fn err(kind: ErrorKind, operation: &'static str, message: impl Into<String>) -> Error {
    Error::new(kind, message)
        .with_provider(PROVIDER)
        .with_operation(operation)
}

/// Replaces every occurrence of `secret` in `text` (a belt to the driver's
/// braces: messages built from server or tool output never show it).
pub(crate) fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    }
}
