//! [`PostgresMigrations`]: the [`MigrationRunner`] on PostgreSQL.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::{
    BackupRecord, BackupVerification, ErrorKind, MigrationContext, MigrationInfo, MigrationPhase,
    MigrationRunner, MigrationStatus, Result, RetryPolicy, VerificationCheck,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::database::Database;
use crate::error::{describe_db_error, err, is_lock_not_available, map_pg, redact};
use crate::ledger::{ensure_schema, read_ledger, LedgerEntry, LedgerState};
use crate::session::{MigrationSettings, Session};
use crate::source::{
    line_col, split_statements, Migration, MigrationFile, MigrationSource, Statement,
};
use crate::watch::{
    elapsed_ms, index_oids, invalid_indexes, mentions, snippet, InvalidIndex, WaitSample, Watch,
};

/// How a statement's attempts went, for its error.
struct Tries<'a> {
    attempts: u32,
    started: Instant,
    lock_timeout: Duration,
    seen: Option<&'a WaitSample>,
    unavailable: Option<&'a str>,
}

/// The advisory lock key that serialises runners on one database ("bgmigrat").
pub const MIGRATION_LOCK_KEY: i64 = 0x6267_6d69_6772_6174;

/// What a verification query must return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// At least one row (e.g. the information_schema row of a new column).
    Rows,
    /// No row (e.g. after a column was dropped).
    NoRows,
    /// The first column of the first row, as text, equals this.
    Value(String),
}

/// A query the user supplies to verify a phase, such as the reference's
/// `SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'order_metadata'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationQuery {
    /// What it checks, e.g. `column orders.order_metadata exists`.
    pub name: String,
    /// The phase after which it runs.
    pub phase: MigrationPhase,
    /// The SQL (read-only; run in a read-only transaction).
    pub sql: String,
    /// What it must return.
    pub expect: Expectation,
}

/// A migration that would run, as [`PostgresMigrations::dry_run`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMigration {
    /// The version.
    pub version: u64,
    /// The name.
    pub name: String,
    /// The phase it runs in.
    pub phase: MigrationPhase,
    /// The up file.
    pub file_name: String,
    /// Whether it runs statement by statement outside a transaction.
    pub no_transaction: bool,
    /// How many statements the file holds.
    pub statements: usize,
    /// Whether it has a down file.
    pub reversible: bool,
}

impl fmt::Display for PlannedMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} [{}] {}, {} statement{}{}{}",
            self.version,
            self.name,
            self.phase,
            self.file_name,
            self.statements,
            if self.statements == 1 { "" } else { "s" },
            if self.no_transaction {
                ", no transaction"
            } else {
                ""
            },
            if self.reversible {
                ""
            } else {
                ", irreversible"
            },
        )
    }
}

/// How a human resolved a dirty migration (see [`PostgresMigrations::resolve_dirty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The migration's effect is fully in place: record it as applied.
    Applied,
    /// The migration's effect was undone by hand: record it as not applied.
    NotApplied,
}

/// The [`MigrationRunner`] on PostgreSQL.
///
/// * Each migration runs in its own transaction, with `lock_timeout` and
///   `statement_timeout` set; a `no-transaction` file runs statement by
///   statement (for `CREATE INDEX CONCURRENTLY`), its progress recorded after
///   each one, so an interruption leaves a *dirty* row that blocks every
///   later run until [`resolve_dirty`](Self::resolve_dirty).
/// * `lock_not_available` (55P03) is retried many times with a short
///   `lock_timeout` and growing, jittered waits (see [`MigrationSettings`]).
///   A failed statement's error names the statement and its line, the lock
///   it waited for and its relation, the blocking sessions
///   (`pg_blocking_pids`: pid, `application_name`, state, when their query
///   started), the attempts and the time spent.
/// * An INVALID index a failed `CREATE INDEX CONCURRENTLY` left is dropped
///   (`DROP INDEX CONCURRENTLY`) before the statement is tried again; the
///   ledger never records a migration applied while an index it created or
///   names is INVALID.
/// * One runner at a time per database: a session advisory lock, polled
///   with `pg_try_advisory_lock` (never a blocking wait, which could deadlock
///   with `CREATE INDEX CONCURRENTLY`), for at most
///   [`MigrationSettings::lock_wait`]; then an [`ErrorKind::LeaseHeld`] error
///   naming the holder's pid and `application_name`.
/// * The ledger keeps the SHA-256 of each applied up and down file, the
///   deployment and backup each ran under. Drift is refused before anything
///   runs, naming the version and the full checksums: a changed, renamed or
///   deleted applied file (up or down), and a pending version below the
///   highest applied one of its phase (unless
///   [`MigrationSettings::allow_out_of_order`]).
/// * A dirty migration's report says what the catalog shows of the
///   statement after the last one recorded (the killed runner's session may
///   have finished it): an index that exists and is valid, a table, column
///   or constraint in place, or that the catalog cannot tell.
pub struct PostgresMigrations {
    db: Database,
    source: MigrationSource,
    settings: MigrationSettings,
    checks: Vec<VerificationQuery>,
    invariants: Vec<(MigrationPhase, String)>,
}

impl fmt::Debug for PostgresMigrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresMigrations")
            .field("db", &self.db)
            .field("migrations", &self.source.migrations().len())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PostgresMigrations {
    /// A runner for `source` on `db`, with default settings. Touches nothing
    /// until called.
    pub fn new(db: Database, source: MigrationSource) -> Self {
        PostgresMigrations {
            db,
            source,
            settings: MigrationSettings::default(),
            checks: Vec::new(),
            invariants: Vec::new(),
        }
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: MigrationSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Adds a verification query.
    pub fn with_check(mut self, check: VerificationQuery) -> Self {
        self.checks.push(check);
        self
    }

    /// Requires `table` to keep its row count across the migrations of
    /// `phase`: counted when `apply(phase)` starts (first count per
    /// deployment wins, so a repeat after a crash keeps it) and compared by
    /// `verify(phase)`.
    pub fn with_row_count_invariant(mut self, phase: MigrationPhase, table: &str) -> Self {
        self.invariants.push((phase, table.to_string()));
        self
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The migrations.
    pub fn source(&self) -> &MigrationSource {
        &self.source
    }

    /// The settings.
    pub fn settings(&self) -> &MigrationSettings {
        &self.settings
    }

    pub(crate) fn secret(&self) -> Option<String> {
        self.db.password()
    }

    /// The database and settings that backups share with this runner.
    pub(crate) fn session(&self) -> Session<'_> {
        Session {
            db: &self.db,
            settings: &self.settings,
        }
    }

    /// Connects as [`Session::connect`] does.
    pub(crate) async fn connect(
        &self,
        op: &'static str,
        ctx: Option<&MigrationContext>,
    ) -> Result<Client> {
        self.session().connect(op, ctx).await
    }

    /// The ledger, oldest version first (empty before the first run). Reports
    /// dirty and interrupted attempts through [`LedgerEntry::is_dirty`] and
    /// [`LedgerEntry::was_interrupted`].
    pub async fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        let client = self.connect("ledger", None).await?;
        read_ledger(&client, self.db.label()).await
    }

    /// Lists what `apply` would run, in order (expand, then contract), with
    /// the phase of each. Read-only; fails like [`status`](MigrationRunner::status)
    /// on a dirty migration or a changed file.
    pub async fn dry_run(&self) -> Result<Vec<PlannedMigration>> {
        let client = self.connect("dry run", None).await?;
        let ledger = read_ledger(&client, self.db.label()).await?;
        self.check_integrity(&client, &ledger, "dry run").await?;
        let mut out = Vec::new();
        for phase in [MigrationPhase::Expand, MigrationPhase::Contract] {
            for m in self.pending(&ledger, phase) {
                out.push(PlannedMigration {
                    version: m.version,
                    name: m.name.clone(),
                    phase: m.phase,
                    file_name: m.up.file_name.clone(),
                    no_transaction: m.up.no_transaction,
                    statements: split_statements(&m.up.sql).len(),
                    reversible: m.down.is_some(),
                });
            }
        }
        Ok(out)
    }

    /// Records how a human resolved the dirty migration `version` after
    /// repairing the database by hand. Fails with [`ErrorKind::NotFound`] if
    /// `version` is not dirty.
    pub async fn resolve_dirty(&self, version: u64, resolution: Resolution) -> Result<()> {
        let op = "resolve dirty migration";
        let mut client = self.connect(op, None).await?;
        ensure_schema(&mut client, self.db.label()).await?;
        self.lock(&client, op).await?;
        let ledger = read_ledger(&client, self.db.label()).await?;
        let Some(entry) = ledger.iter().find(|e| e.version == version && e.is_dirty()) else {
            self.unlock(&client).await;
            return Err(err(
                ErrorKind::NotFound,
                op,
                format!("migration {version} is not dirty in {}", self.db.label()),
            ));
        };
        let state = match (resolution, entry.state) {
            (Resolution::Applied, _) => LedgerState::Applied,
            (Resolution::NotApplied, LedgerState::Reverting) => LedgerState::Reverted,
            (Resolution::NotApplied, _) => LedgerState::Failed,
        };
        let note = format!(
            "resolved by hand as {} (was {} after {} of {} statements)",
            match resolution {
                Resolution::Applied => "applied",
                Resolution::NotApplied => "not applied",
            },
            entry.state,
            entry.statements_done,
            entry.statements_total
        );
        let r = client
            .execute(
                "UPDATE bluegreen_migrations SET state = $2, no_transaction = false, last_error = $3, finished_at = now() WHERE version = $1",
                &[&(version as i64), &state.as_str(), &note],
            )
            .await
            .map_err(|e| map_pg(e, op, &format!("cannot update the ledger of {}", self.db.label())));
        self.unlock(&client).await;
        r.map(|_| ())
    }

    /// Refuses a ledger the files no longer match: a dirty migration (with
    /// what the catalog says of the statement after the last one recorded),
    /// an applied migration whose up or down file was changed, renamed or
    /// deleted, and a pending migration below the highest applied version
    /// of its phase (unless [`MigrationSettings::allow_out_of_order`]).
    /// Every refusal names the version and the full checksums.
    async fn check_integrity(
        &self,
        client: &Client,
        ledger: &[LedgerEntry],
        op: &'static str,
    ) -> Result<()> {
        let label = self.db.label();
        let conflict = |message: String| {
            err(
                ErrorKind::Conflict,
                op,
                redact(&message, self.secret().as_deref()),
            )
        };
        for e in ledger {
            if e.is_dirty() {
                let action = if e.state == LedgerState::Reverting {
                    "revert"
                } else {
                    "apply"
                };
                let file = if e.state == LedgerState::Reverting {
                    self.source
                        .get(e.version)
                        .and_then(|m| m.down.as_ref())
                        .map(|d| d.file_name.clone())
                        .unwrap_or_else(|| format!("the down file of {}", e.file_name))
                } else {
                    e.file_name.clone()
                };
                let next = self.what_came_next(client, e).await;
                return Err(conflict(format!(
                    "migration {} ({file}) is dirty in {label}: a no-transaction {action} under deployment {} stopped after {} of {} statements{}; {next}; the schema may be half-migrated. Repair it by hand, then record the outcome with resolve_dirty({}, Applied|NotApplied)",
                    e.version,
                    e.deployment_id.as_deref().unwrap_or("(unknown)"),
                    e.statements_done,
                    e.statements_total,
                    e.last_error
                        .as_deref()
                        .map(|m| format!(" (last error: {m})"))
                        .unwrap_or_else(|| " (the session was cut off)".to_string()),
                    e.version,
                )));
            }
            if !e.is_applied() {
                continue;
            }
            let Some(m) = self.source.get(e.version) else {
                let moved = self
                    .source
                    .migrations()
                    .iter()
                    .find(|m| m.up.checksum == e.checksum);
                return Err(conflict(match moved {
                    Some(m) => format!(
                        "applied migration {} ({}, checksum {}) was renamed to {} (version {}, checksum {}) after it was applied to {label}; restore its name and version",
                        e.version, e.file_name, e.checksum, m.up.file_name, m.version, m.up.checksum,
                    ),
                    None => format!(
                        "applied migration {} ({}, checksum {}) has no file any more: it was deleted or renamed after it was applied to {label} (no file has version {} or that checksum); restore the file",
                        e.version, e.file_name, e.checksum, e.version,
                    ),
                }));
            };
            if m.up.checksum != e.checksum {
                return Err(conflict(format!(
                    "applied migration file {} (version {}) was changed after it was applied to {label} (ledger checksum {}, file checksum {}); restore the file, or add a new migration instead",
                    m.up.file_name, e.version, e.checksum, m.up.checksum,
                )));
            }
            if m.up.file_name != e.file_name {
                return Err(conflict(format!(
                    "applied migration {} was renamed from {} to {} after it was applied to {label} (ledger checksum {}, file checksum {}); restore its name",
                    e.version, e.file_name, m.up.file_name, e.checksum, m.up.checksum,
                )));
            }
            match (&e.down_checksum, &m.down) {
                (Some(recorded), Some(down)) if *recorded != down.checksum => {
                    return Err(conflict(format!(
                        "the down file {} of applied migration {} was changed after the migration was applied to {label} (ledger checksum {recorded}, file checksum {}); a revert would run SQL nobody applied the migration with: restore the file",
                        down.file_name, e.version, down.checksum,
                    )));
                }
                (Some(recorded), None) => {
                    return Err(conflict(format!(
                        "the down file of applied migration {} ({}) was deleted or renamed after the migration was applied to {label} (ledger checksum {recorded}, no down file now); restore it",
                        e.version, e.file_name,
                    )));
                }
                _ => {}
            }
        }
        for phase in [MigrationPhase::Expand, MigrationPhase::Contract] {
            let Some(top) = ledger
                .iter()
                .filter(|e| e.is_applied() && e.phase == phase)
                .max_by_key(|e| e.version)
            else {
                continue;
            };
            for m in self.pending(ledger, phase) {
                if m.version >= top.version {
                    continue;
                }
                let message = format!(
                    "pending {phase} migration {} ({}, checksum {}) is lower than the highest applied {phase} migration {} ({}, checksum {}) in {label}",
                    m.version, m.up.file_name, m.up.checksum, top.version, top.file_name, top.checksum,
                );
                if self.settings.allow_out_of_order {
                    tracing::warn!(
                        version = m.version,
                        highest = top.version,
                        "{message}; running it out of order (allow_out_of_order)"
                    );
                } else {
                    return Err(conflict(format!(
                        "{message}: it was written against a schema without the later one; give it a version above {}, or set allow_out_of_order",
                        top.version,
                    )));
                }
            }
        }
        Ok(())
    }

    /// What the catalog says of the statement after the last one a dirty
    /// migration recorded: the abandoned session may have finished it.
    async fn what_came_next(&self, client: &Client, e: &LedgerEntry) -> String {
        let reverting = e.state == LedgerState::Reverting;
        let m = self.source.get(e.version);
        let file = match (m, reverting) {
            (Some(m), false) if m.up.checksum == e.checksum => &m.up,
            (Some(m), true) => match (&m.down, &e.down_checksum) {
                (Some(d), Some(c)) if d.checksum == *c => d,
                (Some(d), None) => d,
                _ => {
                    return "whether the next statement completed cannot be told: its down file changed or is missing".to_string()
                }
            },
            _ => {
                return "whether the next statement completed cannot be told: its file changed or is missing".to_string()
            }
        };
        let statements = split_statements(&file.sql);
        let (done, total) = (e.statements_done as usize, e.statements_total as usize);
        if statements.len() != total {
            return format!(
                "whether the next statement completed cannot be told: {} holds {} statements now",
                file.file_name,
                statements.len()
            );
        }
        let Some(st) = statements.get(done) else {
            return format!(
                "all {total} statements completed; the runner stopped before recording the {}",
                if reverting {
                    "revert"
                } else {
                    "migration applied"
                }
            );
        };
        let (line, _) = line_col(&file.sql, st.offset);
        let which = format!(
            "statement {} of {total} (line {line}, `{}`)",
            done + 1,
            snippet(&st.text)
        );
        let Some(effect) = crate::probe::effect_of(&st.text) else {
            return format!(
                "whether {which} completed cannot be read from the catalog: check it by hand"
            );
        };
        match crate::probe::look(client, &effect).await {
            Ok((Some(true), seen)) => format!("{which} appears to have completed: {seen}"),
            Ok((_, seen)) => format!("{which} did not complete: {seen}"),
            Err(err) => {
                format!("whether {which} completed could not be read from the catalog ({err})")
            }
        }
    }

    fn pending<'a>(&'a self, ledger: &[LedgerEntry], phase: MigrationPhase) -> Vec<&'a Migration> {
        self.source
            .migrations()
            .iter()
            .filter(|m| m.phase == phase)
            .filter(|m| {
                !ledger
                    .iter()
                    .any(|e| e.version == m.version && e.is_applied())
            })
            .collect()
    }

    async fn lock(&self, client: &Client, op: &'static str) -> Result<()> {
        let ctx = format!("cannot take the migration lock on {}", self.db.label());
        let start = Instant::now();
        loop {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
                .await
                .map_err(|e| map_pg(e, op, &ctx))?
                .get(0);
            if got {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.settings.lock_wait {
                let holder = self.lock_holder(client).await;
                return Err(err(
                    ErrorKind::LeaseHeld,
                    op,
                    format!(
                        "another migration runner holds the lock on {}: {holder}; gave up after waiting {}",
                        self.db.label(),
                        humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)),
                    ),
                )
                .with_status(bluegreen_core::ErrorStatus::Temporary));
            }
            tokio::time::sleep(
                self.settings
                    .lock_poll
                    .min(self.settings.lock_wait - waited),
            )
            .await;
        }
    }

    async fn lock_holder(&self, client: &Client) -> String {
        let rows = client
            .query(
                "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'),
                        to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), coalesce(a.state, '')
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
                &[&MIGRATION_LOCK_KEY],
            )
            .await;
        match rows {
            Ok(rows) if !rows.is_empty() => rows
                .iter()
                .map(|r| {
                    format!(
                        "pid {} (application_name '{}', client {}, connected since {}, {})",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                        r.get::<_, String>(4),
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            Ok(_) => "a session that released it a moment ago".to_string(),
            Err(e) => format!("a session that could not be identified ({e})"),
        }
    }

    async fn unlock(&self, client: &Client) {
        if let Err(e) = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await
        {
            tracing::warn!(db = %self.db.label(), error = %e, "could not release the migration lock; it ends with the session");
        }
    }

    /// The wait before retry `retry` (0-based) after `lock_not_available`:
    /// `retry_backoff` doubled per retry up to `retry_backoff_max`, then
    /// jittered to between half and all of it, so runners and the sessions
    /// they queue behind do not fall into step: the backoff of core's
    /// [`RetryPolicy`], the same formula the driver's retries use.
    fn backoff(&self, retry: u32) -> Duration {
        RetryPolicy {
            max_attempts: self.settings.lock_retries.saturating_add(1),
            initial_backoff: self.settings.retry_backoff,
            max_backoff: self.settings.retry_backoff_max,
            jitter: true,
        }
        .backoff(retry)
    }

    fn lock_timeout_of(&self, file: &MigrationFile) -> Duration {
        file.lock_timeout.unwrap_or(self.settings.lock_timeout)
    }

    fn timeouts_sql(&self, file: &MigrationFile, local: bool) -> String {
        let lock = self.lock_timeout_of(file);
        let stmt = file
            .statement_timeout
            .unwrap_or(self.settings.statement_timeout);
        let scope = if local { "SET LOCAL" } else { "SET" };
        format!(
            "{scope} lock_timeout = '{}ms'; {scope} statement_timeout = '{}ms'",
            lock.as_millis(),
            stmt.as_millis()
        )
    }

    /// The error for statement `st` of `file` that the server refused (or
    /// whose connection failed): the file, the statement and its real line
    /// (and column, when the server gave a position), the server's message,
    /// what the statement waited for and who blocked it, and the attempts
    /// and time spent. Never contains the password.
    fn statement_error(
        &self,
        op: &'static str,
        file: &MigrationFile,
        st: &Statement,
        e: tokio_postgres::Error,
        tries: &Tries<'_>,
        extra: &str,
    ) -> bluegreen_core::Error {
        let (line, _) = line_col(&file.sql, st.offset);
        let at = match e.as_db_error().and_then(|db| db.position()) {
            Some(ErrorPosition::Original(p)) => {
                let (line, col) = line_col(&file.sql, st.offset + (*p as usize).saturating_sub(1));
                format!("line {line}, column {col}")
            }
            _ => format!("line {line}"),
        };
        let timed_out = matches!(e.code().map(|c| c.code()), Some("55P03") | Some("57014"));
        let base = map_pg(e, op, "");
        let cause = base
            .message()
            .trim_start_matches(':')
            .trim_start()
            .to_string();
        let mut msg = format!(
            "migration file {} failed at {at} (statement `{}`): {cause}",
            file.file_name,
            snippet(&st.text),
        );
        match (tries.seen, tries.unavailable) {
            (Some(s), _) => msg.push_str(&format!("; {}", s.describe())),
            (None, Some(why)) if timed_out => msg.push_str(&format!(
                "; the blocking sessions could not be listed: {why}"
            )),
            (None, _) if timed_out => msg.push_str("; no lock wait was seen while it ran"),
            _ => {}
        }
        msg.push_str(&format!(
            "; {} attempt{} in {} (lock_timeout {} each)",
            tries.attempts,
            if tries.attempts == 1 { "" } else { "s" },
            elapsed_ms(tries.started),
            humantime::format_duration(tries.lock_timeout),
        ));
        msg.push_str(extra);
        err(base.kind(), op, redact(&msg, self.secret().as_deref())).with_status(base.status())
    }

    async fn record_row_counts(
        &self,
        client: &Client,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<()> {
        for (p, table) in &self.invariants {
            if *p != phase {
                continue;
            }
            let count = self.count_rows(client, table, "apply").await?;
            client
                .execute(
                    "INSERT INTO bluegreen_row_counts (deployment_id, phase, table_name, row_count) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&ctx.deployment_id, &phase.to_string(), table, &count],
                )
                .await
                .map_err(|e| map_pg(e, "apply", &format!("cannot record the row count of {table}")))?;
        }
        Ok(())
    }

    async fn count_rows(&self, client: &Client, table: &str, op: &'static str) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}", quote_qualified(table));
        client
            .query_one(&sql, &[])
            .await
            .map(|r| r.get(0))
            .map_err(|e| {
                map_pg(
                    e,
                    op,
                    &format!(
                        "cannot count the rows of row-count invariant table {table} in {}",
                        self.db.label()
                    ),
                )
            })
    }

    async fn mark(
        &self,
        client: &Client,
        m: &Migration,
        ctx: &MigrationContext,
        state: LedgerState,
        no_tx: bool,
        total: usize,
    ) -> Result<()> {
        client
            .execute(
                "INSERT INTO bluegreen_migrations
                   (version, name, file_name, checksum, phase, reversible, state, no_transaction,
                    statements_done, statements_total, attempts, deployment_id, backup_id, started_at,
                    down_checksum)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, 1, $10, $11, now(), $12)
                 ON CONFLICT (version) DO UPDATE SET
                   name = EXCLUDED.name, file_name = EXCLUDED.file_name, checksum = EXCLUDED.checksum,
                   down_checksum = EXCLUDED.down_checksum,
                   phase = EXCLUDED.phase, reversible = EXCLUDED.reversible, state = EXCLUDED.state,
                   no_transaction = EXCLUDED.no_transaction, statements_done = 0,
                   statements_total = EXCLUDED.statements_total,
                   attempts = bluegreen_migrations.attempts + (CASE WHEN EXCLUDED.state = 'applying' THEN 1 ELSE 0 END),
                   deployment_id = CASE WHEN EXCLUDED.state = 'applying' THEN EXCLUDED.deployment_id ELSE bluegreen_migrations.deployment_id END,
                   backup_id = CASE WHEN EXCLUDED.state = 'applying' THEN EXCLUDED.backup_id ELSE bluegreen_migrations.backup_id END,
                   reverted_by = CASE WHEN EXCLUDED.state = 'reverting' THEN EXCLUDED.deployment_id ELSE NULL END,
                   started_at = now(), finished_at = NULL, last_error = NULL",
                &[
                    &(m.version as i64),
                    &m.name,
                    &m.up.file_name,
                    &m.up.checksum,
                    &m.phase.to_string(),
                    &m.down.is_some(),
                    &state.as_str(),
                    &no_tx,
                    &(total as i32),
                    &ctx.deployment_id,
                    &ctx.backup_id,
                    &m.down.as_ref().map(|d| d.checksum.clone()),
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| map_pg(e, "ledger", &format!("cannot record migration {} in the ledger of {}", m.version, self.db.label())))
    }

    async fn note_failure(&self, client: &Client, version: u64, state: LedgerState, message: &str) {
        let r = client
            .execute(
                "UPDATE bluegreen_migrations SET state = $2, last_error = $3, finished_at = now() WHERE version = $1",
                &[&(version as i64), &state.as_str(), &message],
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(version, error = %e, "could not record a failed migration in the ledger");
        }
    }

    /// Runs `file` of `m` as one step (`up` or `down`), in a transaction or
    /// statement by statement, retrying on `lock_not_available` with a
    /// jittered, growing backoff. A second session watches what a slow
    /// statement waits for, so errors can name the blockers. In a
    /// no-transaction file, an INVALID index a failed statement left (a
    /// `CREATE INDEX CONCURRENTLY` that timed out, say) is dropped with
    /// `DROP INDEX CONCURRENTLY` before the statement runs again, and a
    /// statement that succeeds while an index it created or names is INVALID
    /// fails.
    async fn run_file(
        &self,
        client: &mut Client,
        m: &Migration,
        file: &MigrationFile,
        up: bool,
        ctx: &MigrationContext,
    ) -> Result<()> {
        let op: &'static str = if up { "apply" } else { "revert" };
        let (running, done, failed) = if up {
            (
                LedgerState::Applying,
                LedgerState::Applied,
                LedgerState::Failed,
            )
        } else {
            (
                LedgerState::Reverting,
                LedgerState::Reverted,
                LedgerState::Applied,
            )
        };
        let started = Instant::now();
        let finish_sql = "UPDATE bluegreen_migrations SET state = $2, finished_at = now(), duration_ms = $3,
                            statements_done = statements_total, last_error = NULL WHERE version = $1";
        let statements = split_statements(&file.sql);
        let lock_timeout = self.lock_timeout_of(file);
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| map_pg(e, op, "cannot read the migration session's pid"))?
            .get(0);
        let mut watch = Watch::new(&self.db, ctx, pid, lock_timeout);
        if !file.no_transaction {
            let mut attempts = 0u32;
            loop {
                self.mark(client, m, ctx, running, false, statements.len())
                    .await?;
                let tx = client.transaction().await.map_err(|e| {
                    map_pg(
                        e,
                        op,
                        &format!("cannot begin the transaction of {}", file.file_name),
                    )
                })?;
                tx.batch_execute(&self.timeouts_sql(file, true))
                    .await
                    .map_err(|e| map_pg(e, op, "cannot set the migration timeouts"))?;
                attempts += 1;
                let mut failure = None;
                for (i, st) in statements.iter().enumerate() {
                    watch.statement(i);
                    if let Err(e) = watch.run(tx.batch_execute(&st.text)).await {
                        failure = Some((st, e));
                        break;
                    }
                }
                let Some((st, e)) = failure else {
                    let ms = started.elapsed().as_millis() as i64;
                    tx.execute(finish_sql, &[&(m.version as i64), &done.as_str(), &ms])
                        .await
                        .map_err(|e| map_pg(e, op, "cannot record the migration in the ledger"))?;
                    return tx.commit().await.map_err(|e| {
                        map_pg(
                            e,
                            op,
                            &format!("cannot commit migration file {}", file.file_name),
                        )
                    });
                };
                drop(tx);
                let closed = e.is_closed();
                if !closed && is_lock_not_available(&e) && attempts <= self.settings.lock_retries {
                    watch.prepare();
                    let wait = self.backoff(attempts - 1);
                    tracing::info!(file = %file.file_name, attempts, ?wait, "lock_not_available; retrying the migration");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let tries = Tries {
                    attempts,
                    started,
                    lock_timeout,
                    seen: watch.seen.as_ref(),
                    unavailable: watch.unavailable(),
                };
                let error = self.statement_error(op, file, st, e, &tries, "");
                if !closed {
                    let state = if up { failed } else { LedgerState::Applied };
                    self.note_failure(client, m.version, state, error.message())
                        .await;
                }
                return Err(error);
            }
        }

        self.mark(client, m, ctx, running, true, statements.len())
            .await?;
        client
            .batch_execute(&self.timeouts_sql(file, false))
            .await
            .map_err(|e| map_pg(e, op, "cannot set the migration timeouts"))?;
        for (i, st) in statements.iter().enumerate() {
            watch.statement(i);
            let before = index_oids(client)
                .await
                .map_err(|e| map_pg(e, op, "cannot list the indexes before a statement"))?;
            let st_started = Instant::now();
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                // What an earlier attempt left: drop it first.
                let mut result = Ok(());
                let mut in_drop = false;
                if attempts > 1 {
                    result = self.drop_new_invalid(client, &before, &mut watch).await;
                    in_drop = result.is_err();
                }
                if result.is_ok() {
                    result = watch.run(client.batch_execute(&st.text)).await;
                }
                let e = match result {
                    Ok(()) => {
                        let Some(problem) =
                            self.invalid_after(client, &before, st, &mut watch).await
                        else {
                            break;
                        };
                        let (line, _) = line_col(&file.sql, st.offset);
                        let error = err(
                            ErrorKind::Conflict,
                            op,
                            redact(
                                &format!(
                                    "migration file {} on {}: the statement at line {line} (`{}`) succeeded, but {problem}",
                                    file.file_name,
                                    self.db.label(),
                                    snippet(&st.text),
                                ),
                                self.secret().as_deref(),
                            ),
                        );
                        self.note_failure(client, m.version, running, error.message())
                            .await;
                        let _ = client
                            .batch_execute("RESET lock_timeout; RESET statement_timeout")
                            .await;
                        return Err(error);
                    }
                    Err(e) => e,
                };
                let closed = e.is_closed();
                if !closed && is_lock_not_available(&e) && attempts <= self.settings.lock_retries {
                    watch.prepare();
                    let wait = self.backoff(attempts - 1);
                    tracing::info!(file = %file.file_name, statement = i + 1, attempts, ?wait, "lock_not_available; retrying the statement");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let mut extra = String::new();
                if in_drop {
                    extra.push_str(
                        "; the last attempt failed while dropping the INVALID index the attempt before it left",
                    );
                }
                if !closed {
                    extra.push_str(&self.clean_up_after(client, &before, &mut watch).await);
                }
                let tries = Tries {
                    attempts,
                    started: st_started,
                    lock_timeout,
                    seen: watch.seen.as_ref(),
                    unavailable: watch.unavailable(),
                };
                let error = self.statement_error(op, file, st, e, &tries, &extra);
                if !closed {
                    self.note_failure(client, m.version, running, error.message())
                        .await;
                    let _ = client
                        .batch_execute("RESET lock_timeout; RESET statement_timeout")
                        .await;
                }
                return Err(error);
            }
            client
                .execute(
                    "UPDATE bluegreen_migrations SET statements_done = $2 WHERE version = $1",
                    &[&(m.version as i64), &((i + 1) as i32)],
                )
                .await
                .map_err(|e| map_pg(e, op, "cannot record migration progress in the ledger"))?;
        }
        let ms = started.elapsed().as_millis() as i64;
        client
            .execute(finish_sql, &[&(m.version as i64), &done.as_str(), &ms])
            .await
            .map_err(|e| map_pg(e, op, "cannot record the migration in the ledger"))?;
        client
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await
            .map_err(|e| map_pg(e, op, "cannot reset the session timeouts"))?;
        Ok(())
    }

    /// Drops, with `DROP INDEX CONCURRENTLY`, every INVALID index that is not
    /// in `before` (the indexes that existed before the statement first ran):
    /// what a failed `CREATE INDEX CONCURRENTLY` (or `REINDEX CONCURRENTLY`)
    /// of this statement left. Runs under the session's `lock_timeout`.
    async fn drop_new_invalid(
        &self,
        client: &Client,
        before: &[u32],
        watch: &mut Watch<'_>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        for ix in invalid_indexes(client).await? {
            if before.contains(&ix.oid) {
                continue;
            }
            tracing::info!(index = %ix.qualified, table = %ix.table, "dropping the INVALID index a failed attempt left");
            watch
                .run(client.batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    ix.qualified
                )))
                .await?;
        }
        Ok(())
    }

    /// After a statement failed for good: drops what it left (see
    /// [`drop_new_invalid`](Self::drop_new_invalid)) and says what happened,
    /// as text to append to the error.
    async fn clean_up_after(
        &self,
        client: &Client,
        before: &[u32],
        watch: &mut Watch<'_>,
    ) -> String {
        let left: Vec<InvalidIndex> = match invalid_indexes(client).await {
            Ok(all) => all
                .into_iter()
                .filter(|ix| !before.contains(&ix.oid))
                .collect(),
            Err(e) => {
                return format!("; the INVALID indexes it may have left could not be listed ({e})")
            }
        };
        let mut notes = Vec::new();
        for ix in left {
            let drop = watch
                .run(client.batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}",
                    ix.qualified
                )))
                .await;
            notes.push(match drop {
                Ok(()) => format!("the INVALID {} it left was dropped", ix.describe()),
                Err(e) => format!(
                    "it left the INVALID {}, which could not be dropped ({}): drop it with DROP INDEX CONCURRENTLY {} before running the migration again",
                    ix.describe(),
                    e.as_db_error().map(describe_db_error).unwrap_or_else(|| e.to_string()),
                    ix.qualified,
                ),
            });
        }
        notes.iter().map(|n| format!("; {n}")).collect()
    }

    /// After a statement succeeded: an INVALID index it created (dropped
    /// here), or an INVALID index it names that it left alone (`CREATE INDEX
    /// CONCURRENTLY IF NOT EXISTS` skips one an earlier failed build left),
    /// described; `None` when there is none.
    async fn invalid_after(
        &self,
        client: &Client,
        before: &[u32],
        st: &Statement,
        watch: &mut Watch<'_>,
    ) -> Option<String> {
        let all = match invalid_indexes(client).await {
            Ok(all) => all,
            Err(e) => {
                return Some(format!(
                    "the check for INVALID indexes it may have left failed ({e})"
                ))
            }
        };
        let mut problems = Vec::new();
        for ix in all {
            if !before.contains(&ix.oid) {
                let dropped = watch
                    .run(client.batch_execute(&format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}",
                        ix.qualified
                    )))
                    .await;
                problems.push(format!(
                    "it created the INVALID {}{}",
                    ix.describe(),
                    match dropped {
                        Ok(()) => ", which was dropped".to_string(),
                        Err(e) => format!(", which could not be dropped ({e}): drop it with DROP INDEX CONCURRENTLY {}", ix.qualified),
                    }
                ));
            } else if mentions(&st.text, &ix.name) {
                problems.push(format!(
                    "the {} it names is INVALID (an earlier failed build left it; IF NOT EXISTS skips it): drop it with DROP INDEX CONCURRENTLY {} and run the migration again",
                    ix.describe(),
                    ix.qualified,
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// A fresh connection holding the migration lock, and the ledger read
    /// and checked under it.
    async fn open_locked(
        &self,
        op: &'static str,
        ctx: &MigrationContext,
    ) -> Result<(Client, Vec<LedgerEntry>)> {
        let mut client = self.connect(op, Some(ctx)).await?;
        ensure_schema(&mut client, self.db.label()).await?;
        self.lock(&client, op).await?;
        let ledger = async {
            let ledger = read_ledger(&client, self.db.label()).await?;
            self.check_integrity(&client, &ledger, op).await?;
            Ok(ledger)
        }
        .await;
        match ledger {
            Ok(l) => Ok((client, l)),
            Err(e) => {
                self.unlock(&client).await;
                Err(e)
            }
        }
    }

    async fn apply_locked(
        &self,
        client: &mut Client,
        ledger: &[LedgerEntry],
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        for e in ledger
            .iter()
            .filter(|e| e.was_interrupted() && !e.is_applied())
        {
            tracing::warn!(
                version = e.version,
                file = %e.file_name,
                deployment = e.deployment_id.as_deref().unwrap_or(""),
                error = e.last_error.as_deref().unwrap_or("the session was cut off"),
                "an earlier attempt was interrupted and rolled back; running it again"
            );
        }
        self.record_row_counts(client, phase, ctx).await?;
        // Migrations of this phase an earlier call of the same deployment
        // applied (before a crash, say) count as applied by this deployment.
        let mut applied: Vec<MigrationInfo> = ledger
            .iter()
            .filter(|e| e.is_applied() && e.deployment_id.as_deref() == Some(&ctx.deployment_id))
            .filter_map(|e| self.source.get(e.version))
            .filter(|m| m.phase == phase)
            .map(|m| m.info())
            .collect();
        for m in self.pending(ledger, phase) {
            self.run_file(client, m, &m.up, true, ctx).await?;
            tracing::info!(version = m.version, file = %m.up.file_name, %phase, "migration applied");
            applied.push(m.info());
        }
        applied.sort_by_key(|m| m.version);
        Ok(applied)
    }

    async fn revert_locked(
        &self,
        client: &mut Client,
        ledger: &[LedgerEntry],
        wanted: &[u64],
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        let op = "revert";
        let todo: Vec<&Migration> = wanted
            .iter()
            .filter_map(|v| self.source.get(*v))
            .filter(|m| {
                ledger
                    .iter()
                    .any(|e| e.version == m.version && e.is_applied())
            })
            .collect();
        let irreversible: Vec<&str> = todo
            .iter()
            .filter(|m| m.down.is_none())
            .map(|m| m.up.file_name.as_str())
            .collect();
        if !irreversible.is_empty() {
            return Err(err(
                ErrorKind::Conflict,
                op,
                format!(
                    "cannot revert: {} {} irreversible (no down file); nothing was reverted",
                    irreversible.join(", "),
                    if irreversible.len() == 1 { "is" } else { "are" }
                ),
            ));
        }
        let mut reverted = Vec::new();
        for m in todo {
            let Some(down) = m.down.as_ref() else {
                continue;
            };
            self.run_file(client, m, down, false, ctx).await?;
            tracing::info!(version = m.version, file = %down.file_name, "migration reverted");
            reverted.push(m.info());
        }
        Ok(reverted)
    }
}

/// Quotes a possibly schema-qualified table name; simple lowercase names stay as written.
fn quote_qualified(table: &str) -> String {
    table
        .split('.')
        .map(|part| {
            let simple = part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if simple {
                part.to_string()
            } else {
                format!("\"{}\"", part.replace('"', "\"\""))
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[async_trait]
impl MigrationRunner for PostgresMigrations {
    async fn status(&self) -> Result<MigrationStatus> {
        let client = self.connect("status", None).await?;
        let ledger = read_ledger(&client, self.db.label()).await?;
        self.check_integrity(&client, &ledger, "status").await?;
        let applied = ledger
            .iter()
            .filter(|e| e.is_applied())
            .map(|e| match self.source.get(e.version) {
                Some(m) => m.info(),
                None => MigrationInfo {
                    version: e.version,
                    name: e.name.clone(),
                    phase: e.phase,
                    reversible: false,
                },
            })
            .collect();
        let pending = self
            .source
            .migrations()
            .iter()
            .filter(|m| {
                !ledger
                    .iter()
                    .any(|e| e.version == m.version && e.is_applied())
            })
            .map(Migration::info)
            .collect();
        Ok(MigrationStatus { applied, pending })
    }

    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        crate::backup::take(&self.session(), ctx).await
    }

    async fn verify_backup(
        &self,
        backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification> {
        crate::backup::verify(&self.session(), backup, min_entries).await
    }

    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        let (mut client, ledger) = self.open_locked("apply", ctx).await?;
        let result = self.apply_locked(&mut client, &ledger, phase, ctx).await;
        if !client.is_closed() {
            self.unlock(&client).await;
        }
        result
    }

    async fn verify(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>> {
        let op = "verify";
        let client = self.connect(op, Some(ctx)).await?;
        let ledger = read_ledger(&client, self.db.label()).await?;
        let mut checks = Vec::new();
        let integrity = self.check_integrity(&client, &ledger, op).await;
        let pending: Vec<String> = self
            .pending(&ledger, phase)
            .iter()
            .map(|m| m.up.file_name.clone())
            .collect();
        checks.push(VerificationCheck {
            name: format!("every {phase} migration is applied"),
            passed: integrity.is_ok() && pending.is_empty(),
            detail: match (&integrity, pending.is_empty()) {
                (Err(e), _) => e.message().to_string(),
                (Ok(()), true) => "none pending".to_string(),
                (Ok(()), false) => format!("pending: {}", pending.join(", ")),
            },
        });
        for q in self.checks.iter().filter(|q| q.phase == phase) {
            checks.push(self.run_check(&client, q).await?);
        }
        for (p, table) in &self.invariants {
            if *p != phase {
                continue;
            }
            let before: Option<i64> = client
                .query_opt(
                    "SELECT row_count FROM bluegreen_row_counts WHERE deployment_id = $1 AND phase = $2 AND table_name = $3",
                    &[&ctx.deployment_id, &phase.to_string(), table],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            let name = format!("row count of {table} unchanged by the {phase} migrations");
            let check = match (before, self.count_rows(&client, table, op).await) {
                (None, _) => VerificationCheck {
                    name,
                    passed: false,
                    detail: format!("no row count of {table} was recorded before apply({phase}) of deployment {}", ctx.deployment_id),
                },
                (Some(b), Ok(a)) => VerificationCheck {
                    name,
                    passed: a == b,
                    detail: format!("{table}: {b} rows before, {a} after"),
                },
                (Some(b), Err(e)) if !e.is_temporary() => VerificationCheck {
                    name,
                    passed: false,
                    detail: format!("{table}: {b} rows before; counting now failed: {}", e.message()),
                },
                (Some(_), Err(e)) => return Err(e),
            };
            checks.push(check);
        }
        Ok(checks)
    }

    async fn revert(&self, versions: &[u64], ctx: &MigrationContext) -> Result<Vec<MigrationInfo>> {
        let op = "revert";
        for v in versions {
            if self.source.get(*v).is_none() {
                return Err(err(
                    ErrorKind::InvalidInput,
                    op,
                    format!("cannot revert migration {v}: no migration file has that version"),
                ));
            }
        }
        let mut wanted: Vec<u64> = versions.to_vec();
        wanted.sort_unstable_by(|a, b| b.cmp(a));
        wanted.dedup();
        let (mut client, ledger) = self.open_locked(op, ctx).await?;
        let result = self.revert_locked(&mut client, &ledger, &wanted, ctx).await;
        if !client.is_closed() {
            self.unlock(&client).await;
        }
        result
    }
}

impl PostgresMigrations {
    async fn run_check(&self, client: &Client, q: &VerificationQuery) -> Result<VerificationCheck> {
        let sql = format!(
            "BEGIN READ ONLY; {}; COMMIT",
            q.sql.trim().trim_end_matches(';')
        );
        let result = client.simple_query(&sql).await;
        let messages = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if e.as_db_error().is_none() {
                    return Err(map_pg(
                        e,
                        "verify",
                        &format!("verification query `{}`", q.name),
                    ));
                }
                let detail = e.as_db_error().map(describe_db_error).unwrap_or_default();
                return Ok(VerificationCheck {
                    name: q.name.clone(),
                    passed: false,
                    detail: format!("the query failed: {detail}"),
                });
            }
        };
        let rows: Vec<Option<String>> = messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            })
            .collect();
        let (passed, detail) = match &q.expect {
            Expectation::Rows => (!rows.is_empty(), format!("{} row(s)", rows.len())),
            Expectation::NoRows => (rows.is_empty(), format!("{} row(s)", rows.len())),
            Expectation::Value(want) => {
                let got = rows.first().cloned().flatten();
                (
                    got.as_deref() == Some(want.as_str()),
                    format!(
                        "expected {want}, got {}",
                        match (&got, rows.is_empty()) {
                            (_, true) => "no row".to_string(),
                            (None, false) => "NULL".to_string(),
                            (Some(v), false) => v.clone(),
                        }
                    ),
                )
            }
        };
        Ok(VerificationCheck {
            name: q.name.clone(),
            passed,
            detail,
        })
    }
}
