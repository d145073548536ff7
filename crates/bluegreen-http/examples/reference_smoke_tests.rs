//! The reference procedure's four smoke tests, as data, run against a base URL.
//!
//! ```text
//! TEST_TOKEN=... INTERNAL_TOKEN=... \
//!   cargo run -p bluegreen-http --example reference_smoke_tests -- https://blue.order-api.internal 2.5.0
//! ```
//!
//! Without a base URL it prints the checks. The tokens are read from the
//! environment variables named by the checks' `secret` fields.

use std::sync::Arc;

use async_trait::async_trait;
use bluegreen_core::{
    Color, Error, Result, SecretMetadata, SecretSource, SecretValue, SmokeTarget,
};
use bluegreen_http::{HttpCheck, SmokeSuite};

/// The four checks: health, create order, retrieve order, database connectivity.
const CHECKS: &str = include_str!("reference_smoke_tests.json");

/// Secrets from environment variables of the same name.
struct Env;

#[async_trait]
impl SecretSource for Env {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        std::env::var(name)
            .map(SecretValue::new)
            .map_err(|_| Error::not_found(format!("environment variable {name} is not set")))
    }
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.get(name).await?;
        Ok(SecretMetadata {
            name: name.into(),
            last_rotated: None,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let checks: Vec<HttpCheck> = serde_json::from_str(CHECKS)?;
    let mut args = std::env::args().skip(1);
    let Some(base_url) = args.next() else {
        println!("{}", serde_json::to_string_pretty(&checks)?);
        return Ok(());
    };
    let version = args.next().unwrap_or_else(|| "2.5.0".into());
    let suite = SmokeSuite::from_checks(checks)?.with_secrets(Arc::new(Env));
    let report = suite
        .run(&SmokeTarget {
            service: "order-api".into(),
            color: Some(Color::Blue),
            base_url: Some(base_url),
            version,
        })
        .await;
    println!("{report}");
    if report.all_passed() {
        Ok(())
    } else {
        Err(report.summary().into())
    }
}
