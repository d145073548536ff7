//! The query text of a CloudWatch check: a kind, then `key=value` words.
//!
//! Values may be double-quoted to hold spaces (`pattern="ERROR timeout"`);
//! inside quotes, `\"` is a quote. The check's `{service}`, `{color}` and
//! `{version}` are filled in before the text reaches here.

use bluegreen_core::{Error, Result};

/// A parsed query: its kind (the first word) and its settings, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Words {
    pub kind: String,
    pub pairs: Vec<(String, String)>,
}

impl Words {
    /// Splits `text` of the check `check`.
    pub fn parse(check: &str, text: &str) -> Result<Words> {
        let mut words = Vec::new();
        let mut chars = text.trim().chars().peekable();
        while chars.peek().is_some() {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut word = String::new();
            let mut quoted = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' if quoted => quoted = false,
                    '"' => quoted = true,
                    '\\' if quoted && chars.peek() == Some(&'"') => {
                        word.push('"');
                        chars.next();
                    }
                    c if c.is_whitespace() && !quoted => break,
                    c => word.push(c),
                }
            }
            if quoted {
                return Err(bad(check, text, "a quote is not closed"));
            }
            if !word.is_empty() {
                words.push(word);
            }
        }
        let mut words = words.into_iter();
        let kind = words
            .next()
            .ok_or_else(|| bad(check, text, "the query is empty"))?;
        let mut pairs = Vec::new();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(bad(check, text, &format!("`{w}` is not key=value")));
            };
            if pairs.iter().any(|(seen, _): &(String, String)| seen == k) {
                return Err(bad(check, text, &format!("`{k}` is given twice")));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(Words { kind, pairs })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, which must be given.
    pub fn need(&self, check: &str, key: &str) -> Result<&str> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::invalid_input(format!(
                "check {check:?}: the CloudWatch query `{}` needs {key}=…",
                self.kind
            ))
            .with_provider(crate::PROVIDER)
        })
    }

    /// Refuses a key outside `known`, naming the known ones.
    pub fn only(&self, check: &str, known: &[&str]) -> Result<()> {
        for (k, _) in &self.pairs {
            let dimension = k.starts_with("dim.") && known.contains(&"dim.*");
            if !dimension && !known.contains(&k.as_str()) {
                return Err(Error::invalid_input(format!(
                    "check {check:?}: the CloudWatch query `{}` has no setting `{k}` (it takes {})",
                    self.kind,
                    known.join(", ")
                ))
                .with_provider(crate::PROVIDER));
            }
        }
        Ok(())
    }

    /// `key` as a whole number of seconds (a period), or `default`.
    pub fn seconds(&self, check: &str, key: &str, default: u32) -> Result<u32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim_end_matches('s')
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    Error::invalid_input(format!(
                        "check {check:?}: {key}=`{v}` is not a whole number of seconds above 0"
                    ))
                    .with_provider(crate::PROVIDER)
                }),
        }
    }
}

fn bad(check: &str, text: &str, why: &str) -> Error {
    Error::invalid_input(format!(
        "check {check:?}: the CloudWatch query `{text}` cannot be read: {why}"
    ))
    .with_provider(crate::PROVIDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_keep_their_spaces() {
        let w = Words::parse("c", r#"logs group=/ecs/x pattern="ERROR \"db\" timeout""#).unwrap();
        assert_eq!(w.kind, "logs");
        assert_eq!(w.get("group"), Some("/ecs/x"));
        assert_eq!(w.get("pattern"), Some(r#"ERROR "db" timeout"#));
    }

    #[test]
    fn an_unclosed_quote_or_a_bare_word_names_the_check() {
        let e = Words::parse("error-logs", r#"logs pattern="ERROR"#).unwrap_err();
        assert!(e.message().contains("\"error-logs\""), "{e}");
        assert!(e.message().contains("not closed"), "{e}");
        let e = Words::parse("c", "logs group").unwrap_err();
        assert!(e.message().contains("`group` is not key=value"), "{e}");
        let e = Words::parse("c", "  ").unwrap_err();
        assert!(e.message().contains("empty"), "{e}");
    }
}
