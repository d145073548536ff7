//! Running several checks and printing the results the way the reference does.

use std::fmt;
use std::time::{Duration, Instant};

use bluegreen_core::{Result, SmokeOutcome, SmokeTarget, SmokeTest};

use crate::{HttpCheck, HttpSmokeTest};

/// Several checks, run in order against one target.
#[derive(Debug, Clone, Default)]
pub struct SmokeSuite {
    tests: Vec<HttpSmokeTest>,
}

/// One check's result in a [`SuiteReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The check's name.
    pub name: String,
    /// The printed name, e.g. `Health check`.
    pub title: String,
    /// The outcome; an `Err` (a check that could not run) is a failure whose
    /// detail is the error.
    pub outcome: SmokeOutcome,
}

/// The results of a suite, printable as the reference prints them:
///
/// ```text
/// ✓ Health check passed (45ms)
/// ✓ Create order passed (234ms)
/// ✓ Retrieve order passed (12ms)
/// ✓ Database connectivity passed (8ms)
///
/// All smoke tests passed (4/4)
/// Total time: 299ms
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteReport {
    /// Each check's result, in order.
    pub results: Vec<TestResult>,
    /// Wall time of the whole suite, retries and backoff included.
    pub total: Duration,
}

impl SmokeSuite {
    /// An empty suite.
    pub fn new() -> Self {
        SmokeSuite::default()
    }

    /// Builds a suite from checks as data, validating each.
    pub fn from_checks(checks: impl IntoIterator<Item = HttpCheck>) -> Result<Self> {
        let tests = checks
            .into_iter()
            .map(HttpSmokeTest::new)
            .collect::<Result<Vec<_>>>()?;
        Ok(SmokeSuite { tests })
    }

    /// Adds a check.
    #[must_use]
    pub fn with(mut self, test: HttpSmokeTest) -> Self {
        self.tests.push(test);
        self
    }

    /// Gives every check `secrets` for its secret headers.
    #[must_use]
    pub fn with_secrets(self, secrets: std::sync::Arc<dyn bluegreen_core::SecretSource>) -> Self {
        SmokeSuite {
            tests: self
                .tests
                .into_iter()
                .map(|t| t.with_secrets(secrets.clone()))
                .collect(),
        }
    }

    /// The checks, e.g. to register each with the driver as a `SmokeTest`.
    pub fn tests(&self) -> &[HttpSmokeTest] {
        &self.tests
    }

    /// Runs every check, in order, against `target`.
    pub async fn run(&self, target: &SmokeTarget) -> SuiteReport {
        let start = Instant::now();
        let mut results = Vec::with_capacity(self.tests.len());
        for t in &self.tests {
            let outcome = match t.run(target).await {
                Ok(o) => o,
                Err(e) => SmokeOutcome {
                    passed: false,
                    duration: Duration::ZERO,
                    detail: format!("could not run: {e}"),
                },
            };
            results.push(TestResult {
                name: t.name().to_string(),
                title: t.check().title().to_string(),
                outcome,
            });
        }
        SuiteReport {
            results,
            total: start.elapsed(),
        }
    }
}

impl SuiteReport {
    /// How many passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.passed).count()
    }

    /// Whether every check passed (an empty suite did not pass anything).
    pub fn all_passed(&self) -> bool {
        !self.results.is_empty() && self.passed() == self.results.len()
    }

    /// One line per check: `✓ Health check passed (45ms)` or
    /// `✗ Health check failed (45ms): version: expected "2.5.0", got "2.4.0"`.
    pub fn lines(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|r| {
                let ms = r.outcome.duration.as_millis();
                if r.outcome.passed {
                    format!("✓ {} passed ({ms}ms)", r.title)
                } else {
                    format!("✗ {} failed ({ms}ms): {}", r.title, r.outcome.detail)
                }
            })
            .collect()
    }

    /// `All smoke tests passed (4/4)` or `Smoke tests failed (3/4 passed)`.
    pub fn summary(&self) -> String {
        let (p, n) = (self.passed(), self.results.len());
        if self.all_passed() {
            format!("All smoke tests passed ({p}/{n})")
        } else {
            format!("Smoke tests failed ({p}/{n} passed)")
        }
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.lines() {
            writeln!(f, "{l}")?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.summary())?;
        write!(f, "Total time: {}ms", self.total.as_millis())
    }
}
