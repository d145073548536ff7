//! What a check is, as data: serde-(de)serializable, validated before use.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bluegreen_core::plan::render_template;
use serde::{Deserialize, Serialize};

/// The variables a URL, header or expected value may name.
pub const VARIABLES: [&str; 4] = ["base_url", "service", "color", "version"];

/// Defaults, each defined once (the reference runs `--timeout 30000 --retries 3`).
pub mod defaults {
    use std::time::Duration;

    /// The HTTP method.
    pub const METHOD: &str = "GET";
    /// The expected status.
    pub const STATUS: u16 = 200;
    /// The time limit of one attempt.
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    /// Attempts after the first.
    pub const RETRIES: u32 = 3;
    /// The wait before the first retry; it doubles before each next one.
    pub const BACKOFF: Duration = Duration::from_secs(1);
    /// The most redirects one attempt follows when a check allows them
    /// ([`FollowRedirects::SameOrigin`](super::FollowRedirects::SameOrigin)).
    pub const MAX_REDIRECTS: usize = 10;
}

/// One HTTP smoke test or health check.
///
/// ```json
/// {
///   "name": "health",
///   "title": "Health check",
///   "url": "{base_url}/health",
///   "expect_status": 200,
///   "expect_json": [
///     {"field": "status", "equals": "healthy"},
///     {"field": "version", "equals": "{version}"}
///   ],
///   "latency_budget": "500ms"
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// The name plans refer to, e.g. `health`.
    pub name: String,
    /// The name printed in results, e.g. `Health check` (the name if absent).
    #[serde(default)]
    pub title: Option<String>,
    /// The HTTP method (`GET` if absent).
    #[serde(default = "default_method")]
    pub method: String,
    /// The URL template, e.g. `{base_url}/api/orders/test_order_123`; it may
    /// name `{base_url}` (the color's), `{service}`, `{color}` and `{version}`.
    pub url: String,
    /// Request headers; a value is a template string or comes from a secret.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueSpec>,
    /// A JSON body (sent with `Content-Type: application/json`); its strings
    /// are templates too.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// The status the check expects (200 if absent).
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Expectations on fields of the JSON response.
    #[serde(default)]
    pub expect_json: Vec<FieldExpectation>,
    /// The longest an attempt may take and still pass.
    #[serde(default, with = "humantime_serde")]
    pub latency_budget: Option<Duration>,
    /// The time limit of one attempt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts after a failed first one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The wait before the first retry; doubled before each next one.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Whether redirects are followed: `never` (the default; a 3xx answer is
    /// what the check judges) or `same_origin`. See [`FollowRedirects`].
    #[serde(default, skip_serializing_if = "FollowRedirects::is_never")]
    pub follow_redirects: FollowRedirects,
}

/// Which redirects a check follows.
///
/// Headers from secrets are meant for the host the check names, and a
/// redirect must never carry them elsewhere, so by default no redirect is
/// followed: a `301`, `302`, `303`, `307` or `308` answer is the answer the
/// check judges, and a failure says it was a redirect and where to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowRedirects {
    /// Follow no redirect (the default).
    #[default]
    Never,
    /// Follow redirects to the same origin (scheme, host and port) as the
    /// check's URL, up to [`defaults::MAX_REDIRECTS`] of them. Before
    /// the first redirect is followed, every header whose value comes from a
    /// secret is removed; other headers are kept. `301`, `302` and `303` turn
    /// the request into a `GET` without a body (a `HEAD` stays a `HEAD`);
    /// `307` and `308` repeat the method and body. A redirect to another
    /// origin is never followed: it is the answer the check judges.
    SameOrigin,
}

impl FollowRedirects {
    /// Whether this is [`FollowRedirects::Never`].
    pub fn is_never(&self) -> bool {
        *self == FollowRedirects::Never
    }
}

fn default_method() -> String {
    defaults::METHOD.into()
}
fn default_status() -> u16 {
    defaults::STATUS
}
fn default_timeout() -> Duration {
    defaults::TIMEOUT
}
fn default_retries() -> u32 {
    defaults::RETRIES
}
fn default_backoff() -> Duration {
    defaults::BACKOFF
}

/// A header's value: a template string, or a secret (optionally inside a
/// format such as `Bearer {secret}`). Secret values are never printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValueSpec {
    /// A template string, e.g. `application/json`.
    Value(String),
    /// A secret.
    Secret {
        /// The secret's name, as the [`SecretSource`](bluegreen_core::SecretSource) knows it.
        secret: String,
        /// Where the value goes, e.g. `Bearer {secret}`; the value alone if absent.
        #[serde(default)]
        format: Option<String>,
    },
}

/// An expectation on one field of the JSON response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldExpectation {
    /// A dotted path, e.g. `status`, `order.items.0.product_id`.
    pub field: String,
    /// What must hold.
    #[serde(flatten)]
    pub rule: Rule,
}

/// What must hold of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Equal to this JSON value (strings are templates: `"{version}"`).
    Equals(serde_json::Value),
    /// Present (`true`) or absent (`false`).
    Exists(bool),
    /// A number below this.
    LessThan(f64),
    /// A number above this.
    GreaterThan(f64),
}

impl fmt::Display for FieldExpectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Equals(v) => write!(f, "{} == {v}", self.field),
            Rule::Exists(true) => write!(f, "{} exists", self.field),
            Rule::Exists(false) => write!(f, "{} is absent", self.field),
            Rule::LessThan(n) => write!(f, "{} < {n}", self.field),
            Rule::GreaterThan(n) => write!(f, "{} > {n}", self.field),
        }
    }
}

impl HttpCheck {
    /// A `GET` check of `url` expecting 200; add expectations with the fields.
    pub fn get(name: impl Into<String>, url: impl Into<String>) -> Self {
        HttpCheck {
            name: name.into(),
            title: None,
            method: default_method(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            expect_status: defaults::STATUS,
            expect_json: Vec::new(),
            latency_budget: None,
            timeout: defaults::TIMEOUT,
            retries: defaults::RETRIES,
            backoff: defaults::BACKOFF,
            follow_redirects: FollowRedirects::Never,
        }
    }

    /// The reference's health check on `url` (e.g. `{base_url}/health`):
    /// HTTP 200 with `status == "healthy"` and `version ==` the release version.
    pub fn health(url: impl Into<String>) -> Self {
        HttpCheck {
            title: Some("Health check".into()),
            expect_json: vec![
                FieldExpectation {
                    field: "status".into(),
                    rule: Rule::Equals("healthy".into()),
                },
                FieldExpectation {
                    field: "version".into(),
                    rule: Rule::Equals("{version}".into()),
                },
            ],
            ..HttpCheck::get("health", url)
        }
    }

    /// The name printed in results.
    pub fn title(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.name)
    }

    /// Checks everything that can be checked without a target: the method,
    /// the status, header names, and that every template names a known
    /// variable. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        reqwest::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("method: {:?} is not an HTTP method", self.method))?;
        if !(100..=599).contains(&self.expect_status) {
            return Err(format!(
                "expect_status: {} is not an HTTP status",
                self.expect_status
            ));
        }
        let dummy = |_: &str| Some("x");
        render("url", &self.url, dummy)?;
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            match value {
                HeaderValueSpec::Value(v) => {
                    render(&format!("headers.{name}"), v, dummy)?;
                }
                HeaderValueSpec::Secret { secret, format } => {
                    if secret.trim().is_empty() {
                        return Err(format!("headers.{name}.secret: must not be empty"));
                    }
                    if let Some(f) = format {
                        if !f.contains("{secret}") {
                            return Err(format!(
                                "headers.{name}.format: {f:?} does not contain {{secret}}"
                            ));
                        }
                        render_with(&format!("headers.{name}.format"), f, &["secret"], dummy)?;
                    }
                }
            }
        }
        if let Some(body) = &self.body {
            render_json("body", body, &dummy)?;
        }
        for (i, e) in self.expect_json.iter().enumerate() {
            if e.field.trim().is_empty() {
                return Err(format!("expect_json[{i}].field: must not be empty"));
            }
            if let Rule::Equals(v) = &e.rule {
                render_json(&format!("expect_json[{i}].equals"), v, &dummy)?;
            }
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be above zero".into());
        }
        Ok(())
    }
}

/// Fills `template` from `lookup`; an unknown variable is an error naming
/// `field`, the variable and the known ones.
pub(crate) fn render<'a>(
    field: &str,
    template: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    render_with(field, template, &[], lookup)
}

fn render_with<'a>(
    field: &str,
    template: &str,
    extra: &[&str],
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let unknown = RefCell::new(None::<String>);
    render_template(template, |name| {
        let known = VARIABLES.contains(&name) || extra.contains(&name);
        let v = if known { lookup(name) } else { None };
        if v.is_none() {
            *unknown.borrow_mut() = Some(name.to_string());
        }
        v
    })
    .map_err(|_| {
        let name = unknown.borrow().clone().unwrap_or_default();
        let mut known: Vec<String> = VARIABLES.iter().map(|v| format!("{{{v}}}")).collect();
        known.extend(extra.iter().map(|v| format!("{{{v}}}")));
        if VARIABLES.contains(&name.as_str()) || extra.contains(&name.as_str()) {
            format!("{field}: {{{name}}} has no value for this target")
        } else {
            format!(
                "{field}: unknown template variable {{{name}}} in {template:?}: expected one of {}",
                known.join(", ")
            )
        }
    })
}

/// Fills every string inside a JSON value.
pub(crate) fn render_json<'a>(
    field: &str,
    value: &serde_json::Value,
    lookup: &impl Fn(&str) -> Option<&'a str>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => Value::String(render(field, s, lookup)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| render_json(&format!("{field}[{i}]"), v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(&format!("{field}.{k}"), v, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The field at a dotted path (`a.b.0.c`).
pub(crate) fn lookup_path<'v>(
    value: &'v serde_json::Value,
    path: &str,
) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(value, |v, part| match v {
        serde_json::Value::Object(o) => o.get(part),
        serde_json::Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_naming_an_unknown_variable_is_refused_with_the_field() {
        let c = HttpCheck::get("health", "{base_url}/health?region={region}");
        let e = c.validate().unwrap_err();
        assert!(
            e.starts_with("url: unknown template variable {region}"),
            "{e}"
        );
        assert!(
            e.contains("{base_url}, {service}, {color}, {version}"),
            "{e}"
        );
    }

    #[test]
    fn checks_parse_from_json_and_validate() {
        let c: HttpCheck = serde_json::from_str(
            r#"{"name": "create-order", "method": "POST", "url": "{base_url}/api/orders",
                "headers": {"Authorization": {"secret": "TEST_TOKEN", "format": "Bearer {secret}"}},
                "body": {"customer_id": "test_customer_123"},
                "expect_status": 201,
                "expect_json": [{"field": "order_id", "exists": true}, {"field": "latency_ms", "less_than": 100}],
                "latency_budget": "1s", "retries": 0}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.expect_json[1].rule, Rule::LessThan(100.0));
        assert_eq!(c.latency_budget, Some(Duration::from_secs(1)));
        assert_eq!(c.timeout, defaults::TIMEOUT);
        let bad = HttpCheck {
            method: "GE T".into(),
            ..c
        };
        assert!(bad.validate().unwrap_err().starts_with("method:"));
    }

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let v = serde_json::json!({"order": {"items": [{"product_id": "prod_456"}]}});
        assert_eq!(
            lookup_path(&v, "order.items.0.product_id"),
            Some(&serde_json::json!("prod_456"))
        );
        assert_eq!(lookup_path(&v, "order.items.1"), None);
    }
}
