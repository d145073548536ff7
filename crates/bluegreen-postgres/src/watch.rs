//! What a migration statement waited for, seen from a second connection, and
//! the INVALID indexes a failed `CREATE INDEX CONCURRENTLY` leaves behind.
//!
//! While a statement runs longer than half its `lock_timeout`, a second
//! session (opened on first need) asks `pg_locks` which lock the migration's
//! backend waits for and `pg_blocking_pids` which sessions hold it, so a
//! lock-timeout error can name the relation and the blockers.

use std::future::Future;
use std::time::{Duration, Instant};

use bluegreen_core::MigrationContext;
use tokio_postgres::Client;

use crate::database::Database;
use crate::error::map_pg;

/// The lock the migration's backend waits for: type, mode, relation, other object.
const WAITING_LOCK_SQL: &str = "
SELECT l.locktype, l.mode,
       CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END,
       coalesce(l.virtualxid, l.transactionid::text, '')
FROM pg_locks l WHERE l.pid = $1 AND NOT l.granted LIMIT 1";

/// The sessions `pg_blocking_pids` says block the migration's backend.
const BLOCKERS_SQL: &str = "
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, 'unknown'),
       coalesce(to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'unknown'),
       coalesce(extract(epoch FROM clock_timestamp() - a.query_start)::float8, 0)
FROM unnest(pg_blocking_pids($1)) AS b(pid) JOIN pg_stat_activity a ON a.pid = b.pid
ORDER BY a.pid";

/// The second connection.
enum Monitor {
    Closed,
    Connecting(tokio::task::JoinHandle<bluegreen_core::Result<Client>>),
    Ready(Client),
    Failed(String),
}

/// One look at a waiting statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WaitSample {
    /// The lock waited for, e.g. `AccessExclusiveLock on relation orders`.
    pub lock: Option<String>,
    /// The relation of that lock, when it is one.
    pub relation: Option<String>,
    /// The blocking sessions, described.
    pub blockers: Vec<String>,
}

impl WaitSample {
    /// `waited for …, blocked by …` for an error message.
    pub fn describe(&self) -> String {
        let lock = self.lock.clone().unwrap_or_else(|| "a lock".to_string());
        if self.blockers.is_empty() {
            format!("it waited for {lock}; no blocking session was listed")
        } else {
            format!(
                "it waited for {lock}, blocked by {}",
                self.blockers.join("; ")
            )
        }
    }
}

/// Watches one migration session from a second connection.
pub(crate) struct Watch<'a> {
    db: &'a Database,
    ctx: &'a MigrationContext,
    pid: i32,
    every: Duration,
    monitor: Monitor,
    statement: Option<usize>,
    /// The last sample of the current statement that showed a wait.
    pub seen: Option<WaitSample>,
}

impl<'a> Watch<'a> {
    /// Watches the backend `pid`, looking every half `lock_timeout`
    /// (between 20 ms and 1 s) while a statement runs.
    pub fn new(
        db: &'a Database,
        ctx: &'a MigrationContext,
        pid: i32,
        lock_timeout: Duration,
    ) -> Self {
        Watch {
            db,
            ctx,
            pid,
            every: (lock_timeout / 2).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            monitor: Monitor::Closed,
            statement: None,
            seen: None,
        }
    }

    /// Starts (or keeps) watching statement `index`: a new statement
    /// forgets what the last one waited for.
    pub fn statement(&mut self, index: usize) {
        if self.statement != Some(index) {
            self.statement = Some(index);
            self.seen = None;
        }
    }

    /// Why no blocker could be seen, when the second connection failed.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.monitor {
            Monitor::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Starts opening the second connection in the background (a task,
    /// so a statement that ends first does not cut the handshake short).
    pub fn prepare(&mut self) {
        if matches!(self.monitor, Monitor::Closed) {
            let db = self.db.clone();
            let name = match self.ctx.deployment_id.as_str() {
                "" => "bluegreen migrations (watch)".to_string(),
                d => format!("bluegreen migrations (watch, deployment {d})"),
            };
            let name: String = name.chars().take(63).collect();
            self.monitor = Monitor::Connecting(tokio::spawn(async move {
                let c = db.connect_for("watch").await?;
                c.execute("SELECT set_config('application_name', $1, false)", &[&name])
                    .await
                    .map_err(|e| map_pg(e, "watch", "cannot name the watching session"))?;
                Ok(c)
            }));
        }
    }

    /// Runs `exec`, sampling what it waits for until it ends.
    pub async fn run<F>(&mut self, exec: F) -> std::result::Result<(), tokio_postgres::Error>
    where
        F: Future<Output = std::result::Result<(), tokio_postgres::Error>>,
    {
        tokio::pin!(exec);
        let every = self.every;
        let sampler = async {
            loop {
                tokio::time::sleep(every).await;
                self.sample().await;
            }
        };
        tokio::select! {
            r = &mut exec => r,
            () = sampler => exec.await,
        }
    }

    async fn sample(&mut self) {
        self.prepare();
        if let Monitor::Connecting(handle) = &mut self.monitor {
            // Awaiting by reference: if the statement ends first, the task
            // goes on and a later sample finds the connection.
            self.monitor = match handle.await {
                Ok(Ok(c)) => Monitor::Ready(c),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot open the session that watches migration locks");
                    Monitor::Failed(e.message().to_string())
                }
                Err(e) => Monitor::Failed(e.to_string()),
            };
        }
        let Monitor::Ready(m) = &self.monitor else {
            return;
        };
        let mut sample = WaitSample::default();
        if let Ok(Some(r)) = m.query_opt(WAITING_LOCK_SQL, &[&self.pid]).await {
            let kind: String = r.get(0);
            let mode: String = r.get(1);
            let relation: Option<String> = r.get(2);
            let other: String = r.get(3);
            sample.lock = Some(match (&relation, kind.as_str()) {
                (Some(rel), _) => format!("{mode} on relation {rel}"),
                (None, "virtualxid") => format!(
                    "{mode} on virtualxid {other} (a transaction or snapshot older than the statement)"
                ),
                (None, _) => format!("{mode} on {kind} {other}").trim_end().to_string(),
            });
            sample.relation = relation;
        }
        if let Ok(rows) = m.query(BLOCKERS_SQL, &[&self.pid]).await {
            sample.blockers = rows
                .iter()
                .map(|r| {
                    format!(
                        "pid {} (application_name '{}', state {}, query started {}, {} before)",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                        humantime::format_duration(Duration::from_millis(
                            (r.get::<_, f64>(4).max(0.0) * 1000.0) as u64
                        )),
                    )
                })
                .collect();
        }
        if sample.lock.is_some() || !sample.blockers.is_empty() {
            self.seen = Some(sample);
        }
    }
}

/// The statement as a message shows it: whitespace collapsed, at most 200
/// characters.
pub(crate) fn snippet(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// How long ago `since` was, rounded to milliseconds.
pub(crate) fn elapsed_ms(since: Instant) -> String {
    humantime::format_duration(Duration::from_millis(since.elapsed().as_millis() as u64))
        .to_string()
}

/// An INVALID index: its quoted qualified name and its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidIndex {
    pub oid: u32,
    pub name: String,
    pub qualified: String,
    pub table: String,
}

impl InvalidIndex {
    /// `index public.idx on orders`.
    pub fn describe(&self) -> String {
        format!("index {} on {}", self.qualified, self.table)
    }
}

/// Every index of the database, before a no-transaction statement runs.
pub(crate) async fn index_oids(
    client: &Client,
) -> std::result::Result<Vec<u32>, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT coalesce(array_agg(indexrelid), '{}') FROM pg_index",
            &[],
        )
        .await
        .map(|r| r.get(0))
}

/// The INVALID indexes of the database (usually none), but for those
/// another session is building right now (`pg_stat_progress_create_index`):
/// a concurrent build's index is INVALID until it finishes.
pub(crate) async fn invalid_indexes(
    client: &Client,
) -> std::result::Result<Vec<InvalidIndex>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT i.indexrelid, c.relname::text, format('%I.%I', n.nspname, c.relname), i.indrelid::regclass::text
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT i.indisvalid
               AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
                               WHERE p.index_relid = i.indexrelid AND p.pid <> pg_backend_pid())
             ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| InvalidIndex {
            oid: r.get(0),
            name: r.get(1),
            qualified: r.get(2),
            table: r.get(3),
        })
        .collect())
}

/// Whether `name` occurs in `sql` as a whole identifier (case-insensitive):
/// the statement names that index.
pub(crate) fn mentions(sql: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let hay = sql.to_lowercase();
    let needle = name.to_lowercase();
    if needle.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(at) = hay[from..].find(&needle) {
        let start = from + at;
        let end = start + needle.len();
        let before = hay[..start].chars().next_back();
        let after = hay[end..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return true;
        }
        from = start + needle.len().max(1);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_name_is_found_only_as_a_whole_identifier() {
        let sql = "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON orders(customer_id)";
        assert!(mentions(sql, "idx"));
        assert!(mentions(sql, "IDX"));
        assert!(!mentions(sql, "id"));
        assert!(!mentions(
            "CREATE INDEX CONCURRENTLY idx_ccnew ON t (a)",
            "idx"
        ));
        assert!(mentions(
            "CREATE INDEX CONCURRENTLY \"idx\" ON t (a)",
            "idx"
        ));
    }

    #[test]
    fn a_long_statement_is_cut_in_messages() {
        assert_eq!(
            snippet("ALTER TABLE orders\n   ADD COLUMN note text"),
            "ALTER TABLE orders ADD COLUMN note text"
        );
        assert_eq!(snippet(&"x".repeat(300)).chars().count(), 201);
    }
}
