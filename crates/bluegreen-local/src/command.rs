//! Commands as smoke tests and as checks: the team's own smoke suite
//! (`npm run smoke-test -- --url {url}`) run as a [`SmokeTest`], and a
//! command that prints a number run as a [`MetricsSource`].
//!
//! A command is an argv, never a shell line: its first word is the program
//! (found on `PATH`, or a path relative to the working directory) and every
//! other word is passed as one argument. Each attempt runs in a process group
//! of its own, killed whole (grandchildren too) when the timeout passes and
//! after the command exits, so nothing it started outlives it.
//!
//! Its environment is explicit: nothing of the deployer's but `PATH` and the
//! variables [`pass_env`](CommandCheck::pass_env) names, plus the check's
//! [`env`](CommandCheck::env), the `BLUEGREEN_*` variables of the target, and
//! the [`secrets`](CommandCheck::secrets), read by reference from a
//! [`SecretSource`] for each run. The deployer's journal URL and its own
//! secrets are never seen by the command.
//!
//! The exit code is the verdict. The tail of the output (stdout and stderr as
//! they came, the last [`defaults::TAIL_LINES`] lines and at most
//! [`defaults::TAIL_BYTES`] bytes) goes into the outcome's detail, with every
//! secret value of the run masked before the tail is cut. A JUnit XML file
//! the command writes ([`junit`](CommandCheck::junit)) or TAP on its stdout
//! ([`tap`](CommandCheck::tap)) is summed up as "4/4 passed" with each test's
//! name and time.
//!
//! ```no_run
//! use bluegreen_local::command::{CommandCheck, CommandSmokeTest};
//!
//! let mut check = CommandCheck::new(
//!     "smoke-suite",
//!     ["npm", "run", "smoke-test", "--", "--url", "{url}"],
//! );
//! check.junit = Some("reports/smoke.xml".into());
//! check.secrets.insert("SMOKE_TOKEN".into(), "prod/order-api/smoke-token".into());
//! let test = CommandSmokeTest::new(check)?;
//! # Ok::<(), bluegreen_core::Error>(())
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bluegreen_core::provider::{
    Hook, HookContext, HookOutcome, MetricAnswer, MetricQuery, MetricsSource, Sample,
};
use bluegreen_core::{
    Error, ErrorKind, Result, SecretSource, SmokeOutcome, SmokeTarget, SmokeTest,
};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;

use crate::PROVIDER;

/// Defaults and bounds, each defined once.
pub mod defaults {
    use std::time::Duration;

    /// The time limit of one attempt (a whole smoke suite may take minutes).
    pub const TIMEOUT: Duration = Duration::from_secs(300);
    /// Attempts after a failed first one.
    pub const RETRIES: u32 = 0;
    /// The wait before the first retry; it doubles before each next one.
    pub const BACKOFF: Duration = Duration::from_secs(1);
    /// The most lines of output kept in the tail.
    pub const TAIL_LINES: usize = 40;
    /// The most bytes of output kept in the tail.
    pub const TAIL_BYTES: usize = 4096;
    /// The most bytes of combined output held while the command runs (the
    /// tail is cut from these, after masking).
    pub const HELD_BYTES: usize = 64 * 1024;
    /// The most bytes of stdout held for TAP and for a printed number.
    pub const STDOUT_BYTES: usize = 1024 * 1024;
    /// How long the output is still read after the command exits, for
    /// pipes a process outside its group still holds open.
    pub const DRAIN: Duration = Duration::from_secs(1);
}

/// The placeholders an argument or an [`env`](CommandCheck::env) value of a
/// smoke test may name: `{url}` and `{base_url}` (the same: the target's base
/// URL), `{service}`, `{color}` and `{version}`.
pub const SMOKE_VARIABLES: [&str; 5] = ["url", "base_url", "service", "color", "version"];

/// The placeholders of a check's command ([`CommandMetrics`]): `{query}` (the
/// check's rendered query), `{check}` (its name), `{from}` and `{to}` (the
/// window, in Unix seconds).
pub const METRIC_VARIABLES: [&str; 4] = ["query", "check", "from", "to"];

/// The placeholders of a lifecycle hook's command ([`CommandHook`]):
/// `{service}`, `{version}`, `{point}` (e.g. `before_traffic`),
/// `{deployment_id}`, `{old_color}` and `{new_color}` (empty before
/// preflight chose them), `{percent}` (the new color's share last read back,
/// empty before any) and `{outcome}` (`succeeded`, `rolled_back` or
/// `halted`, for `after_rollback` and `on_finish`; empty before).
pub const HOOK_VARIABLES: [&str; 8] = [
    "service",
    "version",
    "point",
    "deployment_id",
    "old_color",
    "new_color",
    "percent",
    "outcome",
];

/// What the command reports besides its exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    /// Nothing (the default).
    #[default]
    None,
    /// TAP on stdout (`ok 1 - name`, `not ok 2 - name`), with a test's time
    /// from a `duration_ms:` line of its YAML block when there is one.
    Tap,
}

impl Report {
    fn is_none(&self) -> bool {
        *self == Report::None
    }
}

/// One command: what runs, for how long, how often, where, with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    /// The name plans refer to, e.g. `smoke-suite`.
    pub name: String,
    /// The program and its arguments, e.g. `["npm", "run", "smoke-test",
    /// "--", "--url", "{url}"]`; see [`SMOKE_VARIABLES`] and
    /// [`METRIC_VARIABLES`] for the placeholders.
    pub command: Vec<String>,
    /// The time limit of one attempt; past it the command's whole process
    /// group is killed.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts after a failed first one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The wait before the first retry; doubled before each next one.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// The working directory (the deployer's if absent).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Plain variables; values may name the placeholders.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of the deployer's environment passed through by name
    /// (default none; `PATH` always is).
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Variables whose values are secrets, by reference: variable name to
    /// the secret's name as the [`SecretSource`] knows it. Their values are
    /// masked in everything shown.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// A JUnit XML file the command writes (relative to the working
    /// directory), summed up in the outcome. It is removed before each
    /// attempt, so a stale file is never reported.
    #[serde(default)]
    pub junit: Option<PathBuf>,
    /// What stdout carries: `tap` to sum up its TAP.
    #[serde(default, skip_serializing_if = "Report::is_none")]
    pub report: Report,
}

fn default_timeout() -> Duration {
    defaults::TIMEOUT
}
fn default_retries() -> u32 {
    defaults::RETRIES
}
fn default_backoff() -> Duration {
    defaults::BACKOFF
}

impl CommandCheck {
    /// A check named `name` running `command`, with the defaults.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        command: impl IntoIterator<Item = S>,
    ) -> Self {
        CommandCheck {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            timeout: defaults::TIMEOUT,
            retries: defaults::RETRIES,
            backoff: defaults::BACKOFF,
            working_dir: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            secrets: BTreeMap::new(),
            junit: None,
            report: Report::None,
        }
    }

    /// Checks the fields, with `variables` the placeholders allowed; the
    /// error starts with the field it is about (`command[2]`, `env.URL`).
    pub fn validate(&self, variables: &[&str]) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("command: expected a program and its arguments, e.g. [\"npm\", \"run\", \"smoke-test\"]".into());
        }
        if self.command[0].contains('{') {
            return Err(format!(
                "command[0]: the program {:?} must not be a placeholder",
                self.command[0]
            ));
        }
        for (i, arg) in self.command.iter().enumerate() {
            check_placeholders(arg, variables).map_err(|m| format!("command[{i}]: {m}"))?;
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be longer than zero".into());
        }
        for (k, v) in &self.env {
            check_var_name(k).map_err(|m| format!("env.{k}: {m}"))?;
            check_placeholders(v, variables).map_err(|m| format!("env.{k}: {m}"))?;
        }
        for (i, k) in self.pass_env.iter().enumerate() {
            check_var_name(k).map_err(|m| format!("pass_env[{i}]: {m}"))?;
        }
        for (k, name) in &self.secrets {
            check_var_name(k).map_err(|m| format!("secrets.{k}: {m}"))?;
            if name.trim().is_empty() {
                return Err(format!("secrets.{k}: the secret's name must not be empty"));
            }
            if self.env.contains_key(k) {
                return Err(format!("secrets.{k}: {k} is also set in env"));
            }
        }
        if let Some(j) = &self.junit {
            if j.as_os_str().is_empty() {
                return Err("junit: must not be empty".into());
            }
        }
        Ok(())
    }

    /// The program this check runs, resolved: a path relative to the
    /// working directory, or a name found on `PATH`. The error names
    /// `command[0]`.
    pub fn resolve_program(&self) -> std::result::Result<PathBuf, String> {
        let program = self.command.first().map(String::as_str).unwrap_or("");
        if program.contains('/') {
            let p = Path::new(program);
            let full = match &self.working_dir {
                Some(d) if p.is_relative() => d.join(p),
                _ => p.to_path_buf(),
            };
            if full.is_file() {
                Ok(full)
            } else {
                Err(format!("command[0]: {} does not exist", full.display()))
            }
        } else {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(program))
                        .find(|p| p.is_file())
                })
                .ok_or_else(|| format!("command[0]: the program {program:?} is not on PATH"))
        }
    }
}

/// The command as shown in details: its words, quoted where needed.
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%{}".contains(c))
            {
                a.clone()
            } else {
                format!("{a:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_var_name(k: &str) -> std::result::Result<(), String> {
    if k.is_empty() || k.contains('=') || k.contains('\0') {
        Err("not a variable name".into())
    } else {
        Ok(())
    }
}

fn check_placeholders(text: &str, variables: &[&str]) -> std::result::Result<(), String> {
    bluegreen_core::plan::render_template(text, |n| variables.contains(&n).then_some(""))
        .map(|_| ())
        .map_err(|m| {
            let head = m.split(':').next().unwrap_or(&m);
            format!(
                "{head}: expected one of {}",
                variables
                    .iter()
                    .map(|v| format!("{{{v}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn render(
    text: &str,
    vars: &(dyn Fn(&str) -> Option<String> + Sync),
) -> std::result::Result<String, String> {
    let known = std::cell::RefCell::new(BTreeMap::new());
    bluegreen_core::plan::render_template(text, |n| {
        if let Some(v) = vars(n) {
            known.borrow_mut().insert(n.to_string(), v);
        }
        Some("")
    })?;
    let known = known.into_inner();
    bluegreen_core::plan::render_template(text, |n| known.get(n).map(String::as_str))
}

// ------------------------------------------------------------- masking --

// Secrets are masked by the core's Redactor: `mask_and_tail` masks
// first, then keeps the last lines, so no part of a secret survives the cut.
use bluegreen_core::redact::Redactor as Mask;

// ------------------------------------------------------------- running --

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the timeout and its process group was killed.
    TimedOut,
}

impl Exit {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by signal {s}"),
            Exit::TimedOut => f.write_str("timed out"),
        }
    }
}

/// One test of a JUnit or TAP report.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    /// Its name (`classname.name` in JUnit when a class is given).
    pub name: String,
    /// How long it took, when the report says.
    pub time: Option<Duration>,
    /// How it ended.
    pub status: TestStatus,
}

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatus {
    /// Passed.
    Passed,
    /// Failed (or errored).
    Failed,
    /// Skipped (or a TAP `TODO`).
    Skipped,
}

/// The tests a run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct TestSummary {
    /// Where they came from: `JUnit` or `TAP`.
    pub format: &'static str,
    /// Each test, in the report's order.
    pub tests: Vec<TestCase>,
}

impl TestSummary {
    /// How many passed.
    pub fn passed(&self) -> usize {
        self.count(TestStatus::Passed)
    }

    /// How many ran (passed or failed; skipped ones do not count).
    pub fn ran(&self) -> usize {
        self.passed() + self.count(TestStatus::Failed)
    }

    fn count(&self, s: TestStatus) -> usize {
        self.tests.iter().filter(|t| t.status == s).count()
    }
}

impl fmt::Display for TestSummary {
    /// `4/4 passed (JUnit): ✓ create order 0.120 s, …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} passed", self.passed(), self.ran())?;
        let skipped = self.count(TestStatus::Skipped);
        if skipped > 0 {
            write!(f, ", {skipped} skipped")?;
        }
        write!(f, " ({})", self.format)?;
        for (i, t) in self.tests.iter().enumerate() {
            let mark = match t.status {
                TestStatus::Passed => "✓",
                TestStatus::Failed => "✗",
                TestStatus::Skipped => "-",
            };
            write!(f, "{} {mark} {}", if i == 0 { ":" } else { "," }, t.name)?;
            if let Some(d) = t.time {
                write!(f, " {:.3} s", d.as_secs_f64())?;
            }
        }
        Ok(())
    }
}

/// What one attempt of a command did.
#[derive(Debug, Clone)]
pub struct CommandRun {
    /// The command as run, placeholders filled in.
    pub command: String,
    /// How it ended.
    pub exit: Exit,
    /// How long it ran.
    pub duration: Duration,
    /// The tail of stdout and stderr, secrets masked.
    pub tail: String,
    /// Its stdout (the last [`defaults::STDOUT_BYTES`]), secrets masked.
    pub stdout: String,
    /// The tests its JUnit file or TAP reported, or why they could not be read.
    pub tests: Option<std::result::Result<TestSummary, String>>,
}

impl CommandRun {
    /// One line (and the tail below it, indented): what ran, how it ended,
    /// the tests, the output.
    pub fn detail(&self, timeout: Duration, attempt: u32, attempts: u32) -> String {
        let mut d = format!("`{}` {}", self.command, self.exit);
        if self.exit == Exit::TimedOut {
            d.push_str(&format!(
                " after {} (its process group was killed)",
                humantime::format_duration(timeout)
            ));
        } else {
            d.push_str(&format!(" after {:.1} s", self.duration.as_secs_f64()));
        }
        if attempts > 1 {
            d.push_str(&format!(" (attempt {attempt} of {attempts})"));
        }
        match &self.tests {
            Some(Ok(s)) => d.push_str(&format!("; {s}")),
            Some(Err(e)) => d.push_str(&format!("; {e}")),
            None => {}
        }
        if self.tail.is_empty() {
            d.push_str("; no output");
        } else {
            d.push_str("; output tail:");
            for line in self.tail.lines() {
                d.push_str("\n    ");
                d.push_str(line);
            }
        }
        d
    }
}

/// Runs one [`CommandCheck`]: the runner behind [`CommandSmokeTest`] and
/// [`CommandMetrics`].
#[derive(Clone)]
pub struct CommandRunner {
    check: Arc<CommandCheck>,
    secrets: Option<Arc<dyn SecretSource>>,
}

impl fmt::Debug for CommandRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The check holds secret names only, never values.
        f.debug_struct("CommandRunner")
            .field("check", &self.check)
            .field("secrets", &self.secrets.is_some())
            .finish()
    }
}

fn error(check: &str, kind: ErrorKind, message: impl fmt::Display) -> Error {
    Error::new(kind, format!("command {check}: {message}"))
        .with_provider(PROVIDER)
        .with_operation("command")
}

impl CommandRunner {
    fn new(check: CommandCheck, variables: &[&str]) -> Result<Self> {
        check
            .validate(variables)
            .map_err(|m| error(&check.name, ErrorKind::InvalidInput, m))?;
        Ok(CommandRunner {
            check: Arc::new(check),
            secrets: None,
        })
    }

    /// The check.
    pub fn check(&self) -> &CommandCheck {
        &self.check
    }

    /// Runs attempts until one exits 0 or the retries are used up, with
    /// `vars` filling the placeholders; returns the last attempt and its
    /// number. `Err` only when the command could not be run at all.
    async fn run(
        &self,
        vars: &(dyn Fn(&str) -> Option<String> + Sync),
        extra_env: &[(String, String)],
    ) -> Result<(CommandRun, u32)> {
        let c = &self.check;
        let attempts = c.retries.saturating_add(1);
        let mut backoff = c.backoff;
        let mut attempt = 1;
        loop {
            let run = self.attempt(vars, extra_env).await?;
            if run.exit.success() || attempt >= attempts {
                return Ok((run, attempt));
            }
            tracing::info!(
                command = %c.name,
                attempt,
                "command {} {}; retrying in {}",
                c.name,
                run.exit,
                humantime::format_duration(backoff)
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        vars: &(dyn Fn(&str) -> Option<String> + Sync),
        extra_env: &[(String, String)],
    ) -> Result<CommandRun> {
        let c = &self.check;
        let invalid = |m: String| error(&c.name, ErrorKind::InvalidInput, m);
        let mut argv = Vec::with_capacity(c.command.len());
        for (i, arg) in c.command.iter().enumerate() {
            argv.push(render(arg, vars).map_err(|m| invalid(format!("command[{i}]: {m}")))?);
        }
        let program = c
            .resolve_program()
            .map_err(|m| error(&c.name, ErrorKind::NotFound, m))?;
        let mut cmd = std::process::Command::new(&program);
        // Nothing of the deployer's environment but PATH and what pass_env
        // names: it may hold the journal's URL with its password, and secrets.
        cmd.args(&argv[1..]).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for name in &c.pass_env {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        for (k, v) in &c.env {
            cmd.env(
                k,
                render(v, vars).map_err(|m| invalid(format!("env.{k}: {m}")))?,
            );
        }
        let mut values = Vec::new();
        if !c.secrets.is_empty() {
            let source = self.secrets.as_ref().ok_or_else(|| {
                invalid(format!(
                    "secrets names {} secret(s) but no SecretSource was given",
                    c.secrets.len()
                ))
            })?;
            for (var, name) in &c.secrets {
                let v = source.get(name).await.map_err(|e| {
                    error(
                        &c.name,
                        e.kind(),
                        format!("secrets.{var}: cannot read secret {name}: {}", e.message()),
                    )
                    .with_status(e.status())
                })?;
                cmd.env(var, v.expose());
                values.push(v.expose().to_string());
            }
        }
        let mask = Mask::new(values);
        if let Some(d) = &c.working_dir {
            cmd.current_dir(d);
        }
        let junit = c.junit.as_ref().map(|j| match &c.working_dir {
            Some(d) if j.is_relative() => d.join(j),
            _ => j.clone(),
        });
        if let Some(j) = &junit {
            match std::fs::remove_file(j) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(invalid(format!(
                        "junit: cannot remove the previous {}: {e}",
                        j.display()
                    )))
                }
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // On a thread of its own, in real time: a blocking task also keeps
        // a runtime with paused time from jumping past the timeout while the
        // command runs.
        let timeout = c.timeout;
        let ran = tokio::task::spawn_blocking(move || supervise(cmd, timeout))
            .await
            .map_err(|e| error(&c.name, ErrorKind::Other, format!("cannot run it: {e}")))?;
        let (exit, duration, combined, stdout) = ran.map_err(|e| {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Other,
            };
            error(
                &c.name,
                kind,
                format!("command[0]: cannot run {}: {e}", program.display()),
            )
        })?;
        let tail = mask.mask_and_tail(&combined, defaults::TAIL_LINES, defaults::TAIL_BYTES);
        let stdout = mask.mask(&stdout);
        let tests = if let Some(j) = &junit {
            Some(match std::fs::read_to_string(j) {
                Ok(xml) => parse_junit(&mask.mask(&xml))
                    .map_err(|e| format!("JUnit file {} unreadable: {e}", j.display())),
                Err(e) => Err(format!("JUnit file {} not read: {e}", j.display())),
            })
        } else if c.report == Report::Tap {
            Some(parse_tap(&stdout).ok_or_else(|| "no TAP test points on stdout".to_string()))
        } else {
            None
        };
        Ok(CommandRun {
            command: shown(&argv),
            exit,
            duration,
            tail,
            stdout,
            tests,
        })
    }
}

fn kill_group(group: Option<Pid>) {
    if let Some(pid) = group {
        // ESRCH (the group is gone) is the usual answer.
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// What [`supervise`] returns: the exit, how long it ran, the combined
/// output and stdout.
type Supervised = (Exit, Duration, String, String);

/// Runs `cmd` (its own process group) to its exit or `timeout`, killing the
/// whole group then and after it exits, and collects its output. Blocking.
fn supervise(mut cmd: std::process::Command, timeout: Duration) -> std::io::Result<Supervised> {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let group = Pid::from_raw(child.id() as i32);
    let held = Arc::new(Mutex::new(Held::default()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut readers = 0;
    if let Some(p) = child.stdout.take() {
        spawn_reader(p, held.clone(), true, done_tx.clone());
        readers += 1;
    }
    if let Some(p) = child.stderr.take() {
        spawn_reader(p, held.clone(), false, done_tx.clone());
        readers += 1;
    }
    drop(done_tx);
    let deadline = start + timeout;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                break match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(sig)) => Exit::Signal(sig),
                    (None, None) => Exit::Signal(0),
                }
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group(group);
                let _ = child.wait();
                break Exit::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(group);
                let _ = child.wait();
                return Err(e);
            }
        }
    };
    let duration = start.elapsed();
    // What it left running in its group goes too.
    kill_group(group);
    // Pipes a process outside the group still holds are not waited for long.
    let drain = Instant::now() + defaults::DRAIN;
    for _ in 0..readers {
        let left = drain.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let h = held.lock().unwrap_or_else(|e| e.into_inner());
    let text = |q: &VecDeque<u8>| {
        String::from_utf8_lossy(&q.iter().copied().collect::<Vec<u8>>()).into_owned()
    };
    Ok((exit, duration, text(&h.combined), text(&h.stdout)))
}

/// Output held while a command runs, bounded.
#[derive(Default)]
struct Held {
    combined: VecDeque<u8>,
    stdout: VecDeque<u8>,
}

fn push_bounded(q: &mut VecDeque<u8>, bytes: &[u8], max: usize) {
    q.extend(bytes);
    let over = q.len().saturating_sub(max);
    q.drain(..over);
}

fn spawn_reader(
    mut pipe: impl std::io::Read + Send + 'static,
    held: Arc<Mutex<Held>>,
    stdout: bool,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                    push_bounded(&mut h.combined, &buf[..n], defaults::HELD_BYTES);
                    if stdout {
                        push_bounded(&mut h.stdout, &buf[..n], defaults::STDOUT_BYTES);
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

// ------------------------------------------------------------- reports --

/// The test cases of a JUnit XML report (`<testsuites>` or `<testsuite>`).
pub fn parse_junit(xml: &str) -> std::result::Result<TestSummary, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let tests = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|n| {
            let name = n.attribute("name").unwrap_or("(unnamed)");
            let name = match n.attribute("classname").filter(|c| !c.is_empty()) {
                Some(c) => format!("{c}.{name}"),
                None => name.to_string(),
            };
            let time = n
                .attribute("time")
                .and_then(|t| t.trim().replace(',', "").parse::<f64>().ok())
                .and_then(|s| Duration::try_from_secs_f64(s).ok());
            let has = |tag: &str| n.children().any(|c| c.has_tag_name(tag));
            let status = if has("failure") || has("error") {
                TestStatus::Failed
            } else if has("skipped") {
                TestStatus::Skipped
            } else {
                TestStatus::Passed
            };
            TestCase { name, time, status }
        })
        .collect::<Vec<_>>();
    if tests.is_empty() {
        return Err("no <testcase> in it".into());
    }
    Ok(TestSummary {
        format: "JUnit",
        tests,
    })
}

/// The test points of TAP output, or `None` when it has none. A test's time
/// comes from a `duration_ms:` line of the YAML block after it.
pub fn parse_tap(text: &str) -> Option<TestSummary> {
    let mut tests: Vec<TestCase> = Vec::new();
    let mut in_yaml = false;
    for line in text.lines() {
        let t = line.trim();
        if in_yaml {
            if t == "..." {
                in_yaml = false;
            } else if let (Some(ms), Some(last)) =
                (t.strip_prefix("duration_ms:"), tests.last_mut())
            {
                last.time = ms
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
            }
            continue;
        }
        if t == "---" && !tests.is_empty() && line.starts_with(char::is_whitespace) {
            in_yaml = true;
            continue;
        }
        // Only top-level points: indented ones are a subtest's.
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok") {
            (true, r)
        } else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with(' ')) {
            continue;
        }
        let rest = rest
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        let rest = rest.strip_prefix("- ").unwrap_or(rest);
        let (desc, directive) = match rest.split_once(" # ") {
            Some((d, dir)) => (d.trim(), dir.trim().to_ascii_uppercase()),
            None => (rest.trim(), String::new()),
        };
        let status = if directive.starts_with("SKIP") || directive.starts_with("TODO") {
            TestStatus::Skipped
        } else if ok {
            TestStatus::Passed
        } else {
            TestStatus::Failed
        };
        tests.push(TestCase {
            name: if desc.is_empty() {
                format!("test {}", tests.len() + 1)
            } else {
                desc.to_string()
            },
            time: None,
            status,
        });
    }
    (!tests.is_empty()).then_some(TestSummary {
        format: "TAP",
        tests,
    })
}

// ---------------------------------------------------------- smoke test --

/// A [`CommandCheck`] as a [`SmokeTest`]: passes when the command exits 0.
///
/// The command also gets `BLUEGREEN_URL` (when the target has a base URL),
/// `BLUEGREEN_SERVICE`, `BLUEGREEN_VERSION` and `BLUEGREEN_COLOR` (absent
/// for staging). Like every smoke test it must be safe to repeat.
#[derive(Debug, Clone)]
pub struct CommandSmokeTest {
    runner: CommandRunner,
}

impl CommandSmokeTest {
    /// Validates `check` with the [`SMOKE_VARIABLES`].
    pub fn new(check: CommandCheck) -> Result<Self> {
        Ok(CommandSmokeTest {
            runner: CommandRunner::new(check, &SMOKE_VARIABLES)?,
        })
    }

    /// Where the [`secrets`](CommandCheck::secrets) are read.
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.runner.secrets = Some(secrets);
        self
    }

    /// The check.
    pub fn check(&self) -> &CommandCheck {
        self.runner.check()
    }

    /// Runs it against `target` and returns its last attempt as well as the
    /// outcome, for callers that want more than the detail.
    pub async fn run_detailed(&self, target: &SmokeTarget) -> Result<(SmokeOutcome, CommandRun)> {
        let base = target
            .base_url
            .as_deref()
            .map(|b| b.trim_end_matches('/').to_string());
        let vars = |n: &str| match n {
            "url" | "base_url" => base.clone(),
            "service" => Some(target.service.clone()),
            "color" => target.color.map(|c| c.as_str().to_string()),
            "version" => Some(target.version.clone()),
            _ => None,
        };
        let c = self.runner.check();
        for (i, arg) in c.command.iter().enumerate() {
            if base.is_none() && (arg.contains("{url}") || arg.contains("{base_url}")) {
                return Err(error(
                    &c.name,
                    ErrorKind::InvalidInput,
                    format!(
                        "command[{i}]: no base URL is known for {} (set the color's base URL)",
                        target.color.map_or("staging", |c| c.as_str())
                    ),
                ));
            }
        }
        let mut env = vec![
            ("BLUEGREEN_SERVICE".to_string(), target.service.clone()),
            ("BLUEGREEN_VERSION".to_string(), target.version.clone()),
        ];
        if let Some(b) = &base {
            env.push(("BLUEGREEN_URL".into(), b.clone()));
        }
        if let Some(col) = target.color {
            env.push(("BLUEGREEN_COLOR".into(), col.as_str().into()));
        }
        let started = Instant::now();
        let (run, attempt) = self.runner.run(&vars, &env).await?;
        let outcome = SmokeOutcome {
            passed: run.exit.success(),
            duration: started.elapsed(),
            detail: run.detail(c.timeout, attempt, c.retries.saturating_add(1)),
        };
        Ok((outcome, run))
    }
}

#[async_trait]
impl SmokeTest for CommandSmokeTest {
    fn name(&self) -> &str {
        &self.runner.check().name
    }

    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome> {
        Ok(self.run_detailed(target).await?.0)
    }
}

// ----------------------------------------------------------------- hook --

/// A [`CommandCheck`] as a lifecycle [`Hook`]: succeeds when the command
/// exits 0; the outcome's detail is what ran, how it ended and the tail of
/// its output (secrets masked), as for a smoke test.
///
/// The command also gets `BLUEGREEN_HOOK_POINT`, `BLUEGREEN_SERVICE`,
/// `BLUEGREEN_VERSION`, `BLUEGREEN_DEPLOYMENT_ID`, and, once known,
/// `BLUEGREEN_OLD_COLOR`, `BLUEGREEN_NEW_COLOR`, `BLUEGREEN_PERCENT` and
/// `BLUEGREEN_OUTCOME`. Its [`timeout`](CommandCheck::timeout) kills its
/// process group; the engine's retries (the plan's `retries`) come on top
/// of the check's own, so a spec sets one of them (the CLI sets the
/// check's to 0). A hook need not be idempotent: the engine never runs it
/// twice after a crash unless the plan says it may.
#[derive(Debug, Clone)]
pub struct CommandHook {
    runner: CommandRunner,
}

impl CommandHook {
    /// Validates `check` with the [`HOOK_VARIABLES`].
    pub fn new(check: CommandCheck) -> Result<Self> {
        Ok(CommandHook {
            runner: CommandRunner::new(check, &HOOK_VARIABLES)?,
        })
    }

    /// Where the [`secrets`](CommandCheck::secrets) are read.
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.runner.secrets = Some(secrets);
        self
    }

    /// The check.
    pub fn check(&self) -> &CommandCheck {
        self.runner.check()
    }
}

/// The value of each [`HOOK_VARIABLES`] placeholder for `c` (empty when
/// not known yet).
fn hook_value(c: &HookContext, name: &str) -> Option<String> {
    let color = |x: Option<bluegreen_core::Color>| x.map_or(String::new(), |c| c.to_string());
    Some(match name {
        "service" => c.service.clone(),
        "version" => c.version.clone(),
        "point" => c.point.to_string(),
        "deployment_id" => c.deployment_id.clone(),
        "old_color" => color(c.old),
        "new_color" => color(c.new),
        "percent" => c.new_percent.map_or(String::new(), |p| p.to_string()),
        "outcome" => c.outcome.clone().unwrap_or_default(),
        _ => return None,
    })
}

#[async_trait]
impl Hook for CommandHook {
    fn name(&self) -> &str {
        &self.runner.check().name
    }

    async fn run(&self, context: &HookContext) -> Result<HookOutcome> {
        let vars = |n: &str| hook_value(context, n);
        let env: Vec<(String, String)> = HOOK_VARIABLES
            .iter()
            .filter_map(|n| {
                let v = hook_value(context, n)?;
                let key = match *n {
                    "point" => "BLUEGREEN_HOOK_POINT".to_string(),
                    other => format!("BLUEGREEN_{}", other.to_ascii_uppercase()),
                };
                (!v.is_empty()).then_some((key, v))
            })
            .collect();
        let c = self.runner.check();
        let started = Instant::now();
        let (run, attempt) = self.runner.run(&vars, &env).await?;
        Ok(HookOutcome {
            passed: run.exit.success(),
            duration: started.elapsed(),
            detail: run.detail(c.timeout, attempt, c.retries.saturating_add(1)),
            attempts: attempt,
        })
    }
}

// -------------------------------------------------------------- metrics --

/// A [`CommandCheck`] as a [`MetricsSource`]: the command prints a number
/// (its stdout's last non-empty line), which becomes one sample at the end
/// of the query's window; an empty stdout is no data. A command that does
/// not exit 0, or prints something that is not a number, is an error naming
/// the command, with its output's tail. Register it under a name
/// (`Builder::metrics_named`) and point a check's `source` at that name; the
/// check's rendered query is `{query}` in the command.
#[derive(Debug, Clone)]
pub struct CommandMetrics {
    runner: CommandRunner,
}

impl CommandMetrics {
    /// Validates `check` with the [`METRIC_VARIABLES`].
    pub fn new(check: CommandCheck) -> Result<Self> {
        Ok(CommandMetrics {
            runner: CommandRunner::new(check, &METRIC_VARIABLES)?,
        })
    }

    /// Where the [`secrets`](CommandCheck::secrets) are read.
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretSource>) -> Self {
        self.runner.secrets = Some(secrets);
        self
    }

    /// The check.
    pub fn check(&self) -> &CommandCheck {
        self.runner.check()
    }
}

#[async_trait]
impl MetricsSource for CommandMetrics {
    async fn query(&self, query: &MetricQuery) -> Result<MetricAnswer> {
        let secs = |t: bluegreen_core::Timestamp| (t.0 / 1000).to_string();
        let vars = |n: &str| match n {
            "query" => Some(query.query.clone()),
            "check" => Some(query.check.clone()),
            "from" => Some(secs(query.from)),
            "to" => Some(secs(query.to)),
            _ => None,
        };
        let c = self.runner.check();
        let (run, attempt) = self.runner.run(&vars, &[]).await?;
        let attempts = c.retries.saturating_add(1);
        if !run.exit.success() {
            return Err(error(
                &c.name,
                ErrorKind::Unavailable,
                format!(
                    "check {}: {}",
                    query.check,
                    run.detail(c.timeout, attempt, attempts)
                ),
            ));
        }
        let Some(line) = run.stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
            return Ok(MetricAnswer::NoData {
                reason: format!("`{}` printed nothing", run.command),
            });
        };
        match line.parse::<f64>() {
            Ok(value) => Ok(MetricAnswer::Samples {
                samples: vec![Sample {
                    at: query.to,
                    value,
                }],
            }),
            Err(_) => {
                let shown: String = line.chars().take(80).collect();
                Err(error(
                    &c.name,
                    ErrorKind::InvalidResponse,
                    format!(
                        "check {}: `{}` printed {shown:?} as its last line, not a number",
                        query.check, run.command
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_points_with_directives_and_durations() {
        let tap = "TAP version 14\n1..3\nok 1 - creates an order\n  ---\n  duration_ms: 12.5\n  ...\nnot ok 2 - retrieves it\nok 3 - cancels # SKIP not today\n    ok 1 - a subtest point\n";
        let s = parse_tap(tap).expect("points");
        assert_eq!(s.tests.len(), 3);
        assert_eq!(s.tests[0].time, Some(Duration::from_micros(12500)));
        assert_eq!(s.tests[1].status, TestStatus::Failed);
        assert_eq!(s.tests[2].status, TestStatus::Skipped);
        assert_eq!(
            s.to_string(),
            "1/2 passed, 1 skipped (TAP): ✓ creates an order 0.013 s, ✗ retrieves it, - cancels"
        );
        assert!(parse_tap("hello\n").is_none());
    }

    #[test]
    fn placeholders_are_checked_naming_the_argument() {
        let c = CommandCheck::new("s", ["run", "--url", "{url}", "{nope}"]);
        let e = c.validate(&SMOKE_VARIABLES).unwrap_err();
        assert!(
            e.starts_with("command[3]: unknown template variable {nope}"),
            "{e}"
        );
        assert!(e.contains("{url}"), "{e}");
        assert!(CommandCheck::new("s", Vec::<String>::new())
            .validate(&SMOKE_VARIABLES)
            .unwrap_err()
            .starts_with("command:"));
    }
}
