//! What a statement a dead runner may have finished left in the catalog.
//!
//! When a runner dies part way through a no-transaction file, the ledger
//! says how many statements it recorded as done; the abandoned session may
//! still have finished the next one (its commit raced the kill, or the
//! server ran it to the end after the client was gone). For the statements
//! whose effect can be read from the catalog, the next run looks:
//! `CREATE INDEX` (the index exists and is valid), `CREATE TABLE`,
//! `ALTER TABLE … ADD COLUMN` / `ADD CONSTRAINT` / `VALIDATE CONSTRAINT` /
//! `DROP COLUMN` / `DROP CONSTRAINT`, `DROP INDEX` and `DROP TABLE`. Each of
//! these is atomic except the `CONCURRENTLY` forms, whose half-done state
//! (an INVALID index) is reported as such. Anything else is reported as
//! unknown. The statement is recognised by its leading keywords, not parsed;
//! an effect that was there before the statement ran reads as done too, so
//! the report says "appears to have completed".

use tokio_postgres::Client;

/// The effect a statement leaves when it completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `CREATE INDEX`: the index exists and is valid.
    Index(String),
    /// `CREATE TABLE`: the table exists.
    Table(String),
    /// `ALTER TABLE t ADD COLUMN c`: the column exists.
    Column(String, String),
    /// `ALTER TABLE t ADD CONSTRAINT c`: the constraint exists.
    Constraint(String, String),
    /// `ALTER TABLE t VALIDATE CONSTRAINT c`: the constraint is validated.
    Validated(String, String),
    /// `ALTER TABLE t DROP COLUMN c`: the column is gone.
    ColumnGone(String, String),
    /// `ALTER TABLE t DROP CONSTRAINT c`: the constraint is gone.
    ConstraintGone(String, String),
    /// `DROP INDEX i`: the index is gone.
    IndexGone(String),
    /// `DROP TABLE t`: the table is gone.
    TableGone(String),
}

/// Splits a statement into words, `(` and `,` standing alone, comments
/// dropped; quoted identifiers stay whole.
fn words(sql: &str) -> Vec<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            flush(&mut cur, &mut out);
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            flush(&mut cur, &mut out);
            continue;
        }
        if c == '"' {
            cur.push(c);
            i += 1;
            while i < chars.len() {
                cur.push(chars[i]);
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        cur.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            flush(&mut cur, &mut out);
        } else if c == '(' || c == ',' || c == ')' || c == ';' {
            flush(&mut cur, &mut out);
            out.push(c.to_string());
        } else {
            cur.push(c);
        }
        i += 1;
    }
    flush(&mut cur, &mut out);
    out
}

/// A name as the catalog stores it: unquoted, or folded to lower case.
pub(crate) fn catalog_name(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_lowercase(),
    }
}

/// The effect `sql` leaves when it completes, when it is one the catalog shows.
pub(crate) fn effect_of(sql: &str) -> Option<Effect> {
    let w = words(sql);
    let mut i;
    let is = |i: usize, kw: &str| w.get(i).is_some_and(|x| x.eq_ignore_ascii_case(kw));
    let name_at = |i: usize| -> Option<String> {
        let n = w.get(i)?;
        let reserved = ["(", ",", ")", ";", "on", "if", "only"];
        (!reserved.iter().any(|r| n.eq_ignore_ascii_case(r))).then(|| n.clone())
    };
    // Skips `IF NOT EXISTS` / `IF EXISTS` at i.
    let skip_if = |i: &mut usize| {
        if is(*i, "if") {
            *i += if is(*i + 1, "not") { 3 } else { 2 };
        }
    };
    if is(0, "create") {
        i = 1;
        if is(i, "unique") {
            i += 1;
        }
        if is(i, "index") {
            i += 1;
            if is(i, "concurrently") {
                i += 1;
            }
            skip_if(&mut i);
            let name = name_at(i)?;
            if !is(i + 1, "on") {
                return None;
            }
            let mut t = i + 2;
            if is(t, "only") {
                t += 1;
            }
            // The index lives in its table's schema.
            let table = w.get(t)?;
            let name = match table.rsplit_once('.') {
                Some((schema, _)) if !name.contains('.') => format!("{schema}.{name}"),
                _ => name,
            };
            return Some(Effect::Index(name));
        }
        if is(i, "table") {
            i += 1;
            skip_if(&mut i);
            return Some(Effect::Table(name_at(i)?));
        }
        return None;
    }
    if is(0, "drop") && (is(1, "index") || is(1, "table")) {
        let index = is(1, "index");
        i = 2;
        if is(i, "concurrently") {
            i += 1;
        }
        skip_if(&mut i);
        let name = name_at(i)?;
        if is(i + 1, ",") {
            return None;
        }
        return Some(if index {
            Effect::IndexGone(name)
        } else {
            Effect::TableGone(name)
        });
    }
    if is(0, "alter") && is(1, "table") {
        i = 2;
        skip_if(&mut i);
        if is(i, "only") {
            i += 1;
        }
        let table = name_at(i)?;
        i += 1;
        if is(i, "add") {
            i += 1;
            if is(i, "constraint") {
                return Some(Effect::Constraint(table, catalog_name(&name_at(i + 1)?)));
            }
            let keywords = ["primary", "unique", "check", "foreign", "exclude"];
            if keywords.iter().any(|k| is(i, k)) {
                return None;
            }
            if is(i, "column") {
                i += 1;
            }
            skip_if(&mut i);
            return Some(Effect::Column(table, catalog_name(&name_at(i)?)));
        }
        if is(i, "validate") && is(i + 1, "constraint") {
            return Some(Effect::Validated(table, catalog_name(&name_at(i + 2)?)));
        }
        if is(i, "drop") {
            i += 1;
            if is(i, "constraint") {
                i += 1;
                skip_if(&mut i);
                return Some(Effect::ConstraintGone(table, catalog_name(&name_at(i)?)));
            }
            if is(i, "column") {
                i += 1;
            }
            skip_if(&mut i);
            return Some(Effect::ColumnGone(table, catalog_name(&name_at(i)?)));
        }
    }
    None
}

/// Whether `effect` is in place, and what the catalog showed; `Err` when the
/// catalog could not be read.
pub(crate) async fn look(
    client: &Client,
    effect: &Effect,
) -> Result<(Option<bool>, String), tokio_postgres::Error> {
    let relation = |name: String| async move {
        client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&name])
            .await
            .map(|r| r.get::<_, bool>(0))
    };
    let column = |table: String, col: String| async move {
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1::text) AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
                &[&table, &col],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
    };
    let constraint = |table: String, name: String| async move {
        client
            .query_opt(
                "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1::text) AND conname = $2",
                &[&table, &name],
            )
            .await
            .map(|r| r.map(|r| r.get::<_, bool>(0)))
    };
    Ok(match effect {
        Effect::Index(name) => {
            let valid: Option<bool> = client
                .query_opt(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1::text)",
                    &[name],
                )
                .await?
                .map(|r| r.get(0));
            match valid {
                Some(true) => (Some(true), format!("index {name} exists and is valid")),
                Some(false) => (
                    Some(false),
                    format!("index {name} exists but is INVALID (a build that did not finish; drop it with DROP INDEX CONCURRENTLY {name})"),
                ),
                None => (Some(false), format!("index {name} does not exist")),
            }
        }
        Effect::Table(name) => match relation(name.clone()).await? {
            true => (Some(true), format!("table {name} exists")),
            false => (Some(false), format!("table {name} does not exist")),
        },
        Effect::TableGone(name) => match relation(name.clone()).await? {
            true => (Some(false), format!("table {name} still exists")),
            false => (Some(true), format!("table {name} no longer exists")),
        },
        Effect::IndexGone(name) => match relation(name.clone()).await? {
            true => (Some(false), format!("index {name} still exists")),
            false => (Some(true), format!("index {name} no longer exists")),
        },
        Effect::Column(t, c) => match column(t.clone(), c.clone()).await? {
            true => (Some(true), format!("column {t}.{c} exists")),
            false => (Some(false), format!("column {t}.{c} does not exist")),
        },
        Effect::ColumnGone(t, c) => match column(t.clone(), c.clone()).await? {
            true => (Some(false), format!("column {t}.{c} still exists")),
            false => (Some(true), format!("column {t}.{c} no longer exists")),
        },
        Effect::Constraint(t, c) => match constraint(t.clone(), c.clone()).await? {
            Some(_) => (Some(true), format!("constraint {c} on {t} exists")),
            None => (Some(false), format!("constraint {c} on {t} does not exist")),
        },
        Effect::Validated(t, c) => match constraint(t.clone(), c.clone()).await? {
            Some(true) => (Some(true), format!("constraint {c} on {t} is validated")),
            Some(false) => (
                Some(false),
                format!("constraint {c} on {t} is not validated yet"),
            ),
            None => (Some(false), format!("constraint {c} on {t} does not exist")),
        },
        Effect::ConstraintGone(t, c) => match constraint(t.clone(), c.clone()).await? {
            Some(_) => (Some(false), format!("constraint {c} on {t} still exists")),
            None => (
                Some(true),
                format!("constraint {c} on {t} no longer exists"),
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_recognised_by_their_leading_keywords() {
        let cases = [
            (
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON app.orders (a)",
                Some(Effect::Index("app.idx_a".into())),
            ),
            (
                "create index idx_b on orders(b)",
                Some(Effect::Index("idx_b".into())),
            ),
            ("CREATE INDEX ON orders (b)", None),
            (
                "CREATE TABLE IF NOT EXISTS audit(id int)",
                Some(Effect::Table("audit".into())),
            ),
            (
                "ALTER TABLE ONLY orders ADD COLUMN IF NOT EXISTS \"Note\" text",
                Some(Effect::Column("orders".into(), "Note".into())),
            ),
            (
                "ALTER TABLE orders ADD CONSTRAINT Fk_C FOREIGN KEY (c) REFERENCES c NOT VALID",
                Some(Effect::Constraint("orders".into(), "fk_c".into())),
            ),
            (
                "ALTER TABLE orders VALIDATE CONSTRAINT fk_c",
                Some(Effect::Validated("orders".into(), "fk_c".into())),
            ),
            (
                "ALTER TABLE orders DROP legacy",
                Some(Effect::ColumnGone("orders".into(), "legacy".into())),
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS idx_a",
                Some(Effect::IndexGone("idx_a".into())),
            ),
            ("DROP TABLE a, b", None),
            ("ALTER TABLE orders ADD PRIMARY KEY (id)", None),
            ("UPDATE orders SET a = 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(effect_of(sql), want, "{sql}");
        }
    }
}
