//! The machine's timers in one table: the stage group's progress deadline,
//! the rollback window, a hold's timeout and reminders, and the next poll.
//! A stage's own wait (watch, analysis, soak, scale-down delay, drain) is
//! part of the [`Stage`] itself, as journaled.

use super::*;
use crate::plan::Deadlines;

/// The stage groups that share a progress deadline (`deadlines.*` of the
/// plan): a deadline runs from the first stage of its group to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum DeadlineGroup {
    Preflight,
    Backup,
    Migrate,
    Deploy,
    Smoke,
    Traffic,
    ScaleDown,
    RestoreOld,
}

impl DeadlineGroup {
    /// The group of `stage`, if it has a progress deadline.
    pub(super) fn of(stage: &Stage) -> Option<DeadlineGroup> {
        Some(match stage {
            Stage::Preflight | Stage::SuspendAutoscaling | Stage::ReadCapacity => {
                DeadlineGroup::Preflight
            }
            Stage::Backup | Stage::VerifyBackup => DeadlineGroup::Backup,
            Stage::Migrate { .. } | Stage::VerifyMigrations { .. } => DeadlineGroup::Migrate,
            Stage::Prepare | Stage::ScaleUp | Stage::WaitStable => DeadlineGroup::Deploy,
            Stage::SmokeTests => DeadlineGroup::Smoke,
            Stage::Shift { .. } | Stage::ConfirmDrained => DeadlineGroup::Traffic,
            Stage::ScaleDownOld { .. } | Stage::RestoreAutoscaling => DeadlineGroup::ScaleDown,
            Stage::CheckOld | Stage::RestoreOld { .. } => DeadlineGroup::RestoreOld,
            _ => return None,
        })
    }

    /// The name reasons use, the plan's `deadlines` field.
    pub(super) fn name(self) -> &'static str {
        match self {
            DeadlineGroup::Preflight => "preflight",
            DeadlineGroup::Backup => "backup",
            DeadlineGroup::Migrate => "migrate",
            DeadlineGroup::Deploy => "deploy",
            DeadlineGroup::Smoke => "smoke",
            DeadlineGroup::Traffic => "traffic",
            DeadlineGroup::ScaleDown => "scale_down",
            DeadlineGroup::RestoreOld => "restore_old",
        }
    }

    /// Its length in the plan.
    pub(super) fn length(self, d: &Deadlines) -> Duration {
        match self {
            DeadlineGroup::Preflight => d.preflight,
            DeadlineGroup::Backup => d.backup,
            DeadlineGroup::Migrate => d.migrate,
            DeadlineGroup::Deploy => d.deploy,
            DeadlineGroup::Smoke => d.smoke,
            DeadlineGroup::Traffic => d.traffic,
            DeadlineGroup::ScaleDown => d.scale_down,
            DeadlineGroup::RestoreOld => d.restore_old,
        }
    }
}

/// A running progress deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Deadline {
    /// When it passes.
    pub(super) at: Timestamp,
    /// Whose.
    pub(super) group: DeadlineGroup,
    /// How long it is.
    pub(super) length: Duration,
}

/// Every timer of the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Timers {
    /// The current stage group's progress deadline.
    pub(super) deadline: Option<Deadline>,
    /// The rollback window's end, once a rollback started.
    pub(super) rollback: Option<Timestamp>,
    /// A hold's timeout.
    pub(super) hold: Option<Timestamp>,
    /// A hold's next reminder.
    pub(super) reminder: Option<Timestamp>,
    /// When the current hold began.
    pub(super) held_since: Option<Timestamp>,
    /// The current stage's next poll.
    pub(super) poll: Option<Timestamp>,
}

impl Timers {
    /// Arms the deadline of `stage`'s group, keeping it when the group goes
    /// on from the previous stage, and clears the previous stage's poll and
    /// hold.
    pub(super) fn enter(&mut self, stage: &Stage, now: Timestamp, deadlines: &Deadlines) {
        self.deadline = match DeadlineGroup::of(stage) {
            Some(g) if self.deadline.is_some_and(|d| d.group == g) => self.deadline,
            Some(group) => {
                let length = group.length(deadlines);
                Some(Deadline {
                    at: now.after(length),
                    group,
                    length,
                })
            }
            None => None,
        };
        self.poll = None;
        self.hold = None;
        self.reminder = None;
        self.held_since = None;
    }

    /// Starts a hold at `now`: no deadline or poll runs while a human decides.
    pub(super) fn hold(&mut self, now: Timestamp, timeout: Duration, reminder: Duration) {
        self.deadline = None;
        self.poll = None;
        self.held_since = Some(now);
        self.hold = Some(now.after(timeout));
        self.reminder = Some(now.after(reminder));
    }

    /// Restarts the progress deadline from `now` (a resume).
    pub(super) fn restart_deadline(&mut self, now: Timestamp) -> Option<Deadline> {
        let d = self.deadline.as_mut()?;
        d.at = now.after(d.length);
        Some(*d)
    }

    /// The earliest timer; the poll only when `poll` is allowed (no stage
    /// command outstanding).
    pub(super) fn earliest(&self, poll: bool) -> Option<Timestamp> {
        [
            self.deadline.map(|d| d.at),
            self.rollback,
            self.hold,
            self.reminder,
            self.poll.filter(|_| poll),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
