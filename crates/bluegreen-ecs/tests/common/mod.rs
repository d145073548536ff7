//! Test support: the helpers shared by the AWS provider crates
//! (`bluegreen_aws::testing`: moto configs, call counting, canned answers, the
//! ALB fixture) and this crate's ECS fixture.
#![allow(dead_code)] // each test binary uses part of the ECS fixture

pub use bluegreen_aws::testing::*;

pub mod ecs;
