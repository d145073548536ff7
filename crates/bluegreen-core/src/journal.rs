//! The deployment journal: an append-only record of every input and decision,
//! written before the driver acts, with a lease per service and a fencing token.
//!
//! Two implementations live here: [`MemoryJournal`] and [`FileJournal`]
//! (append-only JSON lines, fsynced, locked against other processes). The
//! Postgres crate adds one for deployers on several machines. All pass
//! [`testing::conformance::journal`](crate::testing) when the `testing`
//! feature is on.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::color::Timestamp;
use crate::error::{Error, ErrorKind, Result};
use crate::machine::{Checkpoint, Command, Event, Input};
use crate::plan::Plan;
use crate::provider::Notification;

/// The exclusive right of one deployer to act on one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The service.
    pub service: String,
    /// Who holds it: a deployer identity such as a deployment id, with an
    /// optional description in brackets after it (the CLI writes
    /// `dep-… [user alice on host build-7, pid 4242]`). Holders are
    /// compared by [`holder_identity`], so a deployer resuming the same
    /// deployment from another process is the same holder.
    pub holder: String,
    /// The fencing token: strictly increasing per service across takeovers.
    pub token: u64,
    /// When it was acquired.
    pub acquired_at: Timestamp,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
    /// The expiry of the unreleased lease this one took over, whoever held
    /// it (the same holder resuming, or another after it lapsed); `None`
    /// when the service's last lease was released or there was none.
    ///
    /// A deployer that took over waits until this instant plus its call
    /// timeout before its first mutating call: until then the previous
    /// holder may still be inside a provider call it began while its lease
    /// was valid. A [`Journal`] implementation must set it; the conformance
    /// suite checks it.
    #[serde(default)]
    pub superseded: Option<Timestamp>,
}

/// The identity of a lease holder: `holder` without the description in
/// brackets a deployer may append (`"dep-1 [user alice on host build-7,
/// pid 42]"` is `"dep-1"`). Journals compare holders by it; a holder
/// without a description is its own identity, so leases written before
/// descriptions existed compare as they did.
///
/// ```
/// use bluegreen_core::journal::holder_identity;
/// assert_eq!(holder_identity("dep-1 [user alice on host build-7, pid 42]"), "dep-1");
/// assert_eq!(holder_identity("dep-1"), "dep-1");
/// ```
pub fn holder_identity(holder: &str) -> &str {
    match holder.strip_suffix(']').and_then(|h| h.rsplit_once(" [")) {
        Some((id, _)) => id,
        None => holder,
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The deployment began with this plan.
    Started {
        /// The plan.
        plan: Box<Plan>,
        /// Who started it.
        holder: String,
        /// The journal format the records follow ([`JOURNAL_FORMAT`] of
        /// the engine that wrote them; 1 for journals from before the field).
        #[serde(default = "format_one")]
        format: u32,
        /// The version of the engine (`bluegreen-core`) that started it.
        #[serde(default)]
        engine: String,
    },
    /// One step of the state machine: the input it was given and the
    /// commands and events it produced, written before any command runs.
    Step {
        /// The input.
        input: Input,
        /// The commands to execute.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        commands: Vec<Command>,
        /// The decisions and observations.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<Event>,
        /// The notifications sent (format 3; format 2 journaled them as
        /// [`Action::Notify`](crate::machine::Action::Notify) commands).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notifications: Vec<Notification>,
    },
    /// The machine's whole state, journaled (format 4) before the first
    /// step that follows steps left out of the journal because they only
    /// repeated a held deployment's readings ([`Step::repeats`]). A replay
    /// restores it and goes on from there.
    ///
    /// [`Step::repeats`]: crate::machine::Step::repeats
    Checkpoint {
        /// How many steps were left out since the record before.
        skipped: u64,
        /// The state after the last of them.
        state: Box<Checkpoint>,
    },
}

/// The journal format this engine writes and resumes.
///
/// It changes when a journal written before the change would not replay to
/// the same commands: a new stage or command in the machine, a changed
/// decision, a changed meaning of a record. Rewording an event, a reason or
/// a notification does not change it: resume compares commands strictly and
/// events only by kind. An engine refuses a journal of another format,
/// naming both formats and the engine versions, rather than guess.
///
/// * 1: up to bluegreen-core 0.1.0 before the checks of reality.
/// * 2: capacity read after suspension, release verification, the old
///   color checked before a rollback returns traffic, drains, hold
///   timeouts, autoscaling read before it is suspended.
/// * 3: [`Input::Resumed`] (a resumed stage's progress deadline restarts);
///   notifications journaled beside the commands, not as commands; reasons
///   and notes carry their structured cause. A superset of 2.
/// * 4: [`Record::Checkpoint`]: a held deployment's repeated readings are
///   left out of the journal, and the machine's state is journaled instead;
///   notes, control effects and dry runs carry their kind; a mutating call
///   of a stage a rollback abandoned is waited for before the rollback's
///   next mutating call is sent.
///   A superset of 3: this engine resumes 2, 3 and 4 (see
///   [`OLDEST_RESUMABLE_FORMAT`]).
pub const JOURNAL_FORMAT: u32 = 4;

/// The oldest journal format this engine resumes: journals of formats
/// `OLDEST_RESUMABLE_FORMAT..=JOURNAL_FORMAT` replay to the same commands
/// here. Older and newer ones are refused, naming both formats.
pub const OLDEST_RESUMABLE_FORMAT: u32 = 2;

/// The engine version recorded in [`Record::Started`].
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn format_one() -> u32 {
    1
}

/// A stored record with its position, time and the lease it was written under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position within the deployment, from 1.
    pub seq: u64,
    /// The deployment.
    pub deployment_id: String,
    /// The service.
    pub service: String,
    /// The fencing token of the lease it was written under.
    pub token: u64,
    /// When it was written.
    pub at: Timestamp,
    /// The record.
    pub record: Record,
}

/// A deployment as the journal lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// The deployment.
    pub id: String,
    /// The service.
    pub service: String,
    /// The first record's time.
    pub started_at: Timestamp,
    /// The last record's time.
    pub last_at: Timestamp,
    /// The outcome's name, once finished.
    pub outcome: Option<String>,
    /// How many records.
    pub records: u64,
}

/// An append-only deployment record with a lease per service.
///
/// # Contract
/// * `acquire` grants the lease when it is free, expired, or already held by
///   the same `holder` (a resume); the token is then greater than any token
///   granted before for that service. Otherwise it fails with
///   [`ErrorKind::LeaseHeld`] naming the holder and when it took the lease.
/// * `append` and `renew` fail with [`ErrorKind::Fenced`] when a newer lease
///   was granted for the service: a stale holder can never write.
/// * `append` is durable when it returns (fsynced, committed).
/// * `read` returns a deployment's records in `seq` order.
///
/// Appends are not idempotent by nature; the driver never repeats one that
/// returned `Ok`. A temporary error means the record may or may not have been
/// written, and the driver stops rather than guess.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Journal: Send + Sync {
    /// Takes the lease on `service` for `ttl`.
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease>;

    /// Extends a held lease by `ttl` from `now`.
    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease>;

    /// Gives the lease up. Releasing a lease already superseded is not an error.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Appends `record` to `deployment_id` under `lease`; returns its `seq`.
    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64>;

    /// Appends `record` as [`append`](Self::append) does, handing it over:
    /// a journal that keeps its records in memory keeps this one instead of
    /// a copy. The driver appends every record this way. The default calls
    /// `append`; a journal that only writes records out need not override it.
    async fn append_owned(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: Record,
    ) -> Result<u64> {
        self.append(lease, deployment_id, at, &record).await
    }

    /// Every record of `deployment_id`, in order. Empty if unknown.
    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>>;

    /// The deployments recorded, oldest first, optionally of one service.
    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>>;
}

/// The lease and record bookkeeping both local journals share.
#[derive(Debug, Default)]
struct Ledger {
    leases: BTreeMap<String, Lease>,
    tokens: BTreeMap<String, u64>,
    /// Records per deployment.
    streams: BTreeMap<String, Stream>,
    /// Deployment ids in the order of their first record.
    order: Vec<String>,
    /// Whether full blocks of records are compressed.
    compact: bool,
}

/// Records kept per deployment before a block of them is sealed.
const BLOCK: usize = 64;

/// One deployment's records: when compacting, sealed blocks of JSON lines,
/// LZ4-compressed (a deployment's records repeat themselves, so a block
/// shrinks about sevenfold), and the latest records as they are. Its summary
/// is kept as records arrive, so listing deployments reads no records.
#[derive(Debug)]
struct Stream {
    summary: DeploymentSummary,
    next_seq: u64,
    sealed: Vec<Box<[u8]>>,
    tail: Vec<Kept>,
}

/// A record as its stream keeps it: the deployment and the service are the
/// stream's own (in its summary), not copied into every record.
#[derive(Debug)]
struct Kept {
    seq: u64,
    token: u64,
    at: Timestamp,
    record: Record,
}

/// A kept record serialized as the [`JournalEntry`] it stands for (the same
/// fields in the same order), for a sealed block.
#[derive(Serialize)]
struct EntryView<'a> {
    seq: u64,
    deployment_id: &'a str,
    service: &'a str,
    token: u64,
    at: Timestamp,
    record: &'a Record,
}

impl Stream {
    /// An empty stream of `deployment_id` of `service`, first written at `at`.
    fn new(deployment_id: &str, service: &str, at: Timestamp) -> Stream {
        Stream {
            summary: DeploymentSummary {
                id: deployment_id.into(),
                service: service.into(),
                started_at: at,
                last_at: at,
                outcome: None,
                records: 0,
            },
            next_seq: 1,
            sealed: Vec::new(),
            tail: Vec::new(),
        }
    }

    fn push(&mut self, kept: Kept, compact: bool) {
        self.next_seq = self.next_seq.max(kept.seq + 1);
        let d = &mut self.summary;
        d.last_at = kept.at;
        d.records += 1;
        if let Record::Step { events, .. } = &kept.record {
            for ev in events {
                if let Event::Finished { outcome, .. } = ev {
                    d.outcome = Some(outcome.name().into());
                }
            }
        }
        self.tail.push(kept);
        if compact && self.tail.len() >= BLOCK {
            self.seal();
        }
    }

    /// Compresses the tail into a block; keeps it as it is if it cannot be
    /// serialized (a record is never lost to compaction).
    fn seal(&mut self) {
        let mut json = Vec::with_capacity(self.tail.len() * 512);
        for k in &self.tail {
            let view = EntryView {
                seq: k.seq,
                deployment_id: &self.summary.id,
                service: &self.summary.service,
                token: k.token,
                at: k.at,
                record: &k.record,
            };
            if serde_json::to_writer(&mut json, &view).is_err() {
                return;
            }
            json.push(b'\n');
        }
        self.sealed
            .push(lz4_flex::compress_prepend_size(&json).into_boxed_slice());
        self.tail.clear();
        self.tail.shrink_to(BLOCK);
    }

    fn entries(&self, id: &str) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::with_capacity(self.sealed.len() * BLOCK + self.tail.len());
        for (i, block) in self.sealed.iter().enumerate() {
            let corrupt = |what: String| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("journal block {i} of deployment {id}: {what}"),
                )
                .with_operation("read")
            };
            let json = lz4_flex::decompress_size_prepended(block)
                .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
            for line in json.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(
                    serde_json::from_slice(line)
                        .map_err(|e| corrupt(format!("a record does not parse: {e}")))?,
                );
            }
        }
        out.extend(self.tail.iter().map(|k| JournalEntry {
            seq: k.seq,
            deployment_id: self.summary.id.clone(),
            service: self.summary.service.clone(),
            token: k.token,
            at: k.at,
            record: k.record.clone(),
        }));
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
enum Line {
    Lease { lease: Lease },
    Released { service: String, token: u64 },
    Entry { entry: JournalEntry },
}

impl Ledger {
    fn apply(&mut self, line: Line) {
        match line {
            Line::Lease { lease } => {
                let t = self.tokens.entry(lease.service.clone()).or_insert(0);
                *t = (*t).max(lease.token);
                self.leases.insert(lease.service.clone(), lease);
            }
            Line::Released { service, token } => {
                if self.leases.get(&service).is_some_and(|l| l.token == token) {
                    self.leases.remove(&service);
                }
            }
            Line::Entry { entry } => {
                let kept = Kept {
                    seq: entry.seq,
                    token: entry.token,
                    at: entry.at,
                    record: entry.record,
                };
                self.keep(&entry.deployment_id, &entry.service, kept);
            }
        }
    }

    /// Adds `kept` to the stream of `deployment_id`, which it starts when
    /// this is its first record.
    fn keep(&mut self, deployment_id: &str, service: &str, kept: Kept) {
        let compact = self.compact;
        if let Some(stream) = self.streams.get_mut(deployment_id) {
            return stream.push(kept, compact);
        }
        let mut stream = Stream::new(deployment_id, service, kept.at);
        stream.push(kept, compact);
        self.order.push(deployment_id.into());
        self.streams.insert(deployment_id.into(), stream);
    }

    fn acquire(&self, service: &str, holder: &str, ttl: Duration, now: Timestamp) -> Result<Line> {
        if let Some(l) = self.leases.get(service) {
            if holder_identity(&l.holder) != holder_identity(holder) && l.expires_at > now {
                return Err(Error::new(
                    ErrorKind::LeaseHeld,
                    format!(
                        "service {service} is being deployed by {} (lease taken at {}, expires at {}, token {})",
                        l.holder, l.acquired_at, l.expires_at, l.token
                    ),
                )
                .with_operation("acquire lease"));
            }
        }
        let token = self.tokens.get(service).copied().unwrap_or(0) + 1;
        Ok(Line::Lease {
            lease: Lease {
                service: service.into(),
                holder: holder.into(),
                token,
                acquired_at: now,
                expires_at: now.after(ttl),
                superseded: self.leases.get(service).map(|l| l.expires_at),
            },
        })
    }

    fn check_current(&self, lease: &Lease, op: &'static str) -> Result<()> {
        let current = self.tokens.get(&lease.service).copied().unwrap_or(0);
        if lease.token != current || !self.leases.contains_key(&lease.service) {
            let by = self
                .leases
                .get(&lease.service)
                .map(|l| format!(" by {} (token {})", l.holder, l.token))
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Fenced,
                format!(
                    "the lease on {} with token {} was superseded{by}: this deployer must stop",
                    lease.service, lease.token
                ),
            )
            .with_operation(op));
        }
        Ok(())
    }

    fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Line> {
        self.check_current(lease, "renew lease")?;
        Ok(Line::Lease {
            lease: Lease {
                expires_at: now.after(ttl),
                ..lease.clone()
            },
        })
    }

    /// The seq the next record of `deployment_id` gets under `lease`, once
    /// the lease is checked current and the deployment of its service.
    fn next_seq(&self, lease: &Lease, deployment_id: &str) -> Result<u64> {
        self.check_current(lease, "append")?;
        let stream = self.streams.get(deployment_id);
        if let Some(st) = stream {
            if st.summary.service != lease.service {
                return Err(Error::invalid_input(format!(
                    "deployment {deployment_id} belongs to service {}, not {}",
                    st.summary.service, lease.service
                ))
                .with_operation("append"));
            }
        }
        Ok(stream.map_or(1, |st| st.next_seq))
    }

    /// Appends `record` in memory, without a line: what applying the line
    /// [`append`](Self::append) returns does, the record moved, not copied.
    fn append_kept(
        &mut self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: Record,
    ) -> Result<u64> {
        let seq = self.next_seq(lease, deployment_id)?;
        let kept = Kept {
            seq,
            token: lease.token,
            at,
            record,
        };
        self.keep(deployment_id, &lease.service, kept);
        Ok(seq)
    }

    fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<(u64, Line)> {
        let seq = self.next_seq(lease, deployment_id)?;
        Ok((
            seq,
            Line::Entry {
                entry: JournalEntry {
                    seq,
                    deployment_id: deployment_id.into(),
                    service: lease.service.clone(),
                    token: lease.token,
                    at,
                    record: record.clone(),
                },
            },
        ))
    }

    fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        match self.streams.get(deployment_id) {
            Some(st) => st.entries(deployment_id),
            None => Ok(Vec::new()),
        }
    }

    fn deployments(&self, service: Option<&str>) -> Vec<DeploymentSummary> {
        self.order
            .iter()
            .filter_map(|id| self.streams.get(id))
            .map(|st| &st.summary)
            .filter(|d| service.is_none_or(|s| s == d.service))
            .cloned()
            .collect()
    }
}

/// A journal in memory: for tests, simulations and embedded use where the
/// process's lifetime is the deployment's.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    ledger: Mutex<Ledger>,
}

impl MemoryJournal {
    /// An empty journal that keeps records as they are: the fastest, for
    /// tests and simulations.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty journal that compresses each deployment's records in blocks
    /// of 64 as they fill: about a fifth of the memory, for many
    /// deployments in one process, at the cost of serializing every record
    /// once (about 4 µs a record in a release build).
    pub fn compacting() -> Self {
        MemoryJournal {
            ledger: Mutex::new(Ledger {
                compact: true,
                ..Ledger::default()
            }),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        let mut l = self.ledger();
        let line = l.acquire(service, holder, ttl, now)?;
        let Line::Lease { lease } = &line else {
            unreachable!("acquire yields a lease line")
        };
        let lease = lease.clone();
        l.apply(line);
        Ok(lease)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let mut l = self.ledger();
        let line = l.renew(lease, ttl, now)?;
        let Line::Lease { lease } = &line else {
            unreachable!("renew yields a lease line")
        };
        let lease = lease.clone();
        l.apply(line);
        Ok(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.ledger().apply(Line::Released {
            service: lease.service.clone(),
            token: lease.token,
        });
        Ok(())
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        self.append_owned(lease, deployment_id, at, record.clone())
            .await
    }

    async fn append_owned(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: Record,
    ) -> Result<u64> {
        self.ledger().append_kept(lease, deployment_id, at, record)
    }

    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        self.ledger().read(deployment_id)
    }

    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        Ok(self.ledger().deployments(service.as_deref()))
    }
}

/// A damaged last line found when a [`FileJournal`] was opened: the record a
/// crash cut short. Every record before it is kept; the fragment is cut off
/// before the next append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The 1-based line number of the fragment.
    pub line: usize,
    /// Its length in bytes.
    pub bytes: usize,
    /// The byte offset where it starts (and where the file is cut).
    pub offset: u64,
}

/// A journal in one append-only JSON-lines file, fsynced on every append and
/// locked (`flock`) against other processes for each operation, so a CLI can
/// read it while a deployer writes.
///
/// Nobody but its owner can steer it: the directories it creates are mode
/// 0700 and the file 0600, and the file is opened with [`open_private`]
/// (no symbolic link followed; a file another user owns, or that group or
/// others may write, is refused with [`ErrorKind::PermissionDenied`]). The
/// directory it lives in is trusted: keep it private to the deployer's user.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    inner: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    ledger: Ledger,
    offset: u64,
    lines: usize,
    torn: Option<TornTail>,
}

impl FileJournal {
    /// Opens (or creates) the journal at `path`. A torn last line is reported
    /// by [`torn_tail`](Self::torn_tail) and logged; a damaged line anywhere
    /// else is an [`ErrorKind::Corrupt`] error naming the file and line.
    pub fn open(path: impl AsRef<Path>) -> Result<FileJournal> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| io_error(&path, "create directory", e))?;
        }
        let j = FileJournal {
            path,
            inner: Mutex::new(FileState {
                // The file is the record; memory keeps a compressed copy
                // (serializing costs little next to an fsync per append).
                ledger: Ledger {
                    compact: true,
                    ..Ledger::default()
                },
                offset: 0,
                lines: 0,
                torn: None,
            }),
        };
        {
            let mut st = j.state();
            let f = j.open_file()?;
            f.lock().map_err(|e| io_error(&j.path, "lock", e))?;
            let r = j.catch_up(&mut st, &f);
            let _ = f.unlock();
            r?;
            if let Some(t) = &st.torn {
                tracing::warn!(
                    path = %j.path.display(),
                    line = t.line,
                    bytes = t.bytes,
                    "journal has a torn last line (a crash cut the last record short); every record before it is kept"
                );
            }
        }
        Ok(j)
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The torn last line found on open, if any.
    pub fn torn_tail(&self) -> Option<TornTail> {
        self.state().torn.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_file(&self) -> Result<File> {
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        open_private(&self.path, options, "journal")
            .map_err(|e| e.with_provider("file-journal").with_operation("open"))
    }

    /// Reads what other processes appended since the last look.
    fn catch_up(&self, st: &mut FileState, mut f: &File) -> Result<()> {
        let len = f
            .metadata()
            .map_err(|e| io_error(&self.path, "stat", e))?
            .len();
        if len < st.offset {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "journal {} shrank from {} to {len} bytes: it was modified outside bluegreen",
                    self.path.display(),
                    st.offset
                ),
            ));
        }
        if len == st.offset {
            return Ok(());
        }
        f.seek(SeekFrom::Start(st.offset))
            .map_err(|e| io_error(&self.path, "seek", e))?;
        let mut buf = Vec::with_capacity((len - st.offset) as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| io_error(&self.path, "read", e))?;
        let mut pos = 0usize;
        st.torn = None;
        while pos < buf.len() {
            let (line, complete) = match buf[pos..].iter().position(|b| *b == b'\n') {
                Some(n) => (&buf[pos..pos + n], true),
                None => (&buf[pos..], false),
            };
            let lineno = st.lines + 1;
            match serde_json::from_slice::<Line>(line) {
                Ok(parsed) if complete => {
                    st.ledger.apply(parsed);
                    pos += line.len() + 1;
                    st.offset += line.len() as u64 + 1;
                    st.lines += 1;
                }
                _ if !complete => {
                    st.torn = Some(TornTail {
                        line: lineno,
                        bytes: line.len(),
                        offset: st.offset,
                    });
                    break;
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "journal {} line {lineno} is damaged ({e}); the records before it are intact",
                            self.path.display()
                        ),
                    ))
                }
                Ok(_) => unreachable!("complete lines are handled above"),
            }
        }
        Ok(())
    }

    /// Runs `op` on an up-to-date ledger with the file locked; writes the line
    /// it returns, fsynced, before applying it.
    fn with_locked<T>(&self, op: impl FnOnce(&Ledger) -> Result<(T, Option<Line>)>) -> Result<T> {
        let mut st = self.state();
        let f = self.open_file()?;
        f.lock().map_err(|e| io_error(&self.path, "lock", e))?;
        let result = (|| {
            self.catch_up(&mut st, &f)?;
            let (value, line) = op(&st.ledger)?;
            if let Some(line) = line {
                if let Some(t) = st.torn.take() {
                    f.set_len(t.offset)
                        .map_err(|e| io_error(&self.path, "cut the torn last line", e))?;
                    tracing::warn!(path = %self.path.display(), line = t.line, "cut the torn last line of the journal");
                }
                let mut bytes = serde_json::to_vec(&line).map_err(|e| {
                    Error::new(ErrorKind::Other, format!("serialize journal record: {e}"))
                })?;
                bytes.push(b'\n');
                (&f).write_all(&bytes)
                    .map_err(|e| io_error(&self.path, "append", e))?;
                f.sync_data()
                    .map_err(|e| io_error(&self.path, "fsync", e))?;
                st.offset += bytes.len() as u64;
                st.lines += 1;
                st.ledger.apply(line);
            }
            Ok(value)
        })();
        let _ = f.unlock();
        result
    }
}

/// Creates `dir` and its missing parents, each with mode 0700 (the umask
/// may narrow it further). Directories that exist are left as they are.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Opens `path` with `options` as a file through which a deployment is
/// steered (a [`FileJournal`], the CLI's control file), so that no other
/// local user can steer it:
///
/// * a symbolic link at `path` is not followed (`O_NOFOLLOW`), dangling or
///   not: nothing is written to the file a link points at, and no file is
///   created through a dangling one;
/// * a file it creates has mode 0600 (the umask may narrow it further);
/// * the file opened is refused unless it is a regular file, owned by this
///   process's effective user, and not writable by group or others. The
///   check is made on the opened file, not on the path, so the file cannot
///   be swapped between the check and its use.
///
/// The open does not block on a FIFO (`O_NONBLOCK`; it is then refused as
/// not a regular file). `what` names the file in messages ("journal",
/// "control file"). A refusal is [`ErrorKind::PermissionDenied`] naming the
/// path and why (the link, the owner's uid or the mode); a missing file
/// (when `options` do not create) is [`ErrorKind::NotFound`]; any other
/// failure [`ErrorKind::Unavailable`], permanent. Outside Unix the file is
/// opened as `options` say, with no checks.
pub fn open_private(path: &Path, options: OpenOptions, what: &str) -> Result<File> {
    #[cfg(unix)]
    let options = {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = options;
        options
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .mode(0o600);
        options
    };
    let f = options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return refused(format!(
                "{what} {} is a symbolic link: bluegreen does not follow links to journals and control files (another user could point one at a file of yours, or at a file of theirs); remove the link",
                path.display()
            ));
        }
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Unavailable
        };
        Error::new(kind, format!("open {what} {}", path.display()))
            .with_status(crate::ErrorStatus::Permanent)
            .with_source(e)
    })?;
    #[cfg(unix)]
    check_private(&f, path, what)?;
    Ok(f)
}

fn refused(message: String) -> Error {
    Error::new(ErrorKind::PermissionDenied, message).with_status(crate::ErrorStatus::Permanent)
}

/// Refuses an opened file that is not a regular file of this user's that
/// group and others cannot write.
#[cfg(unix)]
fn check_private(f: &File, path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = f
        .metadata()
        .map_err(|e| io_error(path, &format!("stat {what}"), e))?;
    if !m.file_type().is_file() {
        return Err(refused(format!(
            "{what} {} is not a regular file; refused",
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(refused(format!(
            "{what} {} is owned by uid {}, not by this user (uid {me}): another user could steer the deployment through it; refused (remove it, or make it this user's with mode 0600)",
            path.display(),
            m.uid()
        )));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refused(format!(
            "{what} {} has mode {mode:04o}, writable by {}: they could steer the deployment through it; refused (chmod 600 it)",
            path.display(),
            match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            }
        )));
    }
    Ok(())
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what} {}", path.display()))
        .with_status(crate::ErrorStatus::Permanent)
        .with_provider("file-journal")
        .with_source(e)
}

#[async_trait]
impl Journal for FileJournal {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        self.with_locked(|l| {
            let line = l.acquire(service, holder, ttl, now)?;
            let Line::Lease { lease } = &line else {
                unreachable!("acquire yields a lease line")
            };
            Ok((lease.clone(), Some(line)))
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.with_locked(|l| {
            let line = l.renew(lease, ttl, now)?;
            let Line::Lease { lease } = &line else {
                unreachable!("renew yields a lease line")
            };
            Ok((lease.clone(), Some(line)))
        })
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.with_locked(|_| {
            Ok((
                (),
                Some(Line::Released {
                    service: lease.service.clone(),
                    token: lease.token,
                }),
            ))
        })
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        self.with_locked(|l| {
            let (seq, line) = l.append(lease, deployment_id, at, record)?;
            Ok((seq, Some(line)))
        })
    }

    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        self.with_locked(|l| Ok((l.read(deployment_id)?, None)))
    }

    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        self.with_locked(|l| Ok((l.deployments(service.as_deref()), None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Input;

    const TTL: Duration = Duration::from_secs(60);

    fn tick() -> Record {
        Record::Step {
            input: Input::Tick,
            commands: vec![],
            events: vec![],
            notifications: vec![],
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_reported_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let j = FileJournal::open(&path).unwrap();
            let lease = j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
            for _ in 0..3 {
                j.append(&lease, "d1", Timestamp(1), &tick()).await.unwrap();
            }
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"line":"entry","entry":{"seq":4,"deploym"#)
            .unwrap();
        drop(f);
        let j = FileJournal::open(&path).unwrap();
        let torn = j.torn_tail().expect("torn tail reported");
        assert_eq!(torn.line, 5);
        assert_eq!(j.read("d1").await.unwrap().len(), 3);
        let lease = j.acquire("svc", "a", TTL, Timestamp(2)).await.unwrap();
        let seq = j.append(&lease, "d1", Timestamp(3), &tick()).await.unwrap();
        assert_eq!(seq, 4);
        let again = FileJournal::open(&path).unwrap();
        assert!(again.torn_tail().is_none());
        assert_eq!(again.read("d1").await.unwrap().len(), 4);
    }

    /// The mode bits of `path`, not following a link.
    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_journal_directory_is_0700_and_its_file_0600_and_ours() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/j.jsonl");
        let j = FileJournal::open(&path).unwrap();
        j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
        assert_eq!(mode(&dir.path().join("deep")), 0o700);
        assert_eq!(mode(&dir.path().join("deep/er")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), me);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlinked_journal_is_refused_and_the_file_it_points_at_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.conf");
        let before = vec![b'x'; 11 * 1024];
        std::fs::write(&victim, &before).unwrap();
        let link = dir.path().join("j.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = match FileJournal::open(&link) {
            Err(e) => e,
            Ok(j) => {
                // Without the check the journal writes into the victim.
                let lease = j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
                for _ in 0..40 {
                    let _ = j.append(&lease, "d1", Timestamp(1), &tick()).await;
                }
                panic!("a symlinked journal was opened")
            }
        };
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("symbolic link") && msg.contains(&link.display().to_string()),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            before,
            "the target is unchanged"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_dangling_journal_link_is_not_created_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("planted");
        let link = dir.path().join("j.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = FileJournal::open(&link).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists(), "nothing was created through the link");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_journal_another_user_planted_is_refused_naming_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let planted = "{\"line\":\"released\",\"service\":\"s\",\"token\":1}\n";
        std::fs::write(&path, planted).unwrap();
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: giving a file to another user needs root");
            return;
        }
        let err = FileJournal::open(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), planted);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_journal_others_may_write_is_refused_naming_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        FileJournal::open(&path).unwrap();
        for (m, who) in [
            (0o666, "group and others"),
            (0o620, "its group"),
            (0o602, "others"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
            let err = FileJournal::open(&path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("mode {m:04o}, writable by {who}")),
                "{msg}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        FileJournal::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_middle_line_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(
            &path,
            "{\"line\":\"released\",\"service\":\"s\",\"token\":1}\nnot json\n{}\n",
        )
        .unwrap();
        let err = FileJournal::open(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[tokio::test]
    async fn two_file_journals_on_one_file_see_each_others_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let a = FileJournal::open(&path).unwrap();
        let b = FileJournal::open(&path).unwrap();
        a.acquire("order-api", "deployer-a", TTL, Timestamp(1_000))
            .await
            .unwrap();
        let err = b
            .acquire("order-api", "deployer-b", TTL, Timestamp(2_000))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LeaseHeld);
        assert!(err.to_string().contains("deployer-a"), "{err}");
        assert!(err.to_string().contains("1970-01-01T00:00:01"), "{err}");
    }

    /// A step whose input is a metric answer with NaN and infinite samples.
    fn odd_samples(i: u64) -> Record {
        use crate::machine::Reply;
        use crate::provider::{MetricAnswer, Sample};
        let samples = vec![
            Sample {
                at: Timestamp(i),
                value: f64::NAN,
            },
            Sample {
                at: Timestamp(i + 1),
                value: f64::INFINITY,
            },
            Sample {
                at: Timestamp(i + 2),
                value: f64::NEG_INFINITY,
            },
            Sample {
                at: Timestamp(i + 3),
                value: 0.25,
            },
        ];
        Record::Step {
            input: Input::Reply {
                id: i,
                reply: Reply::Metric {
                    answer: MetricAnswer::Samples { samples },
                    note: None,
                },
            },
            commands: vec![],
            events: vec![],
            notifications: vec![],
        }
    }

    fn values(r: &Record) -> Vec<f64> {
        use crate::machine::Reply;
        use crate::provider::MetricAnswer;
        match r {
            Record::Step {
                input:
                    Input::Reply {
                        reply:
                            Reply::Metric {
                                answer: MetricAnswer::Samples { samples },
                                ..
                            },
                        ..
                    },
                ..
            } => samples.iter().map(|s| s.value).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn records_past_a_sealed_block_read_back_in_order_with_nan_and_infinities() {
        let j = MemoryJournal::compacting();
        let lease = j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
        let n = BLOCK as u64 * 2 + 5;
        for i in 0..n {
            j.append(&lease, "d1", Timestamp(i), &odd_samples(i))
                .await
                .unwrap();
            j.append(&lease, "d2", Timestamp(i), &tick()).await.unwrap();
        }
        {
            let l = j.ledger();
            assert_eq!(l.streams["d1"].sealed.len(), 2, "two blocks sealed");
            assert_eq!(l.streams["d1"].tail.len(), 5);
        }
        let read = j.read("d1").await.unwrap();
        assert_eq!(read.len() as u64, n);
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.at, Timestamp(i as u64));
            let v = values(&e.record);
            assert!(v[0].is_nan());
            assert_eq!(&v[1..], &[f64::INFINITY, f64::NEG_INFINITY, 0.25]);
        }
        let list = j.deployments(None).await.unwrap();
        let ids: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(list[0].records, n);
        assert_eq!(list[0].last_at, Timestamp(n - 1));
        let seq = j.append(&lease, "d1", Timestamp(n), &tick()).await.unwrap();
        assert_eq!(seq, n + 1);
    }

    /// A record handed over (`append_owned`, as the driver appends) reads
    /// back exactly as one lent (`append`), from the tail and from sealed
    /// blocks, in the memory journals and in the file journal (which takes
    /// the trait's default).
    #[tokio::test]
    async fn a_record_handed_over_reads_back_as_one_lent() {
        let dir = tempfile::tempdir().unwrap();
        let journals: Vec<Box<dyn Journal>> = vec![
            Box::new(MemoryJournal::new()),
            Box::new(MemoryJournal::compacting()),
            Box::new(FileJournal::open(dir.path().join("j.jsonl")).unwrap()),
        ];
        for j in journals {
            let lease = j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
            let n = BLOCK as u64 + 3;
            for i in 0..n {
                let record = odd_samples(i);
                let lent = j.append(&lease, "lent", Timestamp(i), &record).await;
                assert_eq!(lent.unwrap(), i + 1);
                let owned = j.append_owned(&lease, "owned", Timestamp(i), record).await;
                assert_eq!(owned.unwrap(), i + 1);
            }
            let lent = j.read("lent").await.unwrap();
            let owned = j.read("owned").await.unwrap();
            assert_eq!(owned.len() as u64, n);
            for (a, b) in lent.iter().zip(&owned) {
                assert_eq!((a.seq, a.at, a.token), (b.seq, b.at, b.token));
                assert_eq!(
                    (b.deployment_id.as_str(), b.service.as_str()),
                    ("owned", "svc")
                );
                // NaN samples: compared as JSON, as the file stores them.
                assert_eq!(
                    serde_json::to_string(&a.record).unwrap(),
                    serde_json::to_string(&b.record).unwrap()
                );
            }
            let list = j.deployments(Some("svc".into())).await.unwrap();
            assert_eq!(list.iter().map(|d| d.records).collect::<Vec<_>>(), [n, n]);
        }
    }

    #[tokio::test]
    async fn a_file_journal_reopens_nan_and_infinite_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let j = FileJournal::open(&path).unwrap();
            let lease = j.acquire("svc", "a", TTL, Timestamp(0)).await.unwrap();
            j.append(&lease, "d1", Timestamp(1), &odd_samples(7))
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""value":"NaN""#), "{text}");
        let again = FileJournal::open(&path).unwrap();
        let read = again.read("d1").await.unwrap();
        let v = values(&read[0].record);
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[f64::INFINITY, f64::NEG_INFINITY, 0.25]);
    }
}
