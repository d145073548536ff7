//! The AWS configuration of the `ecs` target: credentials and region as the
//! AWS SDKs resolve them (`aws-config`'s default chain, a profile, an
//! assumed role), the spec's region and endpoint override, rustls on ring
//! for HTTPS; and the identity a deployment runs as (STS GetCallerIdentity).
//!
//! Credentials are never read into static values: the chain's providers
//! (web identity, SSO, container and instance roles, assume-role) refresh
//! through the SDK's identity cache before they expire, so a deployment
//! longer than one set of temporary credentials keeps running.

use std::fmt;
use std::sync::Mutex;

use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_types::retry::RetryConfig;
use aws_types::region::Region;
use aws_types::SdkConfig;
use bluegreen_core::error::source_chain;
use bluegreen_core::{Error, Result};

use crate::spec::EcsTarget;

/// The session name of an assumed role when `target.ecs.session_name` is
/// not given.
pub const DEFAULT_SESSION_NAME: &str = "bluegreen";

fn fail(m: String) -> Error {
    Error::invalid_input(m)
        .with_provider("aws")
        .with_operation("configure")
}

/// The HTTP client of every AWS call (the SDK clients', and the credential
/// providers' own: STS, SSO, the container and instance endpoints):
/// plain HTTP for an `http://` emulator, else rustls on ring.
fn http_client(endpoint_url: Option<&str>) -> Result<SharedHttpClient> {
    if let Some(e) =
        endpoint_url.filter(|e| !e.starts_with("http://") && !e.starts_with("https://"))
    {
        return Err(fail(format!(
            "target.ecs.endpoint_url {e:?}: expected an http:// or https:// URL"
        )));
    }
    // Serves http:// (an emulator) and https://.
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https())
}

/// What the configuration of `e` depends on, for [`sdk_config`]'s cache.
type Key = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn key(e: &EcsTarget) -> Key {
    (
        e.region.clone(),
        e.endpoint_url.clone(),
        e.profile.clone(),
        e.role_arn.clone(),
        e.external_id.clone(),
        e.session_name.clone(),
    )
}

/// Configurations built in this process: the preflight's identity check and
/// the providers share one (one credential resolution, one assumed role,
/// one identity cache refreshing for both).
static BUILT: Mutex<Vec<(Key, SdkConfig)>> = Mutex::new(Vec::new());

/// The `SdkConfig` of `target.ecs`: credentials from `aws-config`'s default
/// chain (the environment; the shared config and credentials files, with
/// `profile` if given; SSO; web identity; the ECS container role; the EC2
/// instance role over IMDSv2), then, with `role_arn`, that role assumed
/// through STS with `external_id` and `session_name`. The region is the
/// spec's, else the chain's (`AWS_REGION`, the profile's, the instance's).
/// Pointed at `endpoint_url` when given (an emulator), standard retries,
/// rustls on ring.
///
/// Nothing is resolved here but the region: credentials are fetched on the
/// first call and refreshed before they expire.
pub async fn sdk_config(e: &EcsTarget) -> Result<SdkConfig> {
    let k = key(e);
    if let Some((_, c)) = BUILT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(x, _)| *x == k)
    {
        return Ok(c.clone());
    }
    let http = http_client(e.endpoint_url.as_deref())?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard());
    if let Some(r) = &e.region {
        if r.trim().is_empty() {
            return Err(fail("target.ecs.region must not be empty".into()));
        }
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &e.profile {
        loader = loader.profile_name(p);
    }
    if let Some(u) = &e.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let base = loader.load().await;
    if base.region().is_none() {
        return Err(fail(
            "target.ecs.region is not set and the AWS configuration gives no region \
             (AWS_REGION, the profile's `region`, or the instance's): set target.ecs.region"
                .into(),
        ));
    }
    let config = match &e.role_arn {
        None => base,
        Some(role) => {
            let mut b = AssumeRoleProvider::builder(role)
                .session_name(e.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME));
            if let Some(x) = &e.external_id {
                b = b.external_id(x);
            }
            let assumed = b.configure(&base).build().await;
            base.into_builder()
                .credentials_provider(SharedCredentialsProvider::new(assumed))
                .build()
        }
    };
    BUILT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((k, config.clone()));
    Ok(config)
}

/// Checks the credential keys of `target.ecs`: `region` and `profile` not
/// empty; `role_arn` an IAM role ARN (`arn:aws:iam::123456789012:role/NAME`);
/// `external_id` (2 to 1224 characters) and `session_name` (2 to 64) only
/// with `role_arn`, of the characters STS accepts. Errors are (field,
/// message).
pub(crate) fn validate_target(e: &EcsTarget) -> std::result::Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((format!("target.ecs.{f}"), m));
    for (f, v) in [("region", &e.region), ("profile", &e.profile)] {
        if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return err(
                f,
                "must not be empty: give it, or leave the key out for the AWS configuration's"
                    .into(),
            );
        }
    }
    if let Some(r) = &e.role_arn {
        if !is_role_arn(r) {
            return err(
                "role_arn",
                format!("{r:?} is not an IAM role ARN: expected e.g. \"arn:aws:iam::123456789012:role/deployer\""),
            );
        }
    }
    let sts_chars = |v: &str, extra: &str| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) || extra.contains(c))
    };
    for (f, v, max, extra) in [
        ("external_id", &e.external_id, 1224, ":/"),
        ("session_name", &e.session_name, 64, ""),
    ] {
        let Some(v) = v else { continue };
        if e.role_arn.is_none() {
            return err(
                f,
                "only applies to an assumed role: give target.ecs.role_arn too".into(),
            );
        }
        if v.len() < 2 || v.len() > max || !sts_chars(v, extra) {
            return err(
                f,
                format!("must be 2 to {max} characters of letters, digits and _+=,.@-{extra}"),
            );
        }
    }
    Ok(())
}

fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return false;
    };
    let name = resource
        .strip_prefix("role/")
        .and_then(|r| r.rsplit('/').next());
    arn == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name.is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        })
}

/// The identity calls are made as: STS GetCallerIdentity's answer. Holds
/// no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account, e.g. `123456789012`.
    pub account: String,
    /// The caller's ARN, e.g.
    /// `arn:aws:sts::123456789012:assumed-role/deployer/bluegreen`.
    pub arn: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}, {}", self.account, self.arn)
    }
}

/// Where the credentials of `e` come from, in words, for errors.
fn source(e: &EcsTarget) -> String {
    let mut s = match &e.profile {
        Some(p) => format!("target.ecs.profile {p:?}"),
        None => "the default credential chain (environment, shared config and credentials files, \
                 SSO, web identity, container role, instance role)"
            .to_string(),
    };
    if let Some(r) = &e.role_arn {
        s.push_str(&format!(", then target.ecs.role_arn {r:?} assumed"));
        if e.external_id.is_some() {
            s.push_str(" with target.ecs.external_id");
        }
    }
    s
}

/// Resolves the credentials of `e` and asks STS who they belong to. An
/// error (no credentials, a profile that does not exist, a role that
/// cannot be assumed, an expired token) names the spec fields involved and
/// the SDK's reason; it holds no key.
pub async fn identity(e: &EcsTarget) -> Result<Identity> {
    let config = sdk_config(e).await?;
    let out = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|err| {
            Error::unavailable(format!(
                "cannot resolve the AWS identity (STS GetCallerIdentity) with {}: {}",
                source(e),
                source_chain(&err)
            ))
            .with_provider("aws")
            .with_operation("GetCallerIdentity")
        })?;
    Ok(Identity {
        account: out.account().unwrap_or("unknown").to_string(),
        arn: out.arn().unwrap_or("unknown").to_string(),
    })
}

/// The deployer's description (`user u on host h, pid 42`) with the AWS
/// identity before the pid (`user u on host h, as arn:aws:sts::…, pid 42`),
/// so the journal's lease and start record say who deployed; the pid stays
/// last, where `resume` reads it.
pub(crate) fn with_identity(description: String, id: Option<&Identity>) -> String {
    match (id, description.rsplit_once(", pid ")) {
        (Some(id), Some((who, pid))) => format!("{who}, as {}, pid {pid}", id.arn),
        (Some(id), None) => format!("{description}, as {}", id.arn),
        (None, _) => description,
    }
}

/// Says which identity the deployment runs as: a line on stdout, or a JSON
/// object `{"aws_identity": {"account", "arn"}}` with `json`.
pub fn announce(id: &Identity, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"aws_identity": {"account": id.account, "arn": id.arn}})
        );
    } else {
        println!("AWS identity: {id}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_are_recognised() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/deployer"));
        assert!(is_role_arn(
            "arn:aws-us-gov:iam::123456789012:role/ci/deployer"
        ));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/deployer"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/deployer"));
        assert!(!is_role_arn("arn:aws:sts::123456789012:role/deployer"));
        assert!(!is_role_arn("deployer"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/"));
    }

    #[test]
    fn the_identity_goes_before_the_pid() {
        let id = Identity {
            account: "123456789012".into(),
            arn: "arn:aws:sts::123456789012:assumed-role/deployer/ci".into(),
        };
        assert_eq!(
            with_identity("user u on host h, pid 42".into(), Some(&id)),
            "user u on host h, as arn:aws:sts::123456789012:assumed-role/deployer/ci, pid 42"
        );
        assert_eq!(
            with_identity("user u, pid 42".into(), None),
            "user u, pid 42"
        );
    }
}
