//! The reference procedure end to end on ECS, ALB and Secrets Manager in moto,
//! with scripted metrics and fake smoke tests: a good release promotes, a bad
//! one (error rate above 5%) rolls back with traffic restored first.
//!
//! The deployment runs under paused tokio time, so the hour of soak and the
//! 15-minute analysis pass at once with the plan's default intervals. The AWS
//! calls run on a separate real-time runtime and block the paused one while
//! they are in flight, so virtual time never jumps past an HTTP request.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
use aws_types::SdkConfig;
use bluegreen_alb::AlbRouter;
use bluegreen_core::driver::{BlueGreen, TokioClock};
use bluegreen_core::journal::MemoryJournal;
use bluegreen_core::report::Report;
use bluegreen_core::testing::{reference_plan, FakeSmokeTest, Faults, ScriptedMetrics, World};
use bluegreen_core::{
    AutoscalingState, Color, ComputeProvider, ComputeStatus, Outcome, PreparedRelease, Release,
    Result, SecretMetadata, SecretSource, SecretValue, TargetHealth, Timestamp, TrafficRouter,
    TrafficSplit,
};
use bluegreen_ecs::EcsCompute;
use bluegreen_secretsmanager::SecretsManagerSource;
use common::alb::{alb_fixture, forward_weights, AlbFixture};
use common::ecs::{ecs_fixture, EcsFixture};
use common::CallLog;

/// The real-time runtime the AWS calls run on; never dropped.
fn aws_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the AWS calls")
    })
}

/// Runs `fut` to completion on the real-time runtime, blocking the caller.
fn on_aws<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| aws_runtime().block_on(fut))
            .join()
            .expect("the AWS call thread")
    })
}

/// A provider whose every call runs on the real-time runtime.
struct RealTime<P>(Arc<P>);

#[async_trait]
impl<P: ComputeProvider + 'static> ComputeProvider for RealTime<P> {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        on_aws(self.0.prepare(color, release))
    }
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        on_aws(self.0.scale(color, count))
    }
    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        on_aws(self.0.status(color))
    }
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        on_aws(self.0.statuses(colors))
    }
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        on_aws(self.0.autoscaling_state(color))
    }
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        on_aws(self.0.suspend_autoscaling(color))
    }
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        on_aws(self.0.restore_autoscaling(color, previous))
    }
}

#[async_trait]
impl<P: TrafficRouter + 'static> TrafficRouter for RealTime<P> {
    async fn current_split(&self) -> Result<TrafficSplit> {
        on_aws(self.0.current_split())
    }
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        on_aws(self.0.set_split(split))
    }
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        on_aws(self.0.target_health(color))
    }
    async fn drain_period(&self) -> Result<Option<std::time::Duration>> {
        on_aws(self.0.drain_period())
    }
}

#[async_trait]
impl<P: SecretSource + 'static> SecretSource for RealTime<P> {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        on_aws(self.0.get(name))
    }
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        on_aws(self.0.metadata(name))
    }
}

/// The reference's starting point in moto: green serves 2.4.0 on three tasks
/// and all traffic, blue is at zero, both services have a scalable target
/// (nothing suspended), and the five secrets exist.
struct Stage {
    config: SdkConfig,
    calls: CallLog,
    ecs: EcsFixture,
    alb: AlbFixture,
    /// Secret name in the plan -> name in moto.
    secrets: BTreeMap<String, (String, String)>,
    provider: Arc<EcsCompute>,
}

const NOT_SUSPENDED: AutoscalingState = AutoscalingState {
    registered: true,
    scale_in_suspended: false,
    scale_out_suspended: false,
    scheduled_suspended: false,
};

async fn stage() -> Stage {
    let (config, calls) = common::counted_moto();
    let ecs_client = aws_sdk_ecs::Client::new(&config);
    let mut ecs = ecs_fixture(&ecs_client, 0).await;
    // The fixture makes blue live; the reference has green live.
    std::mem::swap(&mut ecs.blue, &mut ecs.green);
    ecs_client
        .update_service()
        .cluster(&ecs.cluster)
        .service(&ecs.green)
        .desired_count(3)
        .send()
        .await
        .unwrap();
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let mut alb = alb_fixture(&elb, 3).await;
    std::mem::swap(&mut alb.blue, &mut alb.green);
    let provider = Arc::new(
        EcsCompute::builder(&config)
            .cluster(&ecs.cluster)
            .service(Color::Blue, &ecs.blue)
            .service(Color::Green, &ecs.green)
            .build()
            .unwrap(),
    );
    let aas = aws_sdk_applicationautoscaling::Client::new(&config);
    for color in Color::ALL {
        aas.register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(provider.scalable_resource_id(color))
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .min_capacity(if color == Color::Green { 3 } else { 0 })
            .max_capacity(10)
            .send()
            .await
            .unwrap();
    }
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let prefix = common::unique("prod");
    let mut secrets = BTreeMap::new();
    for r in reference_plan().preflight.required_secrets {
        let name = r.name.replacen("prod", &prefix, 1);
        let arn = sm
            .create_secret()
            .name(&name)
            .secret_string("s3cr3t-value")
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        secrets.insert(r.name, (name, arn));
    }
    calls.reset();
    Stage {
        config,
        calls,
        ecs,
        alb,
        secrets,
        provider,
    }
}

/// The reference plan on the stage: its secrets renamed to the stage's, the
/// release's secrets by ARN, no database migrations (no database here).
fn plan(stage: &Stage) -> bluegreen_core::Plan {
    let mut plan = reference_plan();
    plan.migrations = None;
    for r in &mut plan.preflight.required_secrets {
        r.name = stage.secrets[&r.name].0.clone();
    }
    for value in plan.release.secrets.values_mut() {
        *value = stage.secrets[value.as_str()].1.clone();
    }
    plan
}

/// Runs the deployment under paused time and returns its report.
fn deploy(stage: &Stage, error_rate: f64) -> Report {
    deploy_at(stage, error_rate, Duration::ZERO)
}

/// Runs the deployment with the clock `ahead` of the wall clock.
fn deploy_at(stage: &Stage, error_rate: f64, ahead: Duration) -> Report {
    let plan = plan(stage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let faults = Arc::new(Faults::new());
        let world = World::new(Color::Green, 3, "2.4.0", Duration::from_secs(30));
        let metrics = Arc::new(ScriptedMetrics::new(faults.clone()));
        metrics
            .constant("error-rate", error_rate)
            .constant("p95-latency", 180.0);
        let router = AlbRouter::builder(&stage.config)
            .rule(&stage.alb.rule)
            .target_group(Color::Blue, &stage.alb.blue)
            .target_group(Color::Green, &stage.alb.green)
            .build()
            .unwrap();
        let mut names = plan.smoke_tests.clone();
        names.extend(plan.preflight.staging_checks.iter().cloned());
        let mut builder = BlueGreen::builder(plan)
            .compute(Arc::new(RealTime(stage.provider.clone())))
            .router(Arc::new(RealTime(Arc::new(router))))
            .secrets(Arc::new(RealTime(Arc::new(SecretsManagerSource::new(
                &stage.config,
            )))))
            .metrics(metrics)
            .journal(Arc::new(MemoryJournal::new()))
            .clock(Arc::new(TokioClock::starting_at(
                Timestamp::from_system_time(SystemTime::now()).after(ahead),
            )));
        for name in names {
            builder = builder.smoke_test(Arc::new(FakeSmokeTest::new(
                &name,
                world.clone(),
                faults.clone(),
                |_| true,
            )));
        }
        builder.build().unwrap().run().await.unwrap()
    })
}

/// What moto holds at the end.
#[derive(Debug, PartialEq)]
struct Final {
    weights: Vec<(Color, i32)>,
    desired: (i32, i32),
    running: (i32, i32),
    autoscaling: (AutoscalingState, AutoscalingState),
}

fn final_state(stage: &Stage) -> Final {
    on_aws(async {
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&stage.config);
        let rule = elb
            .describe_rules()
            .rule_arns(&stage.alb.rule)
            .send()
            .await
            .unwrap()
            .rules()[0]
            .clone();
        let mut weights: Vec<(Color, i32)> = forward_weights(rule.actions())
            .into_iter()
            .map(|(tg, w)| {
                (
                    if tg == stage.alb.blue {
                        Color::Blue
                    } else {
                        Color::Green
                    },
                    w,
                )
            })
            .collect();
        weights.sort();
        let ecs = aws_sdk_ecs::Client::new(&stage.config);
        let out = ecs
            .describe_services()
            .cluster(&stage.ecs.cluster)
            .services(&stage.ecs.blue)
            .services(&stage.ecs.green)
            .send()
            .await
            .unwrap();
        let svc = |name: &str| {
            out.services()
                .iter()
                .find(|s| s.service_name.as_deref() == Some(name))
                .unwrap()
                .clone()
        };
        let (b, g) = (svc(&stage.ecs.blue), svc(&stage.ecs.green));
        Final {
            weights,
            desired: (b.desired_count, g.desired_count),
            running: (b.running_count, g.running_count),
            autoscaling: (
                stage.provider.autoscaling(Color::Blue).await.unwrap(),
                stage.provider.autoscaling(Color::Green).await.unwrap(),
            ),
        }
    })
}

fn print_calls(what: &str, calls: &CallLog) {
    let counts = calls.counts();
    let total: u32 = counts.values().sum();
    println!("AWS calls of one deployment ({what}), {total} in all:");
    for (op, n) in &counts {
        println!("  {op:<50} {n}");
    }
}

#[test]
fn a_good_release_promotes_and_leaves_blue_live_green_at_zero_and_autoscaling_as_found() {
    let stage = on_aws(stage());
    let report = deploy(&stage, 0.002);
    print_calls("good release", &stage.calls);
    assert_eq!(
        report.outcome,
        Some(Outcome::Succeeded),
        "{}",
        report.to_markdown()
    );

    let end = final_state(&stage);
    assert_eq!(
        end.weights,
        vec![(Color::Blue, 100), (Color::Green, 0)],
        "all traffic on the new color"
    );
    assert_eq!(
        end.desired,
        (3, 0),
        "blue at three tasks, green at zero after the soak"
    );
    assert_eq!(end.running, (3, 0));
    assert_eq!(
        end.autoscaling,
        (NOT_SUSPENDED, NOT_SUSPENDED),
        "autoscaling not left suspended"
    );

    let blue = on_aws(stage.provider.status(Color::Blue)).unwrap();
    assert_eq!(blue.version.as_deref(), Some("2.5.0"));
    assert!(blue.is_stable_at(3), "{blue:?}");
    // Each write once; each revision described once.
    for (op, n) in [
        ("ecs:RegisterTaskDefinition", 1),
        ("ecs:ListTaskDefinitions", 1), // no revision of 2.5.0 registered before
        ("ecs:DescribeTaskDefinition", 1),
        ("ecs:UpdateService", 3), // prepare (at zero), scale blue up, scale green down
        ("elasticloadbalancing:ModifyRule", 1),
        ("application-autoscaling:RegisterScalableTarget", 4), // suspend and restore, both colors
        ("secretsmanager:DescribeSecret", 5),
    ] {
        assert_eq!(stage.calls.count(op), n, "{op}: {:?}", stage.calls.counts());
    }
    assert_eq!(
        stage.calls.count("secretsmanager:GetSecretValue"),
        0,
        "secret values are not read by the deployment: ECS takes them by ARN"
    );
}

#[test]
fn an_error_rate_above_five_percent_rolls_back_with_traffic_restored_first() {
    let stage = on_aws(stage());
    let report = deploy(&stage, 0.08);
    print_calls("bad release, rolled back", &stage.calls);
    match &report.outcome {
        Some(Outcome::RolledBack { reason }) => {
            let text = format!("{reason:?}");
            assert!(
                text.contains("error-rate"),
                "the recorded reason names the check: {text}"
            );
        }
        other => panic!(
            "expected a rollback, got {other:?}\n{}",
            report.to_markdown()
        ),
    }

    let end = final_state(&stage);
    assert_eq!(
        end.weights,
        vec![(Color::Blue, 0), (Color::Green, 100)],
        "all traffic back on green"
    );
    assert_eq!(end.desired.1, 3, "green kept its three tasks");
    assert_eq!(end.running.1, 3);
    assert_eq!(end.desired.0, 0, "blue scaled back to zero");
    assert_eq!(
        end.autoscaling,
        (NOT_SUSPENDED, NOT_SUSPENDED),
        "autoscaling restored exactly"
    );

    // Traffic first: after the last split that sent traffic to blue, the next
    // provider call of the rollback is the split back to green.
    let actions = &report.actions;
    let to_blue = actions
        .iter()
        .rposition(|a| a.operation.contains("set_split") && !a.detail.contains("blue 0%"))
        .expect("traffic went to blue");
    let changes = ["set_split", "scale", "prepare", "autoscaling"];
    let next_change = actions[to_blue + 1..]
        .iter()
        .find(|a| changes.iter().any(|c| a.operation.contains(c)))
        .expect("a rollback action");
    assert!(
        next_change.operation.contains("set_split") && next_change.detail.contains("blue 0%"),
        "the first rollback action restores traffic, got {next_change:?}\n{}",
        report.to_markdown()
    );
}

#[test]
fn a_database_password_older_than_90_days_stops_the_deployment_before_anything_changes() {
    let stage = on_aws(stage());
    // moto dates the secrets now; 91 days on, the database passwords are too
    // old for the reference policy while the API keys (180 days) and the
    // webhook secret (rotated only on compromise) are not.
    let report = deploy_at(&stage, 0.002, Duration::from_secs(91 * 86_400));
    let reason = match &report.outcome {
        Some(Outcome::Succeeded) | None => panic!(
            "expected a stop, got {:?}\n{}",
            report.outcome,
            report.to_markdown()
        ),
        Some(Outcome::RolledBack { reason }) | Some(Outcome::Halted { reason }) => {
            format!("{reason:?}")
        }
    };
    let db = &stage.secrets["prod/order-api/db-password"].0;
    let api = &stage.secrets["prod/order-api/stripe-api-key"].0;
    let hook = &stage.secrets["prod/order-api/stripe-webhook-secret"].0;
    assert!(
        reason.contains(db.as_str()),
        "the reason names the secret: {reason}"
    );
    assert!(
        !reason.contains(api.as_str()) && !reason.contains(hook.as_str()),
        "{reason}"
    );
    for change in [
        "ecs:RegisterTaskDefinition",
        "ecs:UpdateService",
        "elasticloadbalancing:ModifyRule",
        "application-autoscaling:RegisterScalableTarget",
    ] {
        assert_eq!(
            stage.calls.count(change),
            0,
            "{change} before preflight passed: {:?}",
            stage.calls.counts()
        );
    }
    let end = final_state(&stage);
    assert_eq!(end.weights, vec![(Color::Blue, 0), (Color::Green, 100)]);
    assert_eq!(end.desired, (0, 3));
}
