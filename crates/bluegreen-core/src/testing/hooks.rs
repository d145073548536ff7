//! A fake lifecycle hook whose behaviour is scripted per name and whose
//! runs are recorded, for tests of where hooks run and what their failure
//! decides.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::provider::{Hook, HookContext, HookOutcome};

/// What a fake hook does when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookBehaviour {
    /// Succeeds.
    Pass,
    /// Runs and fails with this detail (a non-zero exit, a 500).
    Fail(String),
    /// Cannot run at all (`Err`, e.g. its program does not exist).
    Error(String),
    /// Never answers: the engine's timeout ends it.
    Hang,
    /// Fails this many times, then succeeds (for retries).
    FailTimes(u32),
}

/// The script of every fake hook and the record of their runs: what
/// [`Fakes::hooks`](super::Fakes::hooks) holds. Every hook passes until
/// told otherwise.
#[derive(Debug, Default)]
pub struct HookAnswers {
    behaviour: Mutex<BTreeMap<String, HookBehaviour>>,
    runs: Mutex<Vec<(String, HookContext)>>,
}

impl HookAnswers {
    /// Every hook passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the hook `name` behave as `b` from its next run.
    pub fn set(&self, name: &str, b: HookBehaviour) -> &Self {
        self.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), b);
        self
    }

    /// Every run so far (each attempt), in order: the hook's name and what
    /// it was told.
    pub fn runs(&self) -> Vec<(String, HookContext)> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times the hook `name` was run (each attempt counts).
    pub fn count(&self, name: &str) -> usize {
        self.runs().iter().filter(|(n, _)| n == name).count()
    }

    fn next(&self, name: &str, context: &HookContext) -> HookBehaviour {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), context.clone()));
        let mut b = self.behaviour.lock().unwrap_or_else(|e| e.into_inner());
        match b.get_mut(name) {
            None => HookBehaviour::Pass,
            Some(HookBehaviour::FailTimes(0)) => HookBehaviour::Pass,
            Some(HookBehaviour::FailTimes(n)) => {
                *n -= 1;
                HookBehaviour::Fail(format!("{name}: scripted failure, {n} more to come"))
            }
            Some(other) => other.clone(),
        }
    }
}

/// A fake [`Hook`] answering what its [`HookAnswers`] say.
#[derive(Debug, Clone)]
pub struct FakeHook {
    name: String,
    answers: Arc<HookAnswers>,
}

impl FakeHook {
    /// The hook `name`, scripted by `answers`.
    pub fn new(name: &str, answers: Arc<HookAnswers>) -> Self {
        FakeHook {
            name: name.into(),
            answers,
        }
    }
}

#[async_trait]
impl Hook for FakeHook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, context: &HookContext) -> Result<HookOutcome> {
        let outcome = |passed: bool, detail: String| HookOutcome {
            passed,
            duration: Duration::from_millis(20),
            detail,
            attempts: 1,
        };
        match self.answers.next(&self.name, context) {
            HookBehaviour::Pass => Ok(outcome(true, format!("{} ran", self.name))),
            HookBehaviour::Fail(d) => Ok(outcome(false, d)),
            HookBehaviour::Error(m) => Err(Error::not_found(m)),
            HookBehaviour::Hang => {
                // A day of virtual time: far past any hook's timeout.
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                Ok(outcome(true, "answered a day later".into()))
            }
            HookBehaviour::FailTimes(_) => Ok(outcome(true, format!("{} ran", self.name))),
        }
    }
}
