//! The check that `docs/iam-policy.json` lists exactly the AWS actions a
//! crate's sources call, and that the crate's `IAM_ACTIONS` declares them.

use std::collections::BTreeSet;
use std::path::Path;

/// What one crate calls, for [`IamPolicy::check`].
#[derive(Debug, Clone, Copy)]
pub struct IamPolicy<'a> {
    /// The crate's directory (`env!("CARGO_MANIFEST_DIR")`): its `src/` is
    /// scanned, and the policy is read from `../../docs/iam-policy.json`.
    pub crate_dir: &'a str,
    /// The SDK clients of the crate (`self.<field>.<operation>()`) and their
    /// IAM prefix, e.g. `("ecs", "ecs")`.
    pub clients: &'a [(&'a str, &'a str)],
    /// Permissions calls need without being calls themselves: when the action
    /// on the left is called, the one on the right is needed too.
    pub implied: &'a [(&'a str, &'a str)],
    /// The crate's `IAM_ACTIONS`: the actions it declares it calls.
    pub declared: &'a [&'a str],
}

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

impl IamPolicy<'_> {
    /// Panics unless the actions of `docs/iam-policy.json` with the prefixes of
    /// the crate's clients (and implied permissions) are exactly those its
    /// `src/` calls, `declared` is exactly the calls, and every action named
    /// in a string literal of `src/` is one it calls.
    pub fn check(&self) {
        let root = Path::new(self.crate_dir);
        let mut src = String::new();
        sources(&root.join("src"), &mut src);
        let compact: String = src.chars().filter(|c| !c.is_whitespace()).collect();

        let mut called = BTreeSet::new();
        for (field, prefix) in self.clients {
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
        for (needs, implied) in self.implied {
            if called.contains(*needs) {
                called.insert(implied.to_string());
            }
        }

        let policy: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("../../docs/iam-policy.json"))
                .expect("docs/iam-policy.json"),
        )
        .expect("docs/iam-policy.json is JSON");
        let prefixes: BTreeSet<String> = self
            .clients
            .iter()
            .map(|(_, p)| p.to_string())
            .chain(
                self.implied
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

        let declared: BTreeSet<String> = self.declared.iter().map(|s| s.to_string()).collect();
        let direct: BTreeSet<String> = called
            .iter()
            .filter(|a| !self.implied.iter().any(|(_, i)| i == a))
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
}
