//! Test support: conformance suites, in-memory fakes with fault injection,
//! scripted metrics and a simulation helper. Enabled by the `testing` feature.

pub mod conformance;
