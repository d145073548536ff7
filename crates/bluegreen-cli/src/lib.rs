#![doc = include_str!("../README.md")]

pub mod acceptance;
pub mod aws;
pub mod cli;
pub mod command;
/// The fake target: test doubles for the CLI's own tests, in a build
/// with the `testing` feature only.
#[cfg(feature = "testing")]
pub mod fake;
pub mod group;
pub mod journal;
#[cfg(feature = "testing")]
pub mod kill_switch;
pub mod lint;
pub mod logging;
pub mod output;
pub mod providers;
pub mod slack;
pub mod spec;
pub mod specfile;
pub mod watch;

pub use cli::main;
pub use spec::{LoadedSpec, Spec, SpecError};
