//! The `ecs` + `alb` target: `validate` and `plan` of the reference
//! deployment (examples/order-api.toml), and `deploy` building the ECS, ALB
//! and Secrets Manager providers against moto (scripts/test starts it and
//! exports BLUEGREEN_TEST_MOTO_ENDPOINT), with Prometheus metrics
//! (BLUEGREEN_TEST_PROMETHEUS_URL). Deployments that stop before traffic
//! moves leave the ALB rule alone; a good release on the ECS fixture goes all
//! the way (new color stable, smoke tests against a per-color HTTP endpoint the
//! test serves, traffic shifted, analysis, soak, old color at zero); a bad one
//! (its error-rate query answers 8%) rolls back with traffic restored. Each
//! test reads the rule's weights and the services' desired counts back from moto.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use aws_sdk_elasticloadbalancingv2::Client as Elb;
use bluegreen_aws::testing::alb::{alb_fixture, forward_weights, AlbFixture};
use bluegreen_aws::testing::ecs::{ecs_fixture, service_state, EcsFixture};
use bluegreen_aws::testing::proxy::CountingProxy;
use bluegreen_aws::testing::{endpoint, moto, unique, REGION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        // No credentials anywhere: not in the environment, no shared files,
        // no instance role.
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
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

/// A small spec on the services `blue` and `green` of `cluster`, routing on
/// the fixture's rule, needing `secret`.
fn spec(cluster: &str, (blue, green): (&str, &str), alb: &AlbFixture, secret: &str) -> String {
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
services = {{ blue = "{blue}", green = "{green}" }}

[target.alb]
rule_arn = "{rule}"
target_groups = {{ blue = "{blue_tg}", green = "{green_tg}" }}

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
# Windows of seconds against Prometheus' 15 s step hold one point each.
min_samples = 1

[journal]
path = "deploy.journal"
"#,
        endpoint = endpoint(),
        rule = alb.rule,
        blue_tg = alb.blue,
        green_tg = alb.green,
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
    // Real services, so that the missing secret is the only thing wrong.
    let ecs = ecs_fixture(&bluegreen_aws::testing::ecs::client(&config), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = unique("prod/order-api/missing");
    std::fs::write(
        dir.path().join("spec.toml"),
        spec(&ecs.cluster, (&ecs.blue, &ecs.green), &alb, &secret),
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
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused in preflight, nothing changed (a reported outcome, not a failure to start): {}",
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
    std::fs::write(
        dir.path().join("spec.toml"),
        spec(
            &cluster,
            ("order-api-blue", "order-api-green"),
            &alb,
            &secret,
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || bluegreen(&d, &["deploy", "spec.toml"], true)
    })
    .await
    .unwrap();
    let all = text(&out);
    eprintln!("{all}");
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused in preflight, nothing changed: {all}"
    );
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
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    let out = bluegreen(dir.path(), &["deploy", "spec.toml"], false);
    assert_eq!(
        out.status.code(),
        Some(bluegreen_cli::cli::EXIT_REFUSED),
        "refused, nothing changed: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot resolve the AWS identity (STS GetCallerIdentity)")
            && stderr.contains("credentials"),
        "{}",
        text(&out)
    );
}

/// A color's endpoint for the smoke tests: answers `GET /health` with
/// `{"status":"healthy","color":COLOR}` (404 elsewhere) and counts the
/// health checks it answered.
struct ColorEndpoint {
    url: String,
    health_checks: Arc<AtomicU32>,
}

async fn color_endpoint(color: &'static str) -> ColorEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let health_checks = Arc::new(AtomicU32::new(0));
    let counter = health_checks.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let (status, body) = if head.starts_with("GET /health ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    (
                        "200 OK",
                        format!(r#"{{"status":"healthy","color":"{color}"}}"#),
                    )
                } else {
                    ("404 Not Found", r#"{"error":"not found"}"#.to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    ColorEndpoint { url, health_checks }
}

/// Everything a full deployment on moto runs against: the ECS services (blue
/// serving two tasks), the ALB rule (all on blue), the secret, an HTTP
/// endpoint per color for the smoke tests, and the proxy through which the
/// binary reaches moto, counting its calls.
struct Stage {
    aws: CountingProxy,
    ecs: EcsFixture,
    alb: AlbFixture,
    /// The secret's name, and its full ARN.
    secret: String,
    secret_arn: String,
    blue: ColorEndpoint,
    green: ColorEndpoint,
    dir: tempfile::TempDir,
}

const REPLICAS: i32 = 2;

async fn stage() -> Stage {
    let config = moto();
    let ecs = ecs_fixture(&bluegreen_aws::testing::ecs::client(&config), REPLICAS).await;
    let alb = alb_fixture(&Elb::new(&config), 2).await;
    // A test's targets need no time to drain: no 300 s default delay.
    for tg in [&alb.blue, &alb.green] {
        Elb::new(&config)
            .modify_target_group_attributes()
            .target_group_arn(tg)
            .attributes(
                aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                    .key("deregistration_delay.timeout_seconds")
                    .value("0")
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let secret = unique("prod/order-api/db-password");
    let secret_arn = aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(&secret)
        .secret_string("not-a-real-password")
        .send()
        .await
        .expect("create the secret")
        .arn
        .unwrap();
    Stage {
        aws: CountingProxy::start(&endpoint()).await,
        ecs,
        alb,
        secret,
        secret_arn,
        blue: color_endpoint("blue").await,
        green: color_endpoint("green").await,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// A full deployment of `version` on the stage, with short timings: its
/// error-rate check is the PromQL `error_rate` (a constant the test chooses,
/// e.g. `vector(0.002)`), measured every second; above 5% twice in a row rolls
/// back.
fn full_spec(stage: &Stage, version: &str, error_rate: &str) -> String {
    format!(
        r#"
[scope]
service = "order-api"
version = "{version}"
image = "order-api:{version}"

[target.ecs]
cluster = "{cluster}"
region = "{REGION}"
endpoint_url = "{endpoint}"
services = {{ blue = "{blue_svc}", green = "{green_svc}" }}

[target.alb]
rule_arn = "{rule}"
target_groups = {{ blue = "{blue_tg}", green = "{green_tg}" }}

[deployment]
replicas = {REPLICAS}
blue_url = "{blue_url}"
green_url = "{green_url}"

[[secrets]]
name = "{secret}"
env = "DB_PASSWORD"
rotation = "on-compromise"

[[smoke_tests]]
name = "health-check"
url = "{{base_url}}/health"
expect_json = [{{ field = "status", equals = "healthy" }}, {{ field = "color", equals = "{{color}}" }}]

[monitoring]
provider = "prometheus"
prometheus = {{ url = "{prom}" }}

[[monitoring.checks]]
name = "error-rate"
query = "{error_rate}"
unit = "ratio"
success = "< 0.01"
interval = "1s"
# Windows of seconds against Prometheus' 15 s step hold one point each.
min_samples = 1

[[rollback_triggers]]
type = "smoke-test-failed"

[[rollback_triggers]]
type = "metric"
check = "error-rate"
breach = "> 0.05"
consecutive = 2

[timing]
analysis_window = "3s"
soak = "2s"
scale_down_delay = "0s"
drain = "1s"
poll_interval = "200ms"
health_interval = "1s"

[journal]
path = "deploy.journal"
"#,
        cluster = stage.ecs.cluster,
        endpoint = stage.aws.endpoint(),
        blue_svc = stage.ecs.blue,
        green_svc = stage.ecs.green,
        rule = stage.alb.rule,
        blue_tg = stage.alb.blue,
        green_tg = stage.alb.green,
        blue_url = stage.blue.url,
        green_url = stage.green.url,
        secret = stage.secret,
        prom = prometheus_url(),
    )
}

/// Runs `bluegreen ARGS` in the stage's directory off the async runtime (the
/// color endpoints keep answering meanwhile).
async fn run(stage: &Stage, args: &[&str]) -> Output {
    let dir = stage.dir.path().to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bluegreen(&dir, &args, true)
    })
    .await
    .unwrap()
}

/// The desired counts of (blue, green) in moto.
async fn desired(stage: &Stage) -> (i32, i32) {
    let ecs = bluegreen_aws::testing::ecs::client(&moto());
    let b = service_state(&ecs, &stage.ecs.cluster, &stage.ecs.blue).await;
    let g = service_state(&ecs, &stage.ecs.cluster, &stage.ecs.green).await;
    (b.desired, g.desired)
}

/// Prints the AWS calls the binary made since the last reset, and resets.
fn print_calls(what: &str, stage: &Stage) -> std::collections::BTreeMap<String, u32> {
    let counts = stage.aws.calls().counts();
    let total: u32 = counts.values().sum();
    println!("AWS calls of `bluegreen deploy` ({what}), {total} in all:");
    for (op, n) in &counts {
        println!("  {op:<50} {n}");
    }
    stage.aws.calls().reset();
    counts
}

/// Writes the spec of `version` and runs `bluegreen deploy` on it.
async fn deploy(stage: &Stage, version: &str, error_rate: &str) -> (Output, String) {
    std::fs::write(
        stage.dir.path().join("spec.toml"),
        full_spec(stage, version, error_rate),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(stage, &["deploy", "spec.toml"]).await;
    let all = text(&out);
    eprintln!("{all}");
    println!(
        "wall time of `bluegreen deploy` {version}: {:?}",
        started.elapsed()
    );
    (out, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_on_moto_shifts_traffic_to_the_new_color_and_scales_the_old_to_zero() {
    let stage = stage().await;
    let elb = Elb::new(&moto());

    let (out, all) = deploy(&stage, "2.5.0", "vector(0.002)").await;
    let calls = print_calls("good release", &stage);
    assert_eq!(out.status.code(), Some(0), "succeeded: {all}");
    assert_eq!(
        rule_weights(&elb, &stage.alb.rule).await,
        vec![(stage.alb.blue.clone(), 0), (stage.alb.green.clone(), 100)],
        "all traffic on green, by read-back of the rule"
    );
    assert_eq!(
        desired(&stage).await,
        (0, REPLICAS),
        "blue (the old color) at zero after the soak, green at the replicas"
    );
    let ecs = bluegreen_aws::testing::ecs::client(&moto());
    let green = service_state(&ecs, &stage.ecs.cluster, &stage.ecs.green).await;
    assert_eq!(green.image, "order-api:2.5.0", "green runs the release");
    assert_eq!(green.running, REPLICAS);
    assert_eq!(
        green.secrets,
        vec![("DB_PASSWORD".to_string(), stage.secret_arn.clone())],
        "the spec names the secret; the task definition gets its full ARN"
    );
    assert!(
        stage.green.health_checks.load(Ordering::SeqCst) >= 1,
        "the smoke test ran against green's endpoint"
    );
    assert_eq!(
        stage.blue.health_checks.load(Ordering::SeqCst),
        0,
        "and not against blue's"
    );
    assert!(!all.contains("not-a-real-password"), "{all}");
    // Each write once; the secret's ARN for the task definition comes from
    // the preflight's DescribeSecret, and its value is never read.
    for (op, n) in [
        ("ecs:RegisterTaskDefinition", 1),
        ("ecs:UpdateService", 3), // point green at the release (at zero), scale green up, blue down
        ("elasticloadbalancing:ModifyRule", 1),
        ("secretsmanager:DescribeSecret", 1),
        ("secretsmanager:GetSecretValue", 0),
    ] {
        assert_eq!(calls.get(op).copied().unwrap_or(0), n, "{op}: {calls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_good_release_a_bad_one_with_an_error_rate_above_five_percent_rolls_back_to_the_serving_color(
) {
    let stage = stage().await;
    let elb = Elb::new(&moto());
    let (out, all) = deploy(&stage, "2.5.0", "vector(0.002)").await;
    print_calls("good release", &stage);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the first release succeeded: {all}"
    );

    // Green serves 2.5.0 now; 2.6.0 goes to blue and errs on 8% of requests.
    let (out, all) = deploy(&stage, "2.6.0", "vector(0.08)").await;
    let calls = print_calls("bad release, rolled back", &stage);
    assert_eq!(out.status.code(), Some(1), "rolled back: {all}");
    assert_eq!(
        rule_weights(&elb, &stage.alb.rule).await,
        vec![(stage.alb.blue.clone(), 0), (stage.alb.green.clone(), 100)],
        "all traffic back on green (the old color), by read-back of the rule"
    );
    assert_eq!(
        desired(&stage).await,
        (0, REPLICAS),
        "blue (the new color) back at zero, green untouched"
    );
    let ecs = bluegreen_aws::testing::ecs::client(&moto());
    let green = service_state(&ecs, &stage.ecs.cluster, &stage.ecs.green).await;
    assert_eq!(green.image, "order-api:2.5.0", "green still runs 2.5.0");
    assert!(
        stage.blue.health_checks.load(Ordering::SeqCst) >= 1,
        "2.6.0 passed its smoke test on blue before traffic moved"
    );
    assert_eq!(
        calls
            .get("elasticloadbalancing:ModifyRule")
            .copied()
            .unwrap_or(0),
        2,
        "traffic moved to blue once and back once: {calls:?}"
    );

    let out = run(&stage, &["report", "spec.toml", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the report is JSON ({e}): {}", text(&out)));
    let report = &json["report"];
    assert_eq!(report["version"], "2.6.0", "the latest deployment: {json}");
    assert_eq!(report["outcome"]["outcome"], "rolled_back", "{json}");
    let reason = &report["outcome"]["reason"];
    let summary = reason["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("error-rate > 5%"),
        "the recorded reason names the check and its threshold: {summary}"
    );
    let evidence = reason["evidence"].as_array().cloned().unwrap_or_default();
    assert!(
        !evidence.is_empty()
            && evidence
                .iter()
                .all(|m| m["check"] == "error-rate" && m["value"] == 0.08),
        "with the measurements that breached: {reason}"
    );
}
