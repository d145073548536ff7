//! Where migrations come from: a directory or files embedded in the binary.
//!
//! A migration is an up file `NNNN_name.up.sql` and, optionally, a down file
//! `NNNN_name.down.sql`; one without a down file is irreversible. Header
//! comments (leading `--` lines) carry directives:
//!
//! ```sql
//! -- bluegreen: phase=contract
//! -- bluegreen: no-transaction
//! -- bluegreen: reversible
//! -- bluegreen: lock_timeout=2s, statement_timeout=30m
//! ```
//!
//! * `phase=expand|contract` (up files; default `expand`);
//! * `no-transaction`: the file is split into statements run one at a time
//!   outside a transaction (for `CREATE INDEX CONCURRENTLY`);
//! * `reversible`: the migration must have a down file, checked on load;
//! * `lock_timeout=` / `statement_timeout=`: override the runner's defaults.
//!
//! Every error names the file; a set of files with an error is refused whole,
//! before anything runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use bluegreen_core::{ErrorKind, MigrationInfo, MigrationPhase, Result};
use sha2::{Digest, Sha256};

use crate::error::err;

/// One SQL file of a migration.
#[derive(Clone, PartialEq, Eq)]
pub struct MigrationFile {
    /// Its file name, e.g. `0025_add_order_metadata.up.sql`.
    pub file_name: String,
    /// Its text.
    pub sql: String,
    /// The SHA-256 of its bytes, lowercase hex.
    pub checksum: String,
    /// Run statement by statement outside a transaction.
    pub no_transaction: bool,
    /// Overrides the runner's `lock_timeout`.
    pub lock_timeout: Option<Duration>,
    /// Overrides the runner's `statement_timeout`.
    pub statement_timeout: Option<Duration>,
}

impl fmt::Debug for MigrationFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrationFile")
            .field("file_name", &self.file_name)
            .field("checksum", &self.checksum)
            .field("no_transaction", &self.no_transaction)
            .finish_non_exhaustive()
    }
}

/// One versioned migration: its up file and optional down file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version; migrations run in version order within a phase.
    pub version: u64,
    /// The name part of the file name.
    pub name: String,
    /// Expand (before the new color starts) or contract (after the old one is at zero).
    pub phase: MigrationPhase,
    /// The up file.
    pub up: MigrationFile,
    /// The down file; `None` makes the migration irreversible.
    pub down: Option<MigrationFile>,
}

impl Migration {
    /// The engine's view of it.
    pub fn info(&self) -> MigrationInfo {
        MigrationInfo {
            version: self.version,
            name: self.name.clone(),
            phase: self.phase,
            reversible: self.down.is_some(),
        }
    }
}

/// A validated, ordered set of migrations.
#[derive(Debug, Clone, Default)]
pub struct MigrationSource {
    migrations: Vec<Migration>,
}

#[derive(Default)]
struct Pair {
    up: Option<(String, String)>,
    down: Option<(String, String)>,
    name: String,
}

impl MigrationSource {
    /// Reads every `*.sql` file of `dir` (not recursively; other files are
    /// ignored). A file whose extension is `.sql` in another case (`.SQL`,
    /// `.Sql`) is read too, and refused by name: it is never silently
    /// ignored, which would leave a migration out.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<MigrationSource> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            err(
                ErrorKind::InvalidInput,
                "load migrations",
                format!("cannot read migration directory {}: {e}", dir.display()),
            )
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                err(
                    ErrorKind::InvalidInput,
                    "load migrations",
                    format!("cannot list migration directory {}: {e}", dir.display()),
                )
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.to_ascii_lowercase().ends_with(".sql") || !entry.path().is_file() {
                continue;
            }
            let sql = std::fs::read_to_string(entry.path()).map_err(|e| {
                err(
                    ErrorKind::InvalidInput,
                    "load migrations",
                    format!("cannot read migration file {}: {e}", entry.path().display()),
                )
            })?;
            files.push((name, sql));
        }
        Self::from_files(files)
    }

    /// Builds a source from `(file name, contents)` pairs, e.g. files embedded
    /// with `include_str!`:
    ///
    /// ```
    /// # use bluegreen_postgres::MigrationSource;
    /// let source = MigrationSource::from_files([
    ///     ("0001_orders.up.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);"),
    ///     ("0001_orders.down.sql", "DROP TABLE orders;"),
    /// ])
    /// .unwrap();
    /// assert_eq!(source.migrations()[0].name, "orders");
    /// ```
    pub fn from_files<N, S>(files: impl IntoIterator<Item = (N, S)>) -> Result<MigrationSource>
    where
        N: Into<String>,
        S: Into<String>,
    {
        let mut by_version: BTreeMap<u64, Pair> = BTreeMap::new();
        for (file_name, sql) in files {
            let file_name: String = file_name.into();
            let sql: String = sql.into();
            let (version, name, is_up) = parse_file_name(&file_name)?;
            let pair = by_version.entry(version).or_default();
            let slot_other = if is_up { &pair.up } else { &pair.down };
            if let Some((other, _)) = slot_other {
                return Err(invalid(format!(
                    "duplicate migration version {version}: {other} and {file_name}"
                )));
            }
            let sibling = if is_up { &pair.down } else { &pair.up };
            if let Some((other, _)) = sibling {
                if pair.name != name {
                    return Err(invalid(format!(
                        "duplicate migration version {version}: {other} and {file_name} have different names"
                    )));
                }
            }
            pair.name = name;
            if is_up {
                pair.up = Some((file_name, sql));
            } else {
                pair.down = Some((file_name, sql));
            }
        }
        let mut migrations = Vec::with_capacity(by_version.len());
        for (version, pair) in by_version {
            let Some((up_name, up_sql)) = pair.up else {
                let (down_name, _) = pair.down.unwrap_or_default();
                return Err(invalid(format!(
                    "{down_name} has no up file (expected {version:04}_{}.up.sql)",
                    pair.name
                )));
            };
            let (up, headers) = parse_file(&up_name, up_sql, true)?;
            let down = match pair.down {
                Some((n, s)) => Some(parse_file(&n, s, false)?.0),
                None => None,
            };
            if headers.reversible && down.is_none() {
                return Err(invalid(format!(
                    "{up_name} is marked reversible but {version:04}_{}.down.sql is missing",
                    pair.name
                )));
            }
            migrations.push(Migration {
                version,
                name: pair.name,
                phase: headers.phase.unwrap_or(MigrationPhase::Expand),
                up,
                down,
            });
        }
        Ok(MigrationSource { migrations })
    }

    /// The migrations, in version order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The migration of `version`.
    pub fn get(&self, version: u64) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version == version)
    }
}

fn invalid(message: String) -> bluegreen_core::Error {
    err(ErrorKind::InvalidInput, "load migrations", message)
}

fn parse_file_name(file_name: &str) -> Result<(u64, String, bool)> {
    let bad = || {
        invalid(format!(
            "{file_name} is not named NNNN_name.up.sql or NNNN_name.down.sql"
        ))
    };
    // `.SQL`, `.UP.sql`, `.Down.Sql`...: the suffix in another case.
    let lower = file_name.to_ascii_lowercase();
    let migration_suffix = lower.ends_with(".up.sql") || lower.ends_with(".down.sql");
    let exact = file_name.ends_with(".up.sql") || file_name.ends_with(".down.sql");
    if !exact && (migration_suffix || (lower.ends_with(".sql") && !file_name.ends_with(".sql"))) {
        return Err(invalid(format!(
            "{file_name} differs only by case from a migration file name: the suffix must be .up.sql or .down.sql in lower case; rename it (it is neither ignored nor run)"
        )));
    }
    let (stem, is_up) = if let Some(s) = file_name.strip_suffix(".up.sql") {
        (s, true)
    } else if let Some(s) = file_name.strip_suffix(".down.sql") {
        (s, false)
    } else {
        return Err(bad());
    };
    let (digits, name) = stem.split_once('_').ok_or_else(bad)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(bad());
    }
    let version: u64 = digits.parse().map_err(|_| bad())?;
    Ok((version, name.to_string(), is_up))
}

#[derive(Default)]
struct Headers {
    phase: Option<MigrationPhase>,
    reversible: bool,
}

fn parse_file(file_name: &str, sql: String, is_up: bool) -> Result<(MigrationFile, Headers)> {
    let mut headers = Headers::default();
    let mut file = MigrationFile {
        file_name: file_name.to_string(),
        checksum: checksum(&sql),
        sql: String::new(),
        no_transaction: false,
        lock_timeout: None,
        statement_timeout: None,
    };
    for (i, line) in sql.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if !t.starts_with("--") {
            break;
        }
        // A lint waiver (`-- bluegreen:allow RULE: reason`) before the
        // first statement is not a directive.
        if crate::lint::waiver_body(t).is_some() {
            continue;
        }
        let comment = &t[2..];
        let Some(directives) = comment.trim().strip_prefix("bluegreen:") else {
            continue;
        };
        for d in directives
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let at = || format!("{file_name} line {}", i + 1);
            let (key, value) = d.split_once('=').unwrap_or((d, ""));
            match (key, value) {
                ("phase", "expand") if is_up => headers.phase = Some(MigrationPhase::Expand),
                ("phase", "contract") if is_up => headers.phase = Some(MigrationPhase::Contract),
                ("phase", v) if is_up => {
                    return Err(invalid(format!(
                        "{}: phase `{v}` is not expand or contract",
                        at()
                    )))
                }
                ("phase", _) | ("reversible", _) if !is_up => {
                    return Err(invalid(format!(
                        "{}: `{key}` belongs in the up file",
                        at()
                    )))
                }
                ("reversible", "") => headers.reversible = true,
                ("no-transaction", "") => file.no_transaction = true,
                ("lock_timeout" | "statement_timeout", v) => {
                    let dur = humantime::parse_duration(v).map_err(|e| {
                        invalid(format!("{}: {key} `{v}` is not a duration ({e})", at()))
                    })?;
                    if key == "lock_timeout" {
                        file.lock_timeout = Some(dur);
                    } else {
                        file.statement_timeout = Some(dur);
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "{}: unknown directive `{d}` (expected phase=expand|contract, no-transaction, reversible, lock_timeout=, statement_timeout=)",
                        at()
                    )))
                }
            }
        }
    }
    file.sql = sql;
    if split_statements(&file.sql).is_empty() {
        return Err(invalid(format!("{file_name} contains no SQL statement")));
    }
    Ok((file, headers))
}

/// The SHA-256 of `text`, lowercase hex.
pub fn checksum(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One statement of a file, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement text, without the terminating `;`.
    pub text: String,
    /// The character offset of its first character in the file.
    pub offset: usize,
}

/// Splits SQL into statements at top-level `;`, respecting quotes
/// (`'…'`, `"…"`, `E'…'`, dollar quotes) and comments (`--`, nested `/* */`).
/// Statements that are only whitespace and comments are dropped.
pub fn split_statements(sql: &str) -> Vec<Statement> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut has_code = false;
    let mut code_start = None;
    let mut code_end = 0usize;
    let n = chars.len();
    let mut push = |from: usize, to: usize, code_from: Option<usize>, has: bool| {
        if has {
            let from = code_from.unwrap_or(from);
            let text: String = chars[from..to.max(from)].iter().collect();
            out.push(Statement {
                text: text.trim_end().to_string(),
                offset: from,
            });
        }
    };
    while i < n {
        let c = chars[i];
        match c {
            '-' if i + 1 < n && chars[i + 1] == '-' => {
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if i + 1 < n && chars[i + 1] == '*' => {
                let mut depth = 1;
                i += 2;
                while i < n && depth > 0 {
                    if chars[i] == '/' && i + 1 < n && chars[i + 1] == '*' {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && i + 1 < n && chars[i + 1] == '/' {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            ';' => {
                push(start, code_end, code_start, has_code);
                i += 1;
                start = i;
                has_code = false;
                code_start = None;
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() && !has_code {
            has_code = true;
            code_start = Some(i);
        }
        match c {
            '\'' => {
                // E'..' strings allow backslash escapes.
                let escapes = i > 0 && matches!(chars[i - 1], 'e' | 'E');
                i += 1;
                while i < n {
                    if escapes && chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == '\'' {
                        if i + 1 < n && chars[i + 1] == '\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                i += 1;
                while i < n && chars[i] != '"' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                // A dollar quote: $tag$ … $tag$, tag empty or an identifier.
                let mut j = i + 1;
                while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let tag_is_ident = j == i + 1 || !chars[i + 1].is_ascii_digit();
                if j < n && chars[j] == '$' && tag_is_ident {
                    let tag: Vec<char> = chars[i..=j].to_vec();
                    let mut k = j + 1;
                    let mut end = None;
                    while k + tag.len() <= n {
                        if chars[k..k + tag.len()] == tag[..] {
                            end = Some(k + tag.len());
                            break;
                        }
                        k += 1;
                    }
                    i = end.unwrap_or(n);
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
        if !c.is_whitespace() {
            code_end = i.min(n);
        }
    }
    push(start, code_end, code_start, has_code);
    out
}

/// The 1-based line and column of character `offset` (0-based) in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for c in text.chars().take(offset) {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let sql = "-- bluegreen: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n\
                   INSERT INTO t VALUES ('a;b', E'c\\';d', \"x;y\");\n\
                   DO $body$ BEGIN PERFORM 1; END $body$;\n/* a; /* nested; */ */ SELECT $$;$$\n-- trailing;\n";
        let st = split_statements(sql);
        let texts: Vec<&str> = st.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "CREATE INDEX CONCURRENTLY i ON t (a)",
                "INSERT INTO t VALUES ('a;b', E'c\\';d', \"x;y\")",
                "DO $body$ BEGIN PERFORM 1; END $body$",
                "SELECT $$;$$",
            ]
        );
        assert_eq!(line_col(sql, st[1].offset), (3, 1));
    }

    #[test]
    fn headers_set_phase_and_transaction_mode() {
        let s = MigrationSource::from_files([
            ("0002_drop_legacy.up.sql", "-- bluegreen: phase=contract\n-- bluegreen: no-transaction, lock_timeout=2s\nDROP INDEX CONCURRENTLY legacy;"),
            ("0001_add.up.sql", "-- bluegreen: reversible\nALTER TABLE t ADD c int;"),
            ("0001_add.down.sql", "ALTER TABLE t DROP c;"),
        ])
        .unwrap();
        let m = s.migrations();
        assert_eq!(
            (m[0].version, m[0].phase, m[0].down.is_some()),
            (1, MigrationPhase::Expand, true)
        );
        assert_eq!(
            (m[1].version, m[1].phase, m[1].down.is_some()),
            (2, MigrationPhase::Contract, false)
        );
        assert!(m[1].up.no_transaction);
        assert_eq!(m[1].up.lock_timeout, Some(Duration::from_secs(2)));
        assert_eq!(m[0].up.checksum.len(), 64);
    }

    #[test]
    fn duplicate_versions_name_both_files() {
        let e = MigrationSource::from_files([
            ("0003_a.up.sql", "SELECT 1;"),
            ("3_b.up.sql", "SELECT 2;"),
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let m = e.to_string();
        assert!(
            m.contains("0003_a.up.sql") && m.contains("3_b.up.sql"),
            "{m}"
        );
    }

    #[test]
    fn a_reversible_migration_without_down_file_is_refused() {
        let e = MigrationSource::from_files([(
            "0007_add_col.up.sql",
            "-- bluegreen: reversible\nALTER TABLE t ADD c int;",
        )])
        .unwrap_err();
        assert!(
            e.to_string().contains("0007_add_col.down.sql is missing"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_directives_name_the_file() {
        let e = MigrationSource::from_files([("025_add.sql", "SELECT 1;")]).unwrap_err();
        assert!(e.to_string().contains("025_add.sql is not named"), "{e}");
        let e =
            MigrationSource::from_files([("1_a.up.sql", "-- bluegreen: phase=later\nSELECT 1;")])
                .unwrap_err();
        assert!(e.to_string().contains("1_a.up.sql line 1"), "{e}");
        for name in ["1_a.up.SQL", "1_a.UP.sql", "1_a.Down.Sql"] {
            let e = MigrationSource::from_files([(name, "SELECT 1;")]).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("{name} differs only by case")),
                "{e}"
            );
        }
        let e = MigrationSource::from_files([("1_a.down.sql", "SELECT 1;")]).unwrap_err();
        assert!(e.to_string().contains("1_a.down.sql has no up file"), "{e}");
    }
}
