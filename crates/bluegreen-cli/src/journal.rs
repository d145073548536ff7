//! The CLI's journal: the core [`FileJournal`] (behind the crash tests' kill
//! switch in a build with the `testing` feature), and
//! the control file through which `abort` and `promote` reach the deploying
//! process.
//!
//! The control file steers a deployment, so it is kept as private as the
//! journal ([`open_private`]): created 0600, never through a symbolic link,
//! and refused when another user owns it or group or others may write it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::journal::{open_private, DeploymentSummary};
use bluegreen_core::{
    Control, ControlHandle, Error, FileJournal, Journal, JournalEntry, Lease, Record, Result,
    Timestamp,
};
use bluegreen_postgres::{Database, PostgresJournal};
use serde::{Deserialize, Serialize};

use crate::spec::{JournalKind, LoadedSpec, SecretRef};

#[cfg(feature = "testing")]
pub use crate::kill_switch::KILL_ENV;

/// `journal`, behind the kill switch of the environment when the binary is
/// built with the `testing` feature (the crash tests); as it is otherwise.
fn with_kill_switch<J: Journal + 'static>(journal: J) -> Arc<dyn Journal> {
    #[cfg(feature = "testing")]
    {
        use crate::kill_switch::{KillPoint, KillSwitchJournal};
        Arc::new(KillSwitchJournal::new(journal, KillPoint::from_env()))
    }
    #[cfg(not(feature = "testing"))]
    {
        Arc::new(journal)
    }
}

/// Opens the file journal at `path` (with the kill switch of a `testing`
/// build).
pub fn open(path: &Path) -> Result<Arc<dyn Journal>> {
    Ok(with_kill_switch(FileJournal::open(path)?))
}

/// Opens the journal `loaded` names: the file at `path`, or the Postgres
/// journal at the URL its `[journal] url` variable holds. With the kill
/// switch from the environment.
pub async fn open_for(loaded: &LoadedSpec, path: &Path) -> Result<Arc<dyn Journal>> {
    match loaded.spec.journal.kind {
        JournalKind::File => open(path),
        JournalKind::Postgres => {
            let db = journal_database(loaded)?;
            let paused = loaded
                .spec
                .target
                .fake
                .as_ref()
                .is_some_and(|f| f.paused_time);
            if paused {
                // Under paused time an idle runtime jumps its clock to the
                // next timer while a query is in flight; the journal's I/O
                // runs on a real-time runtime instead, blocking this one.
                let j = on_real_time(PostgresJournal::connect(db))?;
                return Ok(with_kill_switch(RealTime(j)));
            }
            Ok(with_kill_switch(PostgresJournal::connect(db).await?))
        }
    }
}

/// The runtime [`RealTime`] runs its journal's I/O on; never dropped.
fn real_time_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the journal's I/O")
    })
}

/// Runs `fut` to completion on the real-time runtime, blocking the caller
/// (and with it a paused runtime's clock).
fn on_real_time<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| real_time_runtime().block_on(fut))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A journal whose calls run on a real-time runtime (see [`open_for`]).
pub struct RealTime<J>(J);

#[async_trait]
impl<J: Journal> Journal for RealTime<J> {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        on_real_time(self.0.acquire(service, holder, ttl, now))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        on_real_time(self.0.renew(lease, ttl, now))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        on_real_time(self.0.release(lease))
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        on_real_time(self.0.append(lease, deployment_id, at, record))
    }

    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        on_real_time(self.0.read(deployment_id))
    }

    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        on_real_time(self.0.deployments(service))
    }
}

/// The Postgres journal's database, from the variable `[journal] url` names.
pub fn journal_database(loaded: &LoadedSpec) -> Result<Database> {
    let var = match &loaded.spec.journal.url {
        Some(SecretRef::Env(v)) => v,
        _ => {
            return Err(Error::invalid_input(
                "journal.url: the postgres journal needs { env = \"VARIABLE\" }",
            )
            .with_provider("postgres")
            .with_operation("open journal"))
        }
    };
    let url = std::env::var(var).map_err(|_| {
        Error::not_found(format!(
            "journal.url: environment variable {var} is not set (it holds the journal's database URL)"
        ))
        .with_provider("postgres")
        .with_operation("open journal")
    })?;
    let named = |e: Error| {
        Error::new(e.kind(), format!("journal.url ({var}): {}", e.message()))
            .with_provider("postgres")
            .with_operation("open journal")
    };
    let db = Database::from_url(&url)
        .map_err(named)?
        .allow_plaintext(loaded.spec.journal.allow_plaintext);
    db.check_tls_policy().map_err(named)?;
    Ok(db)
}

/// One instruction in the control file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlLine {
    /// The deployment it is for.
    pub deployment_id: String,
    /// The instruction.
    pub control: Control,
}

/// The control file beside the journal.
pub fn control_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".control");
    PathBuf::from(p)
}

/// Appends an instruction for `deployment_id`. The control file is created
/// with mode 0600 if it does not exist; one that is a symbolic link, that
/// another user owns, or that group or others may write is refused
/// ([`open_private`]), naming the path and why.
pub fn send_control(journal: &Path, deployment_id: &str, control: Control) -> Result<()> {
    let path = control_path(journal);
    let line = serde_json::to_string(&ControlLine {
        deployment_id: deployment_id.into(),
        control,
    })
    .map_err(|e| Error::invalid_input(format!("cannot encode the control: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    let mut f = open_private(&path, options, "control file")?;
    writeln!(f, "{line}").map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))
}

/// The control file's text; empty when there is none. Refused, like the
/// journal, when it is a symbolic link, another user owns it, or group or
/// others may write it ([`open_private`]).
pub fn read_control(journal: &Path) -> Result<String> {
    let path = control_path(journal);
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    let mut f = match open_private(&path, options, "control file") {
        Ok(f) => f,
        Err(e) if e.kind() == bluegreen_core::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| Error::unavailable(format!("read control file {}: {e}", path.display())))?;
    Ok(text)
}

/// The instructions for `deployment_id` in the control file, in order.
pub fn controls_for(journal: &Path, deployment_id: &str) -> Result<Vec<Control>> {
    Ok(control_snapshot(journal, deployment_id)?.0)
}

/// The instructions for `deployment_id` in the control file, in order, and
/// the byte offset just past the last complete line read: a forwarder
/// started there ([`forward_with_from`]) sees every later line and none of
/// these, so nothing is both applied as pending and forwarded, and nothing
/// falls between the two.
///
/// A control file that is a symbolic link, that another user owns, or that
/// group or others may write is an error naming the path and why: a
/// deployer refuses to start or resume on it rather than take instructions
/// someone else could have written.
pub fn control_snapshot(journal: &Path, deployment_id: &str) -> Result<(Vec<Control>, usize)> {
    let text = read_control(journal)?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let controls = text[..complete]
        .lines()
        .filter_map(|l| serde_json::from_str::<ControlLine>(l).ok())
        .filter(|c| c.deployment_id == deployment_id)
        .map(|c| c.control)
        .collect();
    Ok((controls, complete))
}

/// How many human instructions (not a group's `Proceed`) the journal shows
/// a deployer took for the deployment: every one it takes is journaled
/// before it acts, and the deployer takes the control file's lines in order.
pub fn controls_taken(entries: &[bluegreen_core::JournalEntry]) -> usize {
    entries
        .iter()
        .filter(|e| {
            matches!(
                &e.record,
                bluegreen_core::Record::Step {
                    input: bluegreen_core::machine::Input::Control { control },
                    ..
                } if !matches!(control, Control::Proceed { .. })
            )
        })
        .count()
}

/// The human instructions a member's journal shows it took: the inputs of
/// its `Control` steps, in order, without a group's `Proceed`.
fn journaled_controls(entries: &[JournalEntry]) -> impl Iterator<Item = &Control> {
    entries.iter().filter_map(|e| match &e.record {
        Record::Step {
            input: bluegreen_core::machine::Input::Control { control },
            ..
        } if !matches!(control, Control::Proceed { .. }) => Some(control),
        _ => None,
    })
}

/// How many of `sent` (a group's instructions in the control file, in
/// order) one member's journal shows it took: the longest run of them, from
/// the first, found in order among the member's journaled controls. A
/// member journals every control it takes before it acts on it; controls
/// that are not in `sent` (the group's own aborts of the other members when
/// one member fails, which name the group and the failing member) are
/// passed over.
pub fn member_controls_taken(sent: &[Control], entries: &[JournalEntry]) -> usize {
    let mut taken = 0;
    for c in journaled_controls(entries) {
        if taken < sent.len() && *c == sent[taken] {
            taken += 1;
        }
    }
    taken
}

/// How many of `sent` (a group's instructions in the control file, in
/// order) the group's deployers took, by its members' journals (`members`,
/// one entry list per member): the most any member took
/// ([`member_controls_taken`]).
///
/// A group deployer hands each instruction to every member that is still
/// running, and each journals it before acting, so an instruction any
/// member journaled was taken. The maximum, not the minimum: a member that
/// had finished, or that had not journaled it yet when the deployer died,
/// is not given it again, since the members that did take it would then
/// take it twice (a second `promote` could pass a later gate). A member
/// that missed an abort is rolled back anyway, because the group rolls
/// every member back when one does; a member that missed a promote stays
/// where it waits until it is promoted again.
pub fn group_controls_taken(sent: &[Control], members: &[Vec<JournalEntry>]) -> usize {
    members
        .iter()
        .map(|m| member_controls_taken(sent, m))
        .max()
        .unwrap_or(0)
}

/// Whether the deployment whose journal is `entries` took `control` after
/// its record `after` (a `seq`; 0 for all): its effect as the deployer
/// journaled it (the `Event::Control` of the step that took it), or `None`.
pub fn took_control(entries: &[JournalEntry], after: u64, control: &Control) -> Option<String> {
    entries
        .iter()
        .filter(|e| e.seq > after)
        .find_map(|e| match &e.record {
            Record::Step {
                input: bluegreen_core::machine::Input::Control { control: c },
                events,
                ..
            } if c == control => Some(
                events
                    .iter()
                    .find_map(|ev| match ev {
                        bluegreen_core::machine::Event::Control { effect, .. } => {
                            Some(effect.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| "taken".into()),
            ),
            _ => None,
        })
}

/// The `seq` of the last record in `entries` (0 if there is none).
pub fn last_seq(entries: &[JournalEntry]) -> u64 {
    entries.last().map_or(0, |e| e.seq)
}

/// The control file's instructions for `deployment_id` that no deployer
/// took yet (sent while none ran, or to one killed before it journaled
/// them): a resumed deployer applies these first, in order.
pub fn pending_controls(
    journal: &Path,
    deployment_id: &str,
    entries: &[bluegreen_core::JournalEntry],
) -> Result<Vec<Control>> {
    Ok(controls_for(journal, deployment_id)?
        .into_iter()
        .skip(controls_taken(entries))
        .collect())
}

/// Forwards instructions written to the control file after now to `handle`,
/// until the task is dropped. Polls every 200 ms.
pub fn forward_controls(
    journal: &Path,
    deployment_id: String,
    handle: ControlHandle,
) -> tokio::task::JoinHandle<()> {
    forward_with(journal, deployment_id, move |c| {
        handle.send(c);
    })
}

/// Calls `apply` with each instruction for `deployment_id` written to the
/// control file after now, until the task is dropped. Polls every 200 ms.
pub fn forward_with(
    journal: &Path,
    deployment_id: String,
    apply: impl FnMut(Control) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let from = read_control(journal).map_or(0, |t| t.len());
    forward_with_from(journal, from, deployment_id, apply)
}

/// Calls `apply` with each instruction for `deployment_id` in the control
/// file from byte offset `from` on (the end of a [`control_snapshot`]),
/// until the task is dropped. Polls every 200 ms. A control file that
/// becomes unsafe to read ([`read_control`]) is not read, with a warning.
pub fn forward_with_from(
    journal: &Path,
    from: usize,
    deployment_id: String,
    mut apply: impl FnMut(Control) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let path = control_path(journal);
    let journal = journal.to_path_buf();
    let mut seen = from;
    let mut warned = false;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let text = match read_control(&journal) {
                Ok(text) => text,
                Err(e) => {
                    if e.kind() == bluegreen_core::ErrorKind::PermissionDenied && !warned {
                        tracing::warn!(path = %path.display(), "control file not read: {e}");
                        warned = true;
                    }
                    continue;
                }
            };
            if text.len() <= seen {
                continue;
            }
            let new = &text[seen..];
            let complete = new.rfind('\n').map_or(0, |i| i + 1);
            for line in new[..complete].lines() {
                if let Ok(c) = serde_json::from_str::<ControlLine>(line) {
                    if c.deployment_id == deployment_id {
                        apply(c.control);
                    }
                }
            }
            seen += complete;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_core::machine::{Event, Input};
    use bluegreen_core::plan::Barrier;

    fn step(seq: u64, input: Input) -> JournalEntry {
        JournalEntry {
            seq,
            deployment_id: "g1/order-api".into(),
            service: "order-api".into(),
            token: 1,
            at: Timestamp(seq),
            record: Record::Step {
                input,
                commands: Vec::new(),
                events: Vec::new(),
                notifications: Vec::new(),
            },
        }
    }

    fn control(seq: u64, control: Control) -> JournalEntry {
        step(seq, Input::Control { control })
    }

    fn abort(reason: &str) -> Control {
        Control::Abort {
            reason: reason.into(),
        }
    }

    #[test]
    fn a_group_control_counts_as_taken_once_any_member_journaled_it_in_order() {
        let sent = vec![Control::Promote, abort("bad canary"), Control::Promote];
        // Took the first promote, passed a barrier, was rolled back by the
        // group because another member failed, then took the abort.
        let order = vec![
            step(1, Input::Tick),
            control(2, Control::Promote),
            control(
                3,
                Control::Proceed {
                    barrier: Barrier::Shift { step: 1 },
                },
            ),
            control(4, abort("group checkout: member payment-api rolled back")),
            control(5, abort("bad canary")),
        ];
        assert_eq!(member_controls_taken(&sent, &order), 2);
        // The other member took only the first promote before the deployer died.
        let payment = vec![control(1, Control::Promote)];
        assert_eq!(member_controls_taken(&sent, &payment), 1);
        // The group took what any member took: the abort is not applied again.
        assert_eq!(
            group_controls_taken(&sent, &[payment.clone(), order.clone()]),
            2
        );
        // A member that has not started took nothing.
        assert_eq!(group_controls_taken(&sent, &[Vec::new(), payment]), 1);
        assert_eq!(group_controls_taken(&sent, &[]), 0);
        // A control is matched only after the ones sent before it: an abort
        // taken out of order does not make an earlier promote taken.
        let out_of_order = vec![control(1, abort("bad canary"))];
        assert_eq!(member_controls_taken(&sent, &out_of_order), 0);
    }

    #[test]
    fn took_control_finds_the_step_after_a_record_and_its_effect() {
        let mut taken = control(3, Control::Promote);
        if let Record::Step { events, .. } = &mut taken.record {
            events.push(Event::Control {
                control: Control::Promote,
                effect: "promoted past the gate before-shift by a human".into(),
                kind: None,
            });
        }
        let entries = vec![control(1, Control::Promote), step(2, Input::Tick), taken];
        assert_eq!(
            took_control(&entries, 2, &Control::Promote).as_deref(),
            Some("promoted past the gate before-shift by a human")
        );
        assert_eq!(took_control(&entries, 3, &Control::Promote), None);
        assert_eq!(took_control(&entries, 0, &abort("x")), None);
        // Without an effect event it is still taken.
        assert_eq!(
            took_control(&entries, 0, &Control::Promote).as_deref(),
            Some("taken")
        );
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_control_file_is_created_0600() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.journal");
        send_control(&j, "d1", Control::Promote).unwrap();
        assert_eq!(mode(&control_path(&j)), 0o600);
    }

    #[test]
    fn a_symlinked_control_file_is_refused_and_the_file_it_points_at_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.journal");
        let victim = dir.path().join("authorized_keys");
        std::fs::write(&victim, "ssh-ed25519 AAAA ops\n").unwrap();
        std::os::unix::fs::symlink(&victim, control_path(&j)).unwrap();
        let err = send_control(&j, "d1", Control::Promote).unwrap_err();
        assert_eq!(err.kind(), bluegreen_core::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ssh-ed25519 AAAA ops\n"
        );
        // Nor is it read: a deployer refuses to start on it.
        let err = control_snapshot(&j, "d1").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_dangling_control_link_is_not_created_through() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.journal");
        let target = dir.path().join("planted");
        std::os::unix::fs::symlink(&target, control_path(&j)).unwrap();
        let err = send_control(&j, "d1", Control::Promote).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists(), "nothing was created through the link");
    }

    #[test]
    fn a_control_file_group_or_others_may_write_is_refused_naming_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.journal");
        send_control(&j, "d1", Control::Promote).unwrap();
        std::fs::set_permissions(control_path(&j), std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = control_snapshot(&j, "d1").unwrap_err();
        assert_eq!(err.kind(), bluegreen_core::ErrorKind::PermissionDenied);
        let msg = err.to_string();
        assert!(
            msg.contains(&control_path(&j).display().to_string())
                && msg.contains("mode 0666, writable by group and others"),
            "{msg}"
        );
        let err = send_control(&j, "d1", Control::Promote).unwrap_err();
        assert!(err.to_string().contains("mode 0666"), "{err}");
    }

    #[test]
    fn a_snapshot_ends_at_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("d.journal");
        assert_eq!(control_snapshot(&j, "g1").unwrap(), (Vec::new(), 0));
        send_control(&j, "g1", Control::Promote).unwrap();
        send_control(&j, "other", Control::Pause).unwrap();
        let whole = std::fs::read_to_string(control_path(&j)).unwrap().len();
        // A line being written is not read, and the forwarder starts before it.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(control_path(&j))
            .unwrap();
        f.write_all(br#"{"deployment_id":"g1","con"#).unwrap();
        assert_eq!(
            control_snapshot(&j, "g1").unwrap(),
            (vec![Control::Promote], whole)
        );
    }
}
