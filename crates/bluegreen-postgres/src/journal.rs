//! [`PostgresJournal`]: the deployment journal in PostgreSQL, for deployers
//! on several machines.
//!
//! Two tables: `bluegreen_journal_leases` (one row per service: holder,
//! fencing token, expiry; the token only ever grows, release included) and
//! `bluegreen_journal_entries` (one row per record, JSON). Every write runs in
//! a transaction that locks the service's lease row, so the token check and
//! the write are atomic: a holder whose lease was taken over can never write.

use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::journal::DeploymentSummary;
use bluegreen_core::machine::Event;
use bluegreen_core::{ErrorKind, Journal, JournalEntry, Lease, Record, Result, Timestamp};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::database::Database;
use crate::error::{err, map_pg};

const SCHEMA_LOCK_KEY: i64 = 0x6267_6a6f_7572_6e6c; // "bgjournl"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bluegreen_journal_leases (
    service        text PRIMARY KEY,
    holder         text NOT NULL,
    token          bigint NOT NULL,
    acquired_at_ms bigint NOT NULL,
    expires_at_ms  bigint NOT NULL,
    released       boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS bluegreen_journal_entries (
    id            bigserial PRIMARY KEY,
    deployment_id text NOT NULL,
    seq           bigint NOT NULL,
    service       text NOT NULL,
    token         bigint NOT NULL,
    at_ms         bigint NOT NULL,
    record        jsonb NOT NULL,
    UNIQUE (deployment_id, seq)
);
CREATE INDEX IF NOT EXISTS bluegreen_journal_entries_service ON bluegreen_journal_entries (service, id);
";

/// The deployment journal in PostgreSQL.
///
/// Holds one connection, reopened after it breaks. Lease expiry is judged on
/// the `now` the caller passes (the driver's injectable clock), so all
/// deployers must share a clock source within the lease TTL.
pub struct PostgresJournal {
    db: Database,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn ts(v: i64) -> Timestamp {
    Timestamp(u64::try_from(v).unwrap_or(0))
}

impl PostgresJournal {
    /// Connects and creates the journal tables when missing.
    pub async fn connect(db: Database) -> Result<PostgresJournal> {
        let db = db.with_application_name("bluegreen journal");
        let mut client = db.connect_for("journal").await?;
        let ctx = format!("cannot create the journal tables in {}", db.label());
        let tx = client
            .transaction()
            .await
            .map_err(|e| map_pg(e, "journal", &ctx))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
            .await
            .map_err(|e| map_pg(e, "journal", &ctx))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(|e| map_pg(e, "journal", &ctx))?;
        tx.commit().await.map_err(|e| map_pg(e, "journal", &ctx))?;
        Ok(PostgresJournal {
            db,
            client: Mutex::new(Some(client)),
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The records of `deployment_id` after its record `after` (its
    /// `seq`), in order: what a reader following a running deployment
    /// (`bluegreen watch`) asks each time, instead of every record again.
    /// `read` is `read_after(id, 0)`.
    pub async fn read_after(&self, deployment_id: &str, after: u64) -> Result<Vec<JournalEntry>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let op = "read";
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        let rows = client
            .query(
                "SELECT seq, service, token, at_ms, record::text FROM bluegreen_journal_entries
                 WHERE deployment_id = $1 AND seq > $2 ORDER BY seq",
                &[&deployment_id, &after],
            )
            .await
            .map_err(self.pg(op))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let text: String = r.get(4);
                let record: Record = serde_json::from_str(&text).map_err(|e| {
                    err(
                        ErrorKind::Corrupt,
                        op,
                        format!("journal record {seq} of deployment {deployment_id} does not parse: {e}"),
                    )
                })?;
                Ok(JournalEntry {
                    seq: seq as u64,
                    deployment_id: deployment_id.to_string(),
                    service: r.get(1),
                    token: r.get::<_, i64>(2) as u64,
                    at: ts(r.get(3)),
                    record,
                })
            })
            .collect()
    }

    async fn client<'a>(
        &self,
        guard: &'a mut tokio::sync::MutexGuard<'_, Option<Client>>,
        op: &'static str,
    ) -> Result<&'a mut Client> {
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            **guard = Some(self.db.connect_for(op).await?);
        }
        Ok(guard.as_mut().expect("set above"))
    }

    fn pg(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> bluegreen_core::Error + '_ {
        move |e| map_pg(e, op, &format!("journal in {}", self.db.label()))
    }

    /// Locks the lease row of `service` in `tx` and checks `lease` is current.
    async fn check_current(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        lease: &Lease,
        op: &'static str,
    ) -> Result<()> {
        let row = tx
            .query_opt(
                "SELECT holder, token, released FROM bluegreen_journal_leases WHERE service = $1 FOR UPDATE",
                &[&lease.service],
            )
            .await
            .map_err(self.pg(op))?;
        let current = row.as_ref().map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, bool>(2),
            )
        });
        match current {
            Some((_, token, false)) if token == lease.token as i64 => Ok(()),
            other => {
                let by = match other {
                    Some((holder, token, false)) => format!(" by {holder} (token {token})"),
                    Some((_, token, true)) if token == lease.token as i64 => {
                        " (it was released)".to_string()
                    }
                    Some((holder, token, true)) => {
                        format!(" by {holder} (token {token}, since released)")
                    }
                    None => " (no lease exists for the service)".to_string(),
                };
                Err(err(
                    ErrorKind::Fenced,
                    op,
                    format!(
                        "the lease on {} with token {} was superseded{by}: this deployer must stop",
                        lease.service, lease.token
                    ),
                ))
            }
        }
    }
}

#[async_trait]
impl Journal for PostgresJournal {
    async fn acquire(
        &self,
        service: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        let op = "acquire lease";
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        let tx = client.transaction().await.map_err(self.pg(op))?;
        tx.execute(
            "INSERT INTO bluegreen_journal_leases (service, holder, token, acquired_at_ms, expires_at_ms, released)
             VALUES ($1, '', 0, 0, 0, true) ON CONFLICT DO NOTHING",
            &[&service],
        )
        .await
        .map_err(self.pg(op))?;
        let row = tx
            .query_one(
                "SELECT holder, token, acquired_at_ms, expires_at_ms, released FROM bluegreen_journal_leases WHERE service = $1 FOR UPDATE",
                &[&service],
            )
            .await
            .map_err(self.pg(op))?;
        let (cur_holder, token, acquired, expires, released): (String, i64, i64, i64, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if !released
            && bluegreen_core::journal::holder_identity(&cur_holder)
                != bluegreen_core::journal::holder_identity(holder)
            && expires > ms(now)
        {
            return Err(err(
                ErrorKind::LeaseHeld,
                op,
                format!(
                    "service {service} is being deployed by {cur_holder} (lease taken at {}, expires at {}, token {token})",
                    ts(acquired),
                    ts(expires)
                ),
            ));
        }
        let lease = Lease {
            service: service.to_string(),
            holder: holder.to_string(),
            token: token as u64 + 1,
            acquired_at: now,
            expires_at: now.after(ttl),
            superseded: (!released && token > 0).then(|| ts(expires)),
        };
        tx.execute(
            "UPDATE bluegreen_journal_leases SET holder = $2, token = $3, acquired_at_ms = $4, expires_at_ms = $5, released = false
             WHERE service = $1",
            &[&service, &holder, &(lease.token as i64), &ms(lease.acquired_at), &ms(lease.expires_at)],
        )
        .await
        .map_err(self.pg(op))?;
        tx.commit().await.map_err(self.pg(op))?;
        Ok(lease)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let op = "renew lease";
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        let tx = client.transaction().await.map_err(self.pg(op))?;
        self.check_current(&tx, lease, op).await?;
        let renewed = Lease {
            expires_at: now.after(ttl),
            ..lease.clone()
        };
        tx.execute(
            "UPDATE bluegreen_journal_leases SET expires_at_ms = $2 WHERE service = $1",
            &[&lease.service, &ms(renewed.expires_at)],
        )
        .await
        .map_err(self.pg(op))?;
        tx.commit().await.map_err(self.pg(op))?;
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let op = "release lease";
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        client
            .execute(
                "UPDATE bluegreen_journal_leases SET released = true WHERE service = $1 AND token = $2",
                &[&lease.service, &(lease.token as i64)],
            )
            .await
            .map_err(self.pg(op))?;
        Ok(())
    }

    async fn append(
        &self,
        lease: &Lease,
        deployment_id: &str,
        at: Timestamp,
        record: &Record,
    ) -> Result<u64> {
        let op = "append";
        let json = serde_json::to_string(record).map_err(|e| {
            err(
                ErrorKind::Other,
                op,
                format!("cannot serialize a journal record: {e}"),
            )
        })?;
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        let tx = client.transaction().await.map_err(self.pg(op))?;
        self.check_current(&tx, lease, op).await?;
        let existing = tx
            .query_opt(
                "SELECT service FROM bluegreen_journal_entries WHERE deployment_id = $1 LIMIT 1",
                &[&deployment_id],
            )
            .await
            .map_err(self.pg(op))?;
        if let Some(r) = existing {
            let service: String = r.get(0);
            if service != lease.service {
                return Err(err(
                    ErrorKind::InvalidInput,
                    op,
                    format!(
                        "deployment {deployment_id} belongs to service {service}, not {}",
                        lease.service
                    ),
                ));
            }
        }
        let seq: i64 = tx
            .query_one(
                "SELECT coalesce(max(seq), 0) + 1 FROM bluegreen_journal_entries WHERE deployment_id = $1",
                &[&deployment_id],
            )
            .await
            .map_err(self.pg(op))?
            .get(0);
        tx.execute(
            "INSERT INTO bluegreen_journal_entries (deployment_id, seq, service, token, at_ms, record)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
            &[&deployment_id, &seq, &lease.service, &(lease.token as i64), &ms(at), &json],
        )
        .await
        .map_err(self.pg(op))?;
        tx.commit().await.map_err(self.pg(op))?;
        Ok(seq as u64)
    }

    async fn read(&self, deployment_id: &str) -> Result<Vec<JournalEntry>> {
        self.read_after(deployment_id, 0).await
    }

    async fn deployments(&self, service: Option<String>) -> Result<Vec<DeploymentSummary>> {
        let op = "list deployments";
        let mut guard = self.client.lock().await;
        let client = self.client(&mut guard, op).await?;
        let rows = client
            .query(
                "SELECT deployment_id, min(service), min(at_ms), max(at_ms), count(*), min(id) AS first
                 FROM bluegreen_journal_entries
                 WHERE $1::text IS NULL OR service = $1
                 GROUP BY deployment_id ORDER BY first",
                &[&service],
            )
            .await
            .map_err(self.pg(op))?;
        let finished = client
            .query(
                "SELECT deployment_id, record::text FROM bluegreen_journal_entries
                 WHERE record->>'record' = 'step' AND record ? 'events' AND ($1::text IS NULL OR service = $1)
                 ORDER BY id",
                &[&service],
            )
            .await
            .map_err(self.pg(op))?;
        let mut out: Vec<DeploymentSummary> = rows
            .iter()
            .map(|r| DeploymentSummary {
                id: r.get(0),
                service: r.get(1),
                started_at: ts(r.get(2)),
                last_at: ts(r.get(3)),
                outcome: None,
                records: r.get::<_, i64>(4) as u64,
            })
            .collect();
        for r in &finished {
            let id: String = r.get(0);
            let text: String = r.get(1);
            let Ok(Record::Step { events, .. }) = serde_json::from_str::<Record>(&text) else {
                continue;
            };
            for ev in events {
                if let Event::Finished { outcome, .. } = ev {
                    if let Some(d) = out.iter_mut().find(|d| d.id == id) {
                        d.outcome = Some(outcome.name().into());
                    }
                }
            }
        }
        Ok(out)
    }
}
