#![doc = include_str!("../README.md")]

mod router;

pub use router::{AlbRouter, AlbRouterBuilder};

/// The provider name used in errors.
pub const PROVIDER: &str = "alb";

/// The IAM actions this crate calls, as listed in `docs/iam-policy.json`.
pub const IAM_ACTIONS: &[&str] = &[
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeRules",
    "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:ModifyListener",
    "elasticloadbalancing:ModifyRule",
];
