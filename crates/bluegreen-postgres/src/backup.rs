//! Backups with `pg_dump -Fc`, verified with `pg_restore --list`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bluegreen_core::{
    BackupRecord, BackupVerification, ErrorKind, MigrationContext, Result, Timestamp,
};
use tokio::process::Command;

use crate::error::{err, map_pg, redact};
use crate::ledger::ensure_schema;
use crate::session::Session;

/// The major version in a `pg_dump --version` line such as
/// `pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)`, with the full version text.
pub fn parse_tool_version(line: &str) -> Option<(u32, String)> {
    let after = line.split(')').nth(1).unwrap_or(line);
    let version = after.split_whitespace().next()?;
    let major: u32 = version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()?;
    Some((major, version.to_string()))
}

async fn run_tool(
    runner: &Session<'_>,
    program: &Path,
    args: &[String],
    op: &'static str,
) -> Result<std::process::Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in runner.db.libpq_env() {
        cmd.env(k, v);
    }
    cmd.output().await.map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Other
        };
        err(kind, op, format!("cannot run {}: {e}", program.display()))
    })
}

/// Checks that `pg_dump` is not older than the server; returns both versions.
async fn check_versions(
    runner: &Session<'_>,
    client: &tokio_postgres::Client,
) -> Result<(String, String)> {
    let op = "backup";
    let settings = &runner.settings.backup;
    let out = run_tool(runner, &settings.pg_dump, &["--version".to_string()], op).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (dump_major, dump_version) = parse_tool_version(text.trim()).ok_or_else(|| {
        err(
            ErrorKind::InvalidResponse,
            op,
            format!(
                "cannot read the version of {} from `{}`",
                settings.pg_dump.display(),
                text.trim()
            ),
        )
    })?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| {
            map_pg(
                e,
                op,
                &format!("cannot read the server version of {}", runner.db.label()),
            )
        })?;
    let server_num: i32 = row.get(0);
    let server_version: String = row.get(1);
    let server_major = (server_num / 10_000) as u32;
    if dump_major < server_major {
        return Err(err(
            ErrorKind::Unsupported,
            op,
            format!(
                "{} is version {dump_version}, older than the server {} (PostgreSQL {server_version}); pg_dump {dump_major} cannot dump a {server_major} server: install pg_dump {server_major} or newer",
                settings.pg_dump.display(),
                runner.db.label(),
            ),
        ));
    }
    Ok((server_version, dump_version))
}

/// `2024-05-01T12:00:00.123Z` as `20240501T120000123Z`, for file names.
fn compact(t: Timestamp) -> String {
    t.to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) async fn take(runner: &Session<'_>, ctx: &MigrationContext) -> Result<BackupRecord> {
    let op = "backup";
    let db = runner.db;
    let settings = &runner.settings.backup;
    let mut client = runner.connect(op, Some(ctx)).await?;
    let (server_version, dump_version) = check_versions(runner, &client).await?;
    ensure_schema(&mut client, db.label()).await?;

    tokio::fs::create_dir_all(&settings.dir)
        .await
        .map_err(|e| {
            err(
                ErrorKind::Other,
                op,
                format!(
                    "cannot create backup directory {}: {e}",
                    settings.dir.display()
                ),
            )
        })?;
    let taken_at = Timestamp::from_system_time(std::time::SystemTime::now());
    let stem = format!(
        "{}-{}-{}",
        sanitize(db.dbname()),
        compact(taken_at),
        sanitize(&ctx.deployment_id)
    );
    let mut path: PathBuf = settings.dir.join(format!("{stem}.dump"));
    let mut n = 1;
    while tokio::fs::try_exists(&path).await.unwrap_or(false) {
        n += 1;
        path = settings.dir.join(format!("{stem}-{n}.dump"));
    }
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(stem);
    let args = vec![
        "-Fc".to_string(),
        format!(
            "--lock-wait-timeout={}",
            settings.lock_wait_timeout.as_millis().max(1)
        ),
        "--no-password".to_string(),
        "-f".to_string(),
        path.display().to_string(),
    ];
    let out = run_tool(runner, &settings.pg_dump, &args, op).await?;
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&path).await;
        let stderr = redact(
            String::from_utf8_lossy(&out.stderr).trim(),
            runner.secret().as_deref(),
        );
        let kind = if stderr.contains("could not obtain lock") || stderr.contains("lock timeout") {
            ErrorKind::Timeout
        } else if stderr.contains("authentication failed") || stderr.contains("permission denied") {
            ErrorKind::PermissionDenied
        } else if stderr.contains("could not connect") || stderr.contains("Connection refused") {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Other
        };
        return Err(err(
            kind,
            op,
            format!(
                "pg_dump of {} to {} failed ({}): {stderr}",
                db.label(),
                path.display(),
                out.status
            ),
        ));
    }
    let bytes = tokio::fs::metadata(&path).await.ok().map(|m| m.len());
    let location = path.display().to_string();
    client
        .execute(
            "INSERT INTO bluegreen_backups (id, deployment_id, location, bytes, taken_at_ms, server_version, pg_dump_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &ctx.deployment_id,
                &location,
                &bytes.map(|b| b as i64),
                &(taken_at.0 as i64),
                &server_version,
                &dump_version,
            ],
        )
        .await
        .map_err(|e| map_pg(e, op, &format!("cannot record backup {id} in the ledger of {}", db.label())))?;
    tracing::info!(backup = %id, %location, ?bytes, "backup taken");
    Ok(BackupRecord {
        id,
        location,
        bytes,
        taken_at,
    })
}

/// bluegreen's own tables and the objects they own (keys, sequences,
/// indexes), which a backup of a database holding nothing else also lists.
const OWN_OBJECTS: &[&str] = &[
    crate::ledger::MIGRATIONS_TABLE,
    crate::ledger::BACKUPS_TABLE,
    crate::ledger::ROW_COUNTS_TABLE,
    "bluegreen_journal_leases",
    "bluegreen_journal_entries",
    "bluegreen_journal_entries_id_seq",
    "bluegreen_journal_entries_service",
];

/// Counts the entries `pg_restore --list` prints, leaving out comment lines
/// and bluegreen's own tables (the migration, backup and row-count ledgers
/// and the journal: their definitions, data, keys, sequences and indexes),
/// so that a backup of a database holding only those counts 0 and the
/// minimum says something about the application's data.
///
/// ```
/// # use bluegreen_postgres::count_list_entries;
/// let listing = ";\n; Archive created at ...\n\
///     215; 1259 16386 TABLE public orders app\n\
///     214; 1259 16380 TABLE public bluegreen_migrations app\n\
///     3352; 0 16380 TABLE DATA public bluegreen_migrations app\n\
///     3205; 2606 16384 CONSTRAINT public bluegreen_migrations bluegreen_migrations_pkey app\n";
/// assert_eq!(count_list_entries(listing), 1);
/// ```
pub fn count_list_entries(listing: &str) -> u64 {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .filter(|l| !is_own_entry(l))
        .count() as u64
}

/// Whether a `pg_restore --list` line (`3205; 2606 16384 CONSTRAINT public
/// bluegreen_migrations bluegreen_migrations_pkey owner`) is about one of
/// bluegreen's own objects: the first name after the type (upper-case
/// words) and the schema is one of them.
fn is_own_entry(line: &str) -> bool {
    let Some((_, rest)) = line.split_once(';') else {
        return false;
    };
    let mut words = rest.split_whitespace().skip(2); // catalog oid, object oid
    let mut word = words.next();
    while let Some(w) = word {
        if !w.bytes().all(|b| b.is_ascii_uppercase()) {
            break;
        }
        word = words.next();
    }
    // `word` is the schema; the next word names the object (or its table).
    matches!(words.next(), Some(name) if OWN_OBJECTS.contains(&name))
}

pub(crate) async fn verify(
    runner: &Session<'_>,
    backup: &BackupRecord,
    min_entries: u64,
) -> Result<BackupVerification> {
    let op = "verify backup";
    let settings = &runner.settings.backup;
    if !tokio::fs::try_exists(&backup.location)
        .await
        .unwrap_or(false)
    {
        return Err(err(
            ErrorKind::NotFound,
            op,
            format!("backup {} is not at {}", backup.id, backup.location),
        ));
    }
    let out = run_tool(
        runner,
        &settings.pg_restore,
        &["--list".to_string(), backup.location.clone()],
        op,
    )
    .await?;
    if !out.status.success() {
        return Ok(BackupVerification {
            entries: 0,
            passed: false,
            detail: format!(
                "pg_restore --list {} failed ({}): {}",
                backup.location,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let entries = count_list_entries(&String::from_utf8_lossy(&out.stdout));
    let passed = entries >= min_entries;
    let detail = format!(
        "pg_restore --list {} lists {entries} entries; at least {min_entries} required",
        backup.location
    );
    let client = runner.connect(op, None).await?;
    client
        .execute(
            "UPDATE bluegreen_backups SET entries = $2, min_entries = $3, passed = $4, verified_at = now() WHERE id = $1",
            &[
                &backup.id,
                &(entries as i64),
                &(i64::try_from(min_entries).unwrap_or(i64::MAX)),
                &passed,
            ],
        )
        .await
        .map_err(|e| map_pg(e, op, &format!("cannot record the verification of backup {}", backup.id)))?;
    Ok(BackupVerification {
        entries,
        passed,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)"),
            Some((15, "15.4".to_string()))
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 9.6.24"),
            Some((9, "9.6.24".into()))
        );
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 17beta1"),
            Some((17, "17beta1".into()))
        );
        assert_eq!(parse_tool_version("nonsense"), None);
    }

    #[test]
    fn list_entries_skip_comments() {
        let listing = ";\n; Archive created at ...\n;\n215; 1259 16386 TABLE public orders app\n3337; 0 16386 TABLE DATA public orders app\n\n";
        assert_eq!(count_list_entries(listing), 2);
    }

    #[test]
    fn list_entries_leave_out_bluegreens_own_tables() {
        let listing = "216; 1259 1 TABLE public bluegreen_row_counts bg\n\
            220; 1259 2 SEQUENCE public bluegreen_journal_entries_id_seq bg\n\
            221; 0 0 SEQUENCE OWNED BY public bluegreen_journal_entries_id_seq bg\n\
            3210; 2604 3 DEFAULT public bluegreen_journal_entries id bg\n\
            3215; 1259 4 INDEX public bluegreen_journal_entries_service bg\n\
            215; 1259 5 TABLE public bluegreen_migrations_archive app\n\
            3337; 0 6 TABLE DATA public orders bluegreen_migrations\n";
        assert_eq!(
            count_list_entries(listing),
            2,
            "the user's archive table and orders' data"
        );
    }
}
