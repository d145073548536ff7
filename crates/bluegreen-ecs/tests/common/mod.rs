//! Test support: the helpers shared by the AWS provider crates
//! (`bluegreen_aws::testing`: moto configs, call counting, canned answers, the
//! ALB and ECS fixtures).

pub use bluegreen_aws::testing::*;
