//! The CLI's journal: the core [`FileJournal`], a test-only kill switch, and
//! the control file through which `abort` and `promote` reach the deploying
//! process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::journal::DeploymentSummary;
use bluegreen_core::{
    Control, ControlHandle, Error, FileJournal, Journal, JournalEntry, Lease, Record, Result,
    Timestamp,
};
use bluegreen_postgres::{Database, PostgresJournal};
use serde::{Deserialize, Serialize};

use crate::spec::{JournalKind, LoadedSpec, SecretRef};

/// The environment variable that makes the CLI kill itself with SIGKILL at
/// a journal append: `N` (right after the N-th append is on disk) or
/// `N:before` (right before the N-th append is written). For crash tests.
pub const KILL_ENV: &str = "BLUEGREEN_TEST_KILL_AFTER_APPENDS";

/// When to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillPoint {
    /// The append (1-based).
    pub append: u64,
    /// Before it is written rather than after.
    pub before: bool,
}

impl KillPoint {
    /// From [`KILL_ENV`], if set and well-formed.
    pub fn from_env() -> Option<KillPoint> {
        let v = std::env::var(KILL_ENV).ok()?;
        let (n, before) = match v.split_once(':') {
            Some((n, "before")) => (n, true),
            Some((n, _)) => (n, false),
            None => (v.as_str(), false),
        };
        Some(KillPoint {
            append: n.trim().parse().ok()?,
            before,
        })
    }
}

/// A [`Journal`] that kills its process with SIGKILL at a [`KillPoint`].
pub struct KillSwitchJournal<J> {
    inner: J,
    appends: AtomicU64,
    kill: Option<KillPoint>,
}

impl<J> KillSwitchJournal<J> {
    /// Wraps `inner`; dies at `kill`.
    pub fn new(inner: J, kill: Option<KillPoint>) -> Self {
        KillSwitchJournal {
            inner,
            appends: AtomicU64::new(0),
            kill,
        }
    }
}

fn die() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // SIGKILL cannot be caught; wait for it to land.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[async_trait]
impl<J: Journal> Journal for KillSwitchJournal<J> {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        self.inner.acquire(service, holder, ttl, now).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.inner.renew(lease, ttl, now).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.inner.release(lease).await
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        let hit = self.kill.filter(|k| k.append == n);
        if hit.is_some_and(|k| k.before) {
            die();
        }
        let e = self.inner.append(lease, deployment_id, at, record).await?;
        if hit.is_some() {
            die();
        }
        Ok(e)
    }

    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        self.inner.read(deployment_id).await
    }

    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        self.inner.deployments(service).await
    }
}

/// Opens the file journal at `path`, with the kill switch from the environment.
pub fn open(path: &Path) -> Result<KillSwitchJournal<FileJournal>> {
    Ok(KillSwitchJournal::new(
        FileJournal::open(path)?,
        KillPoint::from_env(),
    ))
}

/// Opens the journal `loaded` names: the file at `path`, or the Postgres
/// journal at the URL its `[journal] url` variable holds. With the kill
/// switch from the environment.
pub async fn open_for(loaded: &LoadedSpec, path: &Path) -> Result<Arc<dyn Journal>> {
    match loaded.spec.journal.kind {
        JournalKind::File => Ok(Arc::new(open(path)?)),
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
                return Ok(Arc::new(KillSwitchJournal::new(
                    RealTime(j),
                    KillPoint::from_env(),
                )));
            }
            Ok(Arc::new(KillSwitchJournal::new(
                PostgresJournal::connect(db).await?,
                KillPoint::from_env(),
            )))
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
    Database::from_url(&url)
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

/// Appends an instruction for `deployment_id`.
pub fn send_control(journal: &Path, deployment_id: &str, control: Control) -> Result<()> {
    let path = control_path(journal);
    let line = serde_json::to_string(&ControlLine {
        deployment_id: deployment_id.into(),
        control,
    })
    .map_err(|e| Error::invalid_input(format!("cannot encode the control: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))?;
    writeln!(f, "{line}").map_err(|e| Error::unavailable(format!("{}: {e}", path.display())))
}

/// The instructions for `deployment_id` in the control file, in order.
pub fn controls_for(journal: &Path, deployment_id: &str) -> Vec<Control> {
    let Ok(text) = std::fs::read_to_string(control_path(journal)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<ControlLine>(l).ok())
        .filter(|c| c.deployment_id == deployment_id)
        .map(|c| c.control)
        .collect()
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

/// The control file's instructions for `deployment_id` that no deployer
/// took yet (sent while none ran, or to one killed before it journaled
/// them): a resumed deployer applies these first, in order.
pub fn pending_controls(
    journal: &Path,
    deployment_id: &str,
    entries: &[bluegreen_core::JournalEntry],
) -> Vec<Control> {
    controls_for(journal, deployment_id)
        .into_iter()
        .skip(controls_taken(entries))
        .collect()
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
    mut apply: impl FnMut(Control) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let path = control_path(journal);
    let mut seen = std::fs::read_to_string(&path).map_or(0, |t| t.len());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
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
