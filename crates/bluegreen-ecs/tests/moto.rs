//! The ECS compute provider against the moto emulator (started by scripts/test).

mod common;

use std::time::Duration;

use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace, SuspendedState};
use bluegreen_core::testing::conformance::{self, Patience};
use bluegreen_core::{AutoscalingState, Color, ComputeProvider, ErrorKind, Release, Rollout};
use bluegreen_ecs::{EcsCompute, VERSION_TAG};
use common::ecs::{ecs_fixture, EcsFixture};

fn provider(config: &aws_types::SdkConfig, f: &EcsFixture) -> EcsCompute {
    EcsCompute::builder(config)
        .cluster(&f.cluster)
        .service(Color::Blue, &f.blue)
        .service(Color::Green, &f.green)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
}

async fn secret_arn(config: &aws_types::SdkConfig, name: &str) -> String {
    aws_sdk_secretsmanager::Client::new(config)
        .create_secret()
        .name(common::unique(name))
        .secret_string("s3cr3t-value")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap()
}

async fn register_target(
    config: &aws_types::SdkConfig,
    ecs: &EcsCompute,
    color: Color,
    suspended: AutoscalingState,
) {
    aws_sdk_applicationautoscaling::Client::new(config)
        .register_scalable_target()
        .service_namespace(ServiceNamespace::Ecs)
        .resource_id(ecs.scalable_resource_id(color))
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .min_capacity(1)
        .max_capacity(6)
        .suspended_state(
            SuspendedState::builder()
                .dynamic_scaling_in_suspended(suspended.scale_in_suspended)
                .dynamic_scaling_out_suspended(suspended.scale_out_suspended)
                .scheduled_scaling_suspended(suspended.scheduled_suspended)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn container(
    config: &aws_types::SdkConfig,
    f: &EcsFixture,
    color: Color,
) -> (String, aws_sdk_ecs::types::ContainerDefinition) {
    let ecs = aws_sdk_ecs::Client::new(config);
    let svc = if color == Color::Blue {
        &f.blue
    } else {
        &f.green
    };
    let out = ecs
        .describe_services()
        .cluster(&f.cluster)
        .services(svc)
        .send()
        .await
        .unwrap();
    let td = out.services()[0].task_definition.clone().unwrap();
    let def = ecs
        .describe_task_definition()
        .task_definition(&td)
        .send()
        .await
        .unwrap();
    (
        td,
        def.task_definition().unwrap().container_definitions()[0].clone(),
    )
}

#[tokio::test]
async fn conformance_suite_passes_on_moto() {
    let config = common::moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 3).await;
    let ecs = provider(&config, &f);
    let found = AutoscalingState {
        registered: true,
        scale_in_suspended: false,
        scale_out_suspended: false,
        scheduled_suspended: true,
    };
    register_target(&config, &ecs, Color::Green, found).await;
    let mut release = Release::new("2.5.0", "order-api:2.5.0-abc123");
    release
        .env
        .insert("FEATURE_ORDER_METADATA".into(), "on".into());
    release.secrets.insert(
        "DB_PASSWORD".into(),
        secret_arn(&config, "db-password").await,
    );

    conformance::compute(
        &ecs,
        Color::Green,
        &release,
        Patience {
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(20),
        },
    )
    .await;

    assert_eq!(
        ecs.autoscaling(Color::Green).await.unwrap(),
        found,
        "autoscaling left as found"
    );
    let blue = ecs.status(Color::Blue).await.unwrap();
    assert_eq!(
        (blue.desired, blue.running, blue.rollout),
        (3, 3, Rollout::Completed),
        "blue untouched"
    );
}

#[tokio::test]
async fn prepare_registers_one_revision_with_the_image_env_and_secrets_by_arn() {
    let (config, calls) = common::counted_moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 2).await;
    let ecs = provider(&config, &f);
    let db = secret_arn(&config, "db-password").await;
    let mut release = Release::new("2.5.0", "order-api:2.5.0-abc123");
    release
        .env
        .insert("FEATURE_ORDER_METADATA".into(), "on".into());
    release.secrets.insert("DB_PASSWORD".into(), db.clone());
    calls.reset();

    let prepared = ecs.prepare(Color::Green, &release).await.unwrap();
    let (td, c) = container(&config, &f, Color::Green).await;
    assert_ne!(td, f.task_definition, "green points at a new revision");
    assert_eq!(
        prepared.id.as_deref(),
        Some(td.as_str()),
        "prepare names the revision it registered"
    );
    assert_eq!(c.image.as_deref(), Some("order-api:2.5.0-abc123"));
    let env: Vec<(String, String)> = c
        .environment()
        .iter()
        .map(|kv| (kv.name.clone().unwrap(), kv.value.clone().unwrap()))
        .collect();
    assert_eq!(
        env,
        vec![
            ("FEATURE_ORDER_METADATA".to_string(), "on".to_string()),
            ("LOG_LEVEL".to_string(), "info".to_string())
        ],
        "the release's variables are merged over the current ones"
    );
    assert_eq!(c.secrets().len(), 1);
    assert_eq!(c.secrets()[0].name, "DB_PASSWORD");
    assert_eq!(c.secrets()[0].value_from, db, "secrets go by ARN");
    assert!(
        !format!("{c:?}").contains("s3cr3t-value"),
        "no secret value in the task definition"
    );
    assert_eq!(c.memory, Some(512), "the rest of the container is kept");
    assert_eq!(c.port_mappings().len(), 1);

    // Repeating prepare (also from a fresh process after a crash) registers
    // nothing new and names the same revision.
    assert_eq!(ecs.prepare(Color::Green, &release).await.unwrap(), prepared);
    assert_eq!(
        provider(&config, &f)
            .prepare(Color::Green, &release)
            .await
            .unwrap(),
        prepared
    );
    assert_eq!(
        calls.count("ecs:RegisterTaskDefinition"),
        1,
        "{:?}",
        calls.counts()
    );
    assert_eq!(container(&config, &f, Color::Green).await.0, td);

    // Green was at zero, so nothing started; blue is untouched.
    let statuses = ecs.statuses(&[Color::Blue, Color::Green]).await.unwrap();
    assert_eq!(statuses[1].desired, 0);
    assert_eq!(statuses[1].version.as_deref(), Some("2.5.0"));
    assert_eq!(statuses[0].desired, 2);
    assert_eq!(statuses[0].version, None, "blue runs an untagged revision");

    ecs.scale(Color::Green, 2).await.unwrap();
    let s = ecs
        .wait_until_stable(&[(Color::Green, 2)], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(s[0].is_stable_at(2), "{s:?}");
    // The status names the release the color runs: the prepared revision.
    assert_eq!(s[0].release_id, prepared.id);
    assert_eq!(s[0].version.as_deref(), Some("2.5.0"));
    let tags = aws_sdk_ecs::Client::new(&config)
        .describe_task_definition()
        .task_definition(&td)
        .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
        .send()
        .await
        .unwrap();
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.key.as_deref() == Some(VERSION_TAG) && t.value.as_deref() == Some("2.5.0")));
}

#[tokio::test]
async fn prepare_on_a_running_color_registers_and_scale_deploys_it() {
    let config = common::moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 2).await;
    let ecs = provider(&config, &f);
    let release = Release::new("2.5.1", "order-api:2.5.1");
    ecs.prepare(Color::Blue, &release).await.unwrap();
    assert_eq!(
        container(&config, &f, Color::Blue).await.0,
        f.task_definition,
        "a running color keeps its revision until scale"
    );
    ecs.scale(Color::Blue, 3).await.unwrap();
    let (td, c) = container(&config, &f, Color::Blue).await;
    assert_ne!(td, f.task_definition);
    assert_eq!(c.image.as_deref(), Some("order-api:2.5.1"));
    assert_eq!(ecs.status(Color::Blue).await.unwrap().desired, 3);
}

/// The ACTIVE revisions of the task definition family of `arn` (read on a
/// config of its own, so that the provider's calls are counted alone).
async fn revisions(arn: &str) -> Vec<String> {
    let family = arn.rsplit('/').next().unwrap().split(':').next().unwrap();
    aws_sdk_ecs::Client::new(&common::moto())
        .list_task_definitions()
        .family_prefix(family)
        .send()
        .await
        .unwrap()
        .task_definition_arns()
        .to_vec()
}

#[tokio::test]
async fn a_repeated_prepare_after_a_lost_reply_registers_no_second_revision() {
    let (config, calls) = common::counted_moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 2).await;
    let release = Release::new("2.5.1", "order-api:2.5.1");
    // On a running color the service keeps its revision until `scale`: only
    // the registration itself records that prepare happened, as when its
    // reply was lost or its process died right after.
    let first = provider(&config, &f)
        .prepare(Color::Blue, &release)
        .await
        .unwrap();
    assert_eq!(revisions(&f.task_definition).await.len(), 2);
    // Someone registers a newer revision of another release meanwhile.
    let other = provider(&config, &f)
        .prepare(Color::Blue, &Release::new("2.5.2", "order-api:2.5.2"))
        .await
        .unwrap();
    assert_ne!(other, first);
    assert_eq!(revisions(&f.task_definition).await.len(), 3);
    calls.reset();

    // A new process prepares the same release: it finds the revision by tag.
    let fresh = provider(&config, &f);
    let again = fresh.prepare(Color::Blue, &release).await.unwrap();
    assert_eq!(again, first, "the revision registered before is reused");
    assert_eq!(
        revisions(&f.task_definition).await.len(),
        3,
        "no second revision of the release"
    );
    assert_eq!(calls.count("ecs:RegisterTaskDefinition"), 0);
    assert_eq!(calls.count("ecs:ListTaskDefinitions"), 1);

    // And `scale` deploys exactly that revision.
    fresh.scale(Color::Blue, 3).await.unwrap();
    let (td, c) = container(&config, &f, Color::Blue).await;
    assert_eq!(Some(td), first.id);
    assert_eq!(c.image.as_deref(), Some("order-api:2.5.1"));

    // The same version with another image is another release: registered anew.
    let changed = provider(&config, &f)
        .prepare(
            Color::Green,
            &Release::new("2.5.1", "order-api:2.5.1-rebuilt"),
        )
        .await
        .unwrap();
    assert_ne!(changed, first);
    assert_eq!(revisions(&f.task_definition).await.len(), 4);
}

#[tokio::test]
async fn suspend_then_restore_puts_back_exactly_the_state_found() {
    let config = common::moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 2).await;
    let ecs = provider(&config, &f);
    let found = AutoscalingState {
        registered: true,
        scale_in_suspended: true,
        scale_out_suspended: false,
        scheduled_suspended: false,
    };
    register_target(&config, &ecs, Color::Blue, found).await;

    let before = ecs.suspend_autoscaling(Color::Blue).await.unwrap();
    assert_eq!(before, found);
    let all = AutoscalingState {
        registered: true,
        scale_in_suspended: true,
        scale_out_suspended: true,
        scheduled_suspended: true,
    };
    assert_eq!(
        ecs.autoscaling(Color::Blue).await.unwrap(),
        all,
        "everything suspended"
    );
    assert_eq!(
        ecs.suspend_autoscaling(Color::Blue).await.unwrap(),
        all,
        "a repeat answers the suspended state"
    );
    ecs.restore_autoscaling(Color::Blue, before).await.unwrap();
    assert_eq!(
        ecs.autoscaling(Color::Blue).await.unwrap(),
        found,
        "exactly the state found, not a blanket unsuspend"
    );

    // Green has no scalable target: nothing to suspend, nothing created.
    let none = ecs.suspend_autoscaling(Color::Green).await.unwrap();
    assert!(!none.registered);
    ecs.restore_autoscaling(Color::Green, none).await.unwrap();
    assert!(!ecs.autoscaling(Color::Green).await.unwrap().registered);
}

#[tokio::test]
async fn statuses_describe_both_colors_in_one_call() {
    let (config, calls) = common::counted_moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 3).await;
    let ecs = provider(&config, &f);
    calls.reset();
    let s = ecs
        .statuses(&[Color::Blue, Color::Green, Color::Blue])
        .await
        .unwrap();
    assert_eq!(
        s.iter().map(|s| s.desired).collect::<Vec<_>>(),
        vec![3, 0, 3]
    );
    assert_eq!(s[0].running, 3);
    assert_eq!(s[0].pending, 0);
    assert_eq!(s[0].failed, 0);
    assert_eq!(
        calls.count("ecs:DescribeServices"),
        1,
        "{:?}",
        calls.counts()
    );
    // The untagged revision is looked up once, then remembered.
    ecs.statuses(&[Color::Blue, Color::Green]).await.unwrap();
    assert_eq!(
        calls.count("ecs:DescribeTaskDefinition"),
        1,
        "{:?}",
        calls.counts()
    );
}

#[tokio::test]
async fn wait_until_stable_gives_up_at_the_deadline_with_the_last_state() {
    let config = common::moto();
    let client = aws_sdk_ecs::Client::new(&config);
    let f = ecs_fixture(&client, 0).await;
    // A service created above zero keeps an IN_PROGRESS rollout in moto forever.
    let stuck = common::unique("order-api-stuck");
    client
        .create_service()
        .cluster(&f.cluster)
        .service_name(&stuck)
        .task_definition(&f.task_definition)
        .desired_count(2)
        .send()
        .await
        .unwrap();
    let ecs = EcsCompute::builder(&config)
        .cluster(&f.cluster)
        .service(Color::Blue, &f.blue)
        .service(Color::Green, &stuck)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let s = ecs.status(Color::Green).await.unwrap();
    assert_eq!(s.rollout, Rollout::InProgress);
    let e = ecs
        .wait_until_stable(
            &[(Color::Blue, 0), (Color::Green, 2)],
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.message().contains(&stuck) && e.message().contains("InProgress"),
        "last state in the error: {e}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_resource_before_anything_changes() {
    let (config, calls) = common::counted_moto();
    let f = ecs_fixture(&aws_sdk_ecs::Client::new(&config), 2).await;

    // A missing service.
    let ecs = EcsCompute::builder(&config)
        .cluster(&f.cluster)
        .service(Color::Blue, &f.blue)
        .service(Color::Green, "order-api-nope")
        .build()
        .unwrap();
    let e = ecs.status(Color::Green).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.message().contains("order-api-nope") && e.message().contains(&f.cluster),
        "{e}"
    );
    calls.reset();
    let e = ecs
        .prepare(Color::Green, &Release::new("2.5.0", "order-api:2.5.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(
        calls.count("ecs:RegisterTaskDefinition") + calls.count("ecs:UpdateService"),
        0
    );

    // A missing cluster.
    let ecs = EcsCompute::builder(&config)
        .cluster("no-such-cluster")
        .service(Color::Blue, &f.blue)
        .service(Color::Green, &f.green)
        .build()
        .unwrap();
    let e = ecs.status(Color::Blue).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("no-such-cluster"), "{e}");

    // A secret given by name, or by an ARN of another region or kind.
    let ecs = provider(&config, &f);
    for (value, expect) in [
        ("prod/order-api/db-password", "not an ARN"),
        (
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
            "eu-west-1",
        ),
        ("arn:aws:s3:::bucket/key", "wrong kind"),
    ] {
        let mut release = Release::new("2.5.0", "order-api:2.5.0");
        release.secrets.insert("DB_PASSWORD".into(), value.into());
        calls.reset();
        let e = ecs.prepare(Color::Green, &release).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(
            e.message().contains("release.secrets.DB_PASSWORD") && e.message().contains(expect),
            "{e}"
        );
        assert!(
            calls.counts().is_empty(),
            "nothing called: {:?}",
            calls.counts()
        );
    }
}

#[test]
fn arns_of_the_wrong_kind_or_region_are_refused_when_building() {
    let config = common::config_with(
        aws_smithy_http_client::Builder::new().build_http(),
        "http://127.0.0.1:9",
        aws_smithy_types::retry::RetryConfig::disabled(),
    );
    let build = |cluster: &str, blue: &str| {
        EcsCompute::builder(&config)
            .cluster(cluster)
            .service(Color::Blue, blue)
            .service(Color::Green, "order-api-green")
            .build()
    };
    let e = build(
        "arn:aws:ecs:us-east-1:123456789012:service/prod/order-api-blue",
        "order-api-blue",
    )
    .unwrap_err();
    assert!(
        e.message().starts_with("cluster:") && e.message().contains("wrong kind"),
        "{e}"
    );
    let e = build(
        "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
        "order-api-blue",
    )
    .unwrap_err();
    assert!(
        e.message().contains("eu-west-1") && e.message().contains("us-east-1"),
        "{e}"
    );
    let e = build(
        "prod",
        "arn:aws:ecs:us-east-1:123456789012:service/staging/order-api-blue",
    )
    .unwrap_err();
    assert!(
        e.message().starts_with("services.blue:") && e.message().contains("staging"),
        "{e}"
    );
    let e = build("prod", "order-api-green").unwrap_err();
    assert!(e.message().contains("its own ECS service"), "{e}");
    let e = EcsCompute::builder(&config)
        .service(Color::Blue, "a")
        .service(Color::Green, "b")
        .build()
        .unwrap_err();
    assert!(e.message().starts_with("cluster:"), "{e}");
    assert!(build(
        "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
        "arn:aws:ecs:us-east-1:123456789012:service/prod/order-api-blue"
    )
    .is_ok());
}
