//! Masking secret values out of text: the one place every detail, reason and
//! snippet of a provider's response goes through before it is shown (the
//! HTTP smoke tests' bodies, the Datadog API's error texts).
//!
//! The order matters: whole values are masked first, and only then is a long
//! text cut, so a value that straddles the cut is masked as a whole instead of
//! showing its first characters. What is left at the cut is then checked too:
//! if the kept text ends with the first [`MIN_MASKED_PREFIX`] or more
//! characters of a secret (a server that echoed part of a token, say), those
//! are masked as well.

/// What a secret value (or a prefix of one, at a cut) is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The shortest part of a secret that is masked where a cut left it: a
/// prefix at the end of a text cut by [`Redactor::mask_and_cut`], or an end
/// at the start of a tail kept by [`Redactor::mask_and_tail`].
pub const MIN_MASKED_PREFIX: usize = 4;

/// The secret values sent with one request, longest first (so a secret that
/// contains a shorter one is masked whole, not around the shorter one).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `secrets`; empty values are ignored.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with every secret value replaced by `[redacted]`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }

    /// `text` masked, then cut to at most `max_chars` characters (plus `…`
    /// when cut). A `[redacted]` the cut would split is kept whole, and a
    /// prefix of a secret at least [`MIN_MASKED_PREFIX`] characters long left
    /// at the end of the kept text is masked.
    pub fn mask_and_cut(&self, text: &str, max_chars: usize) -> String {
        let masked = self.mask(text);
        let Some((cut, _)) = masked.char_indices().nth(max_chars) else {
            return masked;
        };
        // Keep a marker whole rather than show `[redac`.
        let cut = masked
            .match_indices(REDACTED)
            .map(|(i, m)| (i, i + m.len()))
            .find(|&(start, end)| start < cut && cut < end)
            .map_or(cut, |(_, end)| end);
        if cut >= masked.len() {
            return masked;
        }
        let mut kept = masked[..cut].to_string();
        if let Some(n) = self.secret_prefix_at_end(&kept) {
            kept.truncate(kept.len() - n);
            kept.push_str(REDACTED);
        }
        kept.push('…');
        kept
    }

    /// `text` masked, then cut to its last `lines` lines and `bytes` bytes
    /// (`…` first when cut). A marker the cut would split is kept whole, and
    /// an end of a secret (its last characters) at least [`MIN_MASKED_PREFIX`] characters long left
    /// at the start of the kept text is masked.
    pub fn mask_and_tail(&self, text: &str, lines: usize, bytes: usize) -> String {
        let masked = self.mask(text);
        let body = masked.trim_end_matches('\n');
        let mut start = body.len().saturating_sub(bytes);
        while !body.is_char_boundary(start) {
            start += 1;
        }
        if let Some((i, _)) = body.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
            start = start.max(i + 1);
        }
        if start == 0 {
            return body.to_string();
        }
        if let Some((i, _)) = body
            .match_indices(REDACTED)
            .find(|&(i, m)| i < start && start < i + m.len())
        {
            start = i;
        }
        let mut kept = body[start..].to_string();
        let part = self
            .secrets
            .iter()
            .filter_map(|s| {
                s.char_indices()
                    .map(|(i, _)| &s[i..])
                    .filter(|end| end.chars().count() >= MIN_MASKED_PREFIX && kept.starts_with(end))
                    .map(str::len)
                    .max()
            })
            .max();
        if let Some(n) = part {
            kept.replace_range(..n, REDACTED);
        }
        format!("…{kept}")
    }

    /// The length in bytes of the longest prefix of a secret, at least
    /// [`MIN_MASKED_PREFIX`] characters long, that `text` ends with.
    fn secret_prefix_at_end(&self, text: &str) -> Option<usize> {
        self.secrets
            .iter()
            .filter_map(|s| {
                s.char_indices()
                    .map(|(i, ch)| i + ch.len_utf8())
                    .enumerate()
                    .filter(|&(n, end)| n + 1 >= MIN_MASKED_PREFIX && text.ends_with(&s[..end]))
                    .map(|(_, end)| end)
                    .max()
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tok-test-5f2c9a1e77";

    /// Every prefix of `TOKEN` at least `MIN_MASKED_PREFIX` characters long.
    fn prefixes() -> impl Iterator<Item = &'static str> {
        (MIN_MASKED_PREFIX..=TOKEN.len()).map(|n| &TOKEN[..n])
    }

    #[test]
    fn a_token_straddling_the_cut_is_masked_whole_not_shown_in_part() {
        let r = Redactor::new([TOKEN.to_string()]);
        // The cut at 200 falls 15 characters into the 19-character token.
        let text = format!("{}{TOKEN} and more after it", "a".repeat(185));
        let out = r.mask_and_cut(&text, 200);
        for p in prefixes() {
            assert!(!out.contains(p), "{p:?} shown in {out:?}");
        }
        // The cut counts the masked text: the marker and 5 more characters.
        assert_eq!(out, format!("{}[redacted] and …", "a".repeat(185)));
    }

    #[test]
    fn a_prefix_of_a_secret_left_at_the_cut_is_masked() {
        let r = Redactor::new([TOKEN.to_string()]);
        // A server that echoed only part of the token, right where the cut falls.
        for n in MIN_MASKED_PREFIX..TOKEN.len() {
            let text = format!("{}{}zzzzzzzzzz", "a".repeat(200 - n), &TOKEN[..n]);
            let out = r.mask_and_cut(&text, 200);
            assert_eq!(
                out,
                format!("{}[redacted]…", "a".repeat(200 - n)),
                "prefix of {n}"
            );
        }
        // Three characters are not enough to tell a token from text.
        let text = format!("{}tokzzzz", "a".repeat(197));
        assert_eq!(
            r.mask_and_cut(&text, 200),
            format!("{}tok…", "a".repeat(197))
        );
    }

    #[test]
    fn a_marker_at_the_cut_is_kept_whole_and_short_text_is_not_cut() {
        let r = Redactor::new([TOKEN.to_string()]);
        let text = format!("{}{TOKEN}{}", "a".repeat(195), "b".repeat(50));
        assert_eq!(
            r.mask_and_cut(&text, 200),
            format!("{}[redacted]…", "a".repeat(195))
        );
        assert_eq!(r.mask_and_cut("short", 200), "short");
        assert_eq!(
            r.mask_and_cut(&format!("{}{TOKEN}", "a".repeat(195)), 200),
            format!("{}[redacted]", "a".repeat(195)),
            "masked text of the limit's length is not cut"
        );
    }

    #[test]
    fn a_secret_containing_a_shorter_one_is_masked_whole() {
        let r = Redactor::new(["abcd".to_string(), "abcdefgh".to_string(), String::new()]);
        assert_eq!(r.mask("x abcdefgh y abcd"), "x [redacted] y [redacted]");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_masks_before_the_cut() {
        let m = Redactor::new([TOKEN.to_string()]);
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let tail = m.mask_and_tail(&text, 40, 4096);
        assert!(tail.starts_with("…line 11\n"), "{tail}");
        assert!(tail.ends_with("line 50"), "{tail}");
        // A token straddling the byte cut is masked whole, not shown in part.
        let text = format!("{TOKEN}{}", "a".repeat(100));
        let tail = m.mask_and_tail(&text, 40, 104);
        assert_eq!(tail, format!("…{REDACTED}{}", "a".repeat(100)));
        // An end of a token left at the start of the cut text is masked too.
        let text = format!("xx{}{}", &TOKEN[5..], "b".repeat(10));
        let tail = m.mask_and_tail(&text, 40, TOKEN.len() - 5 + 10);
        assert_eq!(tail, format!("…{REDACTED}{}", "b".repeat(10)));
        assert_eq!(m.mask_and_tail("short\n", 40, 4096), "short");
    }

    #[test]
    fn debug_shows_how_many_secrets_never_their_values() {
        let r = Redactor::new([TOKEN.to_string()]);
        assert_eq!(format!("{r:?}"), "Redactor { secrets: 1 }");
    }

    #[test]
    fn multibyte_text_is_cut_on_characters() {
        let r = Redactor::new(["pässwörd-1".to_string()]);
        let text = format!("{}pässwö and more", "é".repeat(94));
        assert_eq!(
            r.mask_and_cut(&text, 100),
            format!("{}[redacted]…", "é".repeat(94))
        );
    }
}
