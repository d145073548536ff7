//! The conformance suites on the CLI's `fake` target: its compute, router,
//! migrations, metrics and secrets over one world file. Every rule passes:
//! its store holds the secrets the spec names and no other, and `apply`
//! reports the migrations of the deployment that applied them only.

#[cfg(not(feature = "testing"))]
compile_error!(
    "the bluegreen-cli tests drive the fake target and the journal kill switch: run them with `--features testing` (scripts/test uses --all-features)"
);

use std::collections::BTreeMap;
use std::time::Duration;

use bluegreen_cli::fake::{ConstantMetrics, FakeProviders, FakeWorld};
use bluegreen_cli::spec::FakeMigration;
use bluegreen_core::testing::conformance::{
    self, Capabilities, Patience, SuiteReport, Verdict, COMPUTE_RULES, METRICS_RULES, ROUTER_RULES,
};
use bluegreen_core::{Color, MetricQuery, MigrationContext, MigrationPhase, Release, Timestamp};

fn providers(dir: &tempfile::TempDir) -> FakeProviders {
    let migrations = [FakeMigration {
        version: 25,
        name: "add_order_metadata".into(),
        phase: MigrationPhase::Expand,
        reversible: true,
        applied: false,
    }];
    let world = FakeWorld::open(&dir.path().join("world.json"), "2.4.0", 3, &migrations).unwrap();
    FakeProviders::new(world).with_secrets(["prod/order-api/db-password".to_string()])
}

fn all_passed(report: &SuiteReport, rules: &[conformance::Rule]) {
    let names: Vec<&str> = report.results.iter().map(|r| r.rule.name).collect();
    let want: Vec<&str> = rules.iter().map(|r| r.name).collect();
    assert_eq!(names, want, "every rule reported, in order");
    assert!(
        report.results.iter().all(|r| r.verdict == Verdict::Passed),
        "{report}"
    );
}

#[tokio::test]
async fn the_fake_target_passes_the_compute_and_router_suites() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(&dir);
    let caps = Capabilities::all();
    let patience = Patience {
        timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    };
    let release = Release::new("2.5.0", "order-api:2.5.0");
    let r = conformance::check_compute(&p, Color::Blue, &release, patience, &caps).await;
    all_passed(&r, COMPUTE_RULES);
    all_passed(&conformance::check_router(&p, &caps).await, ROUTER_RULES);
}

#[tokio::test]
async fn the_fake_target_passes_the_migrations_suite_with_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(&dir);
    let ctx = MigrationContext {
        deployment_id: "conformance-1".into(),
        backup_id: None,
    };
    let r = conformance::check_migrations(&p, &ctx, &Capabilities::all()).await;
    assert_eq!(r.failed().count(), 0, "{r}");
    for name in [
        "backup-verifies",
        "expand-applies-pending-in-order",
        "repeated-apply-reports-the-same",
        "other-deployment-owns-nothing",
        "verify-passes",
        "revert-newest-first-once",
    ] {
        assert_eq!(r.verdict(name), Some(&Verdict::Passed), "{r}");
    }
}

#[tokio::test]
async fn the_fake_target_metrics_and_secrets_pass_and_a_missing_secret_is_not_found() {
    let caps = Capabilities::none();
    let metrics = ConstantMetrics::new(BTreeMap::from([("error-rate".to_string(), 0.002)]));
    let q = |check: &str| MetricQuery {
        check: check.into(),
        query: check.into(),
        from: Timestamp(0),
        to: Timestamp(60_000),
        color: None,
        baseline: false,
    };
    let r = conformance::check_metrics(&metrics, &q("error-rate"), &q("none"), &caps).await;
    all_passed(&r, METRICS_RULES);

    let dir = tempfile::tempdir().unwrap();
    let p = providers(&dir);
    let r = conformance::check_secrets(&p, "prod/order-api/db-password", "no-such", &caps).await;
    for name in ["existing-secret-reads", "missing-secret-is-not-found"] {
        assert_eq!(r.verdict(name), Some(&Verdict::Passed), "{r}");
    }
    assert_eq!(r.failed().count(), 0, "{r}");
}
