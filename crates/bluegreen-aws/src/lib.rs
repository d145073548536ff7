#![doc = include_str!("../README.md")]

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bluegreen_core::{Error, ErrorKind, ErrorStatus};

#[cfg(feature = "testing")]
pub mod testing;

/// The parts of an ARN: `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn<'a> {
    /// The service, e.g. `ecs` or `elasticloadbalancing`.
    pub service: &'a str,
    /// The region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The resource, e.g. `cluster/prod` or `listener/app/web/1/2`.
    pub resource: &'a str,
}

/// Whether `s` looks like an ARN at all (as opposed to a name).
pub fn is_arn(s: &str) -> bool {
    s.starts_with("arn:")
}

/// Parses `value` (the setting `field`) as an ARN of `service` whose resource
/// starts with `resource_prefix`, in `region` when one is configured.
///
/// Anything else is an `InvalidInput` error of `provider` that names `field`.
pub fn check_arn<'a>(
    provider: &'static str,
    field: &str,
    value: &'a str,
    service: &str,
    resource_prefix: &str,
    region: Option<&str>,
) -> Result<Arn<'a>, Error> {
    let expected = format!("an ARN arn:aws:{service}:REGION:ACCOUNT:{resource_prefix}…");
    let mut parts = value.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some(svc), Some(reg), Some(_account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid(
            provider,
            format!("{field}: `{value}` is not an ARN; expected {expected}"),
        ));
    };
    if svc != service || !resource.starts_with(resource_prefix) {
        return Err(invalid(
            provider,
            format!(
                "{field}: `{value}` is an ARN of the wrong kind ({svc}:{}); expected {expected}",
                resource.split(['/', ':']).next().unwrap_or(resource)
            ),
        ));
    }
    if let Some(region) = region {
        if reg != region {
            return Err(invalid(
                provider,
                format!("{field}: `{value}` is in region `{reg}`, but the AWS configuration is for `{region}`"
            )));
        }
    }
    Ok(Arn {
        service: svc,
        region: reg,
        resource,
    })
}

fn invalid(provider: &'static str, message: String) -> Error {
    Error::invalid_input(message).with_provider(provider)
}

/// Error codes AWS uses for throttling.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Error codes AWS uses for refused or insufficient credentials.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "NotAuthorized",
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
];

/// Error codes AWS uses for a missing resource.
const MISSING: &[&str] = &[
    "ResourceNotFoundException",
    "ServiceNotFoundException",
    "ClusterNotFoundException",
    "ObjectNotFoundException",
    "TargetGroupNotFound",
    "ListenerNotFound",
    "RuleNotFound",
    "LoadBalancerNotFound",
];

/// Error codes AWS uses for invalid requests.
const INVALID: &[&str] = &[
    "ValidationException",
    "ValidationError",
    "InvalidParameterException",
    "InvalidParameterValue",
    "InvalidRequestException",
    "ClientException",
    "InvalidConfigurationRequest",
];

/// The I/O error behind a connection failure, in words (`connection
/// refused`), found down the error's source chain.
fn io_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            });
        }
        cur = err.source();
    }
    None
}

/// Maps an SDK error of the call `action` (its IAM action name, e.g.
/// `ecs:UpdateService`) on `resource`, made by the operation `operation` of
/// the provider `provider`, into a bluegreen error.
///
/// Throttling, 5xx, timeouts and connection failures are temporary (a
/// throttling answer's `Retry-After` seconds become the error's
/// [`retry_after`](Error::retry_after), which the driver's retries wait at
/// least); access denied is permanent and names the IAM action to grant; a missing resource is
/// `NotFound`; invalid requests are `InvalidInput`.
pub fn sdk_error<E>(
    provider: &'static str,
    err: SdkError<E, HttpResponse>,
    operation: &'static str,
    action: &'static str,
    resource: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let call = format!("{action} on {resource}");
    let mut retry_after = None;
    let (kind, status, message) = match &err {
        SdkError::TimeoutError(_) => (
            ErrorKind::Timeout,
            ErrorStatus::Temporary,
            format!("{call} timed out"),
        ),
        SdkError::DispatchFailure(d) => {
            if d.is_user() {
                (
                    ErrorKind::InvalidInput,
                    ErrorStatus::Permanent,
                    format!("{call} could not be sent: check the AWS configuration (HTTP client, endpoint)"),
                )
            } else {
                (
                    ErrorKind::Unavailable,
                    ErrorStatus::Temporary,
                    match d.as_connector_error().and_then(|c| io_cause(c)) {
                        Some(why) => format!("{call} could not reach AWS: {why}"),
                        None => format!("{call} could not reach AWS"),
                    },
                )
            }
        }
        SdkError::ResponseError(_) => (
            ErrorKind::Unavailable,
            ErrorStatus::Temporary,
            format!("{call}: AWS sent a response that could not be read"),
        ),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::InvalidInput,
            ErrorStatus::Permanent,
            format!("{call}: the request could not be built"),
        ),
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("");
            let detail = ctx.err().message().unwrap_or("");
            let http = ctx.raw().status().as_u16();
            let what = if code.is_empty() {
                format!("HTTP {http}")
            } else if detail.is_empty() {
                code.to_string()
            } else {
                format!("{code}: {detail}")
            };
            if THROTTLING.contains(&code) || http == 429 {
                retry_after = retry_after_of(ctx.raw());
                (
                    ErrorKind::RateLimited,
                    ErrorStatus::Temporary,
                    format!("{call} was throttled ({what})"),
                )
            } else if DENIED.contains(&code) || http == 403 {
                (
                    ErrorKind::PermissionDenied,
                    ErrorStatus::Permanent,
                    format!(
                        "{call} was denied ({what}): the deployer's IAM policy must allow `{action}` \
                         (see docs/iam-policy.json)"
                    ),
                )
            } else if http >= 500 {
                (
                    ErrorKind::Unavailable,
                    ErrorStatus::Temporary,
                    format!("{call} failed on the AWS side ({what})"),
                )
            } else if MISSING.contains(&code)
                || code.ends_with("NotFound")
                || code.ends_with("NotFoundException")
            {
                (
                    ErrorKind::NotFound,
                    ErrorStatus::Permanent,
                    format!("{call}: {resource} does not exist ({what})"),
                )
            } else if INVALID.contains(&code) {
                (
                    ErrorKind::InvalidInput,
                    ErrorStatus::Permanent,
                    format!("{call} was rejected ({what})"),
                )
            } else {
                (
                    ErrorKind::Other,
                    ErrorStatus::Permanent,
                    format!("{call} failed ({what})"),
                )
            }
        }
        _ => (
            ErrorKind::Other,
            ErrorStatus::Permanent,
            format!("{call} failed"),
        ),
    };
    let error = Error::new(kind, message)
        .with_status(status)
        .with_provider(provider)
        .with_operation(operation);
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// The wait a throttling answer asks for: its `Retry-After` header, read as
/// every provider reads it ([`bluegreen_core::retry::parse_retry_after`]:
/// seconds, the form AWS sends, or an HTTP date).
fn retry_after_of(response: &HttpResponse) -> Option<std::time::Duration> {
    let value = response.headers().get("retry-after")?;
    bluegreen_core::retry::parse_retry_after(value, std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_checked_for_kind_and_region() {
        let ok = check_arn(
            "ecs",
            "cluster",
            "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            "ecs",
            "cluster/",
            Some("us-east-1"),
        )
        .unwrap();
        assert_eq!(ok.resource, "cluster/prod");
        assert_eq!(ok.service, "ecs");
        assert_eq!(ok.region, "us-east-1");

        let kind = check_arn(
            "ecs",
            "cluster",
            "arn:aws:ecs:us-east-1:123456789012:service/prod/x",
            "ecs",
            "cluster/",
            None,
        )
        .unwrap_err();
        assert_eq!(kind.kind(), ErrorKind::InvalidInput);
        assert_eq!(kind.provider(), "ecs");
        assert!(kind.message().contains("wrong kind"), "{kind}");
        assert!(kind.message().starts_with("cluster:"), "{kind}");

        let region = check_arn(
            "ecs",
            "cluster",
            "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
            "ecs",
            "cluster/",
            Some("us-east-1"),
        )
        .unwrap_err();
        assert!(region.message().contains("eu-west-1"), "{region}");
        assert!(region.message().contains("us-east-1"), "{region}");

        let not = check_arn("ecs", "cluster", "prod", "ecs", "cluster/", None).unwrap_err();
        assert!(not.message().contains("not an ARN"), "{not}");
    }
}
