#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod analysis;
pub mod color;
pub mod error;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod machine;
pub mod plan;
pub mod provider;
pub mod reason;
pub mod redact;

pub use color::{Color, Timestamp, TrafficSplit};
pub use error::{Error, ErrorKind, ErrorRecord, ErrorStatus, PlanError, Result, MAX_RETRY_AFTER};
pub use plan::{Barrier, Plan, Release};
pub use provider::*;
pub mod journal;
pub use journal::{FileJournal, Journal, JournalEntry, Lease, MemoryJournal, Record};
pub mod driver;
pub mod dry_run;
pub mod group;
pub mod report;
pub mod retry;
#[cfg(feature = "testing")]
pub mod testing;
pub use driver::{BlueGreen, Builder, Clock, ControlHandle, RetryPolicy, TokioClock};
pub use group::{Group, GroupOutcome, GroupReport};
pub use machine::{Control, Outcome};
pub use reason::{Cause, Effect, Noted, Refusal};
pub use report::Report;
