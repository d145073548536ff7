//! HTTP plumbing shared by the providers that speak HTTP (the Datadog and
//! Prometheus metrics sources, the HTTP smoke tests, webhook sinks), behind
//! the `http` feature: one way to build a [`reqwest::Client`] on rustls, to
//! classify a transport failure, to map an HTTP status to an [`ErrorKind`]
//! and to read a `Retry-After` hint.
//!
//! Messages never carry a URL's path or query (reqwest's error is stripped
//! of its URL first), so a key in a query string cannot leak through them.
//! The provider adds its name and the operation:
//! `transport_error(e, host).with_provider("prometheus").with_operation("query")`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::error::{source_chain, Error, ErrorKind, ErrorStatus, Result};

/// The time limit to open a connection (TCP and TLS) of every client built
/// by [`client`]: ten seconds, far above a healthy round trip, short enough
/// that an address that drops packets fails within one provider call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a client follows redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Never: a 3xx is returned to the caller. For every client that sends a
    /// secret in a header or its URL, since reqwest keeps custom headers on
    /// a redirect to another host.
    Never,
    /// reqwest's default (up to ten hops). Only for clients that send no secret.
    Follow,
}

/// A reqwest client on rustls with `user_agent`, [`CONNECT_TIMEOUT`] and the
/// given redirect policy. No request timeout is set: each call sets its own.
///
/// # Errors
///
/// [`ErrorKind::Other`] (operation `configure`) when the TLS backend cannot
/// be initialised.
pub fn client(
    provider: &'static str,
    user_agent: &str,
    redirects: Redirects,
) -> Result<reqwest::Client> {
    let policy = match redirects {
        Redirects::Never => reqwest::redirect::Policy::none(),
        Redirects::Follow => reqwest::redirect::Policy::default(),
    };
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(user_agent)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(policy)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("cannot build the HTTP client: {}", source_chain(&e)),
            )
            .with_provider(provider)
            .with_operation("configure")
        })
}

/// `host[:port]` of a URL, or the whole text when it has no `scheme://`.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    // Never show credentials written into the URL (`user:pass@host`).
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// A failed request to `host` as an [`Error`]:
///
/// | cause                      | kind          | status    |
/// |----------------------------|---------------|-----------|
/// | a TLS failure (certificate, handshake) | `Unavailable` | permanent |
/// | no answer in time          | `Timeout`     | temporary |
/// | cannot connect             | `Unavailable` | temporary |
/// | anything else (a reset)    | `Unavailable` | temporary |
///
/// The message names `host` and the whole cause chain, without the URL.
pub fn transport_error(e: reqwest::Error, host: &str) -> Error {
    let e = e.without_url();
    let cause = source_chain(&e);
    if is_tls_error(&e) {
        Error::new(
            ErrorKind::Unavailable,
            format!("TLS with {host} failed: {cause}"),
        )
        .with_status(ErrorStatus::Permanent)
    } else if e.is_timeout() {
        Error::new(
            ErrorKind::Timeout,
            format!("no answer from {host} in time: {cause}"),
        )
    } else if e.is_connect() {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot reach {host}: {cause}"),
        )
    } else {
        Error::new(
            ErrorKind::Unavailable,
            format!("request to {host} failed: {cause}"),
        )
    }
}

/// Whether a rustls error is among the causes of `e`: a certificate the
/// client does not trust, a failed handshake. Retrying does not help.
///
/// `io::Error::source` skips the error it wraps, so wrapped `io::Error`s are
/// opened by hand (hyper-rustls wraps tokio-rustls' `io::Error` around
/// rustls' error).
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        if is_tls_error(inner) {
            return true;
        }
    }
    e.source().is_some_and(is_tls_error)
}

/// The [`ErrorKind`] of an HTTP error status (its [`ErrorStatus`] is the
/// kind's [default](ErrorKind::default_status)):
///
/// | status        | kind               |
/// |---------------|--------------------|
/// | 400, 422      | `InvalidInput`     |
/// | 401, 403      | `PermissionDenied` |
/// | 404           | `NotFound`         |
/// | 408           | `Timeout`          |
/// | 409           | `Conflict`         |
/// | 429           | `RateLimited`      |
/// | 500–599       | `Unavailable`      |
/// | anything else | `Other`            |
pub fn status_kind(status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::InvalidInput,
        401 | 403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// The wait a `Retry-After` header asks for (RFC 9110, section 10.2.3):
/// delay-seconds, or an HTTP date taken relative to now (a date in the past
/// is no wait). Capped at [`MAX_RETRY_AFTER`]. `None` without the header or
/// when its value is neither form.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// [`retry_after`] of one header value at `now` (in [`retry`](crate::retry),
/// where the AWS providers, which do not use this module, read it too).
pub use crate::retry::parse_retry_after;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_RETRY_AFTER;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_caps_them() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 2015-10-21 07:28:00 GMT is now; 07:28:30 is 30 s away.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn statuses_map_to_the_kind_that_decides_a_retry() {
        let table = [
            (400, ErrorKind::InvalidInput, ErrorStatus::Permanent),
            (401, ErrorKind::PermissionDenied, ErrorStatus::Permanent),
            (403, ErrorKind::PermissionDenied, ErrorStatus::Permanent),
            (404, ErrorKind::NotFound, ErrorStatus::Permanent),
            (408, ErrorKind::Timeout, ErrorStatus::Temporary),
            (409, ErrorKind::Conflict, ErrorStatus::Permanent),
            (422, ErrorKind::InvalidInput, ErrorStatus::Permanent),
            (429, ErrorKind::RateLimited, ErrorStatus::Temporary),
            (500, ErrorKind::Unavailable, ErrorStatus::Temporary),
            (503, ErrorKind::Unavailable, ErrorStatus::Temporary),
            (418, ErrorKind::Other, ErrorStatus::Permanent),
        ];
        for (code, kind, status) in table {
            assert_eq!(status_kind(code), kind, "HTTP {code}");
            assert_eq!(status_kind(code).default_status(), status, "HTTP {code}");
        }
    }

    #[test]
    fn host_of_never_shows_the_path_or_credentials() {
        assert_eq!(
            host_of("https://api.datadoghq.eu/api/v1?k=x"),
            "api.datadoghq.eu"
        );
        assert_eq!(host_of("http://127.0.0.1:9090"), "127.0.0.1:9090");
        assert_eq!(host_of("https://user:pw@prom:9090/p"), "prom:9090");
    }

    #[test]
    fn a_wrapped_rustls_error_is_found_through_io_errors() {
        let tls = rustls::Error::General("bad certificate".into());
        let io = std::io::Error::other(tls);
        let outer = std::io::Error::other(io);
        assert!(is_tls_error(&outer));
        assert!(!is_tls_error(&std::io::Error::other("reset")));
    }
}
