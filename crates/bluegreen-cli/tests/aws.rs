//! The `ecs` + `alb` target: `validate` and `plan` of the reference
//! deployment (examples/order-api.toml), and `deploy` building the ECS, ALB
//! and Secrets Manager providers against moto (scripts/test starts it and
//! exports BLUEGREEN_TEST_MOTO_ENDPOINT), with Prometheus metrics
//! (BLUEGREEN_TEST_PROMETHEUS_URL). The deployments stop before traffic
//! moves, and the test reads the ALB rule back to check that it did not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_elasticloadbalancingv2::Client as Elb;
use bluegreen_aws::testing::alb::{alb_fixture, forward_weights, AlbFixture};
use bluegreen_aws::testing::{endpoint, moto, unique, REGION};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/order-api.toml")
}

fn bluegreen(dir: &Path, args: &[&str], aws_credentials: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bluegreen"));
    c.current_dir(dir).args(args);
    if aws_credentials {
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
    } else {
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
    }
    c.env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("the bluegreen binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn prometheus_url() -> String {
    std::env::var("BLUEGREEN_TEST_PROMETHEUS_URL").unwrap_or_else(|_| {
        panic!(
            "BLUEGREEN_TEST_PROMETHEUS_URL is not set: run scripts/test, which starts Prometheus \
             (scripts/services/prometheus.sh) and exports it"
        )
    })
}

/// A small spec on `cluster`, routing on the fixture's rule, needing `secret`.
fn spec(cluster: &str, alb: &AlbFixture, secret: &str) -> String {
    format!(
        r#"
[scope]
service = "order-api"
version = "2.5.0"
image = "order-api:2.5.0-abc123"

[target.ecs]
cluster = "{cluster}"
region = "{REGION}"
endpoint_url = "{endpoint}"
services = {{ blue = "order-api-blue", green = "order-api-green" }}

[target.alb]
rule_arn = "{rule}"
target_groups = {{ blue = "{blue}", green = "{green}" }}

[deployment]
replicas = 1

[[secrets]]
name = "{secret}"
env = "DB_PASSWORD"
rotation = "on-compromise"

[monitoring]
provider = "prometheus"
prometheus = {{ url = "{prom}" }}

[[monitoring.checks]]
name = "error-rate"
query = "bluegreen_error_ratio_{{color}}"
unit = "ratio"
success = "< 0.01"

[journal]
path = "deploy.journal"
"#,
        endpoint = endpoint(),
        rule = alb.rule,
        blue = alb.blue,
        green = alb.green,
        prom = prometheus_url(),
    )
}

async fn rule_weights(elb: &Elb, rule: &str) -> Vec<(String, i32)> {
    let rules = elb
        .describe_rules()
        .rule_arns(rule)
        .send()
        .await
        .expect("describe the rule");
    forward_weights(rules.rules()[0].actions())
}

#[test]
fn the_reference_deployment_validates_and_plans_on_ecs_and_alb() {
    let dir = tempfile::tempdir().unwrap();
    let spec = example();
    let spec = spec.to_str().unwrap();
    let out = bluegreen(dir.path(), &["validate", spec], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ecs+alb"), "{}", text(&out));

    let out = bluegreen(dir.path(), &["plan", spec], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ECS production"),
        "the dry run names the ECS cluster: {}",
        text(&out)
    );
    assert!(
        stdout.contains("Secrets Manager"),
        "the dry run names the secret store: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_on_moto_rolls_back_on_a_missing_required_secret_before_traffic_moves() {
    let config = moto();
    let elb = Elb::new(&config);
    let alb = alb_fixture(&elb, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = unique("prod/order-api/missing");
    std::fs::write(
        dir.path().join("spec.toml"),
        spec(&unique("bg-cluster"), &alb, &secret),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || bluegreen(&d, &["deploy", "spec.toml"], true)
    })
    .await
    .unwrap();
    eprintln!("{}", text(&out));
    let code = out.status.code();
    assert_eq!(
        code,
        Some(1),
        "a reported outcome (rolled back before anything changed), not a failure to start: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reason = stdout
        .lines()
        .find(|l| l.starts_with("reason: "))
        .unwrap_or_else(|| panic!("a reason line: {}", text(&out)));
    assert!(
        reason.contains("required secrets failed preflight") && reason.contains(&secret),
        "the reason names the secret: {reason}"
    );
    assert_eq!(
        rule_weights(&elb, &alb.rule).await,
        vec![(alb.blue.clone(), 100), (alb.green.clone(), 0)],
        "traffic never moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_on_moto_rolls_back_on_a_missing_cluster_and_leaves_traffic_alone() {
    let config = moto();
    let elb = Elb::new(&config);
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let alb = alb_fixture(&elb, 1).await;
    let secret = unique("prod/order-api/db-password");
    sm.create_secret()
        .name(&secret)
        .secret_string("not-a-real-password")
        .send()
        .await
        .expect("create the secret");
    let cluster = unique("bg-missing-cluster");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), spec(&cluster, &alb, &secret)).unwrap();
    let out = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || bluegreen(&d, &["deploy", "spec.toml"], true)
    })
    .await
    .unwrap();
    let all = text(&out);
    eprintln!("{all}");
    assert_eq!(out.status.code(), Some(1), "rolled back: {all}");
    let reason = all
        .lines()
        .find(|l| l.starts_with("reason: "))
        .unwrap_or_else(|| panic!("a reason line: {all}"));
    assert!(
        reason.contains("ClusterNotFoundException") && reason.contains(&cluster),
        "the reason names the cluster: {reason}"
    );
    assert!(
        !all.contains("not-a-real-password"),
        "the secret's value never shows: {all}"
    );
    assert_eq!(
        rule_weights(&elb, &alb.rule).await,
        vec![(alb.blue.clone(), 100), (alb.green.clone(), 0)],
        "traffic never moved"
    );
}

#[test]
fn deploy_without_aws_credentials_fails_clearly_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let text_spec = std::fs::read_to_string(example()).unwrap();
    std::fs::write(dir.path().join("spec.toml"), text_spec).unwrap();
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], false);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        text(&out)
    );
}
