#![doc = include_str!("../README.md")]

pub mod compute;
pub mod demo;
pub mod metrics;
pub mod proxy;

pub use compute::{InstanceInfo, LocalCompute, LocalComputeBuilder};
pub use metrics::{ColorFigures, ProxyMetrics};
pub use proxy::{LocalProxy, LocalProxyBuilder, StaticUpstreams, Upstreams, COLOR_HEADER};

/// The provider name in errors.
pub(crate) const PROVIDER: &str = "local";
