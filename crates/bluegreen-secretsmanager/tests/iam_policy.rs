//! `docs/iam-policy.json` lists exactly the AWS actions this crate's sources call.

use std::collections::BTreeSet;
use std::path::Path;

/// The SDK clients of this crate (`self.<field>.<operation>()`) and their IAM prefix.
const CLIENTS: &[(&str, &str)] = &[("sm", "secretsmanager")];
/// Permissions the calls need without being calls themselves.
const IMPLIED: &[(&str, &str)] = &[];

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn the_iam_policy_lists_exactly_the_actions_the_code_calls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut src = String::new();
    sources(&root.join("src"), &mut src);
    let compact: String = src.chars().filter(|c| !c.is_whitespace()).collect();

    let mut called = BTreeSet::new();
    for (field, prefix) in CLIENTS {
        let needle = format!("self.{field}.");
        for (at, _) in compact.match_indices(&needle) {
            let rest = &compact[at + needle.len()..];
            let op: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if rest[op.len()..].starts_with("()") && op != "config" {
                called.insert(format!("{prefix}:{}", pascal(&op)));
            }
        }
    }
    assert!(
        !called.is_empty(),
        "found no SDK calls in {}",
        root.display()
    );
    for (needs, implied) in IMPLIED {
        if called.contains(*needs) {
            called.insert(implied.to_string());
        }
    }

    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("../../docs/iam-policy.json"))
            .expect("docs/iam-policy.json"),
    )
    .expect("docs/iam-policy.json is JSON");
    let prefixes: BTreeSet<String> = CLIENTS
        .iter()
        .map(|(_, p)| p.to_string())
        .chain(
            IMPLIED
                .iter()
                .map(|(_, i)| i.split(':').next().unwrap().to_string()),
        )
        .collect();
    let mut listed = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("Statement list") {
        for action in statement["Action"].as_array().expect("Action list") {
            let action = action.as_str().unwrap().to_string();
            if prefixes.contains(action.split(':').next().unwrap()) {
                listed.insert(action);
            }
        }
    }
    assert_eq!(
        listed, called,
        "docs/iam-policy.json (left) vs the calls in src/ (right)"
    );

    let declared: BTreeSet<String> = bluegreen_secretsmanager::IAM_ACTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let direct: BTreeSet<String> = called
        .iter()
        .filter(|a| !IMPLIED.iter().any(|(_, i)| i == a))
        .cloned()
        .collect();
    assert_eq!(
        declared, direct,
        "IAM_ACTIONS (left) vs the calls in src/ (right)"
    );
    // Every action named in an error message is one the code calls.
    for (at, _) in compact.match_indices('"') {
        let lit: String = compact[at + 1..]
            .chars()
            .take_while(|c| *c != '"')
            .collect();
        if let Some((p, op)) = lit.split_once(':') {
            if prefixes.contains(p)
                && !op.is_empty()
                && op.chars().all(|c| c.is_ascii_alphanumeric())
                && op.starts_with(|c: char| c.is_ascii_uppercase())
            {
                assert!(
                    called.contains(&lit),
                    "{lit} is named in src/ but never called"
                );
            }
        }
    }
}
