//! Test support for the AWS provider crates: an `SdkConfig` pointed at the moto
//! emulator started by `scripts/test`, a client that counts API calls per
//! operation, canned-response clients for faults moto cannot produce, and
//! moto's default network; a proxy that counts the calls another process
//! (the `bluegreen` binary) makes in [`proxy`], an ALB fixture in [`alb`], an
//! ECS fixture in [`ecs`] and the IAM-policy check in [`iam`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use aws_types::region::Region;
use aws_types::SdkConfig;

/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// Where moto listens; fails (never skips) when scripts/test did not start it.
pub fn endpoint() -> String {
    std::env::var("BLUEGREEN_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "BLUEGREEN_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test, \
             which starts moto_server (scripts/services/moto.sh) and exports it"
        )
    })
}

/// An SdkConfig for `http`, with dummy credentials, the test region and `retry`.
pub fn config_with(http: SharedHttpClient, endpoint: &str, retry: RetryConfig) -> SdkConfig {
    SdkConfig::builder()
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "tests",
        )))
        .http_client(http)
        .retry_config(retry)
        .behavior_version(BehaviorVersion::latest())
        .build()
}

/// An SdkConfig pointed at moto.
pub fn moto() -> SdkConfig {
    config_with(
        aws_smithy_http_client::Builder::new().build_http(),
        &endpoint(),
        RetryConfig::standard(),
    )
}

/// An SdkConfig pointed at `endpoint` (e.g. a [`proxy::CountingProxy`] in
/// front of moto), with `retry`.
pub fn config_for(endpoint: &str, retry: RetryConfig) -> SdkConfig {
    config_with(
        aws_smithy_http_client::Builder::new().build_http(),
        endpoint,
        retry,
    )
}

/// Counts the AWS API calls made through a config, per IAM-style operation name.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<BTreeMap<String, u32>>>);

impl CallLog {
    /// Calls per operation so far.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        self.0.lock().unwrap().clone()
    }

    /// Calls of `operation` (e.g. `ecs:UpdateService`) so far.
    pub fn count(&self, operation: &str) -> u32 {
        self.counts().get(operation).copied().unwrap_or(0)
    }

    /// Forgets the calls so far.
    pub fn reset(&self) {
        self.0.lock().unwrap().clear();
    }

    fn record(&self, operation: String) {
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
    }
}

/// The operation of an AWS request: from `x-amz-target` (JSON protocols) or
/// the `Action=` parameter (query protocol).
pub fn operation_of(request: &HttpRequest) -> String {
    operation_from(
        request.headers().get("x-amz-target"),
        request.body().bytes().unwrap_or_default(),
    )
}

/// The operation of an AWS request from its `x-amz-target` header (JSON
/// protocols) or, without one, the `Action=` parameter of its body (query
/// protocol, which the tests meet only for ELBv2).
pub fn operation_from(x_amz_target: Option<&str>, body: &[u8]) -> String {
    if let Some(target) = x_amz_target {
        let (prefix, op) = target.split_once('.').unwrap_or(("?", target));
        let service = match prefix {
            p if p.starts_with("AmazonEC2ContainerService") => "ecs",
            p if p.starts_with("AnyScaleFrontendService") => "application-autoscaling",
            p if p.starts_with("secretsmanager") => "secretsmanager",
            other => other,
        };
        return format!("{service}:{op}");
    }
    let body = String::from_utf8_lossy(body);
    let action = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?");
    format!("elasticloadbalancing:{action}")
}

#[derive(Debug, Clone)]
struct Counting {
    inner: SharedHttpClient,
    log: CallLog,
}

#[derive(Debug)]
struct CountingConnector {
    inner: SharedHttpConnector,
    log: CallLog,
}

impl HttpConnector for CountingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.log.record(operation_of(&request));
        self.inner.call(request)
    }
}

impl HttpClient for Counting {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(CountingConnector {
            inner: self.inner.http_connector(settings, components),
            log: self.log.clone(),
        })
    }
}

/// An SdkConfig pointed at moto that counts every call it makes.
pub fn counted_moto() -> (SdkConfig, CallLog) {
    let log = CallLog::default();
    let http = SharedHttpClient::new(Counting {
        inner: aws_smithy_http_client::Builder::new().build_http(),
        log: log.clone(),
    });
    (config_with(http, &endpoint(), RetryConfig::standard()), log)
}

/// A canned answer: HTTP status and body.
#[derive(Debug, Clone)]
pub struct Canned {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
    /// Extra response headers (name, value), e.g. `Retry-After`.
    pub headers: Vec<(String, String)>,
}

impl Canned {
    /// A 200 answer with `body`.
    pub fn ok(body: impl Into<String>) -> Self {
        Canned {
            status: 200,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// An awsJson error (ECS, Application Auto Scaling, Secrets Manager).
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        Canned {
            status,
            body: format!(r#"{{"__type":"{code}","message":"{message}"}}"#),
            headers: Vec::new(),
        }
    }

    /// An awsQuery error (ELBv2).
    pub fn query_error(status: u16, code: &str, message: &str) -> Self {
        Canned {
            status,
            body: format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>1</RequestId></ErrorResponse>"
            ),
            headers: Vec::new(),
        }
    }

    /// This answer with the header `name: value` as well.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A config whose HTTP client answers each operation from `script`: the
/// answers for an operation are used in order, the last one repeating. SDK
/// retries are off unless `retry` says otherwise. Calls are counted.
pub fn canned(script: Vec<(&str, Vec<Canned>)>, retry: RetryConfig) -> (SdkConfig, CallLog) {
    let log = CallLog::default();
    let script: Arc<Mutex<BTreeMap<String, Vec<Canned>>>> = Arc::new(Mutex::new(
        script
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    ));
    let seen = log.clone();
    let http = aws_smithy_http_client::test_util::infallible_client_fn(
        move |req: http::Request<SdkBody>| {
            let op = {
                let converted = HttpRequest::try_from(req).expect("an http 1 request converts");
                operation_of(&converted)
            };
            seen.record(op.clone());
            let mut script = script.lock().unwrap();
            let answers = script
                .get_mut(&op)
                .unwrap_or_else(|| panic!("the test did not script an answer for {op}"));
            let answer = if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            };
            let mut response = http::Response::builder();
            for (name, value) in &answer.headers {
                response = response.header(name, value);
            }
            response
                .status(answer.status)
                .header(
                    "content-type",
                    if answer.body.starts_with('<') {
                        "text/xml"
                    } else {
                        "application/x-amz-json-1.1"
                    },
                )
                .body(SdkBody::from(answer.body))
                .unwrap()
        },
    );
    (config_with(http, "http://127.0.0.1:9", retry), log)
}

/// A name no other test uses, for resources in the shared moto server.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// moto's default VPC and two of its subnets in different zones, read with
/// a plain EC2 `DescribeSubnets` query (no EC2 SDK needed).
pub fn default_network() -> (String, Vec<String>) {
    let endpoint = endpoint();
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = std::net::TcpStream::connect(&host).expect("connect to moto");
    let request = format!(
        "GET /?Action=DescribeSubnets&Version=2016-11-15 HTTP/1.1\r\nHost: {host}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/ec2/aws4_request, \
         SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let mut vpc = None;
    let mut subnets = Vec::new();
    let mut zones = Vec::new();
    for item in response.split("<item>").skip(1) {
        let field = |name: &str| -> Option<String> {
            let start = item.find(&format!("<{name}>"))? + name.len() + 2;
            let end = item[start..].find(&format!("</{name}>"))? + start;
            Some(item[start..end].to_string())
        };
        let (Some(id), Some(v), Some(zone), Some(default)) = (
            field("subnetId"),
            field("vpcId"),
            field("availabilityZone"),
            field("defaultForAz"),
        ) else {
            continue;
        };
        if default != "true" || zones.contains(&zone) {
            continue;
        }
        vpc.get_or_insert(v);
        subnets.push(id);
        zones.push(zone);
    }
    assert!(
        subnets.len() >= 2,
        "moto's default VPC has subnets in two zones; got {response}"
    );
    (vpc.unwrap(), subnets.into_iter().take(2).collect())
}

pub mod alb;
pub mod ecs;
pub mod iam;
pub mod proxy;
