//! The backward-compatibility lint of expand migrations: see [`Rule`] for
//! what it checks, [`lint_expand_file`] and [`MigrationSource::lint`].

use std::collections::BTreeSet;
use std::fmt;

use bluegreen_core::{ErrorKind, MigrationPhase, Result};
use pg_query::protobuf::{
    AlterTableType, ConstrType, Node, ObjectType, RangeVar, RawStmt, ScanToken, Token,
};
use pg_query::NodeEnum;
use serde::Serialize;

use crate::error::err;
use crate::source::MigrationSource;

/// A rule of the backward-compatibility lint of expand migrations.
///
/// An expand migration runs while the old color still serves traffic, and the
/// old color keeps running against the expanded schema until it is scaled to
/// zero. So an expand file must leave every table and column the old release
/// uses in place, under the same name and type, must not make the old
/// release's writes fail, and must not hold a lock that stops the old color
/// for longer than a moment. Contract files run after the old color is at
/// zero, and may do all of these; they are not linted, nor are down files.
///
/// Every statement is parsed by PostgreSQL's own parser (libpg_query, through
/// the [`pg_query`] crate), never matched with patterns. The rules, named as
/// [Squawk](https://squawkhq.com/docs/rules) names them:
///
/// | rule | an expand file must not |
/// | --- | --- |
/// | `ban-drop-column` | `ALTER TABLE … DROP COLUMN` |
/// | `ban-drop-table` | `DROP TABLE` |
/// | `renaming-column` | `ALTER TABLE … RENAME COLUMN` |
/// | `renaming-table` | `ALTER TABLE … RENAME TO`, `ALTER TABLE … SET SCHEMA` |
/// | `adding-required-field` | `ADD COLUMN … NOT NULL` (or `PRIMARY KEY`) without a `DEFAULT`, identity, generated value or serial type |
/// | `adding-not-nullable-field` | `ALTER COLUMN … SET NOT NULL`, `ADD CONSTRAINT … NOT NULL` |
/// | `changing-column-type` | `ALTER COLUMN … TYPE` |
/// | `require-concurrent-index-creation` | `CREATE INDEX` without `CONCURRENTLY` |
/// | `constraint-missing-not-valid` | `ADD CONSTRAINT` of a foreign key or check without `NOT VALID` (add it `NOT VALID`, then `VALIDATE CONSTRAINT` in a later statement) |
///
/// A table created earlier in the same file is new: the old release cannot
/// use it, so statements on it are not findings.
///
/// A finding is waived by a comment on the line(s) before its statement,
/// naming the rule and saying why the old color is safe:
///
/// ```sql
/// -- bluegreen:allow ban-drop-column: the old release never reads legacy_flag
/// ALTER TABLE orders DROP COLUMN legacy_flag;
/// ```
///
/// Each waiver names one rule. These are findings no waiver silences:
///
/// * `syntax-error`: the file does not parse (or holds a NUL byte); the
///   finding names the line of the statement that does not parse, with the
///   parser's message;
/// * `invalid-waiver`: a waiver without a reason, naming an unknown rule,
///   placed elsewhere than on the lines before a statement (inside one, on
///   the line of the previous statement's end, after the last one), or
///   waiving a rule its statement does not break.
///
/// [`Rule::name`] is a rule's name in findings and waivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// `ban-drop-column`: the old release still reads and writes the column.
    BanDropColumn,
    /// `ban-drop-table`: the old release still uses the table.
    BanDropTable,
    /// `renaming-column`: the old release's queries use the old name.
    RenamingColumn,
    /// `renaming-table`: the old release's queries use the old name (or schema).
    RenamingTable,
    /// `adding-required-field`: a new NOT NULL column without a default
    /// makes the old release's INSERTs, which leave it out, fail.
    AddingRequiredField,
    /// `adding-not-nullable-field`: SET NOT NULL fails the old release's
    /// writes of NULL, and scans the table under an ACCESS EXCLUSIVE lock.
    AddingNotNullableField,
    /// `changing-column-type`: the old release reads and writes the old type,
    /// and the rewrite holds an ACCESS EXCLUSIVE lock.
    ChangingColumnType,
    /// `require-concurrent-index-creation`: CREATE INDEX without
    /// CONCURRENTLY blocks writes to the table while the index builds.
    RequireConcurrentIndexCreation,
    /// `constraint-missing-not-valid`: a foreign key or check added without
    /// NOT VALID checks every row while holding a lock that blocks writes.
    ConstraintMissingNotValid,
    /// `syntax-error`: the file does not parse. Cannot be waived.
    SyntaxError,
    /// `invalid-waiver`: a waiver without a reason, of an unknown rule,
    /// misplaced, or waiving nothing. Cannot be waived.
    InvalidWaiver,
}

impl Rule {
    /// The rules a waiver may name: every rule but `syntax-error` and
    /// `invalid-waiver`.
    pub const WAIVABLE: [Rule; 9] = [
        Rule::BanDropColumn,
        Rule::BanDropTable,
        Rule::RenamingColumn,
        Rule::RenamingTable,
        Rule::AddingRequiredField,
        Rule::AddingNotNullableField,
        Rule::ChangingColumnType,
        Rule::RequireConcurrentIndexCreation,
        Rule::ConstraintMissingNotValid,
    ];

    /// Its name, e.g. `ban-drop-column`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::BanDropColumn => "ban-drop-column",
            Rule::BanDropTable => "ban-drop-table",
            Rule::RenamingColumn => "renaming-column",
            Rule::RenamingTable => "renaming-table",
            Rule::AddingRequiredField => "adding-required-field",
            Rule::AddingNotNullableField => "adding-not-nullable-field",
            Rule::ChangingColumnType => "changing-column-type",
            Rule::RequireConcurrentIndexCreation => "require-concurrent-index-creation",
            Rule::ConstraintMissingNotValid => "constraint-missing-not-valid",
            Rule::SyntaxError => "syntax-error",
            Rule::InvalidWaiver => "invalid-waiver",
        }
    }

    /// The waivable rule named `name`.
    pub fn waivable_from_name(name: &str) -> Option<Rule> {
        Rule::WAIVABLE.into_iter().find(|r| r.name() == name)
    }

    /// Whether a waiver may silence it.
    pub fn is_waivable(self) -> bool {
        Rule::WAIVABLE.contains(&self)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One finding: a statement of an expand file that breaks the old color (or
/// a file or waiver the lint cannot accept). Displayed as
/// `file:line: rule: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file name, e.g. `0025_add_order_metadata.up.sql`.
    pub file: String,
    /// The 1-based line of the statement's first token in the file.
    pub line: usize,
    /// The rule it breaks.
    pub rule: Rule,
    /// One line: what the statement does and why it breaks the old color.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.rule, self.message
        )
    }
}

impl MigrationSource {
    /// Lints the up file of every expand migration (contract migrations and
    /// down files are not linted; [`Rule`] lists the rules and waivers):
    /// every finding, in version and line order. Never fails: a file that
    /// does not parse is a `syntax-error` finding.
    /// Empty when the expand files leave the old color working.
    pub fn lint(&self) -> Vec<Finding> {
        self.migrations()
            .iter()
            .filter(|m| m.phase == MigrationPhase::Expand)
            .flat_map(|m| lint_expand_file(&m.up.file_name, &m.up.sql))
            .collect()
    }

    /// [`lint`](Self::lint), as a refusal: an
    /// [`ErrorKind::InvalidInput`] error (permanent) listing every finding
    /// as `file:line: rule: message`, or `Ok` when there is none.
    pub fn check_backward_compatible(&self) -> Result<()> {
        refuse_findings(&self.lint())
    }
}

/// An [`ErrorKind::InvalidInput`] error listing `findings`, one a line, or
/// `Ok` when there is none.
pub fn refuse_findings(findings: &[Finding]) -> Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = findings.iter().map(|f| format!("  {f}")).collect();
    Err(err(
        ErrorKind::InvalidInput,
        "lint migrations",
        format!(
            "{} finding{} in expand migrations, which run while the old color still serves (move the statement to a contract migration, make it safe, or waive it with `-- bluegreen:allow RULE: why the old color is safe` on the line before):\n{}",
            findings.len(),
            if findings.len() == 1 { "" } else { "s" },
            list.join("\n")
        ),
    ))
}

/// Lints one file as an expand migration: its findings in line order.
///
/// ```
/// use bluegreen_postgres::{lint_expand_file, Rule};
///
/// let f = lint_expand_file("0003_tidy.up.sql", "ALTER TABLE orders ADD note text;\n\nALTER TABLE orders DROP COLUMN legacy_flag;\n");
/// assert_eq!((f[0].line, f[0].rule), (3, Rule::BanDropColumn));
/// assert_eq!(f[0].to_string(), "0003_tidy.up.sql:3: ban-drop-column: drops column orders.legacy_flag, which the old color still reads and writes");
///
/// let waived = "-- bluegreen:allow ban-drop-column: the old release never reads legacy_flag\nALTER TABLE orders DROP COLUMN legacy_flag;\n";
/// assert!(lint_expand_file("0003_tidy.up.sql", waived).is_empty());
/// ```
pub fn lint_expand_file(file_name: &str, sql: &str) -> Vec<Finding> {
    let finding = |line: usize, rule: Rule, message: String| Finding {
        file: file_name.to_string(),
        line,
        rule,
        message,
    };
    if let Some(at) = sql.find('\0') {
        return vec![finding(
            line_of(sql, at),
            Rule::SyntaxError,
            "the file holds a NUL byte".into(),
        )];
    }
    let tokens = match pg_query::scan(sql) {
        Ok(s) => s.tokens,
        Err(e) => {
            return vec![finding(
                first_unscannable_line(sql),
                Rule::SyntaxError,
                parser_message(&e),
            )]
        }
    };
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p.protobuf,
        Err(e) => {
            let (line, message) = failing_statement(sql).unwrap_or((1, parser_message(&e)));
            return vec![finding(line, Rule::SyntaxError, message)];
        }
    };
    let stmts = statements(sql, &parsed.stmts, &tokens);
    let mut out = Vec::new();
    // Waivers, each attached to the statement that follows it, or refused.
    let mut waivers: Vec<Vec<(Rule, usize)>> = vec![Vec::new(); stmts.len()];
    for t in tokens.iter().filter(|t| is_comment(t)) {
        let (start, end) = (t.start as usize, t.end as usize);
        let Some(body) = sql.get(start..end).and_then(waiver_body) else {
            continue;
        };
        let line = line_of(sql, start);
        let (rule, reason) = body.split_once(':').unwrap_or((body, ""));
        let rule = rule.trim();
        let Some(rule) = Rule::waivable_from_name(rule) else {
            let names: Vec<&str> = Rule::WAIVABLE.iter().map(|r| r.name()).collect();
            out.push(finding(
                line,
                Rule::InvalidWaiver,
                format!(
                    "waiver of unknown rule `{rule}` (rules: {})",
                    names.join(", ")
                ),
            ));
            continue;
        };
        if reason.trim().is_empty() {
            out.push(finding(
                line,
                Rule::InvalidWaiver,
                format!("waiver of {rule} without a reason: write `-- bluegreen:allow {rule}: why the old color is safe`"),
            ));
            continue;
        }
        match attached_to(&stmts, sql, start, end) {
            Some(i) => waivers[i].push((rule, line)),
            None => out.push(finding(
                line,
                Rule::InvalidWaiver,
                format!("waiver of {rule} is not on the line(s) before a statement, so it waives nothing"),
            )),
        }
    }
    let mut created: Vec<RangeVar> = Vec::new();
    for (i, s) in stmts.iter().enumerate() {
        let mut found: Vec<(Rule, String)> = Vec::new();
        if let Some(node) = s.node {
            check(node, &created, &mut found);
            if let Some(NodeEnum::CreateStmt(c)) = &node.node {
                created.extend(c.relation.clone());
            }
        }
        let rules: BTreeSet<Rule> = found.iter().map(|(r, _)| *r).collect();
        for (rule, line) in &waivers[i] {
            if !rules.contains(rule) {
                out.push(finding(
                    *line,
                    Rule::InvalidWaiver,
                    format!(
                        "waiver of {rule} waives nothing: the statement on line {} does not break {rule}",
                        s.line
                    ),
                ));
            }
        }
        for (rule, message) in found {
            if !waivers[i].iter().any(|(r, _)| *r == rule) {
                out.push(finding(s.line, rule, message));
            }
        }
    }
    out.sort_by_key(|f| f.line);
    out
}

/// The text of a waiver comment after `bluegreen:allow`, or `None` for any
/// other comment. `comment` is the whole comment, `--` or `/* */` included.
pub(crate) fn waiver_body(comment: &str) -> Option<&str> {
    let inner = if let Some(c) = comment.strip_prefix("--") {
        c
    } else {
        comment.strip_prefix("/*")?.strip_suffix("*/")?
    };
    let rest = inner.trim().strip_prefix("bluegreen:")?.trim_start();
    let rest = rest.strip_prefix("allow")?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// One statement of a parsed file.
struct Stmt<'a> {
    node: Option<&'a Node>,
    /// Byte offset of its first token.
    first: usize,
    /// Byte offset just past its text (its `;`, when it has one, follows).
    end: usize,
    /// 1-based line of its first token.
    line: usize,
}

fn statements<'a>(sql: &str, raw: &'a [RawStmt], tokens: &[ScanToken]) -> Vec<Stmt<'a>> {
    raw.iter()
        .map(|r| {
            // The parser's location may point at the whitespace and comments
            // after the previous statement's `;`: the statement starts at its
            // first token that is not a comment.
            let loc = r.stmt_location.max(0) as usize;
            let end = if r.stmt_len > 0 {
                loc + r.stmt_len as usize
            } else {
                sql.len()
            };
            let first = tokens
                .iter()
                .find(|t| t.start as usize >= loc && !is_comment(t))
                .map_or(loc, |t| t.start as usize);
            Stmt {
                node: r.stmt.as_deref(),
                first,
                end,
                line: line_of(sql, first),
            }
        })
        .collect()
}

/// The statement a waiver comment at `start..end` is attached to: the next
/// one, when the comment lies between it and the previous one, on a line
/// after the one where the previous statement ends.
fn attached_to(stmts: &[Stmt<'_>], sql: &str, start: usize, end: usize) -> Option<usize> {
    let i = stmts.iter().position(|s| s.first >= end)?;
    if i > 0 {
        let prev = &stmts[i - 1];
        if start < prev.end || line_of(sql, start) <= line_of(sql, prev.end) {
            return None;
        }
    }
    Some(i)
}

fn is_comment(t: &ScanToken) -> bool {
    t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32
}

/// 1-based line of byte `offset`.
fn line_of(sql: &str, offset: usize) -> usize {
    let offset = offset.min(sql.len());
    sql.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parser_message(e: &pg_query::Error) -> String {
    let m = match e {
        pg_query::Error::Parse(m) | pg_query::Error::Scan(m) | pg_query::Error::Split(m) => {
            m.clone()
        }
        other => other.to_string(),
    };
    // One line: the parser may quote the rest of the file ("at or near").
    let mut line: String = m.lines().next().unwrap_or("").chars().take(200).collect();
    if line.len() < m.trim_end().len() {
        line.push('…');
    }
    format!("does not parse: {line}")
}

/// The line where the scanner first fails (an unterminated quote or
/// comment starts there): the fewest leading lines that do not scan.
fn first_unscannable_line(sql: &str) -> usize {
    let ends: Vec<usize> = sql
        .match_indices('\n')
        .map(|(i, _)| i)
        .chain([sql.len()])
        .collect();
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pg_query::scan(&sql[..ends[mid]]).is_err() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo + 1
}

/// The line and parser message of the first statement that does not parse.
fn failing_statement(sql: &str) -> Option<(usize, String)> {
    let pieces = pg_query::split_with_scanner(sql).ok()?;
    for piece in pieces {
        if let Err(e) = pg_query::parse(piece, 0) {
            let offset = piece.as_ptr() as usize - sql.as_ptr() as usize;
            let lead = pg_query::scan(piece)
                .ok()
                .and_then(|s| s.tokens.iter().find(|t| !is_comment(t)).map(|t| t.start))
                .unwrap_or(0)
                .max(0) as usize;
            return Some((line_of(sql, offset + lead), parser_message(&e)));
        }
    }
    None
}

fn table(r: Option<&RangeVar>) -> String {
    match r {
        Some(r) if !r.schemaname.is_empty() => format!("{}.{}", r.schemaname, r.relname),
        Some(r) => r.relname.clone(),
        None => "?".into(),
    }
}

/// Whether `r` names a table created earlier in the file.
fn is_new(r: Option<&RangeVar>, created: &[RangeVar]) -> bool {
    let Some(r) = r else { return false };
    created.iter().any(|c| {
        c.relname == r.relname
            && (c.schemaname == r.schemaname || c.schemaname.is_empty() || r.schemaname.is_empty())
    })
}

/// The findings of one statement.
fn check(node: &Node, created: &[RangeVar], found: &mut Vec<(Rule, String)>) {
    let Some(n) = &node.node else { return };
    match n {
        NodeEnum::AlterTableStmt(a) => {
            let rel = a.relation.as_ref();
            if a.objtype() != ObjectType::ObjectTable || is_new(rel, created) {
                return;
            }
            let t = table(rel);
            for cmd in &a.cmds {
                let Some(NodeEnum::AlterTableCmd(c)) = &cmd.node else {
                    continue;
                };
                match c.subtype() {
                    AlterTableType::AtDropColumn => found.push((
                        Rule::BanDropColumn,
                        format!(
                            "drops column {t}.{}, which the old color still reads and writes",
                            c.name
                        ),
                    )),
                    AlterTableType::AtAlterColumnType => found.push((
                        Rule::ChangingColumnType,
                        format!("changes the type of {t}.{}: the old color reads and writes the old type, and the rewrite holds an ACCESS EXCLUSIVE lock that blocks it", c.name),
                    )),
                    AlterTableType::AtSetNotNull => found.push((
                        Rule::AddingNotNullableField,
                        format!("sets {t}.{} NOT NULL: the old color's writes of NULL fail, and the check scans the table under an ACCESS EXCLUSIVE lock that blocks it", c.name),
                    )),
                    AlterTableType::AtAddColumn => {
                        if let Some(NodeEnum::ColumnDef(col)) =
                            c.def.as_ref().and_then(|d| d.node.as_ref())
                        {
                            if is_required(col) {
                                found.push((
                                    Rule::AddingRequiredField,
                                    format!("adds column {t}.{} NOT NULL without a DEFAULT: the old color's INSERTs leave it out and fail", col.colname),
                                ));
                            }
                        }
                    }
                    AlterTableType::AtAddConstraint => {
                        if let Some(NodeEnum::Constraint(k)) =
                            c.def.as_ref().and_then(|d| d.node.as_ref())
                        {
                            let name = if k.conname.is_empty() {
                                String::new()
                            } else {
                                format!(" {}", k.conname)
                            };
                            match k.contype() {
                                ConstrType::ConstrForeign | ConstrType::ConstrCheck
                                    if !k.skip_validation =>
                                {
                                    let kind = if k.contype() == ConstrType::ConstrForeign {
                                        "foreign key"
                                    } else {
                                        "check"
                                    };
                                    found.push((
                                        Rule::ConstraintMissingNotValid,
                                        format!("adds {kind} constraint{name} on {t} without NOT VALID: checking every row holds a lock that blocks the old color's writes (add it NOT VALID, then VALIDATE CONSTRAINT)"),
                                    ));
                                }
                                ConstrType::ConstrNotnull => found.push((
                                    Rule::AddingNotNullableField,
                                    format!("adds NOT NULL constraint{name} on {t}: the old color's writes of NULL fail, and the check scans the table under an ACCESS EXCLUSIVE lock that blocks it"),
                                )),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        NodeEnum::RenameStmt(r) => {
            let rel = r.relation.as_ref();
            if is_new(rel, created) {
                return;
            }
            let t = table(rel);
            match r.rename_type() {
                ObjectType::ObjectColumn if r.relation_type() == ObjectType::ObjectTable => found
                    .push((
                        Rule::RenamingColumn,
                        format!(
                            "renames column {t}.{} to {}: the old color's queries still use the old name",
                            r.subname, r.newname
                        ),
                    )),
                ObjectType::ObjectTable => found.push((
                    Rule::RenamingTable,
                    format!(
                        "renames table {t} to {}: the old color's queries still use the old name",
                        r.newname
                    ),
                )),
                _ => {}
            }
        }
        NodeEnum::AlterObjectSchemaStmt(s) => {
            let rel = s.relation.as_ref();
            if s.object_type() == ObjectType::ObjectTable && !is_new(rel, created) {
                found.push((
                    Rule::RenamingTable,
                    format!(
                        "moves table {} to schema {}: the old color's queries still find it where it was",
                        table(rel),
                        s.newschema
                    ),
                ));
            }
        }
        NodeEnum::DropStmt(d) if d.remove_type() == ObjectType::ObjectTable => {
            for object in &d.objects {
                let name = qualified_name(object);
                let r = RangeVar {
                    relname: name.last().cloned().unwrap_or_default(),
                    schemaname: if name.len() > 1 {
                        name[name.len() - 2].clone()
                    } else {
                        String::new()
                    },
                    ..RangeVar::default()
                };
                if !is_new(Some(&r), created) {
                    found.push((
                        Rule::BanDropTable,
                        format!(
                            "drops table {}, which the old color still uses",
                            name.join(".")
                        ),
                    ));
                }
            }
        }
        NodeEnum::IndexStmt(i) => {
            let rel = i.relation.as_ref();
            if !i.concurrent && !is_new(rel, created) {
                let name = if i.idxname.is_empty() {
                    String::new()
                } else {
                    format!(" {}", i.idxname)
                };
                found.push((
                    Rule::RequireConcurrentIndexCreation,
                    format!(
                        "creates index{name} on {} without CONCURRENTLY: its SHARE lock blocks the old color's writes to the table while the index builds",
                        table(rel)
                    ),
                ));
            }
        }
        _ => {}
    }
}

/// The parts of a dotted name (a `List` of `String` nodes).
fn qualified_name(node: &Node) -> Vec<String> {
    match &node.node {
        Some(NodeEnum::List(l)) => l
            .items
            .iter()
            .filter_map(|i| match &i.node {
                Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a column added to an existing table is NOT NULL (or a primary
/// key) with no value for the rows and INSERTs that leave it out: no
/// DEFAULT, identity, generated expression or serial type.
fn is_required(col: &pg_query::protobuf::ColumnDef) -> bool {
    let kinds: Vec<ConstrType> = col
        .constraints
        .iter()
        .filter_map(|c| match &c.node {
            Some(NodeEnum::Constraint(k)) => Some(k.contype()),
            _ => None,
        })
        .collect();
    let not_null = col.is_not_null
        || kinds
            .iter()
            .any(|k| matches!(k, ConstrType::ConstrNotnull | ConstrType::ConstrPrimary));
    let has_value = col.raw_default.is_some()
        || !col.identity.is_empty()
        || !col.generated.is_empty()
        || kinds.iter().any(|k| {
            matches!(
                k,
                ConstrType::ConstrDefault | ConstrType::ConstrIdentity | ConstrType::ConstrGenerated
            )
        })
        || col.type_name.as_ref().is_some_and(|t| {
            t.names.iter().any(|n| {
                matches!(&n.node, Some(NodeEnum::String(s))
                    if matches!(s.sval.as_str(), "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8"))
            })
        });
    not_null && !has_value
}
