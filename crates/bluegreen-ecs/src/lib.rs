#![doc = include_str!("../README.md")]

mod compute;

pub use compute::{EcsCompute, EcsComputeBuilder, DEFAULT_POLL_INTERVAL, VERSION_TAG};

/// The provider name used in errors.
pub const PROVIDER: &str = "ecs";

/// The IAM actions this crate calls, in the order of `docs/iam-policy.json`.
/// `iam:PassRole` is needed by `ecs:RegisterTaskDefinition` when the task
/// definition names a task or execution role.
pub const IAM_ACTIONS: &[&str] = &[
    "ecs:DescribeServices",
    "ecs:DescribeTaskDefinition",
    "ecs:ListTaskDefinitions",
    "ecs:RegisterTaskDefinition",
    "ecs:UpdateService",
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:RegisterScalableTarget",
];
