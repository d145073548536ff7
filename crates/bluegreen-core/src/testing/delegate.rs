//! Delegating bases: a test overrides one method of a provider (usually a
//! fake) and every other method goes to the provider it wraps.
//!
//! Implement [`ComputeDelegate`], [`RouterDelegate`] or
//! [`MigrationsDelegate`] on a type of your own, return the wrapped provider
//! from `inner`, write only the method you change, and register
//! [`Delegated`]`(yours)`:
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use bluegreen_core::testing::{reference_plan, simulate, ComputeDelegate, Delegated, FakeCompute};
//! use bluegreen_core::{Cause, Color, ComputeProvider, ComputeStatus, Result, TrafficSplit};
//!
//! /// The fake compute, except that the new color's tasks never become healthy.
//! struct BlueNeverHealthy(Arc<FakeCompute>);
//!
//! #[async_trait]
//! impl ComputeDelegate for BlueNeverHealthy {
//!     fn inner(&self) -> &dyn ComputeProvider {
//!         &*self.0
//!     }
//!     async fn status(&self, color: Color) -> Result<ComputeStatus> {
//!         let mut s = self.0.status(color).await?;
//!         if color == Color::Blue {
//!             s.healthy = Some(0);
//!         }
//!         Ok(s)
//!     }
//! }
//!
//! let (report, fakes) = simulate(|f| {
//!     f.metrics.constant("error-rate", 0.002).constant("p95-latency", 180.0);
//!     let compute = Delegated(BlueNeverHealthy(f.compute.clone()));
//!     f.builder(reference_plan()).compute(Arc::new(compute))
//! });
//! assert!(matches!(report.rolled_back(), Some(Cause::ProgressDeadline { .. })), "{:?}", report.outcome);
//! assert_eq!(fakes.world.split(), TrafficSplit::all_on(Color::Green));
//! assert_eq!(fakes.world.desired(Color::Blue), 0);
//! ```

use std::time::Duration;

use async_trait::async_trait;

use crate::color::{Color, TrafficSplit};
use crate::error::Result;
use crate::plan::Release;
use crate::provider::{
    AutoscalingState, BackupRecord, BackupVerification, ComputeProvider, ComputeStatus,
    MigrationContext, MigrationInfo, MigrationPhase, MigrationRunner, MigrationStatus,
    PreparedRelease, TargetHealth, TrafficRouter, VerificationCheck,
};

/// A provider built from a delegate: implements [`ComputeProvider`],
/// [`TrafficRouter`] or [`MigrationRunner`] when the wrapped value
/// implements [`ComputeDelegate`], [`RouterDelegate`] or
/// [`MigrationsDelegate`].
#[derive(Debug, Clone)]
pub struct Delegated<D>(pub D);

/// A [`ComputeProvider`] that passes every method to [`inner`](Self::inner)
/// unless the implementation overrides it. `statuses` asks this delegate's
/// own `status` for each color, so overriding `status` covers both.
#[async_trait]
pub trait ComputeDelegate: Send + Sync {
    /// The provider every method not overridden goes to.
    fn inner(&self) -> &dyn ComputeProvider;

    /// [`ComputeProvider::prepare`].
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        self.inner().prepare(color, release).await
    }

    /// [`ComputeProvider::scale`].
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        self.inner().scale(color, count).await
    }

    /// [`ComputeProvider::status`].
    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        self.inner().status(color).await
    }

    /// [`ComputeProvider::statuses`]: this delegate's `status` per color.
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        let mut out = Vec::with_capacity(colors.len());
        for c in colors {
            out.push(self.status(*c).await?);
        }
        Ok(out)
    }

    /// [`ComputeProvider::endpoint`].
    async fn endpoint(&self, color: Color) -> Result<Option<String>> {
        self.inner().endpoint(color).await
    }

    /// [`ComputeProvider::autoscaling_state`].
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.inner().autoscaling_state(color).await
    }

    /// [`ComputeProvider::suspend_autoscaling`].
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.inner().suspend_autoscaling(color).await
    }

    /// [`ComputeProvider::restore_autoscaling`].
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        self.inner().restore_autoscaling(color, previous).await
    }
}

#[async_trait]
impl<D: ComputeDelegate> ComputeProvider for Delegated<D> {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        self.0.prepare(color, release).await
    }
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        self.0.scale(color, count).await
    }
    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        self.0.status(color).await
    }
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        self.0.statuses(colors).await
    }
    async fn endpoint(&self, color: Color) -> Result<Option<String>> {
        self.0.endpoint(color).await
    }
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.0.autoscaling_state(color).await
    }
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.0.suspend_autoscaling(color).await
    }
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        self.0.restore_autoscaling(color, previous).await
    }
}

/// A [`TrafficRouter`] that passes every method to [`inner`](Self::inner)
/// unless the implementation overrides it.
#[async_trait]
pub trait RouterDelegate: Send + Sync {
    /// The router every method not overridden goes to.
    fn inner(&self) -> &dyn TrafficRouter;

    /// [`TrafficRouter::current_split`].
    async fn current_split(&self) -> Result<TrafficSplit> {
        self.inner().current_split().await
    }

    /// [`TrafficRouter::set_split`].
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        self.inner().set_split(split).await
    }

    /// [`TrafficRouter::target_health`].
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        self.inner().target_health(color).await
    }

    /// [`TrafficRouter::drain_period`].
    async fn drain_period(&self) -> Result<Option<Duration>> {
        self.inner().drain_period().await
    }
}

#[async_trait]
impl<D: RouterDelegate> TrafficRouter for Delegated<D> {
    async fn current_split(&self) -> Result<TrafficSplit> {
        self.0.current_split().await
    }
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        self.0.set_split(split).await
    }
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        self.0.target_health(color).await
    }
    async fn drain_period(&self) -> Result<Option<Duration>> {
        self.0.drain_period().await
    }
}

/// A [`MigrationRunner`] that passes every method to [`inner`](Self::inner)
/// unless the implementation overrides it.
#[async_trait]
pub trait MigrationsDelegate: Send + Sync {
    /// The runner every method not overridden goes to.
    fn inner(&self) -> &dyn MigrationRunner;

    /// [`MigrationRunner::status`].
    async fn status(&self) -> Result<MigrationStatus> {
        self.inner().status().await
    }

    /// [`MigrationRunner::backup`].
    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        self.inner().backup(ctx).await
    }

    /// [`MigrationRunner::verify_backup`].
    async fn verify_backup(
        &self,
        backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification> {
        self.inner().verify_backup(backup, min_entries).await
    }

    /// [`MigrationRunner::apply`].
    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.inner().apply(phase, ctx).await
    }

    /// [`MigrationRunner::verify`].
    async fn verify(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>> {
        self.inner().verify(phase, ctx).await
    }

    /// [`MigrationRunner::revert`].
    async fn revert(&self, versions: &[u64], ctx: &MigrationContext) -> Result<Vec<MigrationInfo>> {
        self.inner().revert(versions, ctx).await
    }
}

#[async_trait]
impl<D: MigrationsDelegate> MigrationRunner for Delegated<D> {
    async fn status(&self) -> Result<MigrationStatus> {
        self.0.status().await
    }
    async fn backup(&self, ctx: &MigrationContext) -> Result<BackupRecord> {
        self.0.backup(ctx).await
    }
    async fn verify_backup(
        &self,
        backup: &BackupRecord,
        min_entries: u64,
    ) -> Result<BackupVerification> {
        self.0.verify_backup(backup, min_entries).await
    }
    async fn apply(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<MigrationInfo>> {
        self.0.apply(phase, ctx).await
    }
    async fn verify(
        &self,
        phase: MigrationPhase,
        ctx: &MigrationContext,
    ) -> Result<Vec<VerificationCheck>> {
        self.0.verify(phase, ctx).await
    }
    async fn revert(&self, versions: &[u64], ctx: &MigrationContext) -> Result<Vec<MigrationInfo>> {
        self.0.revert(versions, ctx).await
    }
}
