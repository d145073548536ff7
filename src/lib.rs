#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use bluegreen_core::*;

/// The core crate, under its own name.
pub use bluegreen_core as core;

/// ECS `ComputeProvider` (feature `ecs`).
#[cfg(feature = "ecs")]
pub use bluegreen_ecs as ecs;

/// ALB `TrafficRouter` (feature `alb`).
#[cfg(feature = "alb")]
pub use bluegreen_alb as alb;

/// Secrets Manager `SecretSource` (feature `secretsmanager`).
#[cfg(feature = "secretsmanager")]
pub use bluegreen_secretsmanager as secretsmanager;

/// Postgres migrations, backups and journal (feature `postgres`).
#[cfg(feature = "postgres")]
pub use bluegreen_postgres as postgres;

/// Datadog metrics and events (feature `datadog`).
#[cfg(feature = "datadog")]
pub use bluegreen_datadog as datadog;

/// CloudWatch metrics, logs counts and alarms (feature `cloudwatch`).
#[cfg(feature = "cloudwatch")]
pub use bluegreen_cloudwatch as cloudwatch;

/// Prometheus metrics (feature `prometheus`).
#[cfg(feature = "prometheus")]
pub use bluegreen_prometheus as prometheus;

/// HTTP smoke tests and health checks (feature `http`).
#[cfg(feature = "http")]
pub use bluegreen_http as http;

/// The embedded local provider (feature `local`).
#[cfg(feature = "local")]
pub use bluegreen_local as local;

/// The guides in `docs/`, compiled as doc tests so their examples stay true.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../docs/concepts.md")]
    mod concepts {}
    #[doc = include_str!("../docs/providers.md")]
    mod providers {}
    #[doc = include_str!("../docs/custom-provider.md")]
    mod custom_provider {}
    #[doc = include_str!("../docs/testing-deploy-logic.md")]
    mod testing_deploy_logic {}
    #[doc = include_str!("../docs/operating.md")]
    mod operating {}
    #[doc = include_str!("../docs/migrations.md")]
    mod migrations {}
    #[doc = include_str!("../docs/iam.md")]
    mod iam {}
    #[doc = include_str!("../docs/from-a-runbook.md")]
    mod from_a_runbook {}
    #[doc = include_str!("../docs/coordinated.md")]
    mod coordinated {}
}
