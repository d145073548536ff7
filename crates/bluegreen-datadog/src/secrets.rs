//! The default [`SecretSource`]: environment variables.

use async_trait::async_trait;
use bluegreen_core::{Error, Result, SecretMetadata, SecretSource, SecretValue};

/// The environment variable holding the Datadog API key, the default secret name.
pub const API_KEY_ENV: &str = "DD_API_KEY";
/// The environment variable holding the Datadog application key, the default secret name.
pub const APP_KEY_ENV: &str = "DD_APP_KEY";

/// A [`SecretSource`] that reads each secret from the environment variable of
/// the same name. The default source of the Datadog keys.
///
/// Values are read on every call, so a rotated key in the environment of a
/// long-running process is picked up. Missing or empty variables are
/// [`ErrorKind::NotFound`](bluegreen_core::ErrorKind::NotFound).
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

#[async_trait]
impl SecretSource for EnvSecrets {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(SecretValue::new(v)),
            _ => Err(
                Error::not_found(format!("environment variable {name} is not set"))
                    .with_provider("env")
                    .with_operation("get"),
            ),
        }
    }

    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.get(name)
            .await
            .map_err(|e| e.with_operation("metadata"))?;
        Ok(SecretMetadata {
            name: name.to_string(),
            last_rotated: None,
        })
    }
}
