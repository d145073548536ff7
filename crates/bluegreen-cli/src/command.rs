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

use bluegreen_core::plan::{HookPoint, LifecycleHook};
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

/// One `[[hooks]]` entry: a command (`command = [...]`, with the fields of
/// a command smoke test) or a webhook (`url`, `method`, `headers`) run at
/// `point`:
///
/// ```toml
/// [[hooks]]
/// name = "warm-cache"
/// point = "before_traffic"      # before_scale_up, after_scale_up, before_traffic,
///                               # after_traffic_step, after_traffic, before_scale_down,
///                               # after_rollback, on_finish
/// command = ["./scripts/warm-cache.sh", "{new_color}"]
/// timeout = "2m"                # each attempt (default 5m)
/// retries = 1                   # attempts after a failed first one (default 0)
/// idempotent = true             # may run again after a crash (default false)
///
/// [[hooks]]
/// name = "notify-cmdb"
/// point = "on_finish"
/// url = "https://cmdb.example.com/deployments"
/// headers = { Authorization = { secret = "prod/cmdb-token", format = "Bearer {secret}" } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookSpec {
    /// Where, how long, how often, and whether it may run again.
    #[serde(flatten)]
    pub hook: LifecycleHook,
    /// What runs.
    #[serde(flatten)]
    pub run: HookRun,
}

/// What a hook runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HookRun {
    /// A command (its `timeout` is the hook's; the engine retries it).
    Command(CommandSpec),
    /// An HTTP request.
    Webhook(bluegreen_http::webhook::Webhook),
}

impl<'de> Deserialize<'de> for HookSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let o = v
            .as_object_mut()
            .ok_or_else(|| D::Error::custom("expected a table"))?;
        let name = o
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| D::Error::custom("name: missing"))?
            .to_string();
        let point = match o.remove("point") {
            Some(serde_json::Value::String(p)) => p
                .parse::<HookPoint>()
                .map_err(|m| D::Error::custom(format!("point: {m}")))?,
            Some(_) => return Err(D::Error::custom("point: expected a string")),
            None => {
                return Err(D::Error::custom(
                    "point: missing; where the hook runs, e.g. \"before_traffic\"",
                ))
            }
        };
        let mut hook = LifecycleHook::new(name, point);
        if let Some(t) = o.get("timeout") {
            let t = t
                .as_str()
                .ok_or_else(|| D::Error::custom("timeout: expected a duration such as \"2m\""))?;
            hook.timeout = humantime::parse_duration(t)
                .map_err(|e| D::Error::custom(format!("timeout: {e}")))?;
        }
        if let Some(r) = o.remove("retries") {
            hook.retries = r
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| D::Error::custom("retries: expected a whole number"))?;
        }
        if let Some(i) = o.remove("idempotent") {
            hook.idempotent = i
                .as_bool()
                .ok_or_else(|| D::Error::custom("idempotent: expected true or false"))?;
        }
        let run = match (o.contains_key("command"), o.contains_key("url")) {
            (true, true) => return Err(D::Error::custom("give `command` or `url`, not both")),
            (true, false) => {
                // The engine retries (the hook's `retries`); one attempt
                // per run of the command itself.
                let mut c = CommandSpec::deserialize(v).map_err(D::Error::custom)?;
                c.0.retries = 0;
                c.0.timeout = hook.timeout;
                HookRun::Command(c)
            }
            (false, true) => {
                let mut w =
                    bluegreen_http::webhook::Webhook::deserialize(v).map_err(D::Error::custom)?;
                w.timeout = hook.timeout;
                HookRun::Webhook(w)
            }
            (false, false) => {
                return Err(D::Error::custom(
                    "give `command` (a program and its arguments) or `url` (a webhook)",
                ))
            }
        };
        Ok(HookSpec { hook, run })
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
    let hooks = s
        .hooks
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match &h.run {
            HookRun::Command(c) => Some((format!("hooks[{i}]"), c)),
            HookRun::Webhook(_) => None,
        });
    smoke.chain(checks).chain(hooks).collect()
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
