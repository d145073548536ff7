//! Commands in the spec: a `[[smoke_tests]]` entry with `command = [...]`
//! (the team's own smoke suite, run by
//! [`CommandSmokeTest`](bluegreen_local::command::CommandSmokeTest)) and a
//! `[[monitoring.commands]]` entry, a metrics source that runs a command
//! printing a number, which a check names as its `source`.
//!
//! ```toml
//! [[smoke_tests]]
//! name = "smoke-suite"
//! command = ["npm", "run", "smoke-test", "--", "--url", "{url}"]
//! working_dir = "../order-api"   # relative to the spec (the spec's directory if absent)
//! timeout = "5m"
//! retries = 1
//! junit = "reports/smoke.xml"    # relative to working_dir
//! secrets = { SMOKE_TOKEN = { secret = "prod/order-api/smoke-token" } }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bluegreen_http::HttpCheck;
use bluegreen_local::command::CommandCheck;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::spec::{LoadedSpec, SecretRef};

/// A [`CommandCheck`] as the spec writes it: its `secrets` map each variable
/// to a secret reference (`{ secret = "..." }`, `{ env = "..." }`,
/// `"secret:..."` or `"env:..."`); a value written in plain text is refused.
/// Held as the reference's text (`secret:NAME` or `env:VAR`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct CommandSpec(pub CommandCheck);

impl<'de> Deserialize<'de> for CommandSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let mut secrets = BTreeMap::new();
        if let Some(s) = v.as_object_mut().and_then(|o| o.remove("secrets")) {
            let serde_json::Value::Object(map) = s else {
                return Err(D::Error::custom(
                    "secrets: expected a table of VARIABLE = secret reference",
                ));
            };
            for (var, r) in map {
                let r = SecretRef::deserialize(r)
                    .map_err(|e| D::Error::custom(format!("secrets.{var}: {e}")))?;
                let text = match r {
                    SecretRef::Store(n) => format!("secret:{n}"),
                    SecretRef::Env(v) => format!("env:{v}"),
                };
                secrets.insert(var, text);
            }
        }
        let mut check = CommandCheck::deserialize(v).map_err(D::Error::custom)?;
        check.secrets = secrets;
        Ok(CommandSpec(check))
    }
}

impl CommandSpec {
    /// The check ready to run for the spec in `loaded`: its working
    /// directory resolved against the spec's directory (the spec's
    /// directory when absent), its secret references named as
    /// [`RefSecrets`](crate::providers::RefSecrets) looks them up.
    pub fn resolved(&self, loaded: &LoadedSpec) -> CommandCheck {
        let mut c = self.0.clone();
        c.working_dir = Some(loaded.resolve(c.working_dir.as_deref().unwrap_or(Path::new(""))));
        if c.working_dir.as_deref() == Some(Path::new("")) {
            c.working_dir = None;
        }
        for name in c.secrets.values_mut() {
            if let Some(n) = name.strip_prefix("secret:") {
                *name = n.to_string();
            }
        }
        c
    }

    /// Validates it under `section` (`smoke_tests[2]`) with the placeholders
    /// in `variables`; the error names the field (`smoke_tests[2].command[4]`).
    pub fn validate(&self, section: &str, variables: &[&str]) -> Result<(), (String, String)> {
        self.0.validate(variables).map_err(|m| split(section, &m))
    }
}

fn split(section: &str, m: &str) -> (String, String) {
    match m.split_once(": ") {
        Some((field, message)) => (format!("{section}.{field}"), message.to_string()),
        None => (section.to_string(), m.to_string()),
    }
}

/// One `[[smoke_tests]]` entry: an HTTP check, or a command when it has
/// `command`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SmokeTestSpec {
    /// An HTTP check.
    Http(HttpCheck),
    /// A command.
    Command(CommandSpec),
}

impl<'de> Deserialize<'de> for SmokeTestSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.get("command").is_some() {
            CommandSpec::deserialize(v)
                .map(SmokeTestSpec::Command)
                .map_err(D::Error::custom)
        } else {
            HttpCheck::deserialize(v)
                .map(SmokeTestSpec::Http)
                .map_err(D::Error::custom)
        }
    }
}

impl SmokeTestSpec {
    /// The name plans refer to.
    pub fn name(&self) -> &str {
        match self {
            SmokeTestSpec::Http(c) => &c.name,
            SmokeTestSpec::Command(c) => &c.0.name,
        }
    }

    /// The HTTP check, if it is one.
    pub fn http(&self) -> Option<&HttpCheck> {
        match self {
            SmokeTestSpec::Http(c) => Some(c),
            SmokeTestSpec::Command(_) => None,
        }
    }
}

/// Every command of the spec with the section it is under.
pub fn commands(loaded: &LoadedSpec) -> Vec<(String, &CommandSpec)> {
    let s = &loaded.spec;
    let smoke = s
        .smoke_tests
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match t {
            SmokeTestSpec::Command(c) => Some((format!("smoke_tests[{i}]"), c)),
            SmokeTestSpec::Http(_) => None,
        });
    let checks = s
        .monitoring
        .commands
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("monitoring.commands[{i}]"), c));
    smoke.chain(checks).collect()
}

/// Each command's program exists: found on `PATH`, or a path relative to
/// its working directory. The error names `<section>.command[0]`.
pub fn check_programs(loaded: &LoadedSpec) -> Result<(), (String, String)> {
    for (section, c) in commands(loaded) {
        c.resolved(loaded)
            .resolve_program()
            .map_err(|m| split(&section, &m))?;
    }
    Ok(())
}
