//! AWS as it is, not as moto is: replies lost after the call was applied,
//! and throttling, in the reference deployment on ECS, Application Auto
//! Scaling, ALB and Secrets Manager in moto.
//!
//! Lost replies are harmless: for every call of every mutating AWS operation
//! the providers make, a deployer whose call was applied by AWS but whose
//! reply never came, and which died right then, resumes from its file
//! journal in a new process (fresh providers, nothing in memory) to the same
//! world as an uninterrupted deployment. The calls go through
//! [`CountingProxy`]: on the chosen call it lets moto apply the request,
//! drops the reply and from then on holds every request unanswered (so an
//! SDK retry never reaches moto), and signals the test, which drops the
//! deployer's future at once, as a SIGKILL would.
//!
//! Within one process, a lost `RegisterTaskDefinition` reply registers no
//! second revision either: the SDK does not retry that call (its retry would
//! bypass `prepare`'s lookup by tag), and the driver's retry of `prepare`
//! finds the revision the lost call registered.
//!
//! Throttling costs at most twice the calls: with every second call
//! throttled, the deployment makes at most twice the AWS calls of a clean
//! run (`cargo test -p bluegreen-ecs --test unreliable_aws throttled --
//! --nocapture` prints the counts).
//!
//! As in `full_procedure.rs`, the deployment runs under paused tokio time
//! and the AWS calls on a real-time runtime that blocks it while they are in
//! flight.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace};
use aws_smithy_types::retry::RetryConfig;
use aws_types::SdkConfig;
use bluegreen_alb::AlbRouter;
use bluegreen_core::driver::{with_retry, BlueGreen, RetryPolicy, TokioClock};
use bluegreen_core::journal::FileJournal;
use bluegreen_core::testing::{reference_plan, FakeSmokeTest, Faults, ScriptedMetrics, World};
use bluegreen_core::{
    AutoscalingState, Clock, Color, ComputeProvider, ComputeStatus, ErrorStatus, Outcome,
    PreparedRelease, Release, Result, SecretMetadata, SecretSource, SecretValue, TargetHealth,
    Timestamp, TrafficRouter, TrafficSplit,
};
use bluegreen_ecs::{EcsCompute, VERSION_TAG};
use bluegreen_secretsmanager::SecretsManagerSource;
use common::alb::{alb_fixture, forward_weights, AlbFixture};
use common::ecs::{ecs_fixture, EcsFixture};
use common::proxy::{CountingProxy, LostReply, Throttle};
use tokio::sync::Notify;

/// Every mutating call the AWS providers make (Secrets Manager only reads).
const MUTATING: &[&str] = &[
    "ecs:RegisterTaskDefinition",
    "ecs:UpdateService",
    "application-autoscaling:RegisterScalableTarget",
    "elasticloadbalancing:ModifyRule",
    "elasticloadbalancing:ModifyListener",
];

/// The real-time runtime the AWS calls (and the proxies) run on.
fn aws_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the AWS calls")
    })
}

/// Runs `fut` on the real-time runtime, blocking the caller.
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

/// What kills the deployer: the proxy's lost reply, and the notice the
/// providers give the test when they meet it.
#[derive(Clone)]
struct Kill {
    lost: Option<LostReply>,
    killed: Arc<Notify>,
}

/// A provider whose every call runs on the real-time runtime, and never
/// returns once the reply was lost: the test drops the deployer then.
struct RealTime<P> {
    inner: Arc<P>,
    kill: Kill,
}

impl<P> RealTime<P> {
    fn new(inner: P, kill: &Kill) -> Arc<Self> {
        Arc::new(RealTime {
            inner: Arc::new(inner),
            kill: kill.clone(),
        })
    }

    async fn call<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let lost = self.kill.lost.clone();
        let answer = on_aws(async move {
            match lost {
                Some(lost) => tokio::select! {
                    biased;
                    _ = lost.fired() => None,
                    r = fut => Some(r),
                },
                None => Some(fut.await),
            }
        });
        match answer {
            Some(r) => r,
            None => {
                self.kill.killed.notify_one();
                std::future::pending().await
            }
        }
    }
}

#[async_trait]
impl<P: ComputeProvider + 'static> ComputeProvider for RealTime<P> {
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        self.call(self.inner.prepare(color, release)).await
    }
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        self.call(self.inner.scale(color, count)).await
    }
    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        self.call(self.inner.status(color)).await
    }
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        self.call(self.inner.statuses(colors)).await
    }
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.call(self.inner.autoscaling_state(color)).await
    }
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.call(self.inner.suspend_autoscaling(color)).await
    }
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        self.call(self.inner.restore_autoscaling(color, previous))
            .await
    }
}

#[async_trait]
impl<P: TrafficRouter + 'static> TrafficRouter for RealTime<P> {
    async fn current_split(&self) -> Result<TrafficSplit> {
        self.call(self.inner.current_split()).await
    }
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        self.call(self.inner.set_split(split)).await
    }
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        self.call(self.inner.target_health(color)).await
    }
    async fn drain_period(&self) -> Result<Option<Duration>> {
        self.call(self.inner.drain_period()).await
    }
}

#[async_trait]
impl<P: SecretSource + 'static> SecretSource for RealTime<P> {
    async fn get(&self, name: &str) -> Result<SecretValue> {
        self.call(self.inner.get(name)).await
    }
    async fn metadata(&self, name: &str) -> Result<SecretMetadata> {
        self.call(self.inner.metadata(name)).await
    }
}

/// Where the router switches traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Rule,
    Listener,
}

/// The reference's starting point in moto, made directly (not through a
/// proxy): green serves 2.4.0 on three tasks and all traffic (on the rule
/// and on the listener's default action), blue is at zero, both services
/// have a scalable target, and the five secrets exist.
struct Stage {
    ecs: EcsFixture,
    alb: AlbFixture,
    /// Secret name in the plan -> (name, ARN) in moto.
    secrets: BTreeMap<String, (String, String)>,
    journal: PathBuf,
}

async fn stage() -> Stage {
    let config = common::moto();
    let ecs_client = aws_sdk_ecs::Client::new(&config);
    let mut ecs = ecs_fixture(&ecs_client, 0).await;
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
    let aas = aws_sdk_applicationautoscaling::Client::new(&config);
    for (color, service) in [(Color::Blue, &ecs.blue), (Color::Green, &ecs.green)] {
        aas.register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(format!("service/{}/{service}", ecs.cluster))
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
    Stage {
        ecs,
        alb,
        secrets,
        // A file journal fsyncs every append: on tmpfs, where there is one,
        // that costs nothing (durability is not what this file tests).
        journal: scratch()
            .join(common::unique("bluegreen-lost-replies"))
            .join("journal.jsonl"),
    }
}

fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(dir) = self.journal.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

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

/// The deployment id every run of a stage uses.
const ID: &str = "dep-lost-reply";

/// How one deployer process ended.
enum End {
    /// It ran to the end, with this outcome and report.
    Finished(Outcome, String),
    /// It was killed when the reply was lost, with its clock at that moment.
    Killed(Timestamp),
}

/// One deployer process: fresh providers on `config`, the stage's file
/// journal opened anew, starting (or, with `resume`, resuming) deployment
/// [`ID`] with its clock at `at`.
fn deployer(
    stage: &Stage,
    config: &SdkConfig,
    route: Route,
    kill: &Kill,
    resume: bool,
    at: Timestamp,
) -> End {
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
            .constant("error-rate", 0.002)
            .constant("p95-latency", 180.0);
        let compute = EcsCompute::builder(config)
            .cluster(&stage.ecs.cluster)
            .service(Color::Blue, &stage.ecs.blue)
            .service(Color::Green, &stage.ecs.green)
            .build()
            .unwrap();
        let router = AlbRouter::builder(config);
        let router = match route {
            Route::Rule => router.rule(&stage.alb.rule),
            Route::Listener => router.listener(&stage.alb.listener),
        }
        .target_group(Color::Blue, &stage.alb.blue)
        .target_group(Color::Green, &stage.alb.green)
        .build()
        .unwrap();
        let clock = Arc::new(TokioClock::starting_at(at));
        let mut names = plan.smoke_tests.clone();
        names.extend(plan.preflight.staging_checks.iter().cloned());
        let mut builder = BlueGreen::builder(plan)
            .compute(RealTime::new(compute, kill))
            .router(RealTime::new(router, kill))
            .secrets(RealTime::new(SecretsManagerSource::new(config), kill))
            .metrics(metrics)
            .journal(Arc::new(FileJournal::open(&stage.journal).unwrap()))
            .clock(clock.clone())
            // A deployer resuming after a crash may wait out the dead one's
            // lease and a call timeout before acting; short ones keep that
            // wait below the plan's shortest progress deadline (1 min).
            .lease_ttl(Duration::from_secs(20))
            .call_timeout(Duration::from_secs(10));
        builder = if resume {
            builder.resume(ID)
        } else {
            builder.deployment_id(ID)
        };
        for name in names {
            builder = builder.smoke_test(Arc::new(FakeSmokeTest::new(
                &name,
                world.clone(),
                faults.clone(),
                |_| true,
            )));
        }
        let deployment = builder.build().unwrap();
        tokio::select! {
            biased;
            _ = kill.killed.notified() => End::Killed(clock.now()),
            report = deployment.run() => {
                let report = report.expect("the deployer runs to the end");
                End::Finished(
                    report.outcome.clone().unwrap_or_else(|| {
                        panic!("no outcome\n{}", report.to_markdown())
                    }),
                    report.to_markdown(),
                )
            }
        }
    })
    // The runtime is dropped here: whatever the deployer had in flight dies
    // with it, as with its process.
}

/// What moto holds at the end, in terms comparable between stages.
#[derive(Debug, PartialEq)]
struct Final {
    /// (color, desired count, the revision number of its task definition
    /// and the release version it is tagged with).
    services: Vec<(Color, i32, String)>,
    /// ACTIVE revisions of the task definition family.
    revisions: usize,
    /// Weights per color of the rule, then of the listener's default action.
    rule: Vec<(Color, i32)>,
    listener: Vec<(Color, i32)>,
    autoscaling: Vec<(Color, AutoscalingState)>,
}

fn final_state(stage: &Stage) -> Final {
    on_aws(async {
        let config = common::moto();
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
        let color_of = |tg: &str| {
            if tg == stage.alb.blue {
                Color::Blue
            } else {
                assert_eq!(tg, stage.alb.green);
                Color::Green
            }
        };
        let mut rule: Vec<(Color, i32)> = forward_weights(
            elb.describe_rules()
                .rule_arns(&stage.alb.rule)
                .send()
                .await
                .unwrap()
                .rules()[0]
                .actions(),
        )
        .into_iter()
        .map(|(tg, w)| (color_of(&tg), w))
        .collect();
        rule.sort();
        let mut listener: Vec<(Color, i32)> = forward_weights(
            elb.describe_listeners()
                .listener_arns(&stage.alb.listener)
                .send()
                .await
                .unwrap()
                .listeners()[0]
                .default_actions(),
        )
        .into_iter()
        .map(|(tg, w)| (color_of(&tg), w))
        .collect();
        listener.sort();

        let ecs = aws_sdk_ecs::Client::new(&config);
        let mut services = Vec::new();
        for (color, name) in [
            (Color::Blue, &stage.ecs.blue),
            (Color::Green, &stage.ecs.green),
        ] {
            let svc = ecs
                .describe_services()
                .cluster(&stage.ecs.cluster)
                .services(name)
                .send()
                .await
                .unwrap()
                .services()[0]
                .clone();
            let td = svc.task_definition.clone().unwrap();
            let tags = ecs
                .describe_task_definition()
                .task_definition(&td)
                .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
                .send()
                .await
                .unwrap();
            let version = tags
                .tags()
                .iter()
                .find(|t| t.key.as_deref() == Some(VERSION_TAG))
                .and_then(|t| t.value.clone())
                .unwrap_or_else(|| "untagged".into());
            let revision = td.rsplit(':').next().unwrap();
            services.push((
                color,
                svc.desired_count,
                format!("revision {revision} ({version})"),
            ));
        }
        let revisions = revisions_of(&ecs, family_of(&stage.ecs.task_definition))
            .await
            .len();

        let reader = EcsCompute::builder(&config)
            .cluster(&stage.ecs.cluster)
            .service(Color::Blue, &stage.ecs.blue)
            .service(Color::Green, &stage.ecs.green)
            .build()
            .unwrap();
        let mut autoscaling = Vec::new();
        for color in Color::ALL {
            autoscaling.push((color, reader.autoscaling(color).await.unwrap()));
        }
        Final {
            services,
            revisions,
            rule,
            listener,
            autoscaling,
        }
    })
}

/// What an uninterrupted good deployment leaves, routed on `route`.
fn expected(route: Route) -> Final {
    let found = AutoscalingState {
        registered: true,
        scale_in_suspended: false,
        scale_out_suspended: false,
        scheduled_suspended: false,
    };
    let moved = vec![(Color::Blue, 100), (Color::Green, 0)];
    Final {
        services: vec![
            (Color::Blue, 3, "revision 2 (2.5.0)".into()),
            (Color::Green, 0, "revision 1 (untagged)".into()),
        ],
        revisions: 2,
        // The place not routed on keeps the fixture's forward to green.
        rule: match route {
            Route::Rule => moved.clone(),
            Route::Listener => vec![(Color::Blue, 0), (Color::Green, 100)],
        },
        listener: match route {
            Route::Rule => vec![(Color::Green, 1)],
            Route::Listener => moved,
        },
        autoscaling: vec![(Color::Blue, found), (Color::Green, found)],
    }
}

/// The SDK's standard retries, with short backoffs: the SDK retries the
/// call whose reply was lost, and the proxy holds that retry.
fn sdk_retries() -> RetryConfig {
    RetryConfig::standard().with_initial_backoff(Duration::from_millis(10))
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// An uninterrupted deployment through a counting proxy: its final world
/// and the calls per operation.
fn uninterrupted(route: Route) -> (Final, BTreeMap<String, u32>) {
    let stage = on_aws(stage());
    let proxy = on_aws(CountingProxy::start(&common::endpoint()));
    let config = common::config_for(proxy.endpoint(), sdk_retries());
    let kill = Kill {
        lost: None,
        killed: Arc::new(Notify::new()),
    };
    match deployer(&stage, &config, route, &kill, false, now()) {
        End::Finished(outcome, report) => assert_eq!(outcome, Outcome::Succeeded, "{report}"),
        End::Killed(_) => unreachable!("nothing kills it"),
    }
    (final_state(&stage), proxy.calls().counts())
}

/// The deployment on a fresh stage, killed when the reply of the `nth` call
/// of `operation` is lost, then resumed in a new process to the end.
fn killed_and_resumed(route: Route, operation: &str, nth: u32) -> Final {
    let stage = on_aws(stage());
    let faulty = on_aws(CountingProxy::start(&common::endpoint()));
    let kill = Kill {
        lost: Some(faulty.lose_reply(operation, nth)),
        killed: Arc::new(Notify::new()),
    };
    let first = deployer(
        &stage,
        &common::config_for(faulty.endpoint(), sdk_retries()),
        route,
        &kill,
        false,
        now(),
    );
    let End::Killed(at) = first else {
        panic!("{operation} #{nth}: the reply was never lost");
    };
    assert!(kill.lost.as_ref().unwrap().has_fired());

    // A new process, a while later, through a proxy that loses nothing.
    let clean = on_aws(CountingProxy::start(&common::endpoint()));
    let fresh = Kill {
        lost: None,
        killed: Arc::new(Notify::new()),
    };
    match deployer(
        &stage,
        &common::config_for(clean.endpoint(), sdk_retries()),
        route,
        &fresh,
        true,
        at.after(Duration::from_secs(5)),
    ) {
        End::Finished(outcome, report) => assert_eq!(
            outcome,
            Outcome::Succeeded,
            "{operation} #{nth}: the resumed deployment succeeds\n{report}"
        ),
        End::Killed(_) => unreachable!("nothing kills it"),
    }
    assert_eq!(
        clean.calls().count("ecs:RegisterTaskDefinition")
            + faulty.calls().count("ecs:RegisterTaskDefinition"),
        1,
        "{operation} #{nth}: one registration in both processes together"
    );
    final_state(&stage)
}

/// For every call of `operation` in an uninterrupted deployment: lost,
/// killed, resumed, and the same world at the end.
fn every_lost_reply_of(operation: &str, route: Route) {
    assert!(MUTATING.contains(&operation));
    let started = std::time::Instant::now();
    let (baseline, calls) = uninterrupted(route);
    assert_eq!(baseline, expected(route), "the uninterrupted deployment");
    let n = calls.get(operation).copied().unwrap_or(0);
    assert!(n >= 1, "the deployment calls {operation}: {calls:?}");
    for nth in 1..=n {
        let end = killed_and_resumed(route, operation, nth);
        assert_eq!(
            end, baseline,
            "{operation} #{nth} of {n}: the reply was lost and the deployer killed; \
             resumed, the world is as after an uninterrupted deployment"
        );
    }
    eprintln!(
        "{operation}: {n} lost replies, each killed and resumed to the uninterrupted world, in {:.1?}",
        started.elapsed()
    );
}

#[test]
fn a_lost_register_task_definition_reply_registers_no_second_revision_on_resume() {
    every_lost_reply_of("ecs:RegisterTaskDefinition", Route::Rule);
}

#[test]
fn a_lost_update_service_reply_resumes_to_the_same_counts_and_revisions() {
    every_lost_reply_of("ecs:UpdateService", Route::Rule);
}

#[test]
fn a_lost_register_scalable_target_reply_restores_autoscaling_as_found_on_resume() {
    every_lost_reply_of(
        "application-autoscaling:RegisterScalableTarget",
        Route::Rule,
    );
}

#[test]
fn a_lost_modify_rule_reply_resumes_to_the_same_weights() {
    every_lost_reply_of("elasticloadbalancing:ModifyRule", Route::Rule);
}

#[test]
fn a_lost_modify_listener_reply_resumes_to_the_same_weights() {
    every_lost_reply_of("elasticloadbalancing:ModifyListener", Route::Listener);
}

/// The ARNs of the ACTIVE revisions of `family`.
/// The family of a task definition ARN (`.../order-api-blue:3` → `order-api-blue`).
fn family_of(arn: &str) -> &str {
    let name = arn.rsplit('/').next().unwrap_or(arn);
    name.split(':').next().unwrap_or(name)
}

/// The family's ACTIVE revisions.
async fn revisions_of(ecs: &aws_sdk_ecs::Client, family: &str) -> Vec<String> {
    ecs.list_task_definitions()
        .family_prefix(family)
        .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
        .send()
        .await
        .unwrap()
        .task_definition_arns()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_register_reply_within_one_process_registers_no_second_revision() {
    let moto = common::moto();
    let ecs = aws_sdk_ecs::Client::new(&moto);
    let fixture = ecs_fixture(&ecs, 0).await;
    let family = family_of(&fixture.task_definition).to_string();
    assert_eq!(revisions_of(&ecs, &family).await.len(), 1);

    // The first RegisterTaskDefinition is applied by moto and its reply
    // lost; the process lives on, and every later call (an SDK retry of the
    // lost one included) reaches moto.
    let proxy = CountingProxy::start(&common::endpoint()).await;
    let lost = proxy.lose_reply_and_go_on("ecs:RegisterTaskDefinition", 1);
    let compute = EcsCompute::builder(&common::config_for(proxy.endpoint(), sdk_retries()))
        .cluster(&fixture.cluster)
        .service(Color::Blue, &fixture.blue)
        .service(Color::Green, &fixture.green)
        .build()
        .unwrap();
    let mut release = Release::new("2.5.0", "order-api:2.5.0");
    release.env.insert("FEATURE_X".into(), "on".into());

    // `prepare` as the driver calls it: under its retry policy, a
    // temporary error calls `prepare` again.
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        jitter: false,
    };
    // The errors of the attempts that failed: (status, message).
    let errors = std::sync::Mutex::new(Vec::new());
    let prepared = with_retry(
        &policy,
        Duration::from_secs(10),
        ("ecs", "prepare"),
        || async {
            let r = compute.prepare(Color::Blue, &release).await;
            if let Err(e) = &r {
                errors.lock().unwrap().push((e.status(), e.to_string()));
            }
            r
        },
    )
    .await
    .expect("prepare succeeds");
    assert!(lost.has_fired(), "the reply was lost");
    let errors = errors.into_inner().unwrap();

    let revisions = revisions_of(&ecs, &family).await;
    assert_eq!(
        revisions.len(),
        2,
        "one revision registered besides the fixture's: {revisions:?}"
    );
    let registered = revisions
        .iter()
        .find(|arn| **arn != fixture.task_definition)
        .unwrap();
    assert_eq!(
        prepared.id.as_deref(),
        Some(registered.as_str()),
        "prepare answers the revision the lost call registered"
    );
    assert_eq!(
        proxy.calls().count("ecs:RegisterTaskDefinition"),
        1,
        "RegisterTaskDefinition was sent once, not retried by the SDK"
    );
    // The lost reply came back to the driver as a temporary error, and its
    // retry found the revision by its tag.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, ErrorStatus::Temporary, "{:?}", errors[0]);
    // At zero, prepare points the service at the revision.
    let svc = ecs
        .describe_services()
        .cluster(&fixture.cluster)
        .services(&fixture.blue)
        .send()
        .await
        .unwrap();
    assert_eq!(
        svc.services()[0].task_definition.as_deref(),
        Some(registered.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_register_is_still_retried_by_the_sdk_and_registers_one_revision() {
    let moto = common::moto();
    let ecs = aws_sdk_ecs::Client::new(&moto);
    let fixture = ecs_fixture(&ecs, 0).await;
    let family = family_of(&fixture.task_definition).to_string();
    // Every second call is throttled; prepare's calls run one after the
    // other, so each is throttled once or not at all.
    let proxy = CountingProxy::start(&common::endpoint()).await;
    proxy.throttle(Some(Throttle {
        every: 2,
        retry_after: None,
    }));
    let compute = EcsCompute::builder(&common::config_for(proxy.endpoint(), sdk_retries()))
        .cluster(&fixture.cluster)
        .service(Color::Blue, &fixture.blue)
        .service(Color::Green, &fixture.green)
        .build()
        .unwrap();
    let release = Release::new("2.5.0", "order-api:2.5.0");
    // A throttled call was not applied: the SDK retries it, and prepare
    // succeeds at its first call.
    let prepared = compute
        .prepare(Color::Blue, &release)
        .await
        .expect("the SDK retries the throttled calls");
    let throttled = proxy.throttled().count("ecs:RegisterTaskDefinition");
    assert_eq!(throttled, 1, "{:?}", proxy.throttled().counts());
    assert_eq!(proxy.calls().count("ecs:RegisterTaskDefinition"), 2);
    let revisions = revisions_of(&ecs, &family).await;
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    assert!(revisions.contains(prepared.id.as_ref().unwrap()));
}

#[test]
fn every_mutating_call_of_the_providers_is_covered() {
    // The reference deployment, routed on a rule and on a listener, makes
    // exactly the mutating calls listed in MUTATING, and only reads otherwise.
    let mut seen: Vec<String> = Vec::new();
    for route in [Route::Rule, Route::Listener] {
        let (_, calls) = uninterrupted(route);
        for op in calls.keys() {
            let verb = op.split(':').nth(1).unwrap();
            let reads = ["Describe", "List", "Get"]
                .iter()
                .any(|r| verb.starts_with(r));
            if !reads && !seen.contains(op) {
                seen.push(op.clone());
            }
        }
    }
    seen.sort();
    let mut listed: Vec<String> = MUTATING.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(seen, listed);
    // And every action the crates declare beyond reads is among them.
    for action in bluegreen_ecs::IAM_ACTIONS
        .iter()
        .chain(bluegreen_alb::IAM_ACTIONS)
        .chain(bluegreen_secretsmanager::IAM_ACTIONS)
    {
        let verb = action.split(':').nth(1).unwrap();
        if !["Describe", "List", "Get"]
            .iter()
            .any(|r| verb.starts_with(r))
        {
            assert!(MUTATING.contains(action), "{action} is not covered");
        }
    }
}

/// The reference deployment on a fresh stage through a proxy that throttles
/// as `throttle` says, with the SDK retrying as `retry` says: the final
/// world, the calls per operation and the throttled calls in all.
fn through(throttle: Option<Throttle>, retry: RetryConfig) -> (Final, BTreeMap<String, u32>, u32) {
    let stage = on_aws(stage());
    let proxy = on_aws(CountingProxy::start(&common::endpoint()));
    proxy.throttle(throttle);
    let kill = Kill {
        lost: None,
        killed: Arc::new(Notify::new()),
    };
    let config = common::config_for(proxy.endpoint(), retry);
    match deployer(&stage, &config, Route::Rule, &kill, false, now()) {
        End::Finished(outcome, report) => assert_eq!(outcome, Outcome::Succeeded, "{report}"),
        End::Killed(_) => unreachable!("nothing kills it"),
    }
    let throttled = proxy.throttled().counts().values().sum();
    (final_state(&stage), proxy.calls().counts(), throttled)
}

fn total(calls: &BTreeMap<String, u32>) -> u32 {
    calls.values().sum()
}

#[test]
fn with_every_second_call_throttled_the_deployment_makes_at_most_twice_the_calls() {
    let started = std::time::Instant::now();
    // The SDK's standard retries (3 attempts), as the providers get them
    // from an SdkConfig by default; short backoffs only to keep the test
    // quick (they change no count).
    let (clean_world, clean, none) = through(None, sdk_retries());
    assert_eq!(none, 0);
    assert_eq!(clean_world, expected(Route::Rule), "the clean run");
    let (world, throttled_calls, throttled) = through(
        Some(Throttle {
            every: 2,
            retry_after: Some(Duration::from_secs(1)),
        }),
        sdk_retries(),
    );
    assert_eq!(
        world, clean_world,
        "throttled, the deployment ends in the same world"
    );
    let (clean_total, throttled_total) = (total(&clean), total(&throttled_calls));
    let ratio = f64::from(throttled_total) / f64::from(clean_total);
    eprintln!(
        "AWS calls of the reference deployment on moto: clean {clean_total}, with every second \
         call throttled {throttled_total} ({throttled} throttled), ratio {ratio:.2} (goal <= 2.00)"
    );
    for (op, n) in &throttled_calls {
        eprintln!(
            "  {op:<50} clean {:>3}  throttled run {n:>3}",
            clean.get(op).copied().unwrap_or(0)
        );
    }
    assert!(
        throttled * 2 >= throttled_total - 1,
        "every second call was throttled: {throttled} of {throttled_total}"
    );
    assert!(
        ratio <= 2.0,
        "{throttled_total} calls against {clean_total}: {ratio:.2}"
    );
    // Each mutating call happened as often as in the clean run.
    for op in MUTATING {
        let applied = |calls: &BTreeMap<String, u32>| calls.get(*op).copied().unwrap_or(0);
        assert!(
            applied(&throttled_calls) <= 2 * applied(&clean),
            "{op}: {throttled_calls:?} vs {clean:?}"
        );
    }
    eprintln!("throttling test took {:.1?}", started.elapsed());
}
