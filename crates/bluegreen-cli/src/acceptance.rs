//! Acceptance criteria, evaluated pass or fail from a deployment's report.

use bluegreen_core::analysis::Verdict;
use bluegreen_core::machine::SmokeScope;
use bluegreen_core::report::HtmlTable;
use bluegreen_core::{Outcome, Report};
use serde::Serialize;

use crate::spec::{Criterion, Expectation, Spec};

/// One criterion's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriterionResult {
    /// The criterion as written.
    pub name: String,
    /// Whether it holds.
    pub passed: bool,
    /// The evidence.
    pub detail: String,
}

/// Evaluates every criterion of `spec` against `report`.
pub fn evaluate(spec: &Spec, report: &Report) -> Vec<CriterionResult> {
    spec.acceptance
        .iter()
        .map(|c| one(spec, c, report))
        .collect()
}

fn one(spec: &Spec, c: &Criterion, r: &Report) -> CriterionResult {
    let facts = r.facts.clone().unwrap_or_default();
    let (passed, detail) = match c.expect {
        Expectation::Succeeded => (
            matches!(r.outcome, Some(Outcome::Succeeded)),
            format!("outcome: {}", r.outcome_name()),
        ),
        Expectation::PreflightPassed => {
            let passed = r
                .stages
                .iter()
                .any(|s| s.stage != "pending" && s.stage != "preflight")
                && r.smoke_tests
                    .iter()
                    .filter(|s| s.scope == SmokeScope::Staging)
                    .all(|s| {
                        s.results
                            .iter()
                            .all(|t| t.outcome.as_ref().is_some_and(|o| o.passed))
                    });
            (passed, format!("stages reached: {}", r.stages.len()))
        }
        Expectation::BackupVerified => match &facts.backup_verification {
            Some(v) => (v.passed, v.detail.clone()),
            None => (false, "no backup verification recorded".into()),
        },
        Expectation::MigrationsApplied => {
            let applied: Vec<String> = facts
                .applied
                .iter()
                .filter(|m| !facts.reverted.iter().any(|x| x.version == m.version))
                .map(|m| format!("{} {}", m.version, m.name))
                .collect();
            (
                !applied.is_empty(),
                if applied.is_empty() {
                    "no migration applied (or all reverted)".into()
                } else {
                    format!("applied: {}", applied.join(", "))
                },
            )
        }
        Expectation::NewColorRunning => {
            let want = c.count.unwrap_or(spec.deployment.replicas);
            // What ran: the capacity the new color was verified stable at
            // (the smoke tests start only then), not the count last
            // requested, which a rollback sets to 0.
            let stable = r.stages.iter().any(|s| s.stage == "smoke_tests");
            let got = if stable {
                facts.capacity.or(facts.new_count).unwrap_or(0)
            } else {
                0
            };
            let now = facts.new_count.unwrap_or(0);
            let detail = if !stable {
                format!("the new color never ran stable at its capacity (wanted {want} instances)")
            } else if now < got {
                format!("new color ran {got} of {want} instances (scaled to {now} afterwards)")
            } else {
                format!("new color ran {got} of {want} instances")
            };
            (got >= want, detail)
        }
        Expectation::SmokeTestsPassed => {
            let color_runs: Vec<_> = r
                .smoke_tests
                .iter()
                .filter(|s| matches!(s.scope, SmokeScope::Color(c) if Some(c) == facts.new))
                .collect();
            let total: usize = color_runs.iter().map(|s| s.results.len()).sum();
            let ok: usize = color_runs
                .iter()
                .flat_map(|s| s.results.iter())
                .filter(|t| t.outcome.as_ref().is_some_and(|o| o.passed))
                .count();
            (
                facts.smoke_passed && total > 0 && ok == total,
                format!("{ok}/{total} smoke tests passed on the new color"),
            )
        }
        Expectation::TrafficOnNewColor => {
            let on = match (facts.confirmed_split, facts.new) {
                (Some(s), Some(n)) => s.percent(n),
                _ => 0,
            };
            (on == 100, format!("new color holds {on}% (read back)"))
        }
        Expectation::CheckPassed => {
            let name = c.check.clone().unwrap_or_default();
            let ms: Vec<_> = r
                .measurements
                .iter()
                .filter(|m| m.check == name && !m.dry_run)
                .collect();
            let failed = ms.iter().filter(|m| m.verdict != Verdict::Pass).count();
            (
                !ms.is_empty() && failed == 0,
                format!("{name}: {} measurements, {failed} not passing", ms.len()),
            )
        }
        Expectation::OldColorScaledDown => {
            let n = facts.old_count;
            (
                matches!(r.outcome, Some(Outcome::Succeeded)) && n == Some(0),
                format!(
                    "old color at {}",
                    n.map_or("unknown".into(), |n| n.to_string())
                ),
            )
        }
        Expectation::NoRollback => match &r.outcome {
            Some(Outcome::RolledBack { reason }) | Some(Outcome::Halted { reason }) => {
                (false, reason.summary.clone())
            }
            Some(Outcome::Succeeded) => (true, "no rollback".into()),
            None => (false, "still in progress".into()),
        },
    };
    CriterionResult {
        name: c.name.clone(),
        passed,
        detail,
    }
}

/// The criteria as a table of the HTML report (none when there are none).
pub fn to_html(results: &[CriterionResult]) -> Vec<HtmlTable> {
    if results.is_empty() {
        return Vec::new();
    }
    vec![HtmlTable {
        id: "acceptance".into(),
        title: "Acceptance criteria".into(),
        columns: vec!["criterion".into(), "result".into(), "evidence".into()],
        rows: results
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    if r.passed { "met" } else { "not met" }.into(),
                    r.detail.clone(),
                ]
            })
            .collect(),
    }]
}

/// The criteria as a Markdown section.
pub fn to_markdown(results: &[CriterionResult]) -> String {
    let mut s = String::from("\n## Acceptance criteria\n\n");
    for r in results {
        s.push_str(&format!(
            "- [{}] {} — {}\n",
            if r.passed { "x" } else { " " },
            r.name,
            r.detail
        ));
    }
    s
}
