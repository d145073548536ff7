//! Conformance suites: one per trait, run by every implementation.
//!
//! Each suite is a list of named rules ([`COMPUTE_RULES`], [`ROUTER_RULES`],
//! [`MIGRATIONS_RULES`], [`METRICS_RULES`], [`SECRETS_RULES`],
//! [`JOURNAL_RULES`]). A rule has a stable name, a one-line description and
//! the [`Capability`]s it needs. The `check_*` functions run every rule in
//! order and return a [`SuiteReport`] naming each rule with its outcome:
//! passed, failed with the failure's message, or skipped because the caller
//! did not declare a capability the rule needs. A skipped rule is never
//! counted as passed.
//!
//! ```
//! use bluegreen_core::testing::conformance::{self, Capabilities, Verdict};
//! use bluegreen_core::testing::Fakes;
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let fakes = Fakes::new();
//! // Each suite takes a reference to the implementation: `&my_router` for a
//! // value, `&*my_router` for an `Arc<MyRouter>`. Here the fake router.
//! let report = conformance::check_router(&*fakes.router, &Capabilities::all()).await;
//! assert!(report.passed(), "{report}");
//! assert!(report.results.iter().all(|r| r.verdict == Verdict::Passed));
//! # });
//! ```
//!
//! The older entry points ([`compute`], [`router`], [`migrations`],
//! [`metrics`], [`secrets`], [`journal`]) run the same rules with every
//! capability declared and panic with the report when a rule fails.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::ErrorKind;
use crate::journal::{Journal, Lease, Record};
use crate::machine::Input;
use crate::plan::Release;
use crate::provider::{
    ComputeProvider, ComputeStatus, MetricAnswer, MetricQuery, MetricsSource, MigrationContext,
    MigrationPhase, MigrationRunner, SecretSource, TrafficRouter,
};

/// Something an implementation may or may not support. A rule that needs a
/// capability the caller did not declare is reported as skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// The compute provider has autoscaling it can suspend and restore.
    Autoscaling,
    /// The migration runner takes backups and verifies them.
    Backups,
    /// The migration runner can revert reversible migrations.
    Revert,
}

impl Capability {
    /// The capability in words, as reports print it ("has autoscaling").
    pub fn describe(self) -> &'static str {
        match self {
            Capability::Autoscaling => "has autoscaling",
            Capability::Backups => "takes backups",
            Capability::Revert => "reverts migrations",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The capabilities the caller declares for the implementation under test.
/// [`Capabilities::default`] declares none; [`Capabilities::all`] declares
/// every one. Set fields directly or with the builder methods:
/// `Capabilities::none().autoscaling(true)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// See [`Capability::Autoscaling`].
    pub autoscaling: bool,
    /// See [`Capability::Backups`].
    pub backups: bool,
    /// See [`Capability::Revert`].
    pub revert: bool,
}

impl Capabilities {
    /// No capability declared.
    pub fn none() -> Self {
        Capabilities::default()
    }

    /// Every capability declared.
    pub fn all() -> Self {
        Capabilities {
            autoscaling: true,
            backups: true,
            revert: true,
        }
    }

    /// Declares (or not) [`Capability::Autoscaling`].
    pub fn autoscaling(mut self, yes: bool) -> Self {
        self.autoscaling = yes;
        self
    }

    /// Declares (or not) [`Capability::Backups`].
    pub fn backups(mut self, yes: bool) -> Self {
        self.backups = yes;
        self
    }

    /// Declares (or not) [`Capability::Revert`].
    pub fn revert(mut self, yes: bool) -> Self {
        self.revert = yes;
        self
    }

    /// Whether `c` is declared.
    pub fn has(&self, c: Capability) -> bool {
        match c {
            Capability::Autoscaling => self.autoscaling,
            Capability::Backups => self.backups,
            Capability::Revert => self.revert,
        }
    }
}

/// One rule of a suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The stable name, for example `statuses-answers-every-color-in-order`.
    pub name: &'static str,
    /// What the rule checks, in one line.
    pub description: &'static str,
    /// The capabilities the rule needs; without them it is skipped.
    pub needs: &'static [Capability],
}

/// What became of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The rule held.
    Passed,
    /// The rule was broken; the message says how.
    Failed(String),
    /// The rule needs capabilities the caller did not declare.
    Skipped(Vec<Capability>),
}

/// One rule with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    /// The rule.
    pub rule: Rule,
    /// What became of it.
    pub verdict: Verdict,
}

/// The outcome of one suite run, rule by rule, in the suite's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteReport {
    /// The suite's name (`compute`, `router`, ...).
    pub suite: &'static str,
    /// Every rule of the suite, in order.
    pub results: Vec<RuleResult>,
}

impl SuiteReport {
    /// True when no rule failed (skipped rules do not fail a suite).
    pub fn passed(&self) -> bool {
        self.failed().next().is_none()
    }

    /// The rules that failed.
    pub fn failed(&self) -> impl Iterator<Item = &RuleResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Failed(_)))
    }

    /// The verdict on the rule named `name`, if the suite has it.
    pub fn verdict(&self, name: &str) -> Option<&Verdict> {
        self.results
            .iter()
            .find(|r| r.rule.name == name)
            .map(|r| &r.verdict)
    }

    /// Panics with the whole report when a rule failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failed().count();
        writeln!(
            f,
            "{} conformance: {} rules, {failed} failed",
            self.suite,
            self.results.len()
        )?;
        for r in &self.results {
            match &r.verdict {
                Verdict::Passed => writeln!(f, "  pass  {}", r.rule.name)?,
                Verdict::Failed(m) => writeln!(f, "  FAIL  {}: {m}", r.rule.name)?,
                Verdict::Skipped(c) => {
                    let c: Vec<&str> = c.iter().map(|c| c.describe()).collect();
                    writeln!(f, "  skip  {} (needs: {})", r.rule.name, c.join(", "))?
                }
            }
        }
        Ok(())
    }
}

/// Runs rules in order, turning a rule's panic into its failure.
struct Runner<'a> {
    caps: &'a Capabilities,
    report: SuiteReport,
}

impl<'a> Runner<'a> {
    fn new(suite: &'static str, caps: &'a Capabilities) -> Self {
        Runner {
            caps,
            report: SuiteReport {
                suite,
                results: Vec::new(),
            },
        }
    }

    /// Runs `body` as `rule` unless a capability is missing. The body is a
    /// future not yet polled, so a skipped rule does nothing.
    async fn rule(&mut self, rule: &Rule, body: impl Future<Output = ()>) -> bool {
        let missing: Vec<Capability> = rule
            .needs
            .iter()
            .copied()
            .filter(|c| !self.caps.has(*c))
            .collect();
        let verdict = if !missing.is_empty() {
            Verdict::Skipped(missing)
        } else {
            match AssertUnwindSafe(body).catch_unwind().await {
                Ok(()) => Verdict::Passed,
                Err(p) => Verdict::Failed(panic_message(p.as_ref())),
            }
        };
        let passed = verdict == Verdict::Passed;
        self.report.results.push(RuleResult {
            rule: *rule,
            verdict,
        });
        passed
    }

    fn finish(self) -> SuiteReport {
        self.report
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "the rule panicked without a message".to_string()
    }
}

/// The state an earlier rule left, or a failure naming that rule.
fn needs<T: Clone>(v: &Option<T>, rule: &Rule) -> T {
    v.clone()
        .unwrap_or_else(|| panic!("not checked: the rule {} did not pass", rule.name))
}

/// How long [`compute`] waits for a color to settle, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// The longest wait for a color to reach a count.
    pub timeout: Duration,
    /// How often to poll.
    pub poll: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

async fn settle(
    p: &dyn ComputeProvider,
    color: Color,
    count: u32,
    patience: Patience,
) -> ComputeStatus {
    let start = tokio::time::Instant::now();
    loop {
        let s = p
            .status(color)
            .await
            .unwrap_or_else(|e| panic!("status({color}) failed: {e}"));
        let settled = if count == 0 {
            s.desired == 0 && s.running == 0 && s.pending == 0
        } else {
            s.is_stable_at(count)
        };
        if settled {
            return s;
        }
        assert!(
            start.elapsed() < patience.timeout,
            "{color} did not settle at {count} within {:?}; last status {s:?}",
            patience.timeout
        );
        tokio::time::sleep(patience.poll).await;
    }
}

/// A status that cannot be true: more healthy instances than running ones.
fn impossible(s: &ComputeStatus) -> Option<String> {
    match s.healthy {
        Some(h) if h > s.running => Some(format!(
            "{h} healthy of {} running: a provider must answer InvalidResponse instead",
            s.running
        )),
        _ => None,
    }
}

const PREPARE_IS_REPEATABLE: Rule = Rule {
    name: "prepare-is-repeatable",
    description: "prepare succeeds, and again with the same release",
    needs: &[],
};
const SCALE_REACHES_COUNT: Rule = Rule {
    name: "scale-reaches-count",
    description: "scale(2) sent twice settles at 2 and status reports the prepared version",
    needs: &[],
};
const STATUSES_AGREE_WITH_STATUS: Rule = Rule {
    name: "statuses-agrees-with-status",
    description: "statuses with the same color asked twice answers two statuses equal to status",
    needs: &[],
};
const STATUSES_IN_ORDER: Rule = Rule {
    name: "statuses-answers-every-color-in-order",
    description: "statuses with both colors asked, in both orders, answers one status per color in the order asked",
    needs: &[],
};
const STATUSES_POSSIBLE: Rule = Rule {
    name: "statuses-are-possible",
    description: "no status answers more healthy instances than running ones",
    needs: &[],
};
const AUTOSCALING_RESTORES: Rule = Rule {
    name: "autoscaling-restores-exactly",
    description: "suspend then restore puts back exactly the state found before",
    needs: &[Capability::Autoscaling],
};
const ENDPOINT_ANSWERS: Rule = Rule {
    name: "endpoint-answers",
    description: "endpoint answers without an error",
    needs: &[],
};
const SCALE_TO_ZERO: Rule = Rule {
    name: "scale-to-zero-settles",
    description: "scale(0) settles with nothing desired, running or pending",
    needs: &[],
};

/// The rules of the compute suite, in the order they run.
pub const COMPUTE_RULES: &[Rule] = &[
    PREPARE_IS_REPEATABLE,
    SCALE_REACHES_COUNT,
    STATUSES_AGREE_WITH_STATUS,
    STATUSES_IN_ORDER,
    STATUSES_POSSIBLE,
    AUTOSCALING_RESTORES,
    ENDPOINT_ANSWERS,
    SCALE_TO_ZERO,
];

/// Runs [`COMPUTE_RULES`] on one `color` (the other color is only read).
/// Leaves the color at zero when the last rule passes.
pub async fn check_compute(
    p: &dyn ComputeProvider,
    color: Color,
    release: &Release,
    patience: Patience,
    caps: &Capabilities,
) -> SuiteReport {
    let mut run = Runner::new("compute", caps);
    run.rule(&PREPARE_IS_REPEATABLE, async {
        p.prepare(color, release)
            .await
            .unwrap_or_else(|e| panic!("prepare({color}) failed: {e}"));
        p.prepare(color, release)
            .await
            .unwrap_or_else(|e| panic!("prepare({color}) is not repeatable: {e}"));
    })
    .await;
    run.rule(&SCALE_REACHES_COUNT, async {
        for _ in 0..2 {
            p.scale(color, 2)
                .await
                .unwrap_or_else(|e| panic!("scale({color}, 2) failed: {e}"));
        }
        let s = settle(p, color, 2, patience).await;
        assert_eq!(s.desired, 2, "desired count after scale(2)");
        if let Some(v) = &s.version {
            assert_eq!(v, &release.version, "status reports the prepared release");
        }
    })
    .await;
    run.rule(&STATUSES_AGREE_WITH_STATUS, async {
        let s = p
            .status(color)
            .await
            .unwrap_or_else(|e| panic!("status({color}) failed: {e}"));
        let both = p
            .statuses(&[color, color])
            .await
            .unwrap_or_else(|e| panic!("statuses failed: {e}"));
        assert_eq!(both.len(), 2, "statuses answers one status per color asked");
        assert!(
            both.iter().all(|b| b.desired == s.desired),
            "statuses agrees with status: {both:?} vs {s:?}"
        );
    })
    .await;
    let other = color.other();
    run.rule(&STATUSES_IN_ORDER, async {
        let mine = p
            .status(color)
            .await
            .unwrap_or_else(|e| panic!("status({color}) failed: {e}"));
        let theirs = p
            .status(other)
            .await
            .unwrap_or_else(|e| panic!("status({other}) failed: {e}"));
        assert_ne!(
            mine.desired, theirs.desired,
            "the suite needs {other} at a count other than {color}'s ({}); scale it first",
            mine.desired
        );
        for asked in [[color, other], [other, color]] {
            let got = p
                .statuses(&asked)
                .await
                .unwrap_or_else(|e| panic!("statuses({asked:?}) failed: {e}"));
            assert!(
                got.len() == 2,
                "statuses({}, {}) answers one status per color asked, got {}",
                asked[0],
                asked[1],
                got.len()
            );
            for (c, s) in asked.iter().zip(&got) {
                let want = if *c == color { &mine } else { &theirs };
                assert!(
                    s.desired == want.desired,
                    "statuses({}, {}): the answer for {c} says desired {} but status({c}) says {}",
                    asked[0],
                    asked[1],
                    s.desired,
                    want.desired
                );
            }
        }
    })
    .await;
    run.rule(&STATUSES_POSSIBLE, async {
        let got = p
            .statuses(&[color, other])
            .await
            .unwrap_or_else(|e| panic!("statuses failed: {e}"));
        for (c, s) in [color, other].iter().zip(&got) {
            if let Some(m) = impossible(s) {
                panic!("{c}: {m}");
            }
        }
    })
    .await;
    run.rule(&AUTOSCALING_RESTORES, async {
        let before = p
            .suspend_autoscaling(color)
            .await
            .unwrap_or_else(|e| panic!("suspend_autoscaling({color}) failed: {e}"));
        p.restore_autoscaling(color, before)
            .await
            .unwrap_or_else(|e| panic!("restore_autoscaling({color}) failed: {e}"));
        let again = p
            .suspend_autoscaling(color)
            .await
            .unwrap_or_else(|e| panic!("suspend_autoscaling({color}) failed: {e}"));
        assert_eq!(
            again, before,
            "restore_autoscaling put back exactly the state found before"
        );
        p.restore_autoscaling(color, before)
            .await
            .unwrap_or_else(|e| panic!("restore_autoscaling({color}) failed: {e}"));
    })
    .await;
    run.rule(&ENDPOINT_ANSWERS, async {
        p.endpoint(color)
            .await
            .unwrap_or_else(|e| panic!("endpoint({color}) failed: {e}"));
    })
    .await;
    run.rule(&SCALE_TO_ZERO, async {
        p.scale(color, 0)
            .await
            .unwrap_or_else(|e| panic!("scale({color}, 0) failed: {e}"));
        let s = settle(p, color, 0, patience).await;
        assert_eq!(s.desired, 0);
    })
    .await;
    run.finish()
}

/// The `ComputeProvider` contract on one `color` ([`COMPUTE_RULES`], every
/// capability declared). Panics with the report when a rule fails.
pub async fn compute(p: &dyn ComputeProvider, color: Color, release: &Release, patience: Patience) {
    check_compute(p, color, release, patience, &Capabilities::all())
        .await
        .assert_passed();
}

const SPLIT_READS_BACK: Rule = Rule {
    name: "split-reads-back-exactly",
    description: "100% green, 10%, 50% and 100% blue, each set twice, read back exactly",
    needs: &[],
};
const TARGET_HEALTH_POSSIBLE: Rule = Rule {
    name: "target-health-is-possible",
    description: "target_health answers for both colors, never more healthy than total",
    needs: &[],
};

/// The rules of the router suite, in the order they run.
pub const ROUTER_RULES: &[Rule] = &[SPLIT_READS_BACK, TARGET_HEALTH_POSSIBLE];

/// Runs [`ROUTER_RULES`]. Ends with all traffic on blue when the first rule
/// passes.
pub async fn check_router(r: &dyn TrafficRouter, caps: &Capabilities) -> SuiteReport {
    let mut run = Runner::new("router", caps);
    run.rule(&SPLIT_READS_BACK, async {
        let splits = [
            TrafficSplit::all_on(Color::Green),
            TrafficSplit::with_percent(Color::Blue, 10),
            TrafficSplit::with_percent(Color::Blue, 50),
            TrafficSplit::all_on(Color::Blue),
        ];
        for split in splits {
            for _ in 0..2 {
                r.set_split(split)
                    .await
                    .unwrap_or_else(|e| panic!("set_split({split}) failed: {e}"));
            }
            let back = r
                .current_split()
                .await
                .unwrap_or_else(|e| panic!("current_split failed: {e}"));
            assert_eq!(back, split, "read-back after set_split({split})");
        }
    })
    .await;
    run.rule(&TARGET_HEALTH_POSSIBLE, async {
        for c in Color::ALL {
            let h = r
                .target_health(c)
                .await
                .unwrap_or_else(|e| panic!("target_health({c}) failed: {e}"));
            assert!(
                h.healthy <= h.total,
                "{c}: {} healthy of {}: a router must answer InvalidResponse instead",
                h.healthy,
                h.total
            );
        }
    })
    .await;
    run.finish()
}

/// The `TrafficRouter` contract ([`ROUTER_RULES`]). Panics with the report
/// when a rule fails. Ends with all traffic on blue.
pub async fn router(r: &dyn TrafficRouter) {
    check_router(r, &Capabilities::all()).await.assert_passed();
}

const BACKUP_VERIFIES: Rule = Rule {
    name: "backup-verifies",
    description: "a backup verifies with min_entries 1 and fails with u64::MAX",
    needs: &[Capability::Backups],
};
const APPLY_IN_ORDER: Rule = Rule {
    name: "expand-applies-pending-in-order",
    description:
        "apply(Expand) applies the pending expand migrations in order (the suite needs one)",
    needs: &[],
};
const APPLY_REPEATS: Rule = Rule {
    name: "repeated-apply-reports-the-same",
    description:
        "a repeated apply of the same deployment reports what it applied, each applied once",
    needs: &[],
};
const OTHER_OWNS_NOTHING: Rule = Rule {
    name: "other-deployment-owns-nothing",
    description: "another deployment's apply applies nothing and owns nothing",
    needs: &[],
};
const VERIFY_PASSES: Rule = Rule {
    name: "verify-passes",
    description: "verify(Expand) passes every check after the apply",
    needs: &[],
};
const REVERT_NEWEST_FIRST: Rule = Rule {
    name: "revert-newest-first-once",
    description: "reversible migrations revert newest first, a repeat reverts nothing, they are pending again",
    needs: &[Capability::Revert],
};

/// The rules of the migrations suite, in the order they run.
pub const MIGRATIONS_RULES: &[Rule] = &[
    BACKUP_VERIFIES,
    APPLY_IN_ORDER,
    APPLY_REPEATS,
    OTHER_OWNS_NOTHING,
    VERIFY_PASSES,
    REVERT_NEWEST_FIRST,
];

/// Runs [`MIGRATIONS_RULES`]. The runner must have at least one pending
/// expand migration (a reversible one for the revert rule).
pub async fn check_migrations(
    r: &dyn MigrationRunner,
    ctx: &MigrationContext,
    caps: &Capabilities,
) -> SuiteReport {
    let mut run = Runner::new("migrations", caps);
    let expand: Vec<_> = match r.status().await {
        Ok(s) => s
            .pending
            .into_iter()
            .filter(|m| m.phase == MigrationPhase::Expand)
            .collect(),
        Err(_) => Vec::new(),
    };
    run.rule(&BACKUP_VERIFIES, async {
        let backup = r
            .backup(ctx)
            .await
            .unwrap_or_else(|e| panic!("backup failed: {e}"));
        let v = r
            .verify_backup(&backup, 1)
            .await
            .unwrap_or_else(|e| panic!("verify_backup failed: {e}"));
        assert!(v.passed && v.entries >= 1, "backup verification: {v:?}");
        let too_many = r
            .verify_backup(&backup, u64::MAX)
            .await
            .unwrap_or_else(|e| panic!("verify_backup failed: {e}"));
        assert!(
            !too_many.passed,
            "a threshold above the entry count must fail"
        );
    })
    .await;
    let expected: Vec<u64> = expand.iter().map(|m| m.version).collect();
    let applied = run
        .rule(&APPLY_IN_ORDER, async {
            assert!(
                !expand.is_empty(),
                "the suite needs a pending expand migration; status had none (or failed)"
            );
            let applied = r
                .apply(MigrationPhase::Expand, ctx)
                .await
                .unwrap_or_else(|e| panic!("apply(expand) failed: {e}"));
            let versions: Vec<u64> = applied.iter().map(|m| m.version).collect();
            assert_eq!(
                versions, expected,
                "apply(expand) applies the pending expand migrations in order"
            );
        })
        .await;
    let applied = applied.then_some(());
    run.rule(&APPLY_REPEATS, async {
        needs(&applied, &APPLY_IN_ORDER);
        let again = r
            .apply(MigrationPhase::Expand, ctx)
            .await
            .unwrap_or_else(|e| panic!("repeated apply(expand) failed: {e}"));
        let again: Vec<u64> = again.iter().map(|m| m.version).collect();
        assert_eq!(
            again, expected,
            "a repeated apply of the same deployment reports what that deployment applied"
        );
        let after = r
            .status()
            .await
            .unwrap_or_else(|e| panic!("status failed: {e}"));
        for v in &expected {
            let n = after.applied.iter().filter(|a| a.version == *v).count();
            assert_eq!(n, 1, "{v} is listed as applied exactly once, not {n} times");
        }
    })
    .await;
    run.rule(&OTHER_OWNS_NOTHING, async {
        needs(&applied, &APPLY_IN_ORDER);
        let other = MigrationContext {
            deployment_id: format!("{}-other", ctx.deployment_id),
            backup_id: None,
        };
        let theirs = r
            .apply(MigrationPhase::Expand, &other)
            .await
            .unwrap_or_else(|e| panic!("apply(expand) for another deployment failed: {e}"));
        assert!(
            theirs.is_empty(),
            "another deployment applied nothing and owns nothing: {theirs:?}"
        );
    })
    .await;
    run.rule(&VERIFY_PASSES, async {
        needs(&applied, &APPLY_IN_ORDER);
        let checks = r
            .verify(MigrationPhase::Expand, ctx)
            .await
            .unwrap_or_else(|e| panic!("verify(expand) failed: {e}"));
        assert!(checks.iter().all(|c| c.passed), "verification: {checks:?}");
    })
    .await;
    run.rule(&REVERT_NEWEST_FIRST, async {
        needs(&applied, &APPLY_IN_ORDER);
        let mut reversible: Vec<u64> = expand
            .iter()
            .filter(|m| m.reversible)
            .map(|m| m.version)
            .collect();
        reversible.sort_unstable_by(|a, b| b.cmp(a));
        assert!(
            !reversible.is_empty(),
            "the rule needs a pending reversible expand migration"
        );
        let reverted = r
            .revert(&reversible, ctx)
            .await
            .unwrap_or_else(|e| panic!("revert failed: {e}"));
        let got: Vec<u64> = reverted.iter().map(|m| m.version).collect();
        assert_eq!(got, reversible, "revert reverts newest first");
        let again = r
            .revert(&reversible, ctx)
            .await
            .unwrap_or_else(|e| panic!("repeated revert failed: {e}"));
        assert!(
            again.is_empty(),
            "a repeated revert reverted {again:?} twice"
        );
        let end = r
            .status()
            .await
            .unwrap_or_else(|e| panic!("status failed: {e}"));
        for v in &reversible {
            assert!(
                end.pending.iter().any(|m| m.version == *v),
                "{v} pending again"
            );
        }
    })
    .await;
    run.finish()
}

/// The `MigrationRunner` contract ([`MIGRATIONS_RULES`], every capability
/// declared). The runner must have at least one pending, reversible expand
/// migration. Panics with the report when a rule fails.
pub async fn migrations(r: &dyn MigrationRunner, ctx: &MigrationContext) {
    check_migrations(r, ctx, &Capabilities::all())
        .await
        .assert_passed();
}

const WITH_DATA: Rule = Rule {
    name: "with-data-answers-samples",
    description: "a query with data answers non-empty samples, twice",
    needs: &[],
};
const WITHOUT_DATA: Rule = Rule {
    name: "without-data-answers-no-data",
    description: "a query without data answers NoData (never zero samples), twice",
    needs: &[],
};

/// The rules of the metrics suite, in the order they run.
pub const METRICS_RULES: &[Rule] = &[WITH_DATA, WITHOUT_DATA];

/// Runs [`METRICS_RULES`] with one query that has data and one that has none.
pub async fn check_metrics(
    s: &dyn MetricsSource,
    with_data: &MetricQuery,
    without_data: &MetricQuery,
    caps: &Capabilities,
) -> SuiteReport {
    let mut run = Runner::new("metrics", caps);
    run.rule(&WITH_DATA, async {
        for _ in 0..2 {
            match s
                .query(with_data)
                .await
                .unwrap_or_else(|e| panic!("query {:?} failed: {e}", with_data.query))
            {
                MetricAnswer::Samples { samples } => assert!(
                    !samples.is_empty(),
                    "Samples with no samples must be NoData instead"
                ),
                other => panic!(
                    "query {:?} should have data, got {other:?}",
                    with_data.query
                ),
            }
        }
    })
    .await;
    run.rule(&WITHOUT_DATA, async {
        for _ in 0..2 {
            let none = s
                .query(without_data)
                .await
                .unwrap_or_else(|e| panic!("query {:?} failed: {e}", without_data.query));
            assert!(
                matches!(none, MetricAnswer::NoData { .. }),
                "a query without data answers NoData, got {none:?}"
            );
        }
    })
    .await;
    run.finish()
}

/// The `MetricsSource` contract ([`METRICS_RULES`]). Panics with the report
/// when a rule fails.
pub async fn metrics(s: &dyn MetricsSource, with_data: &MetricQuery, without_data: &MetricQuery) {
    check_metrics(s, with_data, without_data, &Capabilities::all())
        .await
        .assert_passed();
}

const SECRET_READS: Rule = Rule {
    name: "existing-secret-reads",
    description: "an existing secret's value and metadata are read, the value absent from Debug",
    needs: &[],
};
const MISSING_SECRET: Rule = Rule {
    name: "missing-secret-is-not-found",
    description: "a missing secret is NotFound from get and from metadata",
    needs: &[],
};

/// The rules of the secrets suite, in the order they run.
pub const SECRETS_RULES: &[Rule] = &[SECRET_READS, MISSING_SECRET];

/// Runs [`SECRETS_RULES`] with one existing and one missing secret name.
pub async fn check_secrets(
    s: &dyn SecretSource,
    existing: &str,
    missing: &str,
    caps: &Capabilities,
) -> SuiteReport {
    let mut run = Runner::new("secrets", caps);
    run.rule(&SECRET_READS, async {
        let v = s
            .get(existing)
            .await
            .unwrap_or_else(|e| panic!("get({existing}) failed: {e}"));
        assert!(
            !format!("{v:?}").contains(v.expose()) || v.expose().is_empty(),
            "the secret's value shows in its Debug output"
        );
        let m = s
            .metadata(existing)
            .await
            .unwrap_or_else(|e| panic!("metadata({existing}) failed: {e}"));
        assert!(!m.name.is_empty(), "metadata has an empty name");
    })
    .await;
    run.rule(&MISSING_SECRET, async {
        match s.get(missing).await {
            Ok(_) => panic!("get({missing}) answered a value for a missing secret"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound, "get({missing}): {e}");
                assert!(!e.to_string().is_empty());
            }
        }
        match s.metadata(missing).await {
            Ok(_) => panic!("metadata({missing}) answered for a missing secret"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "metadata({missing}): {e}"),
        }
    })
    .await;
    run.finish()
}

/// The `SecretSource` contract ([`SECRETS_RULES`]). Panics with the report
/// when a rule fails.
pub async fn secrets(s: &dyn SecretSource, existing: &str, missing: &str) {
    check_secrets(s, existing, missing, &Capabilities::all())
        .await
        .assert_passed();
}

const LEASE_GRANTED: Rule = Rule {
    name: "lease-granted-and-refused",
    description:
        "a free lease is granted; another holder is refused with LeaseHeld naming the holder",
    needs: &[],
};
const SAME_HOLDER: Rule = Rule {
    name: "same-holder-reacquires",
    description: "the same holder re-acquires with a higher token, naming the expiry it took over",
    needs: &[],
};
const SUPERSEDED_FENCED: Rule = Rule {
    name: "superseded-token-is-fenced",
    description: "an append under a superseded token is Fenced",
    needs: &[],
};
const APPEND_READ: Rule = Rule {
    name: "append-counts-from-one-and-reads-in-order",
    description: "seq counts from 1 per deployment; read answers in seq order; an unknown deployment reads empty",
    needs: &[],
};
const RENEW: Rule = Rule {
    name: "renew-extends",
    description: "renew keeps the token and extends the expiry",
    needs: &[],
};
const TAKEOVER: Rule = Rule {
    name: "takeover-after-expiry-fences",
    description: "an expired lease is taken over; the old holder's appends and renews are Fenced",
    needs: &[],
};
const DEPLOYMENTS: Rule = Rule {
    name: "deployments-lists-per-service",
    description: "deployments lists a deployment with its record count under its service only",
    needs: &[],
};
const RELEASED_FREE: Rule = Rule {
    name: "released-lease-is-free",
    description: "a released lease is granted at once, superseding nothing",
    needs: &[],
};

/// The rules of the journal suite, in the order they run.
pub const JOURNAL_RULES: &[Rule] = &[
    LEASE_GRANTED,
    SAME_HOLDER,
    SUPERSEDED_FENCED,
    APPEND_READ,
    RENEW,
    TAKEOVER,
    DEPLOYMENTS,
    RELEASED_FREE,
];

/// Runs [`JOURNAL_RULES`] on a fresh journal. Uses the service
/// `conformance-svc` and the deployment `dep-1`.
pub async fn check_journal(j: &dyn Journal, caps: &Capabilities) -> SuiteReport {
    let svc = "conformance-svc";
    let ttl = Duration::from_secs(60);
    let t0 = Timestamp(1_700_000_000_000);
    let rec = |n: u64| Record::Step {
        input: if n.is_multiple_of(2) {
            Input::Tick
        } else {
            Input::Start
        },
        commands: Vec::new(),
        events: Vec::new(),
        notifications: Vec::new(),
    };
    let mut run = Runner::new("journal", caps);
    let mut a1: Option<Lease> = None;
    let mut a2: Option<Lease> = None;
    let mut a3: Option<Lease> = None;
    let mut b: Option<Lease> = None;
    let mut appended: Option<()> = None;
    let mut after_expiry = None;

    run.rule(&LEASE_GRANTED, async {
        let l = j
            .acquire(svc, "deployer-a", ttl, t0)
            .await
            .unwrap_or_else(|e| panic!("a free lease is refused: {e}"));
        assert_eq!(l.superseded, None, "a free lease supersedes nothing");
        match j
            .acquire(svc, "deployer-b", ttl, t0.after(Duration::from_secs(1)))
            .await
        {
            Ok(_) => panic!("a held lease was granted to another holder"),
            Err(held) => {
                assert_eq!(held.kind(), ErrorKind::LeaseHeld, "{held}");
                assert!(
                    held.to_string().contains("deployer-a"),
                    "the error names the holder: {held}"
                );
            }
        }
        a1 = Some(l);
    })
    .await;
    run.rule(&SAME_HOLDER, async {
        let first = needs(&a1, &LEASE_GRANTED);
        let l = j
            .acquire(svc, "deployer-a", ttl, t0.after(Duration::from_secs(2)))
            .await
            .unwrap_or_else(|e| panic!("the same holder cannot re-acquire (resume): {e}"));
        assert_eq!(
            l.superseded,
            Some(first.expires_at),
            "re-acquiring names the expiry of the lease it took over"
        );
        assert!(
            l.token > first.token,
            "tokens increase: {} then {}",
            first.token,
            l.token
        );
        a2 = Some(l);
    })
    .await;
    run.rule(&SUPERSEDED_FENCED, async {
        let first = needs(&a1, &LEASE_GRANTED);
        needs(&a2, &SAME_HOLDER);
        match j.append(&first, "dep-1", t0, &rec(1)).await {
            Ok(seq) => panic!("a superseded token appended (seq {seq})"),
            Err(stale) => assert_eq!(stale.kind(), ErrorKind::Fenced, "{stale}"),
        }
    })
    .await;
    run.rule(&APPEND_READ, async {
        let l = needs(&a2, &SAME_HOLDER);
        for n in 1..=3u64 {
            let seq = j
                .append(&l, "dep-1", t0.after(Duration::from_secs(n)), &rec(n))
                .await
                .unwrap_or_else(|e| panic!("append under the current lease failed: {e}"));
            assert_eq!(seq, n, "seq counts from 1 per deployment");
        }
        let entries = j
            .read("dep-1")
            .await
            .unwrap_or_else(|e| panic!("read failed: {e}"));
        assert_eq!(entries.len(), 3, "read answers every record appended");
        assert!(
            entries.windows(2).all(|w| w[0].seq < w[1].seq),
            "read is in seq order"
        );
        assert_eq!(entries[0].record, rec(1), "the first record reads back");
        assert!(
            entries
                .iter()
                .all(|e| e.service == svc && e.token == l.token),
            "entries carry the service and the token they were written under"
        );
        let none = j
            .read("no-such-deployment")
            .await
            .unwrap_or_else(|e| panic!("read of an unknown deployment failed: {e}"));
        assert!(none.is_empty(), "an unknown deployment reads empty");
        appended = Some(());
    })
    .await;
    run.rule(&RENEW, async {
        let l = needs(&a2, &SAME_HOLDER);
        let r = j
            .renew(&l, ttl, t0.after(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|e| panic!("renew of a current lease failed: {e}"));
        assert_eq!(r.token, l.token, "renew keeps the token");
        assert!(r.expires_at > l.expires_at, "renew extends the expiry");
        a3 = Some(r);
    })
    .await;
    run.rule(&TAKEOVER, async {
        let old = needs(&a3, &RENEW);
        needs(&appended, &APPEND_READ);
        let at = old.expires_at.after(Duration::from_secs(1));
        let l = j
            .acquire(svc, "deployer-b", ttl, at)
            .await
            .unwrap_or_else(|e| panic!("an expired lease cannot be taken over: {e}"));
        assert_eq!(
            l.superseded,
            Some(old.expires_at),
            "a takeover names the expiry of the lease it took over (after its renewal)"
        );
        assert!(l.token > old.token, "the takeover has a higher token");
        match j.append(&old, "dep-1", at, &rec(4)).await {
            Ok(seq) => panic!("after a takeover the old holder appended (seq {seq})"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Fenced, "{e}"),
        }
        match j.renew(&old, ttl, at).await {
            Ok(_) => panic!("after a takeover the old holder renewed"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Fenced, "{e}"),
        }
        let seq = j
            .append(&l, "dep-1", at, &rec(4))
            .await
            .unwrap_or_else(|e| panic!("the new holder cannot append: {e}"));
        assert_eq!(seq, 4, "the new holder continues the sequence");
        b = Some(l);
        after_expiry = Some(at);
    })
    .await;
    run.rule(&DEPLOYMENTS, async {
        needs(&b, &TAKEOVER);
        let list = j
            .deployments(Some(svc.to_string()))
            .await
            .unwrap_or_else(|e| panic!("deployments failed: {e}"));
        let d = list
            .iter()
            .find(|d| d.id == "dep-1")
            .unwrap_or_else(|| panic!("dep-1 is not listed under {svc}"));
        assert_eq!(d.records, 4, "dep-1 lists its record count");
        let others = j
            .deployments(Some("another-service".to_string()))
            .await
            .unwrap_or_else(|e| panic!("deployments failed: {e}"));
        assert!(
            others.iter().all(|d| d.id != "dep-1"),
            "dep-1 is listed under another service"
        );
    })
    .await;
    run.rule(&RELEASED_FREE, async {
        let held = needs(&b, &TAKEOVER);
        let at = needs(&after_expiry, &TAKEOVER);
        j.release(&held)
            .await
            .unwrap_or_else(|e| panic!("release failed: {e}"));
        let c = j
            .acquire(svc, "deployer-c", ttl, at)
            .await
            .unwrap_or_else(|e| panic!("a released lease is refused: {e}"));
        assert_eq!(
            c.superseded, None,
            "a released lease leaves nothing to wait for"
        );
        assert!(c.token > held.token, "tokens increase after a release");
        j.release(&c)
            .await
            .unwrap_or_else(|e| panic!("release failed: {e}"));
    })
    .await;
    run.finish()
}

/// The `Journal` contract ([`JOURNAL_RULES`]): leases, fencing, takeover
/// after expiry, ordered reads and the deployment list. Uses the service
/// `conformance-svc`. Panics with the report when a rule fails.
pub async fn journal(j: &dyn Journal) {
    check_journal(j, &Capabilities::all()).await.assert_passed();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::error::Result;
    use crate::journal::{FileJournal, MemoryJournal};
    use crate::testing::{ComputeDelegate, Delegated, FakeCompute, Fakes};

    fn all_passed(report: &SuiteReport, rules: &[Rule]) {
        let names: Vec<&str> = report.results.iter().map(|r| r.rule.name).collect();
        let want: Vec<&str> = rules.iter().map(|r| r.name).collect();
        assert_eq!(names, want, "every rule reported, in order");
        assert!(
            report.results.iter().all(|r| r.verdict == Verdict::Passed),
            "{report}"
        );
    }

    fn query(check: &str) -> MetricQuery {
        MetricQuery {
            check: check.into(),
            query: format!("{check}{{}}"),
            from: Timestamp(0),
            to: Timestamp(60_000),
            color: None,
            baseline: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fakes_pass_every_suite_with_every_capability() {
        let f = Fakes::new();
        let caps = Capabilities::all();
        let release = Release::new("2.5.0", "order-api:2.5.0");
        let r = check_compute(
            &*f.compute,
            Color::Blue,
            &release,
            Patience::default(),
            &caps,
        );
        all_passed(&r.await, COMPUTE_RULES);
        all_passed(&check_router(&*f.router, &caps).await, ROUTER_RULES);
        let ctx = MigrationContext {
            deployment_id: "conformance-1".into(),
            backup_id: None,
        };
        let r = check_migrations(&*f.migrations, &ctx, &caps).await;
        all_passed(&r, MIGRATIONS_RULES);
        f.metrics.constant("error-rate", 0.002);
        let (with, without) = (query("error-rate"), query("none"));
        let r = check_metrics(&*f.metrics, &with, &without, &caps).await;
        all_passed(&r, METRICS_RULES);
        let r = check_secrets(
            &*f.secrets,
            "prod/order-api/db-password",
            "prod/order-api/no-such-secret",
            &caps,
        );
        all_passed(&r.await, SECRETS_RULES);
        all_passed(&check_journal(&*f.journal, &caps).await, JOURNAL_RULES);
    }

    #[tokio::test]
    async fn memory_and_file_journals_pass_the_journal_suite() {
        let dir = tempfile::tempdir().unwrap();
        let journals: Vec<(&str, Box<dyn Journal>)> = vec![
            ("memory", Box::new(MemoryJournal::new())),
            ("memory, compacting", Box::new(MemoryJournal::compacting())),
            (
                "file",
                Box::new(FileJournal::open(dir.path().join("j.jsonl")).unwrap()),
            ),
        ];
        for (name, j) in journals {
            let r = check_journal(&*j, &Capabilities::none()).await;
            assert!(r.passed(), "{name}: {r}");
            all_passed(&r, JOURNAL_RULES);
        }
        // The older entry point on a fresh file journal.
        journal(&FileJournal::open(dir.path().join("k.jsonl")).unwrap()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rule_needing_an_undeclared_capability_is_skipped_not_passed() {
        let f = Fakes::new();
        let release = Release::new("2.5.0", "order-api:2.5.0");
        let caps = Capabilities::none();
        let r = check_compute(
            &*f.compute,
            Color::Blue,
            &release,
            Patience::default(),
            &caps,
        )
        .await;
        assert!(r.passed(), "{r}");
        assert_eq!(
            r.verdict("autoscaling-restores-exactly"),
            Some(&Verdict::Skipped(vec![Capability::Autoscaling]))
        );
        assert_eq!(r.verdict("scale-to-zero-settles"), Some(&Verdict::Passed));
        assert!(
            r.to_string()
                .contains("  skip  autoscaling-restores-exactly (needs: has autoscaling)"),
            "{r}"
        );
        let ctx = MigrationContext {
            deployment_id: "conformance-1".into(),
            backup_id: None,
        };
        let caps = Capabilities::none().backups(true);
        let r = check_migrations(&*f.migrations, &ctx, &caps).await;
        assert_eq!(r.verdict("backup-verifies"), Some(&Verdict::Passed), "{r}");
        assert_eq!(
            r.verdict("revert-newest-first-once"),
            Some(&Verdict::Skipped(vec![Capability::Revert]))
        );
    }

    /// The fake compute, with `statuses` answering in the wrong order.
    struct Reversed(Arc<FakeCompute>);

    #[async_trait]
    impl ComputeDelegate for Reversed {
        fn inner(&self) -> &dyn ComputeProvider {
            &*self.0
        }
        async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
            let mut out = self.0.statuses(colors).await?;
            out.reverse();
            Ok(out)
        }
    }

    /// The fake compute, with `statuses` answering one more healthy
    /// instance than running.
    struct Overhealthy(Arc<FakeCompute>);

    #[async_trait]
    impl ComputeDelegate for Overhealthy {
        fn inner(&self) -> &dyn ComputeProvider {
            &*self.0
        }
        async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
            let mut out = self.0.statuses(colors).await?;
            for s in &mut out {
                s.healthy = Some(s.running + 1);
            }
            Ok(out)
        }
    }

    fn failure<'a>(r: &'a SuiteReport, name: &str) -> &'a str {
        match r.verdict(name) {
            Some(Verdict::Failed(m)) => m,
            other => panic!("{name}: expected a failure, got {other:?}\n{r}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_in_the_wrong_order_fail_their_rule_with_the_colors() {
        let f = Fakes::new();
        let release = Release::new("2.5.0", "order-api:2.5.0");
        let p = Delegated(Reversed(f.compute.clone()));
        let caps = Capabilities::all();
        let r = check_compute(&p, Color::Blue, &release, Patience::default(), &caps).await;
        assert!(!r.passed());
        let m = failure(&r, "statuses-answers-every-color-in-order");
        assert!(
            m.contains("statuses(blue, green): the answer for blue"),
            "{m}"
        );
        assert_eq!(r.failed().count(), 1, "{r}");
        let text = r.to_string();
        assert!(text.contains("8 rules, 1 failed"), "{text}");
        assert!(
            text.contains(
                "  FAIL  statuses-answers-every-color-in-order: statuses(blue, green): \
                 the answer for blue says desired 3 but status(blue) says 2"
            ),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn more_healthy_than_running_fails_its_rule() {
        let f = Fakes::new();
        let release = Release::new("2.5.0", "order-api:2.5.0");
        let p = Delegated(Overhealthy(f.compute.clone()));
        let caps = Capabilities::all();
        let r = check_compute(&p, Color::Blue, &release, Patience::default(), &caps).await;
        let m = failure(&r, "statuses-are-possible");
        assert!(m.contains("3 healthy of 2 running"), "{m}");
        assert!(m.contains("InvalidResponse"), "{m}");
        assert_eq!(r.failed().count(), 1, "{r}");
    }

    #[test]
    fn the_core_parses_impossible_answers_as_invalid_response() {
        let e = TrafficSplit::new(60, 50).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
        assert!(e.to_string().contains("does not add up to 100"), "{e}");
        let e = "purple".parse::<Color>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
        assert!(e.to_string().contains("unknown color \"purple\""), "{e}");
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "FAIL  statuses-answers-every-color-in-order")]
    async fn the_older_entry_point_panics_with_the_report() {
        let f = Fakes::new();
        let release = Release::new("2.5.0", "order-api:2.5.0");
        let p = Delegated(Reversed(f.compute.clone()));
        compute(&p, Color::Blue, &release, Patience::default()).await;
    }
}
