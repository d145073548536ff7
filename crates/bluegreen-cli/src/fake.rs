//! The `fake` target: a simulated world in a JSON file, so that several
//! processes (a deployer killed with SIGKILL and the one that resumes it) see
//! one truth. Every change is recorded in the file, in order, only when it
//! changes something: a repeated call has no effect, as the provider contract
//! demands, and a duplicated non-idempotent action shows up as a second record.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bluegreen_core::journal::open_private;
use bluegreen_core::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeProvider, ComputeStatus,
    MetricAnswer, MetricQuery, MetricsSource, MigrationContext, MigrationInfo, MigrationPhase,
    MigrationRunner, MigrationStatus, PreparedRelease, Sample, SecretMetadata, SecretSource,
    SecretValue, SmokeOutcome, SmokeTarget, SmokeTest, TargetHealth, TrafficRouter,
};
use bluegreen_core::{Color, Error, Release, Result, Timestamp, TrafficSplit};
use serde::{Deserialize, Serialize};

use crate::spec::FakeMigration;

const PROVIDER: &str = "fake";

/// One color of the fake world.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeColor {
    /// Desired (and, the fake being instant, running) instances.
    pub desired: u32,
    /// The version running.
    pub version: Option<String>,
    /// The version prepared, not yet rolled out.
    pub prepared: Option<String>,
    /// Autoscaling state.
    pub autoscaling: AutoscalingState,
}

/// A change made to the world, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum FakeChange {
    /// A split took effect.
    Split {
        /// Blue's percent.
        blue: u8,
    },
    /// A color's desired count changed.
    Scaled {
        /// The color.
        color: Color,
        /// The count.
        count: u32,
    },
    /// A release was prepared.
    Prepared {
        /// The color.
        color: Color,
        /// The version.
        version: String,
    },
    /// A migration was applied.
    Migrated {
        /// Its version.
        version: u64,
    },
    /// A migration was reverted.
    Reverted {
        /// Its version.
        version: u64,
    },
    /// A backup was taken.
    Backup {
        /// Its id.
        id: String,
    },
}

/// The world file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeWorldState {
    /// Blue's percent of traffic.
    pub blue_percent: u8,
    /// Each color.
    pub colors: BTreeMap<Color, FakeColor>,
    /// Known migrations.
    pub migrations: Vec<FakeMigration>,
    /// Applied versions.
    pub applied: Vec<u64>,
    /// The deployment each applied version ran under (absent in world
    /// files from before it was kept: owned by none).
    #[serde(default)]
    pub applied_by: BTreeMap<u64, String>,
    /// Every change.
    pub changes: Vec<FakeChange>,
}

impl FakeWorldState {
    fn new(initial_version: &str, replicas: u32, migrations: Vec<FakeMigration>) -> Self {
        let mut colors = BTreeMap::new();
        colors.insert(Color::Blue, FakeColor::default());
        colors.insert(
            Color::Green,
            FakeColor {
                desired: replicas,
                version: Some(initial_version.to_string()),
                ..FakeColor::default()
            },
        );
        FakeWorldState {
            blue_percent: 0,
            colors,
            applied: migrations
                .iter()
                .filter(|m| m.applied)
                .map(|m| m.version)
                .collect(),
            migrations,
            applied_by: BTreeMap::new(),
            changes: Vec::new(),
        }
    }
}

/// The world in its file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeWorld {
    path: Arc<PathBuf>,
}

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("fake world {}: {what}: {e}", path.display()))
        .with_provider(PROVIDER)
        .with_operation(what.to_string())
}

impl FakeWorld {
    /// Opens the world at `path`, creating it (green serving `replicas`
    /// instances of `initial_version`) if it does not exist.
    pub fn open(
        path: &Path,
        initial_version: &str,
        replicas: u32,
        migrations: &[FakeMigration],
    ) -> Result<FakeWorld> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| io(path, "create directory", e))?;
        }
        let w = FakeWorld {
            path: Arc::new(path.to_path_buf()),
        };
        if !path.exists() {
            w.save(&FakeWorldState::new(
                initial_version,
                replicas,
                migrations.to_vec(),
            ))?;
        }
        Ok(w)
    }

    /// The current state.
    pub fn load(&self) -> Result<FakeWorldState> {
        let text = std::fs::read_to_string(&*self.path).map_err(|e| io(&self.path, "read", e))?;
        serde_json::from_str(&text).map_err(|e| io(&self.path, "parse", e))
    }

    fn save(&self, s: &FakeWorldState) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        // Not through a link, and not another user's file (as the journal).
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let mut f = open_private(&tmp, options, "fake world file")?;
        let text = serde_json::to_vec_pretty(s).map_err(|e| io(&tmp, "encode", e))?;
        f.write_all(&text).map_err(|e| io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| io(&tmp, "sync", e))?;
        std::fs::rename(&tmp, &*self.path).map_err(|e| io(&self.path, "rename", e))
    }

    /// Reads, changes and writes the state under a file lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut FakeWorldState) -> T) -> Result<T> {
        let lock_path = self.path.with_extension("lock");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        let lock = open_private(&lock_path, options, "fake world lock file")?;
        lock.lock().map_err(|e| io(&lock_path, "lock", e))?;
        let mut s = self.load()?;
        let out = f(&mut s);
        self.save(&s)?;
        let _ = lock.unlock();
        Ok(out)
    }
}

/// Compute, router, migrations, smoke tests and secrets over one [`FakeWorld`].
#[derive(Debug, Clone)]
pub struct FakeProviders {
    world: FakeWorld,
    secrets: Arc<std::collections::BTreeSet<String>>,
}

impl FakeProviders {
    /// Providers on `world`, whose secret store holds no secret.
    pub fn new(world: FakeWorld) -> Self {
        FakeProviders {
            world,
            secrets: Arc::default(),
        }
    }

    /// The secret store holds `names` (each rotated a day ago); any other
    /// name is not found.
    pub fn with_secrets(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.secrets = Arc::new(names.into_iter().collect());
        self
    }

    fn secret(&self, name: &str) -> Result<()> {
        if self.secrets.contains(name) {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "secret {name:?} is not in the fake target's store (it holds the secrets the spec names)"
            ))
            .with_provider(PROVIDER)
            .with_operation("get_secret"))
        }
    }
}

#[async_trait]
impl ComputeProvider for FakeProviders {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        self.world.update(|s| {
            let c = s.colors.entry(color).or_default();
            if c.prepared.as_deref() != Some(release.version.as_str()) {
                c.prepared = Some(release.version.clone());
                s.changes.push(FakeChange::Prepared {
                    color,
                    version: release.version.clone(),
                });
            }
        })?;
        Ok(PreparedRelease::default())
    }

    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        self.world.update(|s| {
            let c = s.colors.entry(color).or_default();
            if let Some(p) = c.prepared.take() {
                c.version = Some(p);
            }
            if c.desired != count {
                c.desired = count;
                s.changes.push(FakeChange::Scaled { color, count });
            }
        })
    }

    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        let s = self.world.load()?;
        let c = s.colors.get(&color).cloned().unwrap_or_default();
        Ok(ComputeStatus::steady(c.desired, c.version))
    }

    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.world.update(|s| {
            let c = s.colors.entry(color).or_default();
            let before = c.autoscaling;
            c.autoscaling = AutoscalingState {
                registered: before.registered,
                scale_in_suspended: true,
                scale_out_suspended: true,
                scheduled_suspended: true,
            };
            before
        })
    }

    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        Ok(self
            .world
            .load()?
            .colors
            .get(&color)
            .map(|c| c.autoscaling)
            .unwrap_or_default())
    }

    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        self.world
            .update(|s| s.colors.entry(color).or_default().autoscaling = previous)
    }
}

#[async_trait]
impl TrafficRouter for FakeProviders {
    async fn current_split(&self) -> Result<TrafficSplit> {
        let p = self.world.load()?.blue_percent;
        Ok(TrafficSplit::with_percent(Color::Blue, p))
    }

    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        let blue = split.percent(Color::Blue);
        self.world.update(|s| {
            if s.blue_percent != blue {
                s.blue_percent = blue;
                s.changes.push(FakeChange::Split { blue });
            }
        })
    }

    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        let s = self.world.load()?;
        let n = s.colors.get(&color).map_or(0, |c| c.desired);
        Ok(TargetHealth {
            healthy: n,
            total: n,
        })
    }
}

fn info(m: &FakeMigration) -> MigrationInfo {
    MigrationInfo {
        version: m.version,
        name: m.name.clone(),
        phase: m.phase,
        reversible: m.reversible,
    }
}

#[async_trait]
impl MigrationRunner for FakeProviders {
    async fn status(&self) -> Result<MigrationStatus> {
        let s = self.world.load()?;
        let (applied, pending) = s
            .migrations
            .iter()
            .map(info)
            .partition(|m| s.applied.contains(&m.version));
        Ok(MigrationStatus { applied, pending })
    }

    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        self.world.update(|s| {
            let id = format!("backup-{}", ctx.deployment_id);
            if !s.changes.contains(&FakeChange::Backup { id: id.clone() }) {
                s.changes.push(FakeChange::Backup { id: id.clone() });
            }
            BackupRecord {
                location: format!("fake://{id}"),
                id,
                bytes: Some(4096),
                taken_at: Timestamp::from_system_time(SystemTime::now()),
            }
        })
    }

    async fn verify_backup(
        &self,
        _backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification> {
        let entries = 120;
        Ok(BackupVerification {
            entries,
            passed: entries >= min_entries,
            detail: format!("{entries} entries listed"),
        })
    }

    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.world.update(|s| {
            let mut out = Vec::new();
            let mut todo: Vec<FakeMigration> = s
                .migrations
                .iter()
                .filter(|m| m.phase == phase)
                .cloned()
                .collect();
            todo.sort_by_key(|m| m.version);
            for m in todo {
                if !s.applied.contains(&m.version) {
                    s.applied.push(m.version);
                    s.applied_by.insert(m.version, ctx.deployment_id.clone());
                    s.changes.push(FakeChange::Migrated { version: m.version });
                }
                // Those this deployment applied, not another's.
                if s.applied_by.get(&m.version) == Some(&ctx.deployment_id) {
                    out.push(info(&m));
                }
            }
            out
        })
    }

    async fn verify(
        &self,
        phase: MigrationPhase,
        _ctx: &MigrationContext,
    ) -> Result<Vec<bluegreen_core::provider::VerificationCheck>> {
        Ok(vec![bluegreen_core::provider::VerificationCheck {
            name: format!("{phase} applied"),
            passed: true,
            detail: "row counts unchanged".into(),
        }])
    }

    async fn revert(
        &self,
        versions: &[u64],
        _ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.world.update(|s| {
            let mut out = Vec::new();
            for v in versions {
                if let Some(pos) = s.applied.iter().position(|a| a == v) {
                    s.applied.remove(pos);
                    s.applied_by.remove(v);
                    s.changes.push(FakeChange::Reverted { version: *v });
                    if let Some(m) = s.migrations.iter().find(|m| m.version == *v) {
                        out.push(info(m));
                    }
                }
            }
            out
        })
    }
}

#[async_trait]
impl SecretSource for FakeProviders {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        self.secret(name)?;
        Ok(SecretValue::new("fake-secret"))
    }

    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.secret(name)?;
        let day = Duration::from_secs(24 * 3600);
        Ok(SecretMetadata {
            name: name.to_string(),
            last_rotated: Some(Timestamp::from_system_time(SystemTime::now() - day)),
        })
    }
}

/// A smoke test that passes when the color runs instances of the version.
#[derive(Debug, Clone)]
pub struct FakeSmoke {
    name: String,
    world: FakeWorld,
}

impl FakeSmoke {
    /// A test named `name` on `world`.
    pub fn new(name: impl Into<String>, world: FakeWorld) -> Self {
        FakeSmoke {
            name: name.into(),
            world,
        }
    }
}

#[async_trait]
impl SmokeTest for FakeSmoke {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, target: &SmokeTarget) -> Result<SmokeOutcome> {
        let s = self.world.load()?;
        let passed = match target.color {
            None => true,
            Some(c) => s
                .colors
                .get(&c)
                .is_some_and(|c| c.desired > 0 && c.version.as_deref() == Some(&target.version)),
        };
        Ok(SmokeOutcome {
            passed,
            duration: Duration::from_millis(5),
            detail: if passed {
                "answered".into()
            } else {
                "no instance of the version answered".into()
            },
        })
    }
}

/// Constant metric values by check name: a sample every 10 s over the window.
#[derive(Debug, Clone)]
pub struct ConstantMetrics {
    values: BTreeMap<String, f64>,
}

impl ConstantMetrics {
    /// Values by check name.
    pub fn new(values: BTreeMap<String, f64>) -> Self {
        ConstantMetrics { values }
    }
}

/// The spacing of the fake metrics' points.
const FAKE_SAMPLE_STEP_MS: u64 = 10_000;

#[async_trait]
impl MetricsSource for ConstantMetrics {
    async fn query(&self, q: &MetricQuery) -> Result<MetricAnswer> {
        Ok(match self.values.get(&q.check) {
            // A point every 10 s over the window, as a metrics backend's
            // series would have, so the evidence floor sees a real count.
            Some(v) => {
                let mut samples = Vec::new();
                let mut t = q.from.0 + FAKE_SAMPLE_STEP_MS;
                while t <= q.to.0 {
                    samples.push(Sample {
                        at: Timestamp(t),
                        value: *v,
                    });
                    t += FAKE_SAMPLE_STEP_MS;
                }
                if samples.is_empty() {
                    samples.push(Sample {
                        at: q.to,
                        value: *v,
                    });
                }
                MetricAnswer::Samples { samples }
            }
            None => MetricAnswer::NoData {
                reason: format!("no fake value for {}", q.check),
            },
        })
    }
}
