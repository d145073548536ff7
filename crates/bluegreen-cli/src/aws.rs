//! The AWS configuration of the `ecs` target, built without `aws-config`:
//! the spec's region and endpoint override, credentials from the standard
//! environment variables, rustls for HTTPS.

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_types::retry::RetryConfig;
use aws_types::region::Region;
use aws_types::SdkConfig;
use bluegreen_core::{Error, Result};

/// The variables credentials are read from.
pub const ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
/// The secret key's variable.
pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";
/// The session token's variable (optional).
pub const SESSION_TOKEN_ENV: &str = "AWS_SESSION_TOKEN";

/// An `SdkConfig` for `region`, pointed at `endpoint_url` when given (an
/// emulator), with credentials from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, and standard retries.
///
/// Profiles, SSO and instance roles are not read (they need `aws-config`):
/// export the variables, e.g. with `aws configure export-credentials --format env`.
pub fn sdk_config(region: &str, endpoint_url: Option<&str>) -> Result<SdkConfig> {
    let fail = |m: String| {
        Error::invalid_input(m)
            .with_provider("aws")
            .with_operation("configure")
    };
    if region.trim().is_empty() {
        return Err(fail("target.ecs.region must not be empty".into()));
    }
    let access = std::env::var(ACCESS_KEY_ENV).ok().filter(|v| !v.is_empty());
    let secret = std::env::var(SECRET_KEY_ENV).ok().filter(|v| !v.is_empty());
    let (Some(access), Some(secret)) = (access, secret) else {
        return Err(fail(format!(
            "no AWS credentials: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} (and {SESSION_TOKEN_ENV} for temporary credentials); this binary does not read profiles, SSO or instance roles, so export them first, e.g. `eval $(aws configure export-credentials --format env)`"
        )));
    };
    let token = std::env::var(SESSION_TOKEN_ENV)
        .ok()
        .filter(|v| !v.is_empty());
    let http = match endpoint_url {
        Some(e) if e.starts_with("http://") => aws_smithy_http_client::Builder::new().build_http(),
        Some(e) if !e.starts_with("https://") => {
            return Err(fail(format!(
                "target.ecs.endpoint_url {e:?}: expected an http:// or https:// URL"
            )))
        }
        _ => aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https(),
    };
    let mut b = SdkConfig::builder()
        .region(Region::new(region.to_string()))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            access,
            secret,
            token,
            None,
            "environment",
        )))
        .http_client(http)
        .retry_config(RetryConfig::standard())
        .behavior_version(BehaviorVersion::latest());
    if let Some(e) = endpoint_url {
        b = b.endpoint_url(e);
    }
    Ok(b.build())
}

/// How long [`reachable`] waits for a connection.
pub const REACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks that `endpoint_url` (`target.ecs.endpoint_url`) accepts a TCP
/// connection; the error names the endpoint and why (`connection
/// refused`, a name that does not resolve, a timeout).
pub async fn reachable(endpoint_url: &str) -> Result<()> {
    let fail = |why: String| {
        Error::unavailable(format!("target.ecs.endpoint_url {endpoint_url}: {why}"))
            .with_provider("aws")
            .with_operation("connect")
    };
    let (default_port, rest) = match endpoint_url.split_once("://") {
        Some(("http", r)) => (80, r),
        Some(("https", r)) => (443, r),
        _ => return Err(fail("expected an http:// or https:// URL".into())),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = addr.replace(['[', ']'], "");
    let addr = match addr.rsplit_once(':') {
        Some((h, p)) if h.contains(':') => format!("[{h}]:{p}"),
        _ => addr,
    };
    match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(fail("connection refused".into()))
        }
        Ok(Err(e)) => Err(fail(format!("cannot connect: {e}"))),
        Err(_) => Err(fail(format!(
            "no connection within {}",
            humantime::format_duration(REACH_TIMEOUT)
        ))),
    }
}
