//! The Secrets Manager [`SecretSource`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_smithy_types::DateTime;
use aws_types::SdkConfig;
use bluegreen_core::plan::RequiredSecret;
use bluegreen_core::{Error, Result, SecretMetadata, SecretSource, SecretValue, Timestamp};

use crate::PROVIDER;
use bluegreen_aws::{check_arn, is_arn, sdk_error};

/// A [`SecretSource`] on AWS Secrets Manager.
///
/// Values are read once: the first `get` of a name calls `GetSecretValue`,
/// later ones answer from memory, so one source serves one deployment (make a
/// new one, or call [`forget`](Self::forget), for the next). Values are held
/// as [`SecretValue`], which never prints. `metadata` calls `DescribeSecret`
/// and never reads the value; its `last_rotated` is `LastRotatedDate`, or
/// `CreatedDate` for a secret never rotated.
///
/// [`arn`](Self::arn) answers a secret's full ARN (what ECS task definitions
/// take in `valueFrom`) from the `DescribeSecret` of an earlier `metadata`
/// when there was one.
pub struct SecretsManagerSource {
    sm: aws_sdk_secretsmanager::Client,
    region: Option<String>,
    values: Mutex<HashMap<String, SecretValue>>,
    /// Full ARNs by the name (or ARN) they were asked for.
    arns: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for SecretsManagerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.values.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("SecretsManagerSource")
            .field("region", &self.region)
            .field("values_held", &held)
            .finish_non_exhaustive()
    }
}

fn to_timestamp(t: &DateTime) -> Option<Timestamp> {
    let millis = t.to_millis().ok()?;
    u64::try_from(millis).ok().map(Timestamp)
}

impl SecretsManagerSource {
    /// A source whose client comes from `config` (the standard credential and
    /// region chain, and its endpoint override).
    pub fn new(config: &SdkConfig) -> Self {
        SecretsManagerSource {
            sm: aws_sdk_secretsmanager::Client::new(config),
            region: config.region().map(|r| r.as_ref().to_string()),
            values: Mutex::new(HashMap::new()),
            arns: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the values and ARNs read so far; the next `get` or `arn` reads again.
    pub fn forget(&self) {
        self.values.lock().expect("values lock").clear();
        self.arns.lock().expect("arns lock").clear();
    }

    /// The full ARN of the secret `name` (a name, or a full or partial ARN),
    /// as ECS takes it in a task definition's `valueFrom`: from the
    /// `DescribeSecret` of an earlier [`metadata`](SecretSource::metadata) or
    /// `arn` of the same name, else from a new one. Read-only, never reads the
    /// value; a missing secret, or one scheduled for deletion, is `NotFound`.
    pub async fn arn(&self, name: &str) -> Result<String> {
        const OP: &str = "arn";
        self.check_name(name, OP)?;
        if let Some(arn) = self.arns.lock().expect("arns lock").get(name) {
            return Ok(arn.clone());
        }
        let out = self.describe(name, OP).await?;
        out.arn.ok_or_else(|| {
            Error::invalid_response(format!("DescribeSecret of {name} returned no ARN"))
                .with_provider(PROVIDER)
                .with_operation(OP)
        })
    }

    /// `DescribeSecret` of `name`, refusing a secret scheduled for deletion,
    /// and remembering its ARN.
    async fn describe(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput> {
        let out = self
            .sm
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    operation,
                    "secretsmanager:DescribeSecret",
                    &format!("secret {name}"),
                )
            })?;
        if out.deleted_date().is_some() {
            return Err(Error::not_found(format!(
                "secret {name} is scheduled for deletion; expected an existing secret"
            ))
            .with_provider(PROVIDER)
            .with_operation(operation));
        }
        if let Some(arn) = &out.arn {
            self.arns
                .lock()
                .expect("arns lock")
                .insert(name.to_string(), arn.clone());
        }
        Ok(out)
    }

    /// A secret name, or an ARN of a Secrets Manager secret in the configured region.
    fn check_name(&self, name: &str, operation: &'static str) -> Result<()> {
        if name.trim().is_empty() {
            return Err(
                Error::invalid_input("secret name: empty; expected a secret name or ARN")
                    .with_provider(PROVIDER)
                    .with_operation(operation),
            );
        }
        if is_arn(name) {
            check_arn(
                PROVIDER,
                "secret",
                name,
                "secretsmanager",
                "secret:",
                self.region.as_deref(),
            )
            .map_err(|e| e.with_operation(operation))?;
        }
        Ok(())
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    /// `GetSecretValue` (AWSCURRENT), once per name. Binary secrets are
    /// refused: ECS and the smoke tests take strings.
    async fn get(&self, name: &str) -> Result<SecretValue> {
        const OP: &str = "get";
        self.check_name(name, OP)?;
        if let Some(v) = self.values.lock().expect("values lock").get(name) {
            return Ok(v.clone());
        }
        let out = self
            .sm
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    OP,
                    "secretsmanager:GetSecretValue",
                    &format!("secret {name}"),
                )
            })?;
        let value = match out.secret_string {
            Some(s) => SecretValue::new(s),
            None => {
                return Err(Error::invalid_response(format!(
                    "secret {name} has no string value (a binary secret?); expected a SecretString"
                ))
                .with_provider(PROVIDER)
                .with_operation(OP))
            }
        };
        self.values
            .lock()
            .expect("values lock")
            .insert(name.to_string(), value.clone());
        Ok(value)
    }

    /// `DescribeSecret`. A secret scheduled for deletion counts as missing.
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        const OP: &str = "metadata";
        self.check_name(name, OP)?;
        let out = self.describe(name, OP).await?;
        let last_rotated = out
            .last_rotated_date()
            .or(out.created_date())
            .and_then(to_timestamp);
        Ok(SecretMetadata {
            name: name.to_string(),
            last_rotated,
        })
    }
}

/// Checks every secret of `required` (the plan's `preflight.required_secrets`)
/// exists and was rotated within its `max_age` at `now` (`None` means rotated
/// only on compromise: existence is enough). Answers the metadata of each, or
/// one error naming every secret that is missing or too old, with its age and
/// the policy. The deployment engine applies the same policy in its preflight;
/// this helper lets a tool check before it starts one.
pub async fn check_rotation(
    source: &dyn SecretSource,
    required: &[RequiredSecret],
    now: Timestamp,
) -> Result<Vec<SecretMetadata>> {
    let mut found = Vec::with_capacity(required.len());
    let mut problems = Vec::new();
    let mut missing = false;
    for r in required {
        match source.metadata(&r.name).await {
            Err(e) => {
                missing |= e.kind() == bluegreen_core::ErrorKind::NotFound;
                if e.is_temporary() {
                    return Err(e);
                }
                problems.push(format!("{}: {}", r.name, e.message()));
            }
            Ok(m) => {
                if let Some(max) = r.max_age {
                    match m.last_rotated {
                        None => problems.push(format!(
                            "{}: its last rotation is unknown; the policy is every {}",
                            r.name,
                            days(max)
                        )),
                        Some(at) if now.since(at) > max => problems.push(format!(
                            "{}: last rotated {} ago, the policy is at most {}",
                            r.name,
                            days(now.since(at)),
                            days(max)
                        )),
                        Some(_) => {}
                    }
                }
                found.push(m);
            }
        }
    }
    if problems.is_empty() {
        return Ok(found);
    }
    let message = format!(
        "required secrets failed the rotation check: {}",
        problems.join("; ")
    );
    let e = if missing {
        Error::not_found(message)
    } else {
        Error::conflict(message)
    };
    Err(e.with_provider(PROVIDER).with_operation("check_rotation"))
}

fn days(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 86_400 {
        format!("{} days", secs / 86_400)
    } else {
        format!("{} hours", secs / 3600)
    }
}
