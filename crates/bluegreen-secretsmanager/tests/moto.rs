//! The Secrets Manager source against the moto emulator (started by scripts/test).

use bluegreen_aws::testing as common;

use std::time::{Duration, SystemTime};

use bluegreen_core::plan::RequiredSecret;
use bluegreen_core::testing::conformance;
use bluegreen_core::{ErrorKind, SecretSource, Timestamp};
use bluegreen_secretsmanager::{check_rotation, SecretsManagerSource};

const DAY: Duration = Duration::from_secs(86_400);

async fn create(config: &aws_types::SdkConfig, name: &str, value: &str) -> (String, String) {
    let name = common::unique(name);
    let out = aws_sdk_secretsmanager::Client::new(config)
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    (name, out.arn.unwrap())
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

#[tokio::test]
async fn conformance_suite_passes_on_moto() {
    let config = common::moto();
    let (name, arn) = create(&config, "prod-order-api-db-password", "hunter2-db").await;
    let source = SecretsManagerSource::new(&config);
    conformance::secrets(&source, &name, "prod/order-api/no-such-secret").await;
    conformance::secrets(&source, &arn, "prod/order-api/no-such-secret").await;
}

#[tokio::test]
async fn values_are_read_once_per_deployment_and_never_printed() {
    let (config, calls) = common::counted_moto();
    let (name, _) = create(&config, "api-key", "sk_live_abcdef").await;
    let source = SecretsManagerSource::new(&config);
    calls.reset();
    let a = source.get(&name).await.unwrap();
    let b = source.get(&name).await.unwrap();
    assert_eq!(a.expose(), "sk_live_abcdef");
    assert_eq!(a, b);
    assert_eq!(calls.count("secretsmanager:GetSecretValue"), 1);
    assert!(
        !format!("{a:?} {a} {source:?}").contains("sk_live"),
        "never printed"
    );
    source.forget();
    source.get(&name).await.unwrap();
    assert_eq!(
        calls.count("secretsmanager:GetSecretValue"),
        2,
        "forget reads again"
    );
}

#[tokio::test]
async fn metadata_reports_the_creation_date_of_a_secret_never_rotated() {
    let config = common::moto();
    let before = now();
    let (name, _) = create(&config, "webhook-secret", "whsec").await;
    let m = SecretsManagerSource::new(&config)
        .metadata(&name)
        .await
        .unwrap();
    assert_eq!(m.name, name);
    let at = m
        .last_rotated
        .expect("CreatedDate stands in for the last rotation");
    assert!(
        at.0 + 60_000 >= before.0 && at.0 <= now().0 + 60_000,
        "{at:?} vs {before:?}"
    );
}

#[tokio::test]
async fn the_reference_rotation_policy_refuses_a_database_password_older_than_90_days() {
    let config = common::moto();
    let (db, _) = create(&config, "db-password", "pw").await;
    let (api, _) = create(&config, "api-key", "key").await;
    let (hook, _) = create(&config, "webhook-secret", "whsec").await;
    let policy = vec![
        RequiredSecret {
            name: db.clone(),
            max_age: Some(90 * DAY),
        },
        RequiredSecret {
            name: api.clone(),
            max_age: Some(180 * DAY),
        },
        RequiredSecret {
            name: hook.clone(),
            max_age: None,
        },
    ];
    let source = SecretsManagerSource::new(&config);

    let fresh = check_rotation(&source, &policy, now()).await.unwrap();
    assert_eq!(
        fresh.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        vec![db.clone(), api.clone(), hook.clone()]
    );

    // 91 days on: the database password is too old, the API key and the webhook secret are not.
    let e = check_rotation(&source, &policy, now().after(91 * DAY))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.message().contains(&db) && e.message().contains("90 days"),
        "{e}"
    );
    assert!(
        !e.message().contains(&api) && !e.message().contains(&hook),
        "{e}"
    );

    // Two years on: the webhook secret, rotated only on compromise, still passes.
    let e = check_rotation(&source, &policy, now().after(730 * DAY))
        .await
        .unwrap_err();
    assert!(
        e.message().contains(&db) && e.message().contains(&api) && !e.message().contains(&hook),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_secret_or_an_arn_of_another_region_is_refused_naming_it() {
    let (config, calls) = common::counted_moto();
    let source = SecretsManagerSource::new(&config);
    let e = source.metadata("prod/order-api/gone").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("prod/order-api/gone"), "{e}");
    let policy = vec![RequiredSecret {
        name: "prod/order-api/gone".into(),
        max_age: None,
    }];
    let e = check_rotation(&source, &policy, now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("prod/order-api/gone"), "{e}");

    calls.reset();
    let west = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf";
    let e = source.get(west).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("eu-west-1"), "{e}");
    let e = source
        .get("arn:aws:ssm:us-east-1:123456789012:parameter/db")
        .await
        .unwrap_err();
    assert!(e.message().contains("wrong kind"), "{e}");
    assert!(
        calls.counts().is_empty(),
        "nothing called: {:?}",
        calls.counts()
    );
}

#[tokio::test]
async fn arn_answers_the_full_arn_ecs_takes_from_the_preflight_describe_without_another_call() {
    let (config, calls) = common::counted_moto();
    let (name, arn) = create(&config, "prod/order-api/db-password", "hunter2-db").await;
    let source = SecretsManagerSource::new(&config);
    calls.reset();

    source.metadata(&name).await.unwrap();
    assert_eq!(
        source.arn(&name).await.unwrap(),
        arn,
        "the full ARN, suffix included"
    );
    assert_eq!(
        calls.count("secretsmanager:DescribeSecret"),
        1,
        "the ARN came from the metadata's DescribeSecret"
    );
    assert_eq!(
        calls.count("secretsmanager:GetSecretValue"),
        0,
        "the value is never read"
    );

    let fresh = SecretsManagerSource::new(&config);
    assert_eq!(
        fresh.arn(&name).await.unwrap(),
        arn,
        "without metadata first"
    );
    assert_eq!(fresh.arn(&arn).await.unwrap(), arn, "an ARN answers itself");
    assert_eq!(calls.count("secretsmanager:DescribeSecret"), 3);

    let missing = common::unique("prod/order-api/no-such-secret");
    let err = fresh.arn(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&missing),
        "names the secret: {err}"
    );
    assert_eq!(err.operation(), "arn", "{err}");
}
