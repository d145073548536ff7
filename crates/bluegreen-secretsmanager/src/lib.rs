#![doc = include_str!("../README.md")]

mod source;

pub use source::{check_rotation, SecretsManagerSource};

/// The provider name used in errors.
pub const PROVIDER: &str = "secretsmanager";

/// The IAM actions this crate calls, as listed in `docs/iam-policy.json`.
pub const IAM_ACTIONS: &[&str] = &[
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
];
