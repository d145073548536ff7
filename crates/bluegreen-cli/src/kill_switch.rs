//! The crash tests' kill switch: the CLI kills itself with SIGKILL at a
//! chosen journal append. Test code: compiled only with the `testing`
//! feature, so a release build has neither the switch nor its variable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::journal::DeploymentSummary;
use bluegreen_core::{Journal, JournalEntry, Lease, Record, Result, Timestamp};

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
