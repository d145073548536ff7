//! The query text a check carries, and which Datadog endpoint answers it.
//!
//! A plain Datadog metric query, e.g. `sum:api.errors{service:order-api,color:blue}.as_rate()`,
//! goes to `GET /api/v1/query` (unless the source is set to [`QueryApi::V2`]).
//!
//! A formula over named queries goes to `POST /api/v2/query/timeseries`. It is
//! written as `name = query` definitions and a final formula, separated by `;`:
//!
//! ```text
//! errors = sum:api.errors{service:order-api,color:blue}.as_count();
//! hits   = sum:api.hits{service:order-api,color:blue}.as_count();
//! errors / hits
//! ```
//!
//! Without a final formula (only definitions), every query's own series is
//! returned.

/// Which Datadog endpoint answers plain (formula-less) queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueryApi {
    /// Plain queries use `GET /api/v1/query`; formulas use v2 (the default).
    #[default]
    Auto,
    /// Only `GET /api/v1/query`; a formula is an error.
    V1,
    /// Every query uses `POST /api/v2/query/timeseries`.
    V2,
}

/// A parsed query: for v1, or named queries and an optional formula for v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    V1(String),
    V2 {
        queries: Vec<(String, String)>,
        formula: Option<String>,
    },
}

/// Parses `text` for `api`. The error says what is wrong, for a message that
/// names the check.
pub(crate) fn parse(text: &str, api: QueryApi) -> Result<Parsed, String> {
    let parts: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err("the query is empty".into());
    }
    let mut queries = Vec::new();
    let mut formula = None;
    for (i, part) in parts.iter().enumerate() {
        match definition(part) {
            Some((name, query)) => {
                if query.is_empty() {
                    return Err(format!("the query named {name:?} is empty"));
                }
                if queries.iter().any(|(n, _): &(String, String)| n == name) {
                    return Err(format!("the query name {name:?} is defined twice"));
                }
                queries.push((name.to_string(), query.to_string()));
            }
            None if i + 1 == parts.len() => formula = Some(part.to_string()),
            None => {
                return Err(format!(
                "{part:?} is not a `name = query` definition; only the last part may be a formula"
            ))
            }
        }
    }
    if queries.is_empty() {
        let q = formula.unwrap_or_default();
        return Ok(match api {
            QueryApi::V2 => Parsed::V2 {
                queries: vec![("query1".into(), q)],
                formula: None,
            },
            _ => Parsed::V1(q),
        });
    }
    if api == QueryApi::V1 {
        return Err(
            "a formula over named queries needs the v2 API, but the source is set to v1".into(),
        );
    }
    Ok(Parsed::V2 { queries, formula })
}

/// `name = query`, when `part` is one.
fn definition(part: &str) -> Option<(&str, &str)> {
    let (name, query) = part.split_once('=')?;
    let name = name.trim();
    let mut chars = name.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    Some((name, query.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_query_goes_to_v1() {
        let q = "sum:api.errors{service:order-api,color:blue}.as_rate()";
        assert_eq!(parse(q, QueryApi::Auto).unwrap(), Parsed::V1(q.into()));
    }

    #[test]
    fn a_formula_goes_to_v2() {
        let p = parse(
            "errors = sum:api.errors{*}.as_count(); hits = sum:api.hits{*}.as_count(); errors / hits",
            QueryApi::Auto,
        )
        .unwrap();
        assert_eq!(
            p,
            Parsed::V2 {
                queries: vec![
                    ("errors".into(), "sum:api.errors{*}.as_count()".into()),
                    ("hits".into(), "sum:api.hits{*}.as_count()".into())
                ],
                formula: Some("errors / hits".into()),
            }
        );
    }

    #[test]
    fn bad_query_texts_are_explained() {
        assert!(parse(" ; ", QueryApi::Auto).unwrap_err().contains("empty"));
        assert!(parse("a / b; a = x{*}", QueryApi::Auto)
            .unwrap_err()
            .contains("only the last part"));
        assert!(parse("a = x{*}; a = y{*}; a", QueryApi::Auto)
            .unwrap_err()
            .contains("twice"));
        assert!(parse("a = x{*}; a", QueryApi::V1)
            .unwrap_err()
            .contains("v2"));
    }
}
