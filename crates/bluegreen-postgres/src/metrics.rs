//! PostgreSQL as evidence: a [`MetricsSource`] whose checks are SQL
//! returning one number, and a slow-query regression from
//! `pg_stat_statements`.
//!
//! A check's query is one of:
//!
//! * **SQL returning one number**: one row, one column of a numeric type
//!   (`smallint`, `integer`, `bigint`, `real`, `double precision`,
//!   `numeric`). The reference's connection pool under 80%:
//!
//!   ```sql
//!   SELECT count(*)::float8 / current_setting('max_connections')::float8
//!   FROM pg_stat_activity
//!   ```
//!
//!   The SQL may use `$1` and `$2`: they are bound to the window's start
//!   and end (`timestamptz`), e.g. `SELECT count(*) FROM payments_failed
//!   WHERE at >= $1 AND at < $2`. The answer is one sample at the window's
//!   end, so a check over a longer window than its interval sets
//!   `min_samples = 1`.
//! * **`pg_stat_statements`** (optionally `pg_stat_statements top N`, N
//!   the number of statements, 10 if absent): how much slower the heaviest
//!   statements of the source's database ran since the snapshot than
//!   before it. For each statement
//!   that ran both before the snapshot and since, its mean time before is
//!   `total_exec_time / calls` at the snapshot; since, the difference of
//!   the two over the difference of the calls. The N statements with the
//!   most execution time since the snapshot are weighed by their calls
//!   since: the value is their time since over the time the same calls
//!   took at their mean before. 1.0 is as fast as before; 1.3 is 30%
//!   slower (`success = "< 1.2"`). The snapshot is taken by
//!   [`PostgresMetrics::snapshot_statements`], which an embedding calls
//!   before the deployment starts, or else at the first such query, which
//!   then answers no data. It is held in memory: a resumed deployer takes a
//!   new one.
//!
//! Each query runs in a read-only transaction with `statement_timeout`
//! ([`PostgresMetrics::DEFAULT_STATEMENT_TIMEOUT`] unless set), on a
//! connection of its own, so it is safe to repeat and cannot change the
//! database. SQL that returns no row, or a NULL, is no data; SQL that
//! returns more than one row or column, or a value that is not a number,
//! is an [`ErrorKind::InvalidInput`] error naming the check. Both make the
//! measurement inconclusive, which the plan's inconclusive policy treats:
//! never a pass.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bluegreen_core::{ErrorKind, MetricAnswer, MetricQuery, MetricsSource, Result, Sample};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, GenericClient};

use crate::database::Database;
use crate::error::{err, map_pg};

/// The query text that selects the slow-query regression.
pub const STATEMENTS_QUERY: &str = "pg_stat_statements";

/// One statement's counters: calls and total execution time in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    calls: i64,
    total_ms: f64,
}

/// `pg_stat_statements` at one moment, keyed by (user, database, query id).
type Statements = BTreeMap<(u32, u32, i64), Counters>;

/// A [`MetricsSource`] on a PostgreSQL database; see the [module
/// docs](self) for the two kinds of query.
pub struct PostgresMetrics {
    db: Database,
    statement_timeout: Duration,
    snapshot: Mutex<Option<Statements>>,
}

impl std::fmt::Debug for PostgresMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresMetrics")
            .field("db", &self.db)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresMetrics {
    /// A check's statement is cancelled after this long (5 s): a reading
    /// that takes longer is no use to a rollback trigger polling each
    /// minute, and must not load the database it watches.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Queries `db` with the default statement timeout.
    pub fn new(db: Database) -> PostgresMetrics {
        PostgresMetrics {
            db,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
            snapshot: Mutex::new(None),
        }
    }

    /// Cancels each check's statement after `timeout` (at least 1 ms).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> PostgresMetrics {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Takes the `pg_stat_statements` snapshot the slow-query regression
    /// compares with (replacing any earlier one). Read-only; calling it
    /// again moves the comparison's start.
    ///
    /// Fails when the extension is not installed in the database (or not
    /// loaded by `shared_preload_libraries`), naming it.
    pub async fn snapshot_statements(&self) -> Result<()> {
        let mut client = self.db.connect_for("metrics query").await?;
        let tx = self.read_only(&mut client).await?;
        let now = self.read_statements(&tx).await?;
        drop(tx);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        Ok(())
    }

    /// Opens a read-only transaction with the statement timeout.
    async fn read_only<'a>(
        &self,
        client: &'a mut Client,
    ) -> Result<tokio_postgres::Transaction<'a>> {
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| map_pg(e, "metrics query", "cannot begin a read-only transaction"))?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        ))
        .await
        .map_err(|e| map_pg(e, "metrics query", "cannot set statement_timeout"))?;
        Ok(tx)
    }

    async fn read_statements(&self, client: &impl GenericClient) -> Result<Statements> {
        let rows = client
            .query(
                "SELECT userid, dbid, queryid, calls, total_exec_time \
                 FROM pg_stat_statements \
                 WHERE queryid IS NOT NULL \
                 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .map_err(|e| {
                map_pg(
                    e,
                    "metrics query",
                    "cannot read pg_stat_statements (the extension must be created in this \
                     database with CREATE EXTENSION pg_stat_statements, and the server must load \
                     it with shared_preload_libraries = 'pg_stat_statements')",
                )
            })?;
        let mut out = Statements::new();
        for r in rows {
            let key = (
                r.get::<_, tokio_postgres::types::Oid>(0),
                r.get::<_, tokio_postgres::types::Oid>(1),
                r.get::<_, i64>(2),
            );
            // The same statement at top level and nested is two rows.
            let c = out.entry(key).or_insert(Counters {
                calls: 0,
                total_ms: 0.0,
            });
            c.calls += r.get::<_, i64>(3);
            c.total_ms += r.get::<_, f64>(4);
        }
        Ok(out)
    }

    async fn statements(&self, q: &MetricQuery, top: usize) -> Result<MetricAnswer> {
        let mut client = self.db.connect_for("metrics query").await?;
        let tx = self.read_only(&mut client).await?;
        let now = self.read_statements(&tx).await?;
        drop(tx);
        let before = {
            let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            match snap.as_ref() {
                Some(s) => s.clone(),
                None => {
                    *snap = Some(now);
                    return Ok(MetricAnswer::NoData {
                        reason: format!(
                            "check {:?}: the pg_stat_statements snapshot was taken now; the next \
                             measurement compares with it",
                            q.check
                        ),
                    });
                }
            }
        };
        Ok(match statement_regression(&before, &now, top) {
            Some(ratio) => MetricAnswer::Samples {
                samples: vec![Sample {
                    at: q.to,
                    value: ratio,
                }],
            },
            None => MetricAnswer::NoData {
                reason: format!(
                    "check {:?}: no statement ran both before the pg_stat_statements snapshot and \
                     since",
                    q.check
                ),
            },
        })
    }

    async fn sql(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        let bad = |msg: String| {
            err(
                ErrorKind::InvalidInput,
                "metrics query",
                format!("check {:?}: {msg}", q.check),
            )
        };
        let mut client = self.db.connect_for("metrics query").await?;
        let tx = self.read_only(&mut client).await?;
        let context = format!("check {:?}: the SQL failed", q.check);
        let stmt = tx
            .prepare(&q.query)
            .await
            .map_err(|e| map_pg(e, "metrics query", &context))?;
        let cols = stmt.columns();
        if cols.len() != 1 {
            let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
            return Err(bad(format!(
                "the SQL returns {} columns ({}); it must return one number",
                cols.len(),
                names.join(", ")
            )));
        }
        if !is_number(cols[0].type_()) {
            return Err(bad(format!(
                "the SQL returns column {:?} of type {}; it must return one number (cast it, \
                 e.g. ::float8)",
                cols[0].name(),
                cols[0].type_()
            )));
        }
        let window = [at(q.from), at(q.to)];
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match stmt.params().len() {
            0 => vec![],
            2 => vec![&window[0], &window[1]],
            n => {
                return Err(bad(format!(
                    "the SQL has {n} parameters; it may have none, or $1 and $2 (the window's \
                     start and end)"
                )))
            }
        };
        let rows = tx
            .query(&stmt, &params)
            .await
            .map_err(|e| map_pg(e, "metrics query", &context))?;
        drop(tx);
        match rows.as_slice() {
            [] => Ok(MetricAnswer::NoData {
                reason: format!("check {:?}: the SQL returned no row", q.check),
            }),
            [row] => match row
                .try_get::<_, Option<Number>>(0)
                .map_err(|e| bad(format!("cannot read the SQL's value: {e}")))?
            {
                None => Ok(MetricAnswer::NoData {
                    reason: format!("check {:?}: the SQL returned NULL", q.check),
                }),
                Some(Number(value)) => Ok(MetricAnswer::Samples {
                    samples: vec![Sample { at: q.to, value }],
                }),
            },
            rows => Err(bad(format!(
                "the SQL returned {} rows; it must return one",
                rows.len()
            ))),
        }
    }
}

#[async_trait]
impl MetricsSource for PostgresMetrics {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        match statements_query(&q.query) {
            Some(Ok(top)) => self.statements(q, top).await,
            Some(Err(msg)) => Err(err(
                ErrorKind::InvalidInput,
                "metrics query",
                format!("check {:?}: {msg}", q.check),
            )),
            None => self.sql(q).await,
        }
    }
}

/// `Some(top)` when `query` asks for the slow-query regression.
fn statements_query(query: &str) -> Option<std::result::Result<usize, String>> {
    let mut words = query.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case(STATEMENTS_QUERY) {
        return None;
    }
    Some(match (words.next(), words.next(), words.next()) {
        (None, _, _) => Ok(10),
        (Some(t), Some(n), None) if t.eq_ignore_ascii_case("top") => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{query:?}: the number of statements must be a whole number above zero"
            )),
        },
        _ => Err(format!(
            "{query:?}: expected {STATEMENTS_QUERY} or {STATEMENTS_QUERY} top N"
        )),
    })
}

fn at(t: bluegreen_core::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(t.0)
}

/// How much slower the `top` heaviest statements since `before` ran than
/// at their mean before it (see the module docs); `None` when no statement
/// ran both before and since.
fn statement_regression(before: &Statements, now: &Statements, top: usize) -> Option<f64> {
    let mut since: Vec<(f64, f64)> = now
        .iter()
        .filter_map(|(k, n)| {
            let b = before.get(k)?;
            let calls = n.calls - b.calls;
            // Counters that went down were reset: no comparison.
            if b.calls <= 0 || calls <= 0 || n.total_ms < b.total_ms {
                return None;
            }
            let mean_before = b.total_ms / b.calls as f64;
            Some((n.total_ms - b.total_ms, calls as f64 * mean_before))
        })
        .collect();
    since.sort_by(|a, b| b.0.total_cmp(&a.0));
    since.truncate(top);
    let (spent, expected) = since
        .iter()
        .fold((0.0, 0.0), |(s, e), (a, b)| (s + a, e + b));
    (expected > 0.0).then(|| spent / expected)
}

/// Decodes one value of a SQL check's answer, as it comes over the wire in
/// the binary format, given its type's OID (`int2` 21, `int4` 23, `int8`
/// 20, `float4` 700, `float8` 701, `numeric` 1700). Another type, or bytes
/// that do not make a value of the type, is an error saying which.
///
/// ```
/// use bluegreen_postgres::decode_sql_number;
/// assert_eq!(decode_sql_number(701, &0.25f64.to_be_bytes()), Ok(0.25));
/// // numeric 12.5: two base-10000 digits, 12 and 5000, weight 0.
/// assert_eq!(decode_sql_number(1700, &[0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88]), Ok(12.5));
/// assert!(decode_sql_number(25, b"high").unwrap_err().contains("text"));
/// ```
pub fn decode_sql_number(type_oid: u32, raw: &[u8]) -> std::result::Result<f64, String> {
    let ty = Type::from_oid(type_oid).ok_or_else(|| format!("unknown type OID {type_oid}"))?;
    if !is_number(&ty) {
        return Err(format!("{ty} is not a number"));
    }
    Number::from_sql(&ty, raw)
        .map(|n| n.0)
        .map_err(|e| e.to_string())
}

fn is_number(t: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
    ]
    .contains(t)
}

/// A numeric SQL value as `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Number(f64);

impl<'a> FromSql<'a> for Number {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Number(match *ty {
            Type::INT2 => f64::from(i16::from_sql(ty, raw)?),
            Type::INT4 => f64::from(i32::from_sql(ty, raw)?),
            Type::INT8 => i64::from_sql(ty, raw)? as f64,
            Type::FLOAT4 => f64::from(f32::from_sql(ty, raw)?),
            Type::FLOAT8 => f64::from_sql(ty, raw)?,
            Type::NUMERIC => numeric(raw)?,
            _ => return Err(format!("{ty} is not a number").into()),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        is_number(ty)
    }
}

/// Decodes `numeric`'s binary form: digit count, weight, sign, display
/// scale, then base-10000 digits, the first worth 10000^weight.
pub(crate) fn numeric(raw: &[u8]) -> std::result::Result<f64, String> {
    let word = |i: usize| -> std::result::Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("a numeric of {} bytes is cut short", raw.len()))
    };
    let ndigits = usize::from(word(0)?);
    let weight = word(2)? as i16;
    let sign = word(4)?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        s => return Err(format!("a numeric with sign word {s:#06x}")),
    }
    // Written out in decimal and parsed, so the value is the nearest f64
    // (summing powers of 10000 would round at each step).
    let (mut int, mut frac) = (String::new(), String::new());
    for i in 0..ndigits {
        let d = word(8 + 2 * i)?;
        if d >= 10_000 {
            return Err(format!("a numeric digit of {d}"));
        }
        let e = i32::from(weight) - i as i32;
        if e >= 0 {
            int.push_str(&format!("{d:04}"));
        } else {
            while frac.len() < 4 * (-e - 1) as usize {
                frac.push_str("0000");
            }
            frac.push_str(&format!("{d:04}"));
        }
    }
    for _ in ndigits as i32..=i32::from(weight) {
        int.push_str("0000");
    }
    let text = format!(
        "{}.{}",
        if int.is_empty() { "0" } else { &int },
        if frac.is_empty() { "0" } else { &frac }
    );
    let value: f64 = text
        .parse()
        .map_err(|e| format!("a numeric read as {text}: {e}"))?;
    Ok(if sign == 0x4000 { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(calls: i64, total_ms: f64) -> Counters {
        Counters { calls, total_ms }
    }

    #[test]
    fn the_heaviest_statements_twice_as_slow_read_two() {
        let before: Statements = [((1, 1, 1), c(100, 1000.0)), ((1, 1, 2), c(50, 50.0))].into();
        // Statement 1: 10 ms a call before, 20 ms for the 10 calls since.
        // Statement 2: 1 ms a call before, 1 ms since (and lighter).
        let now: Statements = [((1, 1, 1), c(110, 1200.0)), ((1, 1, 2), c(60, 60.0))].into();
        assert_eq!(statement_regression(&before, &now, 1), Some(2.0));
        // Both: (200 + 10) / (100 + 10).
        let both = statement_regression(&before, &now, 10).unwrap();
        assert!((both - 210.0 / 110.0).abs() < 1e-12);
    }

    #[test]
    fn statements_new_since_the_snapshot_or_reset_are_left_out() {
        let before: Statements = [((1, 1, 1), c(100, 1000.0))].into();
        let new_only: Statements = [((1, 1, 1), c(100, 1000.0)), ((1, 1, 9), c(5, 500.0))].into();
        assert_eq!(statement_regression(&before, &new_only, 10), None);
        let reset: Statements = [((1, 1, 1), c(3, 30.0))].into();
        assert_eq!(statement_regression(&before, &reset, 10), None);
    }

    #[test]
    fn the_statements_query_takes_an_optional_top_n() {
        assert_eq!(statements_query("pg_stat_statements"), Some(Ok(10)));
        assert_eq!(statements_query("PG_STAT_STATEMENTS top 3"), Some(Ok(3)));
        assert!(statements_query("pg_stat_statements top 0")
            .unwrap()
            .unwrap_err()
            .contains("above zero"));
        assert!(statements_query("pg_stat_statements 3").unwrap().is_err());
        assert_eq!(statements_query("SELECT 1"), None);
        assert_eq!(
            statements_query("SELECT calls FROM pg_stat_statements"),
            None
        );
    }

    #[test]
    fn numeric_binary_values_decode() {
        // 12.5: 2 digits, weight 0, positive, scale 1: 12, 5000.
        let raw = [0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88];
        assert_eq!(numeric(&raw), Ok(12.5));
        // -0.0042: 1 digit 42, weight -1, negative.
        let raw = [0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 42];
        assert_eq!(numeric(&raw), Ok(-0.0042));
        assert!(numeric(&[0, 1, 0, 0]).unwrap_err().contains("cut short"));
        assert!(numeric(&[0, 0, 0, 0, 0xC0, 0, 0, 0]).unwrap().is_nan());
        // 20000: 1 digit 2, weight 1 (2 × 10000); 0: no digits.
        assert_eq!(numeric(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 2]), Ok(20000.0));
        assert_eq!(numeric(&[0, 0, 0, 0, 0, 0, 0, 0]), Ok(0.0));
        // 0.00000001: 1 digit 1, weight -2.
        assert_eq!(
            numeric(&[0, 1, 0xff, 0xfe, 0, 0, 0, 8, 0, 1]),
            Ok(0.00000001)
        );
    }
}
