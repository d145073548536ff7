//! The binary's log: `tracing` events (a torn journal line, a crashed
//! instance, a failed notification) to stderr, so warnings reach the user.
//!
//! - Warnings and errors by default; `RUST_LOG` (e.g. `RUST_LOG=error`,
//!   `RUST_LOG=bluegreen_core=debug`) chooses otherwise.
//! - Text lines, or JSON lines with `--output json`; always on stderr, so
//!   stdout keeps only the command's own output.
//! - Secret values the CLI knows ([`redact_spec_secrets`]: the journal URL's
//!   password, and every secret the spec takes from an environment
//!   variable) are masked as `[redacted]` in each line before it is written,
//!   whichever crate logged it.

use std::io::Write;
use std::sync::RwLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::output::OutputFormat;
use crate::spec::{LoadedSpec, SecretRef};

/// What a masked value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not masked: they would garble every line
/// (the same bound as the masking of a secret's prefix at a cut).
pub const MIN_SECRET_CHARS: usize = 4;

/// The values masked in log lines, longest first.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Installs the subscriber: warnings to stderr unless `RUST_LOG` says
/// otherwise, JSON lines with `--output json`. A second call does nothing.
pub fn init(out: OutputFormat) {
    let filter = EnvFilter::builder()
        .with_default_directive(tracing::Level::WARN.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    let _ = match out {
        OutputFormat::Json => builder.json().try_init(),
        OutputFormat::Text => builder.try_init(),
    };
}

/// Masks `value` in every later log line, in the forms the formatters write
/// it: as is, JSON-escaped and `Debug`-escaped. A value shorter than
/// [`MIN_SECRET_CHARS`] is ignored.
pub fn redact(value: &str) {
    if value.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    let debug = format!("{value:?}");
    let forms = [
        value.to_string(),
        json[1..json.len().saturating_sub(1).max(1)].to_string(),
        debug[1..debug.len().saturating_sub(1).max(1)].to_string(),
    ];
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        if !f.is_empty() && !secrets.contains(&f) {
            secrets.push(f);
        }
    }
    // Longest first: a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Masks the secret parts of `value`, a secret the CLI read: a URL's
/// password (as written and percent-decoded) when it has one, a key/value
/// connection string's `password=`, else the whole value.
pub fn redact_secret_value(value: &str) {
    match password_of(value) {
        Some(p) => {
            redact(&p);
            redact(&percent_decode(&p));
        }
        None => redact(value),
    }
}

/// The password of `postgres://user:password@host/db` (the credentials end
/// at the last `@` before the host), or of `... password=secret ...`.
fn password_of(value: &str) -> Option<String> {
    if let Some((_, rest)) = value.split_once("://") {
        // The credentials end at the last `@` before the query: a password
        // may hold an unencoded `@` or `/`.
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        let (creds, _) = rest.rsplit_once('@')?;
        return creds
            .split_once(':')
            .map(|(_, p)| p.to_string())
            .filter(|p| !p.is_empty());
    }
    value
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("password="))
        .map(|p| p.trim_matches('\'').to_string())
        .filter(|p| !p.is_empty())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Masks every secret `l` takes from an environment variable that is set:
/// the journal URL (its password), `migrations.database_url`, the Datadog
/// keys, the Slack webhook URL, the PagerDuty routing key and `[[secrets]]`
/// named `env:VARIABLE`.
pub fn redact_spec_secrets(l: &LoadedSpec) {
    let s = &l.spec;
    let mut refs: Vec<&SecretRef> = Vec::new();
    refs.extend(s.journal.url.as_ref());
    refs.extend(s.migrations.as_ref().and_then(|m| m.database_url.as_ref()));
    if let Some(d) = &s.monitoring.datadog {
        refs.push(&d.api_key);
        refs.extend(d.app_key.as_ref());
    }
    if let Some(d) = &s.notifications.datadog {
        refs.extend(d.api_key.as_ref());
    }
    if let Some(sl) = &s.notifications.slack {
        refs.push(&sl.webhook_url);
    }
    if let Some(p) = &s.notifications.pagerduty {
        refs.push(&p.routing_key);
    }
    let mut vars: Vec<String> = refs
        .into_iter()
        .filter_map(|r| match r {
            SecretRef::Env(v) => Some(v.clone()),
            SecretRef::Store(_) => None,
        })
        .collect();
    vars.extend(
        s.secrets
            .iter()
            .filter_map(|x| x.name.strip_prefix("env:").map(str::to_string)),
    );
    for v in vars {
        if let Ok(value) = std::env::var(&v) {
            redact_secret_value(&value);
        }
    }
}

/// `line` with every registered secret masked.
pub fn mask(line: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = line.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// Stderr, one event at a time, masked before it is written.
#[derive(Debug, Clone, Copy)]
struct RedactingStderr;

/// One event's bytes, written masked when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = mask(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_is_found_as_written_and_decoded() {
        assert_eq!(
            password_of("postgres://app:s3cr%40t@db:5432/x").as_deref(),
            Some("s3cr%40t")
        );
        assert_eq!(percent_decode("s3cr%40t"), "s3cr@t");
        assert_eq!(
            password_of("postgres://app:p@ss@db/x").as_deref(),
            Some("p@ss")
        );
        assert_eq!(
            password_of("host=db password=hunter22 user=app").as_deref(),
            Some("hunter22")
        );
        assert_eq!(password_of("postgres://app@db/x"), None);
    }

    #[test]
    fn registered_values_are_masked_in_every_form() {
        redact("to\"ken-value");
        assert_eq!(mask("a to\"ken-value b"), "a [redacted] b");
        assert_eq!(mask(r#"{"m":"to\"ken-value"}"#), r#"{"m":"[redacted]"}"#);
        redact("abc");
        assert_eq!(mask("abc"), "abc");
    }
}
