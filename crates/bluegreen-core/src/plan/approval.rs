//! Gates that need approvals from named people.
//!
//! The reference's checklist asks for the code "approved by 2+ engineers"
//! and the "product owner approved release notes". An [`ApprovalGate`]
//! holds the deployment at one of the plan's [`Gate`]s until enough
//! distinct approvers of each group have approved: `bluegreen approve
//! --as NAME`, or [`ControlHandle::approve`](crate::ControlHandle::approve)
//! from the library. Each approval is journaled with who and when (see
//! [`Approval`]); a second approval by the same name, or one from a name
//! on none of the gate's lists, is refused and recorded as refused.
//! Approvals may come before the deployment reaches the gate; it then
//! passes without holding. `promote` does not pass an approval gate.

use serde::{Deserialize, Serialize};

use super::Gate;
use crate::color::Timestamp;
use crate::error::PlanError;

/// A gate that passes once each of its groups has enough approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalGate {
    /// The gate it holds at (it need not also be listed in `gates`).
    pub gate: Gate,
    /// Who may approve, by group; every group must reach its count.
    pub groups: Vec<ApproverGroup>,
}

/// A group of approvers and how many of them must approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverGroup {
    /// The group's role, e.g. `engineers`, `product owner`.
    pub role: String,
    /// The names that may approve for it (unique within the gate).
    pub names: Vec<String>,
    /// How many distinct names of the group must approve (at least 1, at
    /// most the number of names).
    pub required: u32,
}

/// One approval as the machine recorded it: who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The gate approved.
    pub gate: Gate,
    /// Who approved (as given to `approve --as`).
    pub name: String,
    /// Their group's role.
    pub role: String,
    /// When the deployer took the approval.
    pub at: Timestamp,
}

impl ApprovalGate {
    /// The group `name` approves for, if any.
    pub fn group_of(&self, name: &str) -> Option<&ApproverGroup> {
        self.groups
            .iter()
            .find(|g| g.names.iter().any(|n| n == name))
    }

    /// How many approvals the gate needs in all.
    pub fn required(&self) -> u32 {
        self.groups.iter().map(|g| g.required).sum()
    }

    /// What is still missing given `approvals` (of any gate), e.g.
    /// `["1 more of engineers", "1 more of product owner"]`; empty when the
    /// gate may pass.
    pub fn missing(&self, approvals: &[Approval]) -> Vec<String> {
        self.groups
            .iter()
            .filter_map(|g| {
                let have = approvals
                    .iter()
                    .filter(|a| a.gate == self.gate && g.names.contains(&a.name))
                    .count() as u32;
                (have < g.required).then(|| format!("{} more of {}", g.required - have, g.role))
            })
            .collect()
    }

    pub(super) fn validate(&self, field: &str) -> Result<(), PlanError> {
        if self.groups.is_empty() {
            return Err(PlanError::new(
                format!("{field}.groups"),
                "names no approver group: give at least one, e.g. { role = \"engineers\", names = [...], required = 2 }",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let f = |n: &str| format!("{field}.groups[{i}].{n}");
            super::non_empty(&f("role"), &g.role)?;
            for (j, n) in g.names.iter().enumerate() {
                super::non_empty(&format!("{}[{j}]", f("names")), n)?;
                if !seen.insert(n.as_str()) {
                    return Err(PlanError::new(
                        format!("{}[{j}]", f("names")),
                        format!("{n:?} is listed twice in this gate: one name approves once"),
                    ));
                }
            }
            if g.required == 0 {
                return Err(PlanError::new(f("required"), "must be at least 1"));
            }
            if g.required as usize > g.names.len() {
                return Err(PlanError::new(
                    f("required"),
                    format!(
                        "{} approvals from {} names can never be given",
                        g.required,
                        g.names.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Gate {
    /// Its name as plans write it, e.g. `before-shift`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::BeforeShift => "before-shift",
            Gate::BeforeFullTraffic => "before-full-traffic",
            Gate::BeforeScaleDown => "before-scale-down",
            Gate::BeforeContract => "before-contract",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
