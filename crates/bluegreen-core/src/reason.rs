//! Why a deployment rolled back or halted ([`Cause`]), what the engine
//! noted on its way ([`Noted`]) and what a human's instruction did
//! ([`Effect`]), each as a kind with its values.
//!
//! The machine decides on a [`Cause`]; its wording lives here, outside the
//! machine, in `Cause`'s [`Display`](fmt::Display). Journals keep the cause
//! and the line rendered from it when the decision was made; resuming never
//! compares either, so rewording a cause in a later release changes reports
//! and notifications only, never whether a journal resumes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::color::{Color, TrafficSplit};
use crate::machine::EvalPoint;
use crate::plan::{HookPoint, Unit};
use crate::provider::MigrationPhase;

/// What a deployment's rollback or halt was for: a kind and its values.
///
/// Serialized with a `kind` tag in `snake_case`, e.g.
/// `{"kind": "progress_deadline", "deadline": "1m", "group": "traffic", "stage": "shift_100"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// A stage group did not finish within its progress deadline.
    ProgressDeadline {
        /// The deadline.
        #[serde(with = "humantime_serde")]
        deadline: Duration,
        /// The stage group (`preflight`, `deploy`, `traffic`, ..., or
        /// `rollback` for the rollback window).
        group: String,
        /// The stage it was in.
        stage: String,
    },
    /// In a rollback, the old color could not be brought back to its
    /// capacity in time; traffic stays where it was last read back.
    OldColorCannotReturn {
        /// The old color.
        color: Color,
        /// Its recorded capacity.
        capacity: u32,
        /// The `restore_old` deadline.
        #[serde(with = "humantime_serde")]
        within: Duration,
        /// What was still wrong with it.
        problem: String,
        /// The split last read back, if any.
        split: Option<TrafficSplit>,
        /// The rollback's own reason.
        rollback_for: String,
    },
    /// A hold lasted `timing.hold_timeout` without a decision.
    HoldTimedOut {
        /// The timeout.
        #[serde(with = "humantime_serde")]
        after: Duration,
        /// The hold, in words.
        hold: String,
        /// `rollback` or `halt`.
        policy: String,
    },
    /// A human aborted it.
    ManualAbort {
        /// The reason the human gave.
        reason: String,
    },
    /// A provider call failed for good.
    ProviderFailed {
        /// The provider, e.g. `router`.
        provider: String,
        /// The operation, e.g. `set_split`.
        operation: String,
        /// The stage.
        stage: String,
        /// The error's message.
        error: String,
    },
    /// A provider answered something that cannot be true.
    Nonsense {
        /// The stage.
        stage: String,
        /// What was wrong.
        what: String,
    },
    /// An unhealthy-targets rollback trigger fired.
    UnhealthyTargets {
        /// The trigger, described.
        trigger: String,
        /// The color.
        color: Color,
        /// Unhealthy targets.
        unhealthy: u32,
        /// All targets.
        total: u32,
    },
    /// A metric rollback trigger fired.
    MetricTrigger {
        /// The trigger, described.
        trigger: String,
        /// The last value.
        value: Option<f64>,
        /// The check's unit, in which the value reads (absent in journals
        /// written before it was kept: a plain number).
        #[serde(default)]
        unit: Unit,
        /// The samples behind it.
        samples: usize,
        /// What the samples stand for, as the source noted (e.g. the
        /// monitors in Alert state).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The analysis at a point failed, or was inconclusive under
    /// `on_inconclusive = "rollback"`.
    Analysis {
        /// Where.
        point: EvalPoint,
        /// The traffic step's percent, for a step.
        percent: Option<u8>,
        /// True when failed, false when inconclusive.
        failed: bool,
        /// The checks that did, described.
        checks: Vec<String>,
    },
    /// The backup's verification failed.
    BackupVerification {
        /// The verifier's detail.
        detail: String,
    },
    /// A migration phase's verification failed.
    MigrationVerification {
        /// The phase.
        phase: MigrationPhase,
        /// The failed checks.
        failed: Vec<String>,
    },
    /// Irreversible migrations ran, so the rollback stops before reverting.
    IrreversibleMigrations {
        /// The migrations, e.g. `26 drop_legacy_status (contract)`.
        migrations: Vec<String>,
        /// The rollback's own reason, if any.
        rollback_for: Option<String>,
    },
    /// Traffic was already split at the start.
    AlreadySplit {
        /// The split found.
        split: TrafficSplit,
    },
    /// Before scale-down, the old color still held traffic.
    OldColorHoldsTraffic {
        /// The old color.
        color: Color,
        /// The split read back.
        split: TrafficSplit,
    },
    /// Once autoscaling was suspended, the old color's desired count was 0.
    OldColorAtZero {
        /// The old color.
        color: Color,
    },
    /// The new color's rollout failed.
    RolloutFailed {
        /// Desired.
        desired: u32,
        /// Running.
        running: u32,
        /// Failed.
        failed: u32,
    },
    /// The new color, stable, does not run the prepared release.
    WrongRelease {
        /// The new color.
        color: Color,
        /// Its capacity.
        capacity: u32,
        /// Expected against found.
        mismatch: String,
    },
    /// Checked again before the old color's scale-down, the new color had
    /// drifted off the release.
    ReleaseDrifted {
        /// The new color.
        color: Color,
        /// What was found.
        problem: String,
    },
    /// Preflight could not tell which color is live.
    NoLiveColor,
    /// No status came back for the old color.
    NoOldStatus {
        /// The old color.
        color: Color,
    },
    /// The old color, holding all traffic, is not stable.
    OldColorUnstable {
        /// The old color.
        color: Color,
        /// Desired.
        desired: u32,
        /// Running.
        running: u32,
        /// Pending.
        pending: u32,
        /// Healthy, where the provider says.
        healthy: Option<u32>,
    },
    /// Required secrets failed preflight.
    Secrets {
        /// Each problem.
        problems: Vec<String>,
    },
    /// A dependency of the release is not in place (preflight): a
    /// migration that must already be applied, a check that must pass.
    Dependency {
        /// The plan field that asks for it, e.g. `preflight.migrations_applied`.
        field: String,
        /// What is missing.
        problems: Vec<String>,
    },
    /// Smoke tests failed.
    SmokeTests {
        /// Which suite, in words.
        what: String,
        /// Tests run.
        total: usize,
        /// Each failure.
        failed: Vec<String>,
    },
    /// A step of the rollback itself failed.
    RollbackIncomplete {
        /// What failed.
        failure: String,
        /// The rollback's own reason.
        rollback_for: String,
    },
    /// A failure once the old color is being or has been scaled down:
    /// traffic cannot return to it.
    PastPointOfNoReturn {
        /// What failed.
        failure: String,
    },
    /// A lifecycle hook failed (it reported a failure, could not run, or
    /// passed its timeout) on every attempt.
    HookFailed {
        /// The hook's name.
        hook: String,
        /// Where it ran.
        point: HookPoint,
        /// Attempts made.
        attempts: u32,
        /// What ran and how it ended, with its output's tail (secrets masked).
        detail: String,
    },
    /// A resumed deployment found a hook with a journaled intent and no
    /// outcome (its deployer stopped while it ran) that the plan does not
    /// mark `idempotent`: it is not run again, and a human finds out
    /// whether it ran.
    HookInterrupted {
        /// The hook's name.
        hook: String,
        /// Where it ran.
        point: HookPoint,
    },
    /// Smoke tests through the production URL failed.
    ProductionSmokeTests {
        /// After what, in words: `the traffic change to 20%`, `the rollback`.
        after: String,
        /// The production URL.
        url: String,
        /// Tests run.
        total: usize,
        /// Each failure.
        failed: Vec<String>,
    },
    /// A rollback or halt whose cause was not recorded.
    Unrecorded {
        /// `rolled back` or `halted`.
        what: String,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Cause::ProgressDeadline {
                deadline,
                group,
                stage,
            } => write!(
                f,
                "progress deadline of {} exceeded in {group} (stage {stage})",
                d(deadline)
            ),
            Cause::OldColorCannotReturn {
                color,
                capacity,
                within,
                problem,
                split,
                rollback_for,
            } => write!(
                f,
                "the old color {color} could not be brought back to its capacity of {capacity} within {} ({problem}), so traffic was not moved back to it; traffic stays as last read back ({}); rollback was for: {rollback_for}",
                d(within),
                split.map_or("unknown".to_string(), |s| s.to_string())
            ),
            Cause::HoldTimedOut {
                after,
                hold,
                policy,
            } => write!(
                f,
                "held for {} ({hold}) without a decision; on_hold_timeout is {policy}",
                d(after)
            ),
            Cause::ManualAbort { reason } => write!(f, "manual abort: {reason}"),
            Cause::ProviderFailed {
                provider,
                operation,
                stage,
                error,
            } => write!(f, "{provider} {operation} failed in stage {stage}: {error}"),
            Cause::Nonsense { stage, what } => {
                write!(f, "provider answered nonsense in stage {stage}: {what}")
            }
            Cause::UnhealthyTargets {
                trigger,
                color,
                unhealthy,
                total,
            } => write!(
                f,
                "automatic rollback: {trigger}: {unhealthy} of {total} targets of {color} unhealthy"
            ),
            Cause::MetricTrigger {
                trigger,
                value,
                unit,
                samples,
                note,
            } => {
                // Without a unit, four decimals as ever.
                let value = match (value, unit) {
                    (Some(v), Unit::Number) => format!("{v:.4}"),
                    (Some(v), unit) => unit.format(*v),
                    (None, _) => "no value".into(),
                };
                write!(
                    f,
                    "automatic rollback: {trigger}; last value {value} over {samples} samples"
                )?;
                match note {
                    Some(note) => write!(f, ": {note}"),
                    None => Ok(()),
                }
            }
            Cause::Analysis {
                point,
                percent,
                failed,
                checks,
            } => {
                let at = match point {
                    EvalPoint::Step { step } => {
                        format!("traffic step {} ({}%)", step + 1, percent.unwrap_or(0))
                    }
                    EvalPoint::Analysis => "the analysis window".into(),
                    EvalPoint::Soak => "the soak".into(),
                };
                let verdict = if *failed { "failed" } else { "inconclusive" };
                write!(
                    f,
                    "analysis {verdict} at the end of {at}: {}",
                    checks.join("; ")
                )
            }
            Cause::BackupVerification { detail } => {
                write!(f, "backup verification failed: {detail}")
            }
            Cause::MigrationVerification { phase, failed } => write!(
                f,
                "{phase} migration verification failed: {}",
                failed.join("; ")
            ),
            Cause::IrreversibleMigrations {
                migrations,
                rollback_for,
            } => {
                write!(
                    f,
                    "irreversible migration(s) applied: {}; the schema cannot be returned to its state before the deployment, so the rollback stops here with traffic on the old color",
                    migrations.join(", ")
                )?;
                if let Some(r) = rollback_for {
                    write!(f, "; rollback was for: {r}")?;
                }
                Ok(())
            }
            Cause::AlreadySplit { split } => write!(
                f,
                "traffic is split ({split}): finish or roll back the deployment in progress first"
            ),
            Cause::OldColorHoldsTraffic { color, split } => write!(
                f,
                "read-back before scale-down shows {split}: the old color {color} still holds traffic"
            ),
            Cause::OldColorAtZero { color } => write!(
                f,
                "the old color {color} holds all traffic but its desired count is 0 now that autoscaling is suspended: something else is scaling it"
            ),
            Cause::RolloutFailed {
                desired,
                running,
                failed,
            } => write!(
                f,
                "the new color's rollout failed (desired {desired}, running {running}, failed {failed})"
            ),
            Cause::WrongRelease {
                color,
                capacity,
                mismatch,
            } => write!(
                f,
                "the new color {color} is stable at {capacity} but does not run the prepared release: {mismatch}"
            ),
            Cause::ReleaseDrifted { color, problem } => write!(
                f,
                "before scaling the old color down, the new color {color} was checked again: {problem}"
            ),
            Cause::NoLiveColor => f.write_str("preflight did not determine the live color"),
            Cause::NoOldStatus { color } => write!(f, "no status for the old color {color}"),
            Cause::OldColorUnstable {
                color,
                desired,
                running,
                pending,
                healthy,
            } => write!(
                f,
                "the old color {color} holds all traffic but is not stable (desired {desired}, running {running}, pending {pending}, healthy {}): there would be nothing safe to roll back to",
                healthy.map_or("unknown".to_string(), |h| h.to_string())
            ),
            Cause::Secrets { problems } => write!(
                f,
                "required secrets failed preflight: {}",
                problems.join("; ")
            ),
            Cause::Dependency { field, problems } => write!(
                f,
                "preflight dependency not met ({field}): {}",
                problems.join("; ")
            ),
            Cause::SmokeTests {
                what,
                total,
                failed,
            } => write!(
                f,
                "{what}: {} of {total} failed: {}",
                failed.len(),
                failed.join("; ")
            ),
            Cause::RollbackIncomplete {
                failure,
                rollback_for,
            } => write!(
                f,
                "rollback could not complete: {failure}; rollback was for: {rollback_for}"
            ),
            Cause::PastPointOfNoReturn { failure } => write!(
                f,
                "{failure}; the old color is being or has been scaled down, so traffic cannot return to it"
            ),
            Cause::HookFailed {
                hook,
                point,
                attempts,
                detail,
            } => {
                let tries = if *attempts > 1 {
                    format!(" after {attempts} attempts")
                } else {
                    String::new()
                };
                write!(f, "hook {hook} ({point}) failed{tries}: {detail}")
            }
            Cause::HookInterrupted { hook, point } => write!(
                f,
                "hook {hook} ({point}) was running when its deployer stopped and its outcome was never journaled; it is not idempotent, so it is not run again: find out whether it ran, then finish the deployment by hand"
            ),
            Cause::ProductionSmokeTests {
                after,
                url,
                total,
                failed,
            } => write!(
                f,
                "production smoke tests through {url} after {after}: {} of {total} failed: {}",
                failed.len(),
                failed.join("; ")
            ),
            Cause::Unrecorded { what } => f.write_str(what),
        }
    }
}

/// What the engine noted on its way, as a kind with its values: the cause
/// of an [`Event::Note`](crate::machine::Event::Note). Its wording lives in
/// its [`Display`](fmt::Display), outside the machine, like [`Cause`]'s.
///
/// Serialized with a `kind` tag in `snake_case`, e.g.
/// `{"kind": "read_back_disagrees", "found": ..., "expected": ..., "resend": false, "wait": "2s", "rollback": false}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Noted {
    /// A resumed deployment waits for the previous deployer's calls to
    /// land, and its stage's progress deadline restarts.
    Resumed {
        /// The wait before the first call (zero if none).
        #[serde(with = "humantime_serde")]
        wait: Duration,
        /// The stage group whose deadline restarts, if the stage has one.
        deadline: Option<String>,
        /// That deadline's length.
        #[serde(default, with = "humantime_serde")]
        length: Option<Duration>,
    },
    /// A read-back of the split disagreed with the split set.
    ReadBackDisagrees {
        /// The split read back.
        found: TrafficSplit,
        /// The split set.
        expected: TrafficSplit,
        /// Whether the split is set again (a rollback sends it again after
        /// a backed-off read still disagrees), not only read.
        resend: bool,
        /// The wait before the next read (or write).
        #[serde(with = "humantime_serde")]
        wait: Duration,
        /// Whether in a rollback.
        rollback: bool,
    },
    /// In a rollback, the old color was below its capacity before traffic
    /// returned: it is scaled back first.
    OldColorBelowCapacity {
        /// The old color.
        color: Color,
        /// What was wrong with it.
        problem: String,
        /// The capacity it is scaled back to.
        capacity: u32,
    },
    /// The old color's smoke tests failed after traffic returned to it: it
    /// is read again before deciding.
    OldColorSmokeTestsFailed {
        /// The old color.
        color: Color,
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
    },
    /// The backup verified.
    BackupVerified {
        /// The entries it lists.
        entries: u64,
        /// The entries the plan requires at least.
        min_entries: u64,
        /// The runner's detail.
        detail: String,
    },
    /// The plan has no smoke tests.
    NoSmokeTests,
    /// A hook of a deployment already decided failed; the outcome stands
    /// (an `on_finish` hook of a halted deployment).
    HookFailed {
        /// The hook's name.
        hook: String,
        /// Where it ran.
        point: HookPoint,
        /// What ran and how it ended.
        detail: String,
    },
    /// A hook that was still running when a rollback began (its outcome
    /// decides nothing) has no journaled outcome after a resume; it is not
    /// run again.
    HookOutcomeLost {
        /// The hook's name.
        hook: String,
        /// Where it ran.
        point: HookPoint,
    },
    /// A periodic measurement failed: no evidence either way.
    MeasurementFailed {
        /// The check.
        check: String,
        /// The error.
        error: String,
    },
    /// A periodic target-health read failed.
    TargetHealthFailed {
        /// The error.
        error: String,
    },
    /// Restoring autoscaling on the way to a halt failed; the halt stands.
    AutoscalingNotRestored {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Noted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Noted::Resumed {
                wait,
                deadline,
                length,
            } => {
                let waiting = format!(
                    "waiting {} for the previous deployer's calls to land",
                    d(wait)
                );
                match (deadline, length) {
                    (Some(group), Some(length)) => write!(
                        f,
                        "resumed: {}the {group} progress deadline of {} restarts",
                        if wait.is_zero() {
                            String::new()
                        } else {
                            format!("{waiting}, then ")
                        },
                        d(length)
                    ),
                    _ => write!(f, "resumed: {waiting} before acting"),
                }
            }
            Noted::ReadBackDisagrees {
                found,
                expected,
                resend,
                wait,
                rollback,
            } => {
                if *rollback {
                    write!(
                        f,
                        "rollback read-back shows {found}, expected {expected}; {} in {}",
                        if *resend {
                            "setting again"
                        } else {
                            "reading again"
                        },
                        d(wait)
                    )
                } else {
                    write!(
                        f,
                        "read-back shows {found}, expected {expected}; reading again in {}",
                        d(wait)
                    )
                }
            }
            Noted::OldColorBelowCapacity {
                color,
                problem,
                capacity,
            } => write!(
                f,
                "the old color {color} is below its capacity ({problem}): scaling it back to {capacity} and waiting until it is stable before any traffic returns"
            ),
            Noted::OldColorSmokeTestsFailed {
                color,
                failed,
                total,
            } => write!(
                f,
                "smoke tests on the old color {color} failed after traffic returned ({failed} of {total}): reading it again before deciding"
            ),
            Noted::BackupVerified {
                entries,
                min_entries,
                detail,
            } => write!(
                f,
                "backup lists {entries} entries (at least {min_entries} required): {detail}"
            ),
            Noted::NoSmokeTests => f.write_str("no smoke tests in the plan"),
            Noted::HookFailed {
                hook,
                point,
                detail,
            } => write!(
                f,
                "hook {hook} ({point}) failed; the deployment's outcome stands: {detail}"
            ),
            Noted::HookOutcomeLost { hook, point } => write!(
                f,
                "hook {hook} ({point}) was running when the rollback began and its deployer stopped; its outcome is unknown and it is not run again"
            ),
            Noted::MeasurementFailed { check, error } => {
                write!(f, "measurement of {check} failed: {error}")
            }
            Noted::TargetHealthFailed { error } => {
                write!(f, "target health read failed: {error}")
            }
            Noted::AutoscalingNotRestored { reason } => write!(
                f,
                "autoscaling could not be restored before the halt: {reason}"
            ),
        }
    }
}

/// What a human's instruction did, as a kind with its values: the effect
/// of an [`Event::Control`](crate::machine::Event::Control), worded by its
/// [`Display`](fmt::Display).
///
/// Serialized with an `effect` tag in `snake_case`, e.g.
/// `{"effect": "refused", "why": {"refusal": "rolling_back"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Effect {
    /// Paused at the next phase boundary.
    Paused,
    /// Resumed.
    Resumed,
    /// Promoted past a hold.
    Promoted {
        /// The hold, in words.
        hold: String,
    },
    /// A wait was skipped; success is still evaluated where the stage
    /// evaluates it.
    WaitSkipped {
        /// The stage.
        stage: String,
        /// Whether the stage's evaluation still runs.
        evaluated: bool,
    },
    /// A wait was shortened to the evidence it still needs.
    WaitShortened {
        /// The stage.
        stage: String,
        /// When it now ends.
        until: crate::color::Timestamp,
        /// The evidence an evaluation needs (`timing.min_evidence`).
        #[serde(with = "humantime_serde")]
        min_evidence: Duration,
    },
    /// The whole group reached a barrier.
    GroupProceeds {
        /// The barrier.
        barrier: crate::plan::Barrier,
    },
    /// A rollback started.
    RollingBack,
    /// An approval was recorded.
    Approved {
        /// The gate.
        gate: crate::plan::Gate,
        /// Who.
        name: String,
        /// Their group's role.
        role: String,
        /// What the gate still needs, e.g. `1 more of engineers`; empty
        /// when this approval completed it.
        missing: Vec<String>,
    },
    /// The instruction was refused.
    Refused {
        /// Why.
        why: Refusal,
    },
}

/// Why a human's instruction was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// A rollback is never paused.
    RollbackNotPaused,
    /// The deployment is rolling back.
    RollingBack,
    /// Already rolling back.
    AlreadyRollingBack,
    /// Paused: resume first.
    Paused,
    /// Waiting for the rest of its group.
    WaitingForGroup {
        /// The barrier.
        barrier: crate::plan::Barrier,
    },
    /// Nothing to promote in this stage.
    NothingToPromote {
        /// The stage.
        stage: String,
    },
    /// A group's proceed for a barrier the deployment is not waiting at,
    /// or while it rolls back.
    NotWaitingAt {
        /// The barrier.
        barrier: crate::plan::Barrier,
        /// Whether because it is rolling back.
        rolling_back: bool,
    },
    /// An approval from a name on none of the gate's lists.
    NotAnApprover {
        /// The gate.
        gate: crate::plan::Gate,
        /// The name given.
        name: String,
        /// The names that may approve it.
        approvers: Vec<String>,
    },
    /// A second approval by the same name.
    AlreadyApproved {
        /// The gate.
        gate: crate::plan::Gate,
        /// The name.
        name: String,
        /// When the first approval was taken.
        at: crate::color::Timestamp,
    },
    /// An approval for a gate the plan gives no approvers, or that was
    /// already passed.
    NoApprovalPending {
        /// The gate, when one was named or found.
        gate: Option<crate::plan::Gate>,
    },
    /// A promote at a gate that passes on approvals only.
    NeedsApprovals {
        /// The gate.
        gate: crate::plan::Gate,
        /// What it still needs.
        missing: Vec<String>,
    },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Paused => f.write_str(
                "paused: the deployment holds at the next phase boundary; monitoring and rollback triggers stay active",
            ),
            Effect::Resumed => f.write_str("resumed"),
            Effect::Promoted { hold } => write!(f, "promoted past {hold} by a human"),
            Effect::WaitSkipped { stage, evaluated } => write!(
                f,
                "wait of {stage} skipped by a human{}",
                if *evaluated {
                    "; success is still evaluated"
                } else {
                    ""
                }
            ),
            Effect::WaitShortened {
                stage,
                until,
                min_evidence,
            } => write!(
                f,
                "wait of {stage} shortened by a human to end at {until}: an evaluation needs at least {} of evidence no earlier evaluation used",
                humantime::format_duration(*min_evidence)
            ),
            Effect::GroupProceeds { barrier } => {
                write!(f, "the whole group reached {barrier}: proceeding")
            }
            Effect::RollingBack => f.write_str("rolling back"),
            Effect::Approved {
                gate,
                name,
                role,
                missing,
            } => {
                write!(f, "approved by {name} ({role}) for the gate {gate}")?;
                if missing.is_empty() {
                    f.write_str(": the gate's approvals are complete")
                } else {
                    write!(f, "; still needs {}", missing.join(", "))
                }
            }
            Effect::Refused { why } => match why {
                Refusal::RollbackNotPaused => f.write_str("refused: a rollback is never paused"),
                Refusal::RollingBack => f.write_str("refused: the deployment is rolling back"),
                Refusal::AlreadyRollingBack => f.write_str("refused: already rolling back"),
                Refusal::Paused => {
                    f.write_str("refused: the deployment is paused; resume it first")
                }
                Refusal::WaitingForGroup { barrier } => write!(
                    f,
                    "refused: waiting for the rest of its group at {barrier}; the group moves on when every member is there"
                ),
                Refusal::NothingToPromote { stage } => {
                    write!(f, "refused: nothing to promote in stage {stage}")
                }
                Refusal::NotWaitingAt {
                    barrier,
                    rolling_back: true,
                } => write!(f, "refused at {barrier}: the deployment is rolling back"),
                Refusal::NotWaitingAt { barrier, .. } => {
                    write!(f, "refused: not waiting at {barrier}")
                }
                Refusal::NotAnApprover {
                    gate,
                    name,
                    approvers,
                } => write!(
                    f,
                    "refused: {name:?} is not an approver of the gate {gate} (approvals[].gate = \"{gate}\"); its approvers: {}",
                    approvers.join(", ")
                ),
                Refusal::AlreadyApproved { gate, name, at } => write!(
                    f,
                    "refused: {name} already approved the gate {gate} at {at}; approvals must come from distinct people"
                ),
                Refusal::NoApprovalPending { gate: Some(gate) } => write!(
                    f,
                    "refused: the gate {gate} has no approvals pending (the plan lists no approvers for it, or it was passed)"
                ),
                Refusal::NoApprovalPending { gate: None } => {
                    f.write_str("refused: no approval gate is pending")
                }
                Refusal::NeedsApprovals { gate, missing } => write!(
                    f,
                    "refused: the gate {gate} passes on approvals, not promote; it still needs {}",
                    missing.join(", ")
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause travels as its kind and values, and renders the line reports
    /// and notifications show.
    #[test]
    fn a_cause_is_kept_as_kind_and_values_and_rendered_outside_the_machine() {
        let c = Cause::ProgressDeadline {
            deadline: Duration::from_secs(60),
            group: "traffic".into(),
            stage: "shift_100".into(),
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "progress_deadline",
                "deadline": "1m",
                "group": "traffic",
                "stage": "shift_100"
            })
        );
        assert_eq!(serde_json::from_value::<Cause>(json).unwrap(), c);
        assert_eq!(
            c.to_string(),
            "progress deadline of 1m exceeded in traffic (stage shift_100)"
        );
    }
}
