#![doc = include_str!("../README.md")]

pub mod command;
pub mod compute;
pub mod demo;
pub mod load;
pub mod metrics;
mod pool;
pub mod proxy;
pub mod smoke;

pub use compute::{InstanceInfo, LocalCompute, LocalComputeBuilder, DEPLOYER_PID_ENV};
pub use load::{Load, LoadTally};
pub use metrics::{ColorFigures, ProxyMetrics};
pub use proxy::{
    LocalProxy, LocalProxyBuilder, StaticUpstreams, Upstreams, COLOR_HEADER, PROXY_ERROR_HEADER,
};
pub use smoke::HttpCheck;

/// The provider name in errors.
pub(crate) const PROVIDER: &str = "local";
