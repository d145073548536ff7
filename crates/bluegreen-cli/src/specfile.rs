//! Reading a spec file so that it cannot exhaust the deployer.
//!
//! A spec is read once, whole, and only when it is a regular file of at
//! most [`MAX_SPEC_BYTES`]: a device such as `/dev/zero` would grow memory
//! without end, and a FIFO would block forever. A YAML spec nested deeper
//! than [`MAX_YAML_DEPTH`] is refused before the YAML parser sees it: the
//! parser's time grows with the square of the nesting of flow collections
//! (`[[[[...]]]]` 100,000 deep, 200 KB, took a minute). TOML needs no such
//! check: its parser refuses nesting deeper than 80 by itself.
//!
//! Each refusal is a [`SpecError`] naming the file, so the CLI exits 64.

use std::fs::{Metadata, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::spec::SpecError;

/// The largest spec file read: 1 MiB. The largest example spec is about
/// 5 KB; a group spec with dozens of services stays far below the limit.
pub const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// The deepest nesting of collections (mappings and sequences, block or
/// flow) a YAML spec may have: 64. A spec's own structure is at most about
/// 6 deep; the limit leaves room for values written as nested structures,
/// and stays below the YAML deserializer's own limit of 128, which it checks
/// only after the whole file has been parsed.
pub const MAX_YAML_DEPTH: usize = 64;

fn refuse(file: &str, line: usize, column: usize, message: String) -> SpecError {
    SpecError {
        file: file.into(),
        line,
        column,
        field: String::new(),
        message,
    }
}

/// What kind of file `m` is, when it is not a regular one.
fn not_regular(m: &Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Refuses `m` unless it is a regular file of at most [`MAX_SPEC_BYTES`].
fn check(file: &str, m: &Metadata) -> Result<(), SpecError> {
    if let Some(kind) = not_regular(m) {
        return Err(refuse(
            file,
            0,
            0,
            format!("the spec is {kind}, not a regular file: refused (a spec is read whole, and a device or a pipe may never end)"),
        ));
    }
    if m.len() > MAX_SPEC_BYTES {
        return Err(too_large(file, m.len()));
    }
    Ok(())
}

fn too_large(file: &str, len: u64) -> SpecError {
    refuse(
        file,
        0,
        0,
        format!(
            "the spec is {len} bytes, more than the limit of {MAX_SPEC_BYTES} (1 MiB): refused"
        ),
    )
}

/// Reads the spec file at `path`, once: refused unless it is a regular file
/// of at most [`MAX_SPEC_BYTES`] of UTF-8 text. The type is checked before
/// the file is opened, and again on the opened file, which is opened
/// without blocking (`O_NONBLOCK`), so a FIFO put in its place cannot hang
/// the deployer either; no more than the limit is ever read.
pub fn read(path: &Path) -> Result<String, SpecError> {
    let file = path.display().to_string();
    let unreadable = |e: std::io::Error| refuse(&file, 0, 0, format!("cannot read the spec: {e}"));
    check(&file, &std::fs::metadata(path).map_err(unreadable)?)?;
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(unreadable)?
    };
    let m = f.metadata().map_err(unreadable)?;
    check(&file, &m)?;
    let mut bytes = Vec::with_capacity(m.len() as usize);
    Read::take(&f, MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        // It grew while being read.
        return Err(too_large(&file, bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&e.as_bytes()[..valid]);
        let (line, column) = crate::spec::line_col(&before, valid);
        refuse(&file, line, column, "the spec is not UTF-8 text".into())
    })
}

/// Refuses YAML `text` whose collections nest deeper than
/// [`MAX_YAML_DEPTH`], naming `file` and where the limit is passed. A
/// cheap scan, linear in the text, made before the YAML parser runs.
pub fn check_yaml_depth(text: &str, file: &str) -> Result<(), SpecError> {
    match yaml_too_deep(text, MAX_YAML_DEPTH) {
        None => Ok(()),
        Some((line, column)) => Err(refuse(
            file,
            line,
            column,
            format!("the spec nests more than {MAX_YAML_DEPTH} levels deep: refused (the limit bounds the time YAML parsing takes)"),
        )),
    }
}

/// Where a block scalar (`|`, `>`) stands while its lines are passed over.
#[derive(Clone, Copy)]
enum Scalar {
    /// Not in one.
    No,
    /// Before its first line, which must be indented more than this column
    /// (-1 at the top level).
    First(i64),
    /// Its lines are indented at least this much.
    Lines(usize),
}

/// What the scan last passed on a line, for where a token may start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Nothing since the start of a line in block context, or an indicator
    /// after which a node starts (`[`, `{`, `,` in flow context).
    Start,
    /// `:` or `?` as an indicator: a node starts after whitespace.
    Indicator,
    /// A quoted scalar.
    Quoted,
    /// The end of a flow collection.
    Closed,
    /// Part of a plain scalar.
    Plain,
}

/// The column a node at `j` on a line is nested in, for the lines a block
/// scalar or a plain scalar there may continue on: an entry's `- ` when the
/// node is the entry itself, or the innermost block collection.
fn parent_column(block: &[usize], j: usize) -> i64 {
    match block {
        [.., dash, top] if *top == j => *dash as i64,
        [.., top] => *top as i64,
        [] => -1,
    }
}

/// Where (1-based line and column) YAML `text` first nests collections
/// deeper than `limit`, or `None`.
///
/// Block collections are counted by indentation (a stack of the columns
/// open, with `- ` and `? ` entries on one line each opening one), flow
/// collections by their brackets. Quoted scalars, comments, block scalars
/// and the lines a plain scalar continues on are passed over, by YAML's
/// rules for where each may start. It may count deeper than the YAML parser
/// would (a bracket in a quoted scalar that spans lines, the scalar after
/// `- `), so the limit is set well above what a spec needs.
fn yaml_too_deep(text: &str, limit: usize) -> Option<(usize, usize)> {
    let mut block: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    let mut scalar = Scalar::No;
    // A plain scalar in block context that may continue on lines indented
    // more than this column.
    let mut plain: Option<i64> = None;
    let mut last = Last::Start;
    for (i, line) in text.split('\n').enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let blank = bytes[indent..].iter().all(u8::is_ascii_whitespace);
        match scalar {
            Scalar::First(_) if blank => continue,
            Scalar::First(n) if indent as i64 > n => {
                scalar = Scalar::Lines(indent);
                continue;
            }
            Scalar::Lines(c) if blank || indent >= c => continue,
            _ => scalar = Scalar::No,
        }
        // Whitespace (the line break) precedes the line's first byte.
        let mut gap = true;
        let mut j = 0;
        if quote.is_none() && flow == 0 {
            if blank || bytes[indent] == b'#' {
                continue;
            }
            if plain.is_some_and(|n| indent as i64 > n) {
                // A plain scalar goes on: the line is text.
                continue;
            }
            plain = None;
            last = Last::Start;
            if indent == 0 && (line.starts_with("---") || line.starts_with("...")) {
                block.clear();
                j = 3;
            } else {
                while block.last().is_some_and(|&c| c > indent) {
                    block.pop();
                }
                if block.last() != Some(&indent) {
                    block.push(indent);
                }
                j = indent;
                // `- - x`, `- key: x`, `? x`: each entry's content is a
                // node one level deeper, at the column it starts.
                while matches!(bytes.get(j), Some(b'-' | b'?' | b':'))
                    && bytes.get(j + 1).is_none_or(|b| *b == b' ')
                {
                    j += 1;
                    while bytes.get(j) == Some(&b' ') {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j] != b'#' && block.last() < Some(&j) {
                        block.push(j);
                    }
                }
            }
            if block.len() > limit {
                return Some((i + 1, j + 1));
            }
        }
        // Where the plain scalar that ends this line, if one does, began.
        let mut plain_at = None;
        while j < bytes.len() {
            let b = bytes[j];
            if let Some(q) = quote {
                if q == b'"' && b == b'\\' {
                    j += 2;
                    continue;
                }
                if b == q {
                    if q == b'\'' && bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    quote = None;
                    last = Last::Quoted;
                    gap = false;
                }
                j += 1;
                continue;
            }
            if matches!(b, b' ' | b'\t' | b'\r') {
                gap = true;
                j += 1;
                continue;
            }
            if b == b'#' && gap {
                // A comment, which also ends a plain scalar.
                plain_at = None;
                break;
            }
            // Where a node may start: a quote there opens a quoted scalar
            // and, in block context, a bracket a flow collection.
            let start = match last {
                Last::Start => true,
                Last::Indicator => gap,
                _ => false,
            };
            if start && (b == b'"' || b == b'\'') {
                quote = Some(b);
                j += 1;
                continue;
            }
            if start && matches!(b, b'&' | b'!' | b'*') {
                // An anchor, tag or alias: the node after it starts as this
                // one would have.
                while j < bytes.len()
                    && !matches!(
                        bytes[j],
                        b' ' | b'\t' | b'\r' | b',' | b'[' | b']' | b'{' | b'}'
                    )
                {
                    j += 1;
                }
                continue;
            }
            if start && flow == 0 && (b == b'|' || b == b'>') {
                // A block scalar: its lines are indented more than the
                // node that holds it.
                scalar = Scalar::First(parent_column(&block, j));
                break;
            }
            last = match b {
                b'[' | b'{' if flow > 0 || start => {
                    flow += 1;
                    if block.len() + flow > limit {
                        return Some((i + 1, j + 1));
                    }
                    Last::Start
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    Last::Closed
                }
                b',' if flow > 0 => Last::Start,
                // `key: value`, `? key`; in flow context also a JSON-like
                // key's `"key":value`.
                b':' | b'?'
                    if (b == b':' || start)
                        && (bytes
                            .get(j + 1)
                            .is_none_or(|n| matches!(n, b' ' | b'\t' | b'\r'))
                            || (flow > 0 && last == Last::Quoted)) =>
                {
                    gap = true;
                    j += 1;
                    last = Last::Indicator;
                    continue;
                }
                _ => {
                    if last != Last::Plain {
                        plain_at = Some(j);
                    }
                    Last::Plain
                }
            };
            gap = false;
            j += 1;
        }
        if flow == 0 && quote.is_none() && last == Last::Plain {
            plain = plain_at.map(|at| parent_column(&block, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, limit: usize) -> bool {
        yaml_too_deep(text, limit).is_none()
    }

    /// The smallest limit `text` passes.
    fn depth(text: &str) -> usize {
        (0..200).find(|l| depth_ok(text, *l)).unwrap()
    }

    #[test]
    fn block_collections_count_by_indentation_and_entries() {
        assert_eq!(depth("a: 1\nb: 2\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: 1\n  d: 2\ne: 3\n"), 3);
        assert_eq!(depth("- - - x\n"), 4);
        assert_eq!(depth("items:\n  - name: a\n    value: 1\n  - name: b\n"), 3);
    }

    #[test]
    fn flow_collections_count_by_their_brackets() {
        assert_eq!(depth("a: [1, [2, {b: [3]}]]\n"), 5);
        assert_eq!(depth("a: [\n  [\n    1\n  ]\n]\nb: 1\n"), 3);
        assert_eq!(depth(r#"{"a":["b"]}"#), 3);
    }

    #[test]
    fn brackets_in_quotes_comments_plain_scalars_and_block_scalars_do_not_count() {
        assert_eq!(depth("a: \"[[[[[\"\nb: '[[[[ it''s'\n"), 1);
        assert_eq!(depth("a: 1 # [[[[[[\n# {{{{{{\n"), 1);
        assert_eq!(depth("a: x[[[[ y {{{{\n"), 1);
        assert_eq!(
            depth("a: |\n  [[[[[[\n      {{{{{\n  x\nb: >-\n  ]]]] [[[[\n"),
            1
        );
        assert_eq!(depth("- |\n  [[[[\n- x\n"), 2);
        assert_eq!(depth("a: !tag [1]\nb: &x {c: 1}\n"), 2);
    }

    #[test]
    fn a_plain_scalar_goes_on_over_more_indented_lines_as_text() {
        let text = "a: some words\n  \"quoted [[[[ on\n  a line\nb: [1]\n";
        assert_eq!(depth(text), 2);
        // After a comment the scalar is over: a bracket on the next line counts.
        let text = format!("a: 1 # note\n  {}\n", "[".repeat(10));
        assert!(depth(&text) > 10, "{text}");
    }

    #[test]
    fn a_closing_quote_of_a_json_like_value_does_not_hide_brackets() {
        // The second `"` closes the value; a scan that took it for an
        // opening quote would pass over the brackets after it.
        let text = format!(r#"{{"a":"b, ", {}x{}: c}}"#, "[".repeat(10), "]".repeat(10));
        assert!(depth(&text) >= 11, "{text}");
        let text = format!("[a, 'b', {}]", "[".repeat(10));
        assert!(depth(&text) >= 11, "{text}");
    }

    #[test]
    fn a_deep_nesting_is_found_where_it_passes_the_limit() {
        let flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(yaml_too_deep(&flow, 64), Some((1, 4 + 63)));
        let dashes = format!("{}x\n", "- ".repeat(100_000));
        assert!(yaml_too_deep(&dashes, 64).is_some());
        let mut block = String::new();
        for i in 0..100 {
            block.push_str(&format!("{}k:\n", " ".repeat(i)));
        }
        assert_eq!(yaml_too_deep(&block, 64), Some((65, 65)));
    }
}
