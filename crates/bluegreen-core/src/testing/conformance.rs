//! Conformance suites: one per trait, run by every implementation.
//!
//! The in-memory fakes run them first; the local provider, ECS and ALB on the
//! AWS emulator and Postgres on a real server run the same functions. A custom
//! provider should run them too:
//!
//! ```
//! use bluegreen_core::testing::{conformance, Fakes};
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let fakes = Fakes::new();
//! // Each suite takes a reference to the implementation: `&my_router` for a
//! // value, `&*my_router` for an `Arc<MyRouter>`. Here the fake router.
//! conformance::router(&*fakes.router).await;
//! # });
//! ```
//!
//! Each suite panics with a message naming the broken rule.

use std::time::Duration;

use crate::color::{Color, Timestamp, TrafficSplit};
use crate::error::ErrorKind;
use crate::journal::{Journal, Record};
use crate::machine::Input;
use crate::plan::Release;
use crate::provider::{
    ComputeProvider, ComputeStatus, MetricAnswer, MetricQuery, MetricsSource, MigrationContext,
    MigrationPhase, MigrationRunner, SecretSource, TrafficRouter,
};

/// How long [`compute`] waits for a color to settle, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// The longest wait for a color to reach a count.
    pub timeout: Duration,
    /// How often to poll.
    pub poll: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

async fn settle(
    p: &dyn ComputeProvider,
    color: Color,
    count: u32,
    patience: Patience,
) -> ComputeStatus {
    let start = tokio::time::Instant::now();
    loop {
        let s = p
            .status(color)
            .await
            .unwrap_or_else(|e| panic!("status({color}) failed: {e}"));
        let settled = if count == 0 {
            s.desired == 0 && s.running == 0 && s.pending == 0
        } else {
            s.is_stable_at(count)
        };
        if settled {
            return s;
        }
        assert!(
            start.elapsed() < patience.timeout,
            "{color} did not settle at {count} within {:?}; last status {s:?}",
            patience.timeout
        );
        tokio::time::sleep(patience.poll).await;
    }
}

/// The `ComputeProvider` contract on one `color`: prepare is repeatable,
/// scale reaches the count (and repeating it changes nothing), status and
/// statuses agree, autoscaling suspends and restores, and the color scales
/// back to zero. Leaves the color at zero.
pub async fn compute(p: &dyn ComputeProvider, color: Color, release: &Release, patience: Patience) {
    p.prepare(color, release)
        .await
        .unwrap_or_else(|e| panic!("prepare({color}) failed: {e}"));
    p.prepare(color, release)
        .await
        .unwrap_or_else(|e| panic!("prepare({color}) is not repeatable: {e}"));
    for _ in 0..2 {
        p.scale(color, 2)
            .await
            .unwrap_or_else(|e| panic!("scale({color}, 2) failed: {e}"));
    }
    let s = settle(p, color, 2, patience).await;
    assert_eq!(s.desired, 2, "desired count after scale(2)");
    if let Some(v) = &s.version {
        assert_eq!(v, &release.version, "status reports the prepared release");
    }
    let both = p
        .statuses(&[color, color])
        .await
        .unwrap_or_else(|e| panic!("statuses failed: {e}"));
    assert_eq!(both.len(), 2, "statuses answers one status per color asked");
    assert!(
        both.iter().all(|b| b.desired == s.desired),
        "statuses agrees with status: {both:?} vs {s:?}"
    );
    let before = p
        .suspend_autoscaling(color)
        .await
        .unwrap_or_else(|e| panic!("suspend_autoscaling({color}) failed: {e}"));
    p.restore_autoscaling(color, before)
        .await
        .unwrap_or_else(|e| panic!("restore_autoscaling({color}) failed: {e}"));
    let again = p
        .suspend_autoscaling(color)
        .await
        .unwrap_or_else(|e| panic!("suspend_autoscaling({color}) failed: {e}"));
    assert_eq!(
        again, before,
        "restore_autoscaling put back exactly the state found before"
    );
    p.restore_autoscaling(color, before).await.unwrap();
    p.endpoint(color)
        .await
        .unwrap_or_else(|e| panic!("endpoint({color}) failed: {e}"));
    p.scale(color, 0)
        .await
        .unwrap_or_else(|e| panic!("scale({color}, 0) failed: {e}"));
    let s = settle(p, color, 0, patience).await;
    assert_eq!(s.desired, 0);
}

/// The `TrafficRouter` contract: every split set is read back exactly,
/// setting twice is harmless, and target health is consistent. Ends with all
/// traffic on blue.
pub async fn router(r: &dyn TrafficRouter) {
    let splits = [
        TrafficSplit::all_on(Color::Green),
        TrafficSplit::with_percent(Color::Blue, 10),
        TrafficSplit::with_percent(Color::Blue, 50),
        TrafficSplit::all_on(Color::Blue),
    ];
    for split in splits {
        for _ in 0..2 {
            r.set_split(split)
                .await
                .unwrap_or_else(|e| panic!("set_split({split}) failed: {e}"));
        }
        let back = r
            .current_split()
            .await
            .unwrap_or_else(|e| panic!("current_split failed: {e}"));
        assert_eq!(back, split, "read-back after set_split({split})");
    }
    for c in Color::ALL {
        let h = r
            .target_health(c)
            .await
            .unwrap_or_else(|e| panic!("target_health({c}) failed: {e}"));
        assert!(
            h.healthy <= h.total,
            "{c}: {} healthy of {}",
            h.healthy,
            h.total
        );
    }
}

/// The `MigrationRunner` contract. The runner must have at least one pending,
/// reversible expand migration. Checks: a backup verifies; applying expand
/// applies them once (a repeat applies nothing); verification passes;
/// reverting returns them to pending (a repeat reverts nothing).
pub async fn migrations(r: &dyn MigrationRunner, ctx: &MigrationContext) {
    let before = r
        .status()
        .await
        .unwrap_or_else(|e| panic!("status failed: {e}"));
    let expand: Vec<_> = before
        .pending
        .iter()
        .filter(|m| m.phase == MigrationPhase::Expand)
        .cloned()
        .collect();
    assert!(
        !expand.is_empty(),
        "the suite needs a pending expand migration; status was {before:?}"
    );
    let backup = r
        .backup(ctx)
        .await
        .unwrap_or_else(|e| panic!("backup failed: {e}"));
    let v = r
        .verify_backup(&backup, 1)
        .await
        .unwrap_or_else(|e| panic!("verify_backup failed: {e}"));
    assert!(v.passed && v.entries >= 1, "backup verification: {v:?}");
    let too_many = r.verify_backup(&backup, u64::MAX).await.unwrap();
    assert!(
        !too_many.passed,
        "a threshold above the entry count must fail"
    );

    let applied = r
        .apply(MigrationPhase::Expand, ctx)
        .await
        .unwrap_or_else(|e| panic!("apply(expand) failed: {e}"));
    let versions: Vec<u64> = applied.iter().map(|m| m.version).collect();
    let expected: Vec<u64> = expand.iter().map(|m| m.version).collect();
    assert_eq!(
        versions, expected,
        "apply(expand) applies the pending expand migrations in order"
    );
    let again = r.apply(MigrationPhase::Expand, ctx).await.unwrap();
    let again: Vec<u64> = again.iter().map(|m| m.version).collect();
    assert_eq!(
        again, expected,
        "a repeated apply of the same deployment reports what that deployment applied"
    );
    let after = r.status().await.unwrap();
    for m in &expand {
        assert_eq!(
            after
                .applied
                .iter()
                .filter(|a| a.version == m.version)
                .count(),
            1,
            "{} is listed as applied exactly once",
            m.version
        );
    }
    let other = MigrationContext {
        deployment_id: format!("{}-other", ctx.deployment_id),
        backup_id: None,
    };
    let theirs = r.apply(MigrationPhase::Expand, &other).await.unwrap();
    assert!(
        theirs.is_empty(),
        "another deployment applied nothing and owns nothing: {theirs:?}"
    );
    let checks = r
        .verify(MigrationPhase::Expand, ctx)
        .await
        .unwrap_or_else(|e| panic!("verify(expand) failed: {e}"));
    assert!(checks.iter().all(|c| c.passed), "verification: {checks:?}");

    let mut reversible: Vec<u64> = expand
        .iter()
        .filter(|m| m.reversible)
        .map(|m| m.version)
        .collect();
    reversible.sort_unstable_by(|a, b| b.cmp(a));
    if !reversible.is_empty() {
        let reverted = r
            .revert(&reversible, ctx)
            .await
            .unwrap_or_else(|e| panic!("revert failed: {e}"));
        let got: Vec<u64> = reverted.iter().map(|m| m.version).collect();
        assert_eq!(got, reversible, "revert reverts newest first");
        let again = r.revert(&reversible, ctx).await.unwrap();
        assert!(
            again.is_empty(),
            "a repeated revert reverted {again:?} twice"
        );
        let end = r.status().await.unwrap();
        for v in &reversible {
            assert!(
                end.pending.iter().any(|m| m.version == *v),
                "{v} pending again"
            );
        }
    }
}

/// The `MetricsSource` contract: `with_data` answers samples, `without_data`
/// answers [`MetricAnswer::NoData`] (never zero samples), and asking again is
/// harmless.
pub async fn metrics(s: &dyn MetricsSource, with_data: &MetricQuery, without_data: &MetricQuery) {
    for _ in 0..2 {
        match s
            .query(with_data)
            .await
            .unwrap_or_else(|e| panic!("query {:?} failed: {e}", with_data.query))
        {
            MetricAnswer::Samples { samples } => {
                assert!(
                    !samples.is_empty(),
                    "Samples with no samples must be NoData instead"
                )
            }
            other => panic!(
                "query {:?} should have data, got {other:?}",
                with_data.query
            ),
        }
        let none = s
            .query(without_data)
            .await
            .unwrap_or_else(|e| panic!("query {:?} failed: {e}", without_data.query));
        assert!(
            matches!(none, MetricAnswer::NoData { .. }),
            "a query without data answers NoData, got {none:?}"
        );
    }
}

/// The `SecretSource` contract: an existing secret's value and metadata are
/// read and its value never printed; a missing one is `NotFound`.
pub async fn secrets(s: &dyn SecretSource, existing: &str, missing: &str) {
    let v = s
        .get(existing)
        .await
        .unwrap_or_else(|e| panic!("get({existing}) failed: {e}"));
    assert!(!format!("{v:?}").contains(v.expose()) || v.expose().is_empty());
    let m = s
        .metadata(existing)
        .await
        .unwrap_or_else(|e| panic!("metadata({existing}) failed: {e}"));
    assert!(!m.name.is_empty());
    let e = s
        .get(missing)
        .await
        .expect_err("a missing secret is an error");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!e.to_string().is_empty());
    let e = s
        .metadata(missing)
        .await
        .expect_err("a missing secret is an error");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// The `Journal` contract: leases, fencing, takeover after expiry, ordered
/// reads and the deployment list. Uses the service `conformance-svc`.
pub async fn journal(j: &dyn Journal) {
    let svc = "conformance-svc";
    let ttl = Duration::from_secs(60);
    let t0 = Timestamp(1_700_000_000_000);
    let rec = |n: u64| Record::Step {
        input: if n.is_multiple_of(2) {
            Input::Tick
        } else {
            Input::Start
        },
        commands: Vec::new(),
        events: Vec::new(),
        notifications: Vec::new(),
    };

    let a1 = j
        .acquire(svc, "deployer-a", ttl, t0)
        .await
        .expect("a free lease is granted");
    assert_eq!(a1.superseded, None, "a free lease supersedes nothing");
    let held = j
        .acquire(svc, "deployer-b", ttl, t0.after(Duration::from_secs(1)))
        .await
        .expect_err("a held lease is refused");
    assert_eq!(held.kind(), ErrorKind::LeaseHeld, "{held}");
    assert!(
        held.to_string().contains("deployer-a"),
        "the error names the holder: {held}"
    );

    let a2 = j
        .acquire(svc, "deployer-a", ttl, t0.after(Duration::from_secs(2)))
        .await
        .expect("the same holder re-acquires (resume)");
    assert_eq!(
        a2.superseded,
        Some(a1.expires_at),
        "re-acquiring names the expiry of the lease it took over"
    );
    assert!(
        a2.token > a1.token,
        "tokens increase: {} then {}",
        a1.token,
        a2.token
    );
    let stale = j
        .append(&a1, "dep-1", t0, &rec(1))
        .await
        .expect_err("a superseded token cannot append");
    assert_eq!(stale.kind(), ErrorKind::Fenced, "{stale}");

    for n in 1..=3u64 {
        let seq = j
            .append(&a2, "dep-1", t0.after(Duration::from_secs(n)), &rec(n))
            .await
            .expect("append under the current lease");
        assert_eq!(seq, n, "seq counts from 1 per deployment");
    }
    let entries = j.read("dep-1").await.expect("read");
    assert_eq!(entries.len(), 3);
    assert!(
        entries.windows(2).all(|w| w[0].seq < w[1].seq),
        "read is in seq order"
    );
    assert_eq!(entries[0].record, rec(1));
    assert!(entries
        .iter()
        .all(|e| e.service == svc && e.token == a2.token));
    assert!(j.read("no-such-deployment").await.unwrap().is_empty());

    let a3 = j
        .renew(&a2, ttl, t0.after(Duration::from_secs(30)))
        .await
        .expect("renew a current lease");
    assert_eq!(a3.token, a2.token);
    assert!(a3.expires_at > a2.expires_at);

    let after_expiry = a3.expires_at.after(Duration::from_secs(1));
    let b = j
        .acquire(svc, "deployer-b", ttl, after_expiry)
        .await
        .expect("an expired lease can be taken over");
    assert_eq!(
        b.superseded,
        Some(a3.expires_at),
        "a takeover names the expiry of the lease it took over (after its renewal)"
    );
    assert!(b.token > a3.token);
    let fenced = j
        .append(&a3, "dep-1", after_expiry, &rec(4))
        .await
        .expect_err("after a takeover the old holder's writes are rejected");
    assert_eq!(fenced.kind(), ErrorKind::Fenced, "{fenced}");
    let fenced = j
        .renew(&a3, ttl, after_expiry)
        .await
        .expect_err("no renew after takeover");
    assert_eq!(fenced.kind(), ErrorKind::Fenced);
    assert_eq!(
        j.append(&b, "dep-1", after_expiry, &rec(4))
            .await
            .expect("new holder appends"),
        4
    );

    let list = j
        .deployments(Some(svc.to_string()))
        .await
        .expect("deployments");
    let d = list.iter().find(|d| d.id == "dep-1").expect("dep-1 listed");
    assert_eq!(d.records, 4);
    assert!(j
        .deployments(Some("another-service".to_string()))
        .await
        .unwrap()
        .iter()
        .all(|d| d.id != "dep-1"));

    j.release(&b).await.expect("release");
    let c = j
        .acquire(svc, "deployer-c", ttl, after_expiry)
        .await
        .expect("a released lease is free");
    assert_eq!(
        c.superseded, None,
        "a released lease leaves nothing to wait for"
    );
    assert!(c.token > b.token);
    j.release(&c).await.unwrap();
}
