//! What the migration runner shares with its backups: its settings, and a
//! connection named for the deployment. Depends on neither the runner nor
//! the backups.

use std::path::PathBuf;
use std::time::Duration;

use bluegreen_core::{MigrationContext, Result};
use tokio_postgres::Client;

use crate::database::Database;
use crate::error::map_pg;

/// How migrations run: time limits, retries, the wait for the runner lock,
/// and where backups go. One place for every default.
///
/// The lock defaults keep DDL from stalling the application: a statement
/// that needs a lock others hold (an `ALTER TABLE` behind an open
/// transaction that read the table, say) queues for at most `lock_timeout`,
/// and every query of that table queues behind it meanwhile, so readers wait
/// at most about `lock_timeout` per attempt. Then the statement (or the
/// whole transaction of a transactional file) is retried up to
/// `lock_retries` times, after waits that start at `retry_backoff`, double
/// up to `retry_backoff_max`, and are each jittered to between half and all
/// of that. With the defaults (500 ms, 40 retries, 200 ms doubling to 5 s),
/// a statement keeps trying for about 1.5 to 3 minutes, holding readers up
/// for at most 500 ms at a time (about 20 s in all).
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// `lock_timeout` for every migration statement (a file header may
    /// override it). Default 500 ms.
    pub lock_timeout: Duration,
    /// `statement_timeout` for every migration statement (a file header may
    /// override it). Default 15 min.
    pub statement_timeout: Duration,
    /// Extra attempts after `lock_not_available` (SQLSTATE 55P03). Default 40.
    pub lock_retries: u32,
    /// The first backoff after `lock_not_available`; doubled each time, then
    /// jittered to between half and all of it. Default 200 ms.
    pub retry_backoff: Duration,
    /// The longest backoff (before jitter). Default 5 s.
    pub retry_backoff_max: Duration,
    /// How long a runner waits for another runner's advisory lock before failing.
    pub lock_wait: Duration,
    /// How often it polls `pg_try_advisory_lock` meanwhile.
    pub lock_poll: Duration,
    /// Backups.
    pub backup: BackupSettings,
    /// Lets a pending migration run although a higher version of its phase
    /// is already applied (a branch merged late with a lower number), with
    /// a warning in the log. Default `false`: such a migration is refused,
    /// naming both versions and both checksums, because it was written
    /// against a schema without the later migration and may now undo or
    /// contradict it. Versions are compared within a phase: a contract
    /// migration pending below an applied expand migration is the normal
    /// order of a deployment.
    pub allow_out_of_order: bool,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            lock_timeout: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(15 * 60),
            lock_retries: 40,
            retry_backoff: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            lock_wait: Duration::from_secs(60),
            lock_poll: Duration::from_millis(250),
            backup: BackupSettings::default(),
            allow_out_of_order: false,
        }
    }
}

/// Where backups go and which tools take them.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// The directory backups are written to (created when missing).
    pub dir: PathBuf,
    /// The `pg_dump` binary.
    pub pg_dump: PathBuf,
    /// The `pg_restore` binary.
    pub pg_restore: PathBuf,
    /// `pg_dump --lock-wait-timeout`: how long it waits for a shared lock on a table.
    pub lock_wait_timeout: Duration,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: PathBuf::from("backups"),
            pg_dump: PathBuf::from("pg_dump"),
            pg_restore: PathBuf::from("pg_restore"),
            lock_wait_timeout: Duration::from_secs(30),
        }
    }
}

/// A database and the settings of the runner that works on it.
pub(crate) struct Session<'a> {
    /// The database.
    pub db: &'a Database,
    /// The runner's settings.
    pub settings: &'a MigrationSettings,
}

impl Session<'_> {
    /// The password, to redact from tool output.
    pub(crate) fn secret(&self) -> Option<String> {
        self.db.password()
    }

    /// Connects with an `application_name` that names the deployment, so a
    /// waiting runner's error can say who holds the lock.
    pub(crate) async fn connect(
        &self,
        op: &'static str,
        ctx: Option<&MigrationContext>,
    ) -> Result<Client> {
        let client = self.db.connect_for(op).await?;
        let mut name = match ctx {
            Some(c) => format!("bluegreen migrations (deployment {})", c.deployment_id),
            None => "bluegreen migrations".to_string(),
        };
        while name.len() > 63 {
            name.pop();
        }
        client
            .execute("SELECT set_config('application_name', $1, false)", &[&name])
            .await
            .map_err(|e| {
                map_pg(
                    e,
                    op,
                    &format!("cannot configure the session on {}", self.db.label()),
                )
            })?;
        Ok(client)
    }
}
