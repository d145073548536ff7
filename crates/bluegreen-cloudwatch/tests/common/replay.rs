//! Answers in the Smithy RPC v2 CBOR protocol the CloudWatch SDK speaks,
//! replayed through the SDK's own deserializer. moto 5.2.5 answers that
//! protocol with 404, so metrics and alarms are tested this way; the
//! answers follow the shapes of the GetMetricData and DescribeAlarms API
//! reference (field names as the API spells them).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_cbor::Encoder;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::DateTime;
use aws_types::SdkConfig;

/// One GetMetricData result series.
pub struct Series<'a> {
    pub id: &'a str,
    pub points: Vec<(i64, f64)>,
    pub status: &'a str,
}

/// A GetMetricData answer holding `series`, with `next_token` when given.
pub fn metric_data(series: &[Series<'_>], next_token: Option<&str>) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(if next_token.is_some() { 2 } else { 1 });
    e.str("MetricDataResults").array(series.len());
    for s in series {
        e.map(5);
        e.str("Id").str(s.id);
        e.str("Label").str(s.id);
        e.str("Timestamps").array(s.points.len());
        for (t, _) in &s.points {
            e.timestamp(&DateTime::from_secs(*t));
        }
        e.str("Values").array(s.points.len());
        for (_, v) in &s.points {
            e.double(*v);
        }
        e.str("StatusCode").str(s.status);
    }
    if let Some(t) = next_token {
        e.str("NextToken").str(t);
    }
    e.into_writer()
}

/// A DescribeAlarms answer with metric alarms `(name, state)`.
pub fn alarms(metric: &[(&str, &str)]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(1);
    e.str("MetricAlarms").array(metric.len());
    for (name, state) in metric {
        e.map(4);
        e.str("AlarmName").str(name);
        e.str("AlarmArn").str(&format!(
            "arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}"
        ));
        e.str("StateValue").str(state);
        e.str("StateUpdatedTimestamp")
            .timestamp(&DateTime::from_secs(1_700_000_000));
    }
    e.into_writer()
}

/// The operation of an RPC v2 request: the last segment of its path
/// (`/service/GraniteServiceVersion20100801/operation/GetMetricData`).
fn operation(uri: &str) -> String {
    uri.rsplit('/').next().unwrap_or("?").to_string()
}

/// Requests seen, per operation: their bodies.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>);

impl Seen {
    pub fn count(&self, op: &str) -> usize {
        self.0.lock().unwrap().get(op).map_or(0, Vec::len)
    }
}

/// A config whose client answers each operation from `script` (answers in
/// order, the last repeating), in the RPC v2 CBOR protocol.
pub fn config(script: Vec<(&str, Vec<Vec<u8>>)>) -> (SdkConfig, Seen) {
    let script: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>> = Arc::new(Mutex::new(
        script
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    ));
    let seen = Seen::default();
    let log = seen.clone();
    let http = aws_smithy_http_client::test_util::infallible_client_fn(
        move |req: http::Request<SdkBody>| {
            let op = operation(&req.uri().to_string());
            log.0
                .lock()
                .unwrap()
                .entry(op.clone())
                .or_default()
                .push(req.body().bytes().unwrap_or_default().to_vec());
            let mut script = script.lock().unwrap();
            let answers = script
                .get_mut(&op)
                .unwrap_or_else(|| panic!("the test did not script an answer for {op}"));
            let body = if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            };
            http::Response::builder()
                .status(200)
                .header("content-type", "application/cbor")
                .header("smithy-protocol", "rpc-v2-cbor")
                .body(SdkBody::from(body))
                .unwrap()
        },
    );
    (
        bluegreen_aws::testing::config_with(http, "http://127.0.0.1:9", RetryConfig::disabled()),
        seen,
    )
}
