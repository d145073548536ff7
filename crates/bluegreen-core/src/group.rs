//! Coordinated deployments: several services whose traffic moves together
//! and rolls back together.
//!
//! A [`Group`] runs one [`BlueGreen`] per service. Each member runs the whole
//! procedure on its own providers, but holds at every group [`Barrier`] (before
//! each traffic step, and before the old color is scaled down) until every
//! member has reached it. So:
//!
//! - no member gets traffic until every member is deployed, stable and has
//!   passed its smoke tests;
//! - no member moves to the next traffic step until every member has passed
//!   the evaluation of the current one;
//! - if any member starts a rollback (a failed analysis, a trigger, a
//!   deadline, an abort) before the last barrier is passed, every other member
//!   is aborted and rolls back too, with the failing member named in its
//!   reason;
//! - a member that does not reach a barrier within the
//!   [barrier timeout](GroupBuilder::barrier_timeout) rolls the group back.
//!
//! Once every member has passed the scale-down barrier, traffic cannot go
//! back anywhere, and each member finishes on its own.
//!
//! The leases of all members are taken in a fixed order (sorted by service)
//! before any member starts; if one is held elsewhere, nothing starts. Member
//! deployment ids are `<group id>/<service>` and each member's plan records
//! the group's membership, so [`GroupBuilder::resume`] rebuilds every member
//! from the journal after a crash and refuses a different set of members.
//!
//! A worked example is in the guide `docs/coordinated.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::driver::{BlueGreen, Builder, ControlHandle, DeploymentEvent, Progress, EVENT_CAPACITY};
use crate::error::{Error, ErrorKind, ErrorRecord, Result};
use crate::journal::{Journal, Record};
use crate::machine::{Control, Outcome};
use crate::plan::{Barrier, GroupMembership};
use crate::report::Report;

/// How long a member may take to reach a barrier the first member reached,
/// by default.
pub const DEFAULT_BARRIER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Builds a [`Group`].
pub struct GroupBuilder {
    name: String,
    id: Option<String>,
    resume: bool,
    members: Vec<Builder>,
    journal: Option<Arc<dyn Journal>>,
    holder: Option<String>,
    barrier_timeout: Duration,
}

impl GroupBuilder {
    /// Adds a member: a deployment builder with its providers. Its
    /// deployment id, holder and resume setting are the group's.
    pub fn member(mut self, member: Builder) -> Self {
        self.members.push(member);
        self
    }

    /// One journal for every member (otherwise each member's own).
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The group id (a random one if not set).
    pub fn group_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Resume group `id` from the journal: members with records resume,
    /// members without any start afresh.
    pub fn resume(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self.resume = true;
        self
    }

    /// Who holds the members' leases (default `group:<id>`).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// How long the group waits for the last member at a barrier the first
    /// member has reached before it rolls every member back (default 30 min).
    pub fn barrier_timeout(mut self, d: Duration) -> Self {
        self.barrier_timeout = d;
        self
    }

    /// Checks the members against each other and builds each of them.
    pub fn build(self) -> Result<Group> {
        let invalid = |msg: String| Error::invalid_input(msg).with_operation("build group");
        if self.name.trim().is_empty() {
            return Err(invalid("the group's name is empty".into()));
        }
        if self.members.len() < 2 {
            return Err(invalid(format!(
                "group {}: has {} member(s); a coordinated group needs at least two",
                self.name,
                self.members.len()
            )));
        }
        let mut members = self.members;
        members.sort_by(|a, b| a.plan.service.cmp(&b.plan.service));
        for pair in members.windows(2) {
            if pair[0].plan.service == pair[1].plan.service {
                return Err(invalid(format!(
                    "group {}: service {:?} is listed twice",
                    self.name, pair[0].plan.service
                )));
            }
        }
        let percents = |b: &Builder| -> Vec<u8> {
            b.plan.strategy.steps().iter().map(|s| s.percent).collect()
        };
        let first = percents(&members[0]);
        for m in &members[1..] {
            let these = percents(m);
            if these != first {
                return Err(invalid(format!(
                    "group {}: member {} shifts traffic in steps {these:?} but {} in {first:?}; members move traffic together, so their strategies need the same steps",
                    self.name, m.plan.service, members[0].plan.service
                )));
            }
        }
        let id = self.id.unwrap_or_else(new_group_id);
        if id.is_empty() || id.contains('/') {
            return Err(invalid(format!(
                "group {}: id {id:?} must be non-empty and contain no '/'",
                self.name
            )));
        }
        let holder = self.holder.unwrap_or_else(|| format!("group:{id}"));
        let membership = GroupMembership {
            name: self.name.clone(),
            id: id.clone(),
            members: members.iter().map(|m| m.plan.service.clone()).collect(),
        };
        let mut built = Vec::with_capacity(members.len());
        for mut m in members {
            let service = m.plan.service.clone();
            m.plan.group = Some(membership.clone());
            m.deployment_id = Some(format!("{id}/{service}"));
            m.resume = None;
            m.holder = Some(holder.clone());
            if let Some(j) = &self.journal {
                m.journal = Some(j.clone());
            }
            let dep = m.build().map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("group {}: member {service}: {}", self.name, e.message()),
                )
                .with_operation("build group")
            })?;
            built.push(dep);
        }
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Group {
            name: self.name,
            id,
            resume: self.resume,
            membership,
            members: built,
            barrier_timeout: self.barrier_timeout,
            control_tx,
            control_rx,
            events,
        })
    }
}

fn new_group_id() -> String {
    let now = crate::Timestamp::from_system_time(std::time::SystemTime::now());
    format!("grp-{}-{:08x}", now.0, rand::random::<u32>())
}

/// A coordinated group of deployments, ready to run. See the
/// [module docs](self).
pub struct Group {
    name: String,
    id: String,
    resume: bool,
    membership: GroupMembership,
    members: Vec<BlueGreen>,
    barrier_timeout: Duration,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    events: broadcast::Sender<DeploymentEvent>,
}

/// Sends [`Control`]s to every member of a running group. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupControl {
    tx: mpsc::UnboundedSender<Control>,
}

impl GroupControl {
    /// Pauses every member at its next phase boundary.
    pub fn pause(&self) -> bool {
        self.tx.send(Control::Pause).is_ok()
    }

    /// Resumes every member.
    pub fn resume(&self) -> bool {
        self.tx.send(Control::Resume).is_ok()
    }

    /// Promotes every member (skips waits, passes gates; never a barrier).
    pub fn promote(&self) -> bool {
        self.tx.send(Control::Promote).is_ok()
    }

    /// Rolls every member back.
    pub fn abort(&self, reason: impl Into<String>) -> bool {
        self.tx
            .send(Control::Abort {
                reason: reason.into(),
            })
            .is_ok()
    }
}

/// How a group ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupOutcome {
    /// Every member succeeded.
    Succeeded,
    /// Every member is back on its old color (none halted).
    RolledBack,
    /// At least one member halted and needs a human.
    Halted,
    /// At least one member's deployer stopped (journal or lease failure);
    /// resume the group.
    Interrupted,
}

impl GroupOutcome {
    /// `"succeeded"`, `"rolled_back"`, `"halted"` or `"interrupted"`.
    pub fn name(&self) -> &'static str {
        match self {
            GroupOutcome::Succeeded => "succeeded",
            GroupOutcome::RolledBack => "rolled_back",
            GroupOutcome::Halted => "halted",
            GroupOutcome::Interrupted => "interrupted",
        }
    }
}

/// What rolled a group back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTrigger {
    /// The member that failed first, or `None` for an operator's abort or a
    /// barrier timeout.
    pub member: Option<String>,
    /// Why.
    pub reason: String,
}

/// One member's part of a [`GroupReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// The service.
    pub service: String,
    /// Its deployment id.
    pub deployment_id: String,
    /// Its report, rebuilt from the journal.
    pub report: Report,
    /// Why its deployer stopped early, if it did.
    pub error: Option<ErrorRecord>,
}

/// The record of a coordinated group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The group's name.
    pub name: String,
    /// The group id.
    pub group_id: String,
    /// How it ended.
    pub outcome: GroupOutcome,
    /// What rolled it back, when something did.
    pub trigger: Option<GroupTrigger>,
    /// The members, sorted by service.
    pub members: Vec<MemberReport>,
}

impl GroupReport {
    /// A group's report from its members' (for instance rebuilt from the
    /// journal): the outcome from theirs, and what rolled the group back
    /// from their recorded reasons.
    pub fn from_members(
        name: impl Into<String>,
        group_id: impl Into<String>,
        members: Vec<MemberReport>,
    ) -> GroupReport {
        let name = name.into();
        let outcomes: Vec<Option<&Outcome>> =
            members.iter().map(|m| m.report.outcome.as_ref()).collect();
        let outcome =
            if members.iter().any(|m| m.error.is_some()) || outcomes.iter().any(Option::is_none) {
                GroupOutcome::Interrupted
            } else if outcomes
                .iter()
                .any(|o| matches!(o, Some(Outcome::Halted { .. })))
            {
                GroupOutcome::Halted
            } else if outcomes
                .iter()
                .all(|o| matches!(o, Some(Outcome::Succeeded)))
            {
                GroupOutcome::Succeeded
            } else if outcomes
                .iter()
                .all(|o| matches!(o, Some(Outcome::RolledBack { .. })))
            {
                GroupOutcome::RolledBack
            } else {
                GroupOutcome::Halted
            };
        let follower = format!("manual abort: group {name}: member ");
        let group_said = format!("manual abort: group {name}: ");
        let mut trigger = None;
        let mut operator = None;
        for m in &members {
            let (verb, summary) = match &m.report.outcome {
                Some(Outcome::RolledBack { reason }) => ("rolled back", &reason.summary),
                Some(Outcome::Halted { reason }) => ("halted", &reason.summary),
                _ => continue,
            };
            if summary.starts_with(&follower) {
                continue;
            }
            if let Some(rest) = summary.strip_prefix(&group_said) {
                operator.get_or_insert(GroupTrigger {
                    member: None,
                    reason: rest.to_string(),
                });
            } else if let Some(rest) = summary.strip_prefix("manual abort: ") {
                operator.get_or_insert(GroupTrigger {
                    member: None,
                    reason: format!("aborted by an operator: {rest}"),
                });
            } else if trigger.is_none() {
                trigger = Some(GroupTrigger {
                    member: Some(m.service.clone()),
                    reason: format!("{verb}: {summary}"),
                });
            }
        }
        GroupReport {
            name,
            group_id: group_id.into(),
            outcome,
            trigger: trigger.or(operator),
            members,
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as Markdown: a summary, then each member's report.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Coordinated deployment {} ({})\n",
            self.name, self.group_id
        );
        let _ = writeln!(s, "- Outcome: **{}**", self.outcome.name());
        if let Some(t) = &self.trigger {
            match &t.member {
                Some(m) => {
                    let _ = writeln!(s, "- Rolled back because {m} failed: {}", t.reason);
                }
                None => {
                    let _ = writeln!(s, "- Rolled back: {}", t.reason);
                }
            }
        }
        let _ = writeln!(s, "\n| service | version | outcome |\n|---|---|---|");
        for m in &self.members {
            let outcome = match &m.error {
                Some(e) => format!("interrupted: {}", e.message),
                None => m.report.outcome_name().to_string(),
            };
            let _ = writeln!(s, "| {} | {} | {outcome} |", m.service, m.report.version);
        }
        for m in &self.members {
            let _ = writeln!(s, "\n{}", m.report.to_markdown().replacen("# ", "## ", 1));
        }
        s
    }
}

enum Msg {
    Changed,
    Done(usize, Box<Result<Report>>),
}

impl Group {
    /// Starts building a group called `name` (e.g. `checkout`).
    pub fn builder(name: impl Into<String>) -> GroupBuilder {
        GroupBuilder {
            name: name.into(),
            id: None,
            resume: false,
            members: Vec::new(),
            journal: None,
            holder: None,
            barrier_timeout: DEFAULT_BARRIER_TIMEOUT,
        }
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' services and deployment ids, in lease order.
    pub fn members(&self) -> Vec<(String, String)> {
        self.members
            .iter()
            .map(|m| (m.plan.service.clone(), m.deployment_id.clone()))
            .collect()
    }

    /// A handle to pause, resume, promote or abort every member.
    pub fn control(&self) -> GroupControl {
        GroupControl {
            tx: self.control_tx.clone(),
        }
    }

    /// Every member's events, as they happen (each carries its member's
    /// deployment id).
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentEvent> {
        self.events.subscribe()
    }

    /// Runs (or resumes) every member to its end and returns the group's
    /// report. `Err` means the group could not start: a lease is held
    /// elsewhere (nothing was started), or the journal of a resumed group
    /// names other members.
    pub async fn run(self) -> Result<GroupReport> {
        let span = tracing::info_span!("group", name = %self.name, id = %self.id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) -> Result<GroupReport> {
        // Every lease first, in a fixed order; members re-take their own
        // with the same holder when they start.
        let mut held = Vec::with_capacity(self.members.len());
        for m in &mut self.members {
            let now = m.clock.now();
            match m
                .journal
                .acquire(&m.plan.service, &m.holder, m.lease_ttl, now)
                .await
            {
                Ok(lease) => {
                    m.group_lease = Some(lease.clone());
                    held.push((m.journal.clone(), lease))
                }
                Err(e) => {
                    for (j, l) in &held {
                        let _ = j.release(l).await;
                    }
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "group {}: {}; no member was started",
                            self.name,
                            e.message()
                        ),
                    )
                    .with_operation("acquire group leases"));
                }
            }
        }
        if let Err(e) = self.decide_resume().await {
            for (j, l) in &held {
                let _ = j.release(l).await;
            }
            return Err(e);
        }

        let steps = self.membership_steps();
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut controls: Vec<ControlHandle> = Vec::new();
        let mut progress = Vec::new();
        let mut services = Vec::new();
        let mut ids = Vec::new();
        let mut journals = Vec::new();
        for (i, m) in std::mem::take(&mut self.members).into_iter().enumerate() {
            services.push(m.plan.service.clone());
            ids.push(m.deployment_id.clone());
            journals.push(m.journal.clone());
            controls.push(m.control());
            let mut watch = m.progress();
            progress.push(watch.clone());
            let changed = tx.clone();
            tokio::spawn(async move {
                while watch.changed().await.is_ok() {
                    if changed.send(Msg::Changed).is_err() {
                        break;
                    }
                }
            });
            let mut member_events = m.subscribe();
            let group_events = self.events.clone();
            tokio::spawn(async move {
                loop {
                    match member_events.recv().await {
                        Ok(e) => {
                            let _ = group_events.send(e);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
            let done = tx.clone();
            tokio::spawn(async move {
                let result = m.run().await;
                let _ = done.send(Msg::Done(i, Box::new(result)));
            });
        }
        drop(tx);

        let mut c = Coordinator {
            name: self.name.clone(),
            services,
            steps,
            results: (0..controls.len()).map(|_| None).collect(),
            trigger: None,
            rolling_back: false,
            independent: false,
            proceeded: BTreeSet::new(),
            first_wait: BTreeMap::new(),
            timeout: self.barrier_timeout,
        };
        loop {
            let states: Vec<Progress> = progress.iter().map(|w| w.borrow().clone()).collect();
            c.decide(tokio::time::Instant::now(), &states, &controls);
            if c.results.iter().all(Option::is_some) {
                break;
            }
            let deadline = c.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(Msg::Done(i, r)) => c.results[i] = Some(*r),
                    Some(Msg::Changed) => {}
                    None => break,
                },
                Some(control) = self.control_rx.recv() => {
                    if let Control::Abort { reason } = &control {
                        c.operator_abort(reason);
                    }
                    for h in &controls {
                        h.send(control.clone());
                    }
                }
                _ = sleep => {}
            }
        }

        let mut members = Vec::with_capacity(c.results.len());
        for (i, result) in c.results.into_iter().enumerate() {
            let (report, error) = match result {
                Some(Ok(r)) => (r, None),
                Some(Err(e)) => {
                    let entries = journals[i].read(&ids[i]).await.unwrap_or_default();
                    (Report::from_entries(&entries), Some(e.to_record()))
                }
                None => (
                    Report::default(),
                    Some(Error::new(ErrorKind::Other, "the member did not report").to_record()),
                ),
            };
            members.push(MemberReport {
                service: c.services[i].clone(),
                deployment_id: ids[i].clone(),
                report,
                error,
            });
        }
        let mut report = GroupReport::from_members(self.name, self.id, members);
        if c.trigger.is_some() {
            report.trigger = c.trigger;
        }
        tracing::info!(outcome = report.outcome.name(), "group finished");
        Ok(report)
    }
    fn membership_steps(&self) -> usize {
        self.members
            .first()
            .map_or(0, |m| m.plan.strategy.steps().len())
    }

    /// On resume: members with records resume, the others start afresh; a
    /// journal that records another membership is refused.
    async fn decide_resume(&mut self) -> Result<()> {
        if !self.resume {
            return Ok(());
        }
        let mut any = false;
        for m in &mut self.members {
            let entries = m.journal.read(&m.deployment_id).await?;
            let started = entries.iter().find_map(|e| match &e.record {
                Record::Started { plan, .. } => Some(plan.group.clone()),
                _ => None,
            });
            match started {
                None => m.resume = false,
                Some(g) if g.as_ref() == Some(&self.membership) => {
                    m.resume = true;
                    any = true;
                }
                Some(g) => {
                    let was = g.map_or_else(
                        || "no group".to_string(),
                        |g| format!("group {} with members [{}]", g.name, g.members.join(", ")),
                    );
                    return Err(Error::invalid_input(format!(
                        "group {}: deployment {} was started as part of {was}; this group has members [{}]",
                        self.name,
                        m.deployment_id,
                        self.membership.members.join(", ")
                    ))
                    .with_operation("resume group"));
                }
            }
        }
        if !any {
            return Err(Error::not_found(format!(
                "group {}: no journal records for group {}",
                self.name, self.id
            ))
            .with_operation("resume group"));
        }
        Ok(())
    }
}

/// The group's decisions, from the members' progress.
struct Coordinator {
    name: String,
    services: Vec<String>,
    steps: usize,
    results: Vec<Option<Result<Report>>>,
    trigger: Option<GroupTrigger>,
    rolling_back: bool,
    independent: bool,
    proceeded: BTreeSet<(usize, Barrier)>,
    first_wait: BTreeMap<Barrier, tokio::time::Instant>,
    timeout: Duration,
}

impl Coordinator {
    fn failure(&self, i: usize, p: &Progress) -> Option<String> {
        if let Some(Err(e)) = &self.results[i] {
            return Some(format!("its deployer stopped: {}", e.message()));
        }
        match &p.outcome {
            Some(Outcome::Halted { reason }) => return Some(format!("halted: {}", reason.summary)),
            Some(Outcome::RolledBack { reason }) => {
                return Some(format!("rolled back: {}", reason.summary))
            }
            _ => {}
        }
        p.rollback_reason
            .as_ref()
            .map(|r| format!("rolled back: {r}"))
    }

    fn abort_all(&mut self, controls: &[ControlHandle], reason: &str, except: Option<usize>) {
        self.rolling_back = true;
        for (i, h) in controls.iter().enumerate() {
            if self.results[i].is_none() && Some(i) != except {
                h.abort(reason);
            }
        }
    }

    fn operator_abort(&mut self, reason: &str) {
        if !self.rolling_back {
            self.rolling_back = true;
            self.trigger = Some(GroupTrigger {
                member: None,
                reason: format!("aborted by an operator: {reason}"),
            });
        }
    }

    /// Acts on the members' latest `states` as of `now` (the coordinator
    /// never reads a clock itself, so a test decides at any instant).
    fn decide(
        &mut self,
        now: tokio::time::Instant,
        states: &[Progress],
        controls: &[ControlHandle],
    ) {
        if self.rolling_back || self.independent {
            return;
        }
        if let Some((i, why)) = states
            .iter()
            .enumerate()
            .find_map(|(i, p)| self.failure(i, p).map(|w| (i, w)))
        {
            let member = self.services[i].clone();
            tracing::warn!(member = %member, reason = %why, "a group member failed; rolling the group back");
            let reason = format!("group {}: member {member} {why}", self.name);
            self.trigger = Some(GroupTrigger {
                member: Some(member),
                reason: why,
            });
            self.abort_all(controls, &reason, Some(i));
            return;
        }
        let all = self.steps + 1;
        if states.iter().all(|p| p.barriers_passed >= all) {
            // Past the point of no return everywhere: each finishes alone.
            self.independent = true;
            return;
        }
        let waiting: BTreeSet<Barrier> = states.iter().filter_map(|p| p.waiting_at).collect();
        for b in waiting {
            let pos = b.position(self.steps);
            let reached = |p: &Progress| p.waiting_at == Some(b) || p.barriers_passed > pos;
            if states.iter().all(reached) {
                self.first_wait.remove(&b);
                tracing::info!(barrier = %b, "every member reached the barrier");
                for (i, p) in states.iter().enumerate() {
                    if p.waiting_at == Some(b) && self.proceeded.insert((i, b)) {
                        controls[i].send(Control::Proceed { barrier: b });
                    }
                }
            } else {
                let since = *self.first_wait.entry(b).or_insert(now);
                if now.duration_since(since) >= self.timeout {
                    let late: Vec<&str> = states
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| !reached(p))
                        .map(|(i, _)| self.services[i].as_str())
                        .collect();
                    let why = format!(
                        "[{}] did not reach {b} within {} of the first member",
                        late.join(", "),
                        humantime::format_duration(self.timeout)
                    );
                    tracing::warn!(reason = %why, "barrier timed out; rolling the group back");
                    let reason = format!("group {}: {why}", self.name);
                    self.trigger = Some(GroupTrigger {
                        member: None,
                        reason: why,
                    });
                    self.abort_all(controls, &reason, None);
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        if self.rolling_back || self.independent {
            return None;
        }
        self.first_wait.values().min().map(|t| *t + self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(timeout: Duration) -> Coordinator {
        Coordinator {
            name: "checkout".into(),
            services: vec!["order-api".into(), "payment-api".into()],
            steps: 2,
            results: vec![None, None],
            trigger: None,
            rolling_back: false,
            independent: false,
            proceeded: BTreeSet::new(),
            first_wait: BTreeMap::new(),
            timeout,
        }
    }

    /// The barrier timeout is judged from the instants the coordinator is
    /// given: one millisecond short of it nothing happens, at it every member
    /// is aborted and the late member is named.
    #[test]
    fn the_barrier_timeout_is_decided_from_the_time_given_not_the_clock() {
        let timeout = Duration::from_secs(1800);
        let mut c = coordinator(timeout);
        let (h0, mut rx0) = ControlHandle::channel();
        let (h1, mut rx1) = ControlHandle::channel();
        let controls = [h0, h1];
        let barrier = Barrier::Shift { step: 0 };
        let states = [
            Progress {
                running: true,
                waiting_at: Some(barrier),
                ..Progress::default()
            },
            Progress {
                running: true,
                ..Progress::default()
            },
        ];
        let t0 = tokio::time::Instant::now();
        c.decide(t0, &states, &controls);
        assert_eq!(c.next_deadline(), Some(t0 + timeout));
        c.decide(t0 + timeout - Duration::from_millis(1), &states, &controls);
        assert!(rx0.try_recv().is_err() && rx1.try_recv().is_err());
        assert!(c.trigger.is_none());

        c.decide(t0 + timeout, &states, &controls);
        let trigger = c.trigger.as_ref().expect("the barrier timed out");
        assert_eq!(trigger.member, None);
        assert!(
            trigger.reason.contains("[payment-api] did not reach"),
            "{}",
            trigger.reason
        );
        for rx in [&mut rx0, &mut rx1] {
            assert!(matches!(rx.try_recv(), Ok(Control::Abort { .. })));
        }
    }

    /// Once every member waits at the barrier, each is told to proceed,
    /// exactly once however often the coordinator decides.
    #[test]
    fn every_member_at_the_barrier_is_told_to_proceed_once() {
        let mut c = coordinator(Duration::from_secs(60));
        let (h0, mut rx0) = ControlHandle::channel();
        let (h1, mut rx1) = ControlHandle::channel();
        let controls = [h0, h1];
        let barrier = Barrier::ScaleDown;
        let at = Progress {
            running: true,
            waiting_at: Some(barrier),
            ..Progress::default()
        };
        let states = [at.clone(), at];
        let t0 = tokio::time::Instant::now();
        c.decide(t0, &states, &controls);
        c.decide(t0 + Duration::from_secs(120), &states, &controls);
        for rx in [&mut rx0, &mut rx1] {
            assert_eq!(rx.try_recv().ok(), Some(Control::Proceed { barrier }));
            assert!(rx.try_recv().is_err());
        }
        assert!(c.trigger.is_none());
    }
}
