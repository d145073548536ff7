#![doc = include_str!("../README.md")]

pub mod acceptance;
pub mod aws;
pub mod cli;
pub mod command;
pub mod fake;
pub mod group;
pub mod journal;
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
