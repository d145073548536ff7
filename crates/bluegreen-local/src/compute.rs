//! [`LocalCompute`]: each color is a group of child processes of one command.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use async_trait::async_trait;
use bluegreen_core::{
    Color, ComputeProvider, ComputeStatus, Error, ErrorKind, PreparedRelease, Release, Result,
    Rollout, SecretSource, TargetHealth,
};
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The variable each instance gets holding the deployer's process id, so
/// the instances a killed deployer left running can be found and stopped
/// (`bluegreen resume` of a local deployment does).
pub const DEPLOYER_PID_ENV: &str = "BLUEGREEN_DEPLOYER_PID";

use crate::proxy::Upstreams;
use crate::PROVIDER;

/// Defaults of [`LocalComputeBuilder`], each defined once.
pub mod defaults {
    use std::time::Duration;

    /// The path of the HTTP health check.
    pub const HEALTH_PATH: &str = "/health";
    /// How often a starting instance is checked until it first passes.
    pub const STARTUP_POLL: Duration = Duration::from_millis(50);
    /// How often a ready instance is checked.
    pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
    /// The longest one health check may take.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    /// Failed checks in a row after which a ready instance is unhealthy.
    pub const UNHEALTHY_AFTER: u32 = 3;
    /// Between SIGTERM and SIGKILL.
    pub const GRACE: Duration = Duration::from_secs(5);
    /// Between taking an instance out of rotation and sending SIGTERM.
    pub const DRAIN: Duration = Duration::from_millis(100);
}

/// Which port each instance listens on (passed to it as `PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPolicy {
    /// A free loopback port chosen per instance.
    Auto,
    /// Instance `i` of the color listens on `base + i`.
    Base(u16),
}

/// Builds a [`LocalCompute`].
pub struct LocalComputeBuilder {
    command: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    working_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    pass_env: Vec<String>,
    keep_logs: bool,
    health_path: String,
    startup_poll: Duration,
    health_interval: Duration,
    health_timeout: Duration,
    unhealthy_after: u32,
    grace: Duration,
    drain: Duration,
    ports: [PortPolicy; 2],
    secrets: Option<Arc<dyn SecretSource>>,
}

impl std::fmt::Debug for LocalComputeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalComputeBuilder")
            .field("command", &self.command)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("pass_env", &self.pass_env)
            .field("keep_logs", &self.keep_logs)
            .field("health_path", &self.health_path)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl LocalComputeBuilder {
    /// The program and arguments every instance runs. Without it, each
    /// release's `image` is the command line, split on whitespace.
    pub fn command<I, S>(mut self, program_and_args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(program_and_args.into_iter().map(Into::into).collect());
        self
    }

    /// An environment variable for every instance (the release's `env` wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The directory instances start in.
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// The directory under which this provider's own log directory is
    /// created (created itself, mode 0700, if missing). Each instance's
    /// stdout and stderr go to one file (`<color>-<n>.log`, mode 0600) in a
    /// fresh directory of mode 0700, `bluegreen-local-<pid>-<n>-<random>`,
    /// made by [`build`](Self::build) under this one ([`LocalCompute::log_dir`]
    /// tells which). Default: the system's temporary directory.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Keeps the instances' log directory when the deployment ends. Default
    /// `false`: [`LocalCompute::shutdown`] and dropping the last handle
    /// remove it with the log files in it.
    pub fn keep_logs(mut self, keep: bool) -> Self {
        self.keep_logs = keep;
        self
    }

    /// Variables of the deployer's own environment passed through to every
    /// instance by name, e.g. `["TZ", "LANG"]`; a variable the deployer does
    /// not have is left out. Default: none. Instances inherit nothing else
    /// from the deployer but `PATH` (see [`LocalCompute`], *Environment*).
    pub fn pass_env<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pass_env.extend(names.into_iter().map(Into::into));
        self
    }

    /// The path of the HTTP health check (default `/health`); any 2xx passes.
    pub fn health_path(mut self, path: impl Into<String>) -> Self {
        self.health_path = path.into();
        self
    }

    /// How often a ready instance is health-checked (default 500 ms).
    pub fn health_interval(mut self, every: Duration) -> Self {
        self.health_interval = every;
        self
    }

    /// The time between SIGTERM and SIGKILL when stopping (default 5 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The time between taking an instance out of rotation and SIGTERM
    /// (default 100 ms).
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Fixed ports for `color`: instance `i` listens on `base + i`. Without
    /// it, each instance gets a free loopback port.
    pub fn base_port(mut self, color: Color, base: u16) -> Self {
        self.ports[color_index(color)] = PortPolicy::Base(base);
        self
    }

    /// Resolves the release's `secrets` (name → secret reference) into the
    /// instances' environment.
    pub fn secrets(mut self, source: Arc<dyn SecretSource>) -> Self {
        self.secrets = Some(source);
        self
    }

    /// Builds the provider. Fails if a `pass_env` name is not a variable name
    /// or the log directory cannot be created.
    pub fn build(self) -> Result<LocalCompute> {
        if let Some(bad) = self
            .pass_env
            .iter()
            .find(|n| n.is_empty() || n.contains(['=', '\0']))
        {
            return Err(Error::invalid_input(format!(
                "pass_env {bad:?} is not an environment variable name"
            ))
            .with_provider(PROVIDER)
            .with_operation("build"));
        }
        let log_dir = create_run_log_dir(self.log_dir.as_deref())?;
        if !self.health_path.starts_with('/') {
            return Err(Error::invalid_input(format!(
                "health_path {:?} must start with /",
                self.health_path
            ))
            .with_provider(PROVIDER)
            .with_operation("build"));
        }
        if let Some(cmd) = &self.command {
            resolve_program(cmd, "command")?;
        }
        Ok(LocalCompute {
            inner: Arc::new(Inner {
                command: self.command,
                env: self.env,
                working_dir: self.working_dir,
                log_dir,
                pass_env: self.pass_env,
                keep_logs: self.keep_logs,
                health_path: self.health_path,
                startup_poll: self.startup_poll,
                health_interval: self.health_interval,
                health_timeout: self.health_timeout,
                unhealthy_after: self.unhealthy_after,
                grace: self.grace,
                drain: self.drain,
                ports: self.ports,
                secrets: self.secrets,
                colors: [
                    Mutex::new(ColorState::default()),
                    Mutex::new(ColorState::default()),
                ],
                rotation: [
                    ArcSwap::from_pointee(Vec::new()),
                    ArcSwap::from_pointee(Vec::new()),
                ],
                ops: tokio::sync::Mutex::new(()),
                next_instance: AtomicU32::new(0),
            }),
        })
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Creates this provider's log directory: a new directory of mode 0700 under
/// `parent` (the system's temporary directory if `None`; created 0700 if
/// missing), never one that already exists.
fn create_run_log_dir(parent: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |dir: &Path, e: std::io::Error| {
        Error::invalid_input(format!("log_dir {}: cannot create it: {e}", dir.display()))
            .with_provider(PROVIDER)
            .with_operation("build")
    };
    let parent = match parent {
        Some(p) => {
            bluegreen_core::journal::create_private_dir(p).map_err(|e| fail(p, e))?;
            p.to_path_buf()
        }
        None => std::env::temp_dir(),
    };
    let mut last = None;
    for _ in 0..16 {
        let dir = parent.join(format!(
            "bluegreen-local-{}-{}-{:08x}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dir, e)),
            Err(e) => return Err(fail(&dir, e)),
        }
    }
    let (dir, e) = last.expect("16 attempts");
    Err(fail(&dir, e))
}

fn color_index(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

/// Runs each color as N child processes of a command, each with its own
/// `PORT`, ready once its HTTP health check passes.
///
/// * **Start.** [`scale`](ComputeProvider::scale) spawns the missing
///   instances of the color's prepared release at once and returns; a
///   background task checks each one's health until it first passes
///   (`pending` until then), and keeps checking it afterwards.
/// * **Environment.** Instances do not inherit the deployer's environment
///   (which may hold the journal's URL with its password, or secrets). Each
///   gets only: the deployer's `PATH`; the deployer's variables named by
///   [`pass_env`](LocalComputeBuilder::pass_env) (none by default); the
///   builder's `env`; the release's `env`; `PORT`, `BLUEGREEN_COLOR`,
///   `BLUEGREEN_VERSION`, `BLUEGREEN_INSTANCE`, [`DEPLOYER_PID_ENV`]; and the release's resolved
///   `secrets`, each later one winning over an earlier one of the same name.
/// * **Stop.** Scaling down takes instances out of rotation, waits the drain
///   time, sends SIGTERM to the instance's process group, and SIGKILL after
///   the grace period. `scale` returns once they have exited.
/// * **Logs.** Each instance's stdout and stderr go to its own file (0600) in
///   this provider's own log directory (0700, [`log_dir`](Self::log_dir);
///   [`instances`](Self::instances) tells which file). The directory is
///   removed with the deployment, by [`shutdown`](Self::shutdown) or when
///   the last handle is dropped, unless
///   [`keep_logs`](LocalComputeBuilder::keep_logs) says otherwise; a scale
///   up after a shutdown creates it again.
/// * **Crashes.** An instance that exits on its own is reported `failed`
///   (and unhealthy) and is never restarted behind the engine's back; the
///   next explicit `scale` of its color replaces it.
/// * **Releases.** `prepare` records the release; the next `scale` of the
///   color to a non-zero count replaces instances running another release.
/// * **Cleanup.** Dropping the last handle kills every instance left
///   (SIGKILL); [`shutdown`](Self::shutdown) stops them gracefully. Both
///   remove the log directory unless it is kept.
///
/// Cloning is cheap and shares the instances.
#[derive(Clone)]
pub struct LocalCompute {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCompute")
            .field("command", &self.inner.command)
            .field("log_dir", &self.inner.log_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    command: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    working_dir: Option<PathBuf>,
    log_dir: PathBuf,
    pass_env: Vec<String>,
    keep_logs: bool,
    health_path: String,
    startup_poll: Duration,
    health_interval: Duration,
    health_timeout: Duration,
    unhealthy_after: u32,
    grace: Duration,
    drain: Duration,
    ports: [PortPolicy; 2],
    secrets: Option<Arc<dyn SecretSource>>,
    colors: [Mutex<ColorState>; 2],
    /// The instances the proxy may pick, per color, swapped as a whole: the
    /// proxy reads it per request without a lock or a shared reference count.
    rotation: [ArcSwap<Vec<Arc<Instance>>>; 2],
    /// Serialises prepare/scale/shutdown.
    ops: tokio::sync::Mutex<()>,
    next_instance: AtomicU32,
}

#[derive(Default)]
struct ColorState {
    prepared: Option<Release>,
    desired: u32,
    instances: Vec<Arc<Instance>>,
}

/// One child process.
struct Instance {
    color: Color,
    number: u32,
    port: u16,
    pid: Option<Pid>,
    version: String,
    log: PathBuf,
    ready: AtomicBool,
    healthy: AtomicBool,
    stopping: AtomicBool,
    /// `Some(description)` once the process has exited.
    exit: watch::Receiver<Option<String>>,
}

impl Instance {
    fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    fn serving(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.healthy.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            if self.exited().is_none() {
                let _ = kill_process_group(pid, sig);
            }
        }
    }
}

/// What [`LocalCompute::instances`] reports about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Its color.
    pub color: Color,
    /// Its number, unique within this provider.
    pub number: u32,
    /// The port it listens on.
    pub port: u16,
    /// The process id, while known.
    pub pid: Option<u32>,
    /// The release version it runs.
    pub version: String,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// It has passed its health check once.
    pub ready: bool,
    /// Its latest health checks pass.
    pub healthy: bool,
    /// How it exited, once it has.
    pub exited: Option<String>,
}

impl LocalCompute {
    /// A builder with the defaults of [`defaults`].
    pub fn builder() -> LocalComputeBuilder {
        LocalComputeBuilder {
            command: None,
            env: BTreeMap::new(),
            working_dir: None,
            log_dir: None,
            pass_env: Vec::new(),
            keep_logs: false,
            health_path: defaults::HEALTH_PATH.to_string(),
            startup_poll: defaults::STARTUP_POLL,
            health_interval: defaults::HEALTH_INTERVAL,
            health_timeout: defaults::HEALTH_TIMEOUT,
            unhealthy_after: defaults::UNHEALTHY_AFTER,
            grace: defaults::GRACE,
            drain: defaults::DRAIN,
            ports: [PortPolicy::Auto; 2],
            secrets: None,
        }
    }

    /// The directory holding the instances' log files (mode 0700; removed at
    /// the end unless kept, see [`LocalComputeBuilder::keep_logs`]).
    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// Every instance of `color`, crashed ones included.
    pub fn instances(&self, color: Color) -> Vec<InstanceInfo> {
        let st = self.inner.state(color);
        st.instances
            .iter()
            .map(|i| InstanceInfo {
                color: i.color,
                number: i.number,
                port: i.port,
                pid: i.pid.map(|p| p.as_raw_nonzero().get() as u32),
                version: i.version.clone(),
                log: i.log.clone(),
                ready: i.ready.load(Ordering::Acquire),
                healthy: i.healthy.load(Ordering::Acquire),
                exited: i.exited(),
            })
            .collect()
    }

    /// Stops every instance of both colors gracefully (SIGTERM, then SIGKILL
    /// after the grace period), waits until they have exited, and removes
    /// the log directory unless [`keep_logs`](LocalComputeBuilder::keep_logs)
    /// was set.
    pub async fn shutdown(&self) {
        let _ops = self.inner.ops.lock().await;
        for c in Color::ALL {
            let all = {
                let mut st = self.inner.state(c);
                st.desired = 0;
                std::mem::take(&mut st.instances)
            };
            self.inner.publish(c);
            self.inner.stop_all(all).await;
        }
        self.inner.remove_log_dir();
    }
}

impl Inner {
    fn state(&self, c: Color) -> std::sync::MutexGuard<'_, ColorState> {
        self.colors[color_index(c)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the color's live (not stopping, not exited) instances to the proxy.
    fn publish(&self, c: Color) {
        let list: Vec<Arc<Instance>> = self
            .state(c)
            .instances
            .iter()
            .filter(|i| !i.stopping.load(Ordering::Acquire) && i.exited().is_none())
            .cloned()
            .collect();
        self.rotation[color_index(c)].store(Arc::new(list));
    }

    fn rotation(&self, c: Color) -> arc_swap::Guard<Arc<Vec<Arc<Instance>>>> {
        self.rotation[color_index(c)].load()
    }

    fn command_for(&self, release: &Release) -> Result<Vec<String>> {
        match &self.command {
            Some(c) => Ok(c.clone()),
            None => {
                let parts: Vec<String> = release
                    .image
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                resolve_program(&parts, "release.image")?;
                Ok(parts)
            }
        }
    }

    /// Creates the log directory again (mode 0700) if a shutdown removed it,
    /// and refuses one that is not a directory of this user that only this
    /// user may enter.
    fn ensure_log_dir(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let dir = &self.log_dir;
        let refuse = |why: String| {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("log directory {}: {why}", dir.display()),
            ))
        };
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => refuse("not a directory".into()),
            Ok(m) if m.uid() != rustix::process::geteuid().as_raw() => {
                refuse(format!("owned by uid {}, not this user", m.uid()))
            }
            Ok(m) if m.mode() & 0o077 != 0 => refuse(format!(
                "mode {:o}: group or others may use it",
                m.mode() & 0o7777
            )),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Other,
                        format!("log directory {}: cannot create it: {e}", dir.display()),
                    )
                }),
            Err(e) => Err(Error::new(
                ErrorKind::Other,
                format!("log directory {}: {e}", dir.display()),
            )),
        }
    }

    /// Removes the log directory and its files, unless they are kept.
    fn remove_log_dir(&self) {
        if self.keep_logs {
            tracing::info!(log_dir = %self.log_dir.display(), "instance logs kept");
            return;
        }
        match std::fs::remove_dir_all(&self.log_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                log_dir = %self.log_dir.display(),
                "cannot remove the instances' log directory: {e}"
            ),
        }
    }

    async fn stop_all(&self, instances: Vec<Arc<Instance>>) {
        if instances.is_empty() {
            return;
        }
        for i in &instances {
            i.stopping.store(true, Ordering::Release);
        }
        if instances.iter().any(|i| i.exited().is_none()) {
            tokio::time::sleep(self.drain).await;
        }
        let stops = instances.iter().map(|i| self.stop(i));
        futures::future::join_all(stops).await;
    }

    async fn stop(&self, i: &Instance) {
        i.stopping.store(true, Ordering::Release);
        i.healthy.store(false, Ordering::Release);
        if i.exited().is_some() {
            return;
        }
        i.signal(Signal::TERM);
        let mut exit = i.exit.clone();
        let timed_out = tokio::time::timeout(self.grace, exit.wait_for(|e| e.is_some()))
            .await
            .is_err();
        if timed_out {
            tracing::warn!(
                color = %i.color, instance = i.number, port = i.port,
                "instance did not exit within {:?} of SIGTERM; sending SIGKILL", self.grace
            );
            i.signal(Signal::KILL);
            let _ = exit.wait_for(|e| e.is_some()).await;
        }
    }

    async fn spawn(
        self: &Arc<Self>,
        color: Color,
        slot: u32,
        release: &Release,
    ) -> Result<Arc<Instance>> {
        let err = |e: Error| e.with_provider(PROVIDER).with_operation("scale");
        let cmd = self.command_for(release).map_err(err)?;
        let number = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let port = match self.ports[color_index(color)] {
            PortPolicy::Auto => free_port().map_err(err)?,
            PortPolicy::Base(base) => {
                let port = base.checked_add(slot as u16).ok_or_else(|| {
                    err(Error::invalid_input(format!(
                        "base_port {base} for {color}: instance {slot} would need a port above 65535"
                    )))
                })?;
                if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                    return Err(err(Error::conflict(format!(
                        "port {port} for {color} instance {slot} is already in use ({e}); \
                         free it or choose another base_port"
                    ))));
                }
                port
            }
        };
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure_log_dir().map_err(err)?;
        let log = self.log_dir.join(format!("{color}-{number}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(|e| {
                err(Error::new(
                    ErrorKind::Other,
                    format!("log file {}: cannot open it: {e}", log.display()),
                ))
            })?;
        let file2 = file.try_clone().map_err(|e| {
            err(Error::new(
                ErrorKind::Other,
                format!("log file {}: {e}", log.display()),
            ))
        })?;
        let mut c = tokio::process::Command::new(&cmd[0]);
        // Nothing of the deployer's environment but PATH and the variables
        // passed through by name: it may hold the journal's URL with its
        // password, and secrets.
        c.args(&cmd[1..]).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        for name in &self.pass_env {
            if let Some(v) = std::env::var_os(name) {
                c.env(name, v);
            }
        }
        c.envs(&self.env)
            .envs(&release.env)
            .env("PORT", port.to_string())
            .env("BLUEGREEN_COLOR", color.as_str())
            .env("BLUEGREEN_VERSION", &release.version)
            .env("BLUEGREEN_INSTANCE", number.to_string())
            .env(DEPLOYER_PID_ENV, std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(file2)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &self.working_dir {
            c.current_dir(dir);
        }
        if !release.secrets.is_empty() {
            let source = self.secrets.as_ref().ok_or_else(|| {
                err(Error::invalid_input(format!(
                    "release.secrets names {} secret(s) but LocalCompute has no secret source; \
                     set LocalCompute::builder().secrets(..)",
                    release.secrets.len()
                )))
            })?;
            for (var, name) in &release.secrets {
                let v = source.get(name).await.map_err(err)?;
                c.env(var, v.expose());
            }
        }
        let mut child = c.spawn().map_err(|e| err(spawn_error(&cmd[0], color, e)))?;
        let pid = child.id().and_then(|p| Pid::from_raw(p as i32));
        let (tx, rx) = watch::channel(None);
        let inst = Arc::new(Instance {
            color,
            number,
            port,
            pid,
            version: release.version.clone(),
            log: log.clone(),
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            exit: rx,
        });
        tracing::info!(%color, instance = number, port, version = %release.version, log = %log.display(), "started instance");
        // The waiter owns the child: it records the exit and, if the exit was
        // not asked for, reports the crash.
        let weak = Arc::downgrade(self);
        let watched = inst.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let desc = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("could not be waited for: {e}"),
            };
            watched.healthy.store(false, Ordering::Release);
            let _ = tx.send(Some(desc.clone()));
            if !watched.stopping.load(Ordering::Acquire) {
                tracing::warn!(
                    color = %watched.color, instance = watched.number, port = watched.port,
                    "instance exited on its own ({desc}); not restarting it. Last log lines:\n{}",
                    tail(&watched.log, 10)
                );
                if let Some(inner) = weak.upgrade() {
                    inner.publish(watched.color);
                }
            }
        });
        let weak = Arc::downgrade(self);
        let checked = inst.clone();
        tokio::spawn(async move { health_loop(weak, checked).await });
        Ok(inst)
    }
}

async fn health_loop(inner: std::sync::Weak<Inner>, inst: Arc<Instance>) {
    let mut failures = 0u32;
    loop {
        let Some(cfg) = inner.upgrade() else { return };
        if inst.exited().is_some() || inst.stopping.load(Ordering::Acquire) {
            return;
        }
        let (path, timeout, poll, interval, after) = (
            cfg.health_path.clone(),
            cfg.health_timeout,
            cfg.startup_poll,
            cfg.health_interval,
            cfg.unhealthy_after,
        );
        drop(cfg);
        let ok = http_check(inst.port, &path, timeout).await;
        let ready = inst.ready.load(Ordering::Acquire);
        if ok {
            failures = 0;
            inst.healthy.store(true, Ordering::Release);
            if !ready {
                inst.ready.store(true, Ordering::Release);
                tracing::info!(color = %inst.color, instance = inst.number, port = inst.port, "instance ready");
            }
        } else if ready {
            failures += 1;
            if failures >= after && inst.healthy.swap(false, Ordering::AcqRel) {
                tracing::warn!(color = %inst.color, instance = inst.number, port = inst.port, "instance failed {failures} health checks in a row");
            }
        }
        let wait = if inst.ready.load(Ordering::Acquire) {
            interval
        } else {
            poll
        };
        let mut exit = inst.exit.clone();
        let _ = tokio::time::timeout(wait, exit.wait_for(|e| e.is_some())).await;
    }
}

/// One `GET path` on 127.0.0.1:port; true on a 2xx status.
pub(crate) async fn http_check(port: u16, path: &str, timeout: Duration) -> bool {
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nUser-Agent: bluegreen-local\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        let code = head.split_whitespace().nth(1)?;
        Some(code.starts_with('2'))
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

/// A free loopback port for an instance to listen on.
///
/// A port the kernel hands out for `bind(0)` comes from the ephemeral range,
/// which outgoing connections (health checks, the proxy's backend
/// connections) also draw from: between releasing it here and the child
/// binding it, one of them may take it. So ports are drawn below the
/// ephemeral range, where only explicit binds land, and checked free first.
fn free_port() -> Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_start > LOW + 1_000 {
        for _ in 0..200 {
            let port = rand::random::<u16>() % (ephemeral_start - LOW) + LOW;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::unavailable(format!("no free loopback port: {e}")))
}

fn spawn_error(program: &str, color: Color, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::not_found(format!(
            "command {program:?} for {color}: no such program ({e})"
        )),
        std::io::ErrorKind::PermissionDenied => Error::new(
            ErrorKind::PermissionDenied,
            format!("command {program:?} for {color}: not executable ({e})"),
        ),
        _ => Error::new(
            ErrorKind::Other,
            format!("command {program:?} for {color}: could not start it: {e}"),
        ),
    }
}

/// Checks that the command's program exists (on PATH, or as a path).
fn resolve_program(cmd: &[String], field: &str) -> Result<()> {
    let err = |m: String| {
        Err(Error::invalid_input(m)
            .with_provider(PROVIDER)
            .with_operation("prepare"))
    };
    let Some(program) = cmd.first().filter(|p| !p.is_empty()) else {
        return err(format!(
            "{field} is empty: expected a program and its arguments"
        ));
    };
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "{field}: command {program:?} does not exist{}",
            if program.contains('/') {
                ""
            } else {
                " on PATH"
            }
        ))
        .with_provider(PROVIDER)
        .with_operation("prepare"))
    }
}

/// The last `n` lines of a log file, for crash reports.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[async_trait]
impl ComputeProvider for LocalCompute {
    /// Records `release` as the one `color` runs from its next scale-up, after
    /// checking that its command exists. Idempotent.
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        self.inner
            .command_for(release)
            .map_err(|e| e.with_operation("prepare"))?;
        let _ops = self.inner.ops.lock().await;
        self.inner.state(color).prepared = Some(release.clone());
        // Local processes have no identity beyond their version.
        Ok(PreparedRelease::default())
    }

    /// Sets `color` to `count` instances: prunes crashed ones, replaces
    /// instances of another release than the prepared one, stops the surplus
    /// (waiting for them to exit) and spawns the missing ones (returning
    /// before they are ready). If a spawn fails, the instances this call
    /// started are stopped again and the error names the command or port.
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        let inner = &self.inner;
        let _ops = inner.ops.lock().await;
        let (to_stop, release, keep) = {
            let mut st = inner.state(color);
            let release = st.prepared.clone();
            if count > 0 && release.is_none() {
                return Err(Error::conflict(format!(
                    "{color} has no prepared release: call prepare before scale"
                ))
                .with_provider(PROVIDER)
                .with_operation("scale"));
            }
            let version = release.as_ref().map(|r| r.version.clone());
            let (mut keep, mut stop): (Vec<_>, Vec<_>) = std::mem::take(&mut st.instances)
                .into_iter()
                .partition(|i| i.exited().is_none() && Some(&i.version) == version.as_ref());
            while keep.len() > count as usize {
                stop.push(keep.pop().expect("longer than count"));
            }
            st.instances = keep.clone();
            st.desired = count;
            (stop, release, keep.len() as u32)
        };
        inner.publish(color);
        inner.stop_all(to_stop).await;
        let Some(release) = release else {
            return Ok(());
        };
        let mut started = Vec::new();
        for slot in keep..count {
            match inner.spawn(color, slot, &release).await {
                Ok(i) => {
                    started.push(i.clone());
                    inner.state(color).instances.push(i);
                }
                Err(e) => {
                    {
                        let mut st = inner.state(color);
                        st.instances
                            .retain(|i| !started.iter().any(|s| Arc::ptr_eq(s, i)));
                        st.desired = keep;
                    }
                    inner.publish(color);
                    inner.stop_all(started).await;
                    return Err(e);
                }
            }
        }
        inner.publish(color);
        Ok(())
    }

    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        let st = self.inner.state(color);
        let (mut running, mut pending, mut failed, mut healthy) = (0, 0, 0, 0);
        for i in &st.instances {
            if i.exited().is_some() {
                failed += 1;
            } else if i.ready.load(Ordering::Acquire) {
                running += 1;
                if i.healthy.load(Ordering::Acquire) {
                    healthy += 1;
                }
            } else {
                pending += 1;
            }
        }
        let version = st
            .instances
            .last()
            .map(|i| i.version.clone())
            .or_else(|| st.prepared.as_ref().map(|r| r.version.clone()));
        let rollout = if failed > 0 {
            Rollout::Failed
        } else if pending > 0 || running != st.desired {
            Rollout::InProgress
        } else {
            Rollout::Completed
        };
        Ok(ComputeStatus {
            desired: st.desired,
            running,
            pending,
            failed,
            healthy: Some(healthy),
            version,
            release_id: None,
            rollout,
        })
    }

    /// `http://127.0.0.1:<port>` of the color's first serving instance.
    async fn endpoint(&self, color: Color) -> Result<Option<String>> {
        let r = self.inner.rotation(color);
        Ok(r.iter()
            .find(|i| i.serving())
            .or_else(|| r.first())
            .map(|i| format!("http://127.0.0.1:{}", i.port)))
    }
}

impl Upstreams for LocalCompute {
    fn pick(&self, color: Color, n: usize) -> Option<SocketAddr> {
        let r = self.inner.rotation(color);
        let serving = r.iter().filter(|i| i.serving()).count();
        if serving == 0 {
            return None;
        }
        r.iter()
            .filter(|i| i.serving())
            .nth(n % serving)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
    }

    fn health(&self, color: Color) -> TargetHealth {
        let st = self.inner.state(color);
        let live: Vec<_> = st
            .instances
            .iter()
            .filter(|i| !i.stopping.load(Ordering::Acquire))
            .collect();
        TargetHealth {
            healthy: live.iter().filter(|i| i.serving()).count() as u32,
            total: live.len() as u32,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for c in &self.colors {
            let st = c.lock().unwrap_or_else(|p| p.into_inner());
            for i in &st.instances {
                i.stopping.store(true, Ordering::Release);
                i.signal(Signal::KILL);
            }
        }
        self.remove_log_dir();
    }
}
