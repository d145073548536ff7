//! Faults moto cannot produce, from canned ECS answers: a rollout the circuit
//! breaker failed, a second deployment still running, throttling, 5xx and
//! access denied.

mod common;

use std::time::Duration;

use aws_smithy_types::retry::RetryConfig;
use bluegreen_core::{Color, ComputeProvider, ErrorKind, ErrorStatus, Rollout};
use bluegreen_ecs::EcsCompute;
use common::Canned;

const TD: &str = "arn:aws:ecs:us-east-1:123456789012:task-definition/order-api:7";

fn provider(config: &aws_types::SdkConfig) -> EcsCompute {
    EcsCompute::builder(config)
        .cluster("prod")
        .service(Color::Blue, "order-api-blue")
        .service(Color::Green, "order-api-green")
        .poll_interval(Duration::from_millis(1))
        .build()
        .unwrap()
}

/// A DescribeServices answer for green with these deployments
/// (`status`, `rolloutState`, `running`, `failedTasks`).
fn green(desired: i32, running: i32, deployments: &[(&str, &str, i32, i32)]) -> Canned {
    let deployments: Vec<String> = deployments
        .iter()
        .enumerate()
        .map(|(i, (status, rollout, run, failed))| {
            format!(
                r#"{{"id":"ecs-svc/{i}","status":"{status}","taskDefinition":"{TD}","desiredCount":{desired},"runningCount":{run},"pendingCount":0,"failedTasks":{failed},"rolloutState":"{rollout}"}}"#
            )
        })
        .collect();
    Canned::ok(format!(
        r#"{{"services":[{{"serviceName":"order-api-green","serviceArn":"arn:aws:ecs:us-east-1:123456789012:service/prod/order-api-green","status":"ACTIVE","desiredCount":{desired},"runningCount":{running},"pendingCount":0,"taskDefinition":"{TD}","deployments":[{}]}}],"failures":[]}}"#,
        deployments.join(",")
    ))
}

fn tags(version: &str) -> Canned {
    Canned::ok(format!(
        r#"{{"taskDefinition":{{"taskDefinitionArn":"{TD}","family":"order-api","revision":7,"containerDefinitions":[]}},"tags":[{{"key":"bluegreen:version","value":"{version}"}}]}}"#
    ))
}

#[tokio::test]
async fn a_rollout_failed_by_the_circuit_breaker_is_reported_and_stops_the_wait() {
    let (config, _) = common::canned(
        vec![
            (
                "ecs:DescribeServices",
                vec![green(
                    3,
                    1,
                    &[("PRIMARY", "FAILED", 1, 4), ("ACTIVE", "COMPLETED", 0, 0)],
                )],
            ),
            ("ecs:DescribeTaskDefinition", vec![tags("2.5.0")]),
        ],
        RetryConfig::disabled(),
    );
    let ecs = provider(&config);
    let s = ecs.status(Color::Green).await.unwrap();
    assert_eq!(s.rollout, Rollout::Failed);
    assert_eq!((s.desired, s.running, s.failed), (3, 1, 4));
    assert_eq!(s.version.as_deref(), Some("2.5.0"));
    let e = ecs
        .wait_until_stable(&[(Color::Green, 3)], Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.message().contains("order-api-green") && e.message().contains("circuit breaker"),
        "{e}"
    );
}

#[tokio::test]
async fn a_second_deployment_still_running_is_in_progress_until_it_finishes() {
    let (config, calls) = common::canned(
        vec![
            (
                "ecs:DescribeServices",
                vec![
                    green(
                        3,
                        3,
                        &[
                            ("PRIMARY", "COMPLETED", 3, 0),
                            ("ACTIVE", "COMPLETED", 1, 0),
                        ],
                    ),
                    green(3, 3, &[("PRIMARY", "IN_PROGRESS", 3, 0)]),
                    green(3, 3, &[("PRIMARY", "COMPLETED", 3, 0)]),
                ],
            ),
            ("ecs:DescribeTaskDefinition", vec![tags("2.5.0")]),
        ],
        RetryConfig::disabled(),
    );
    let ecs = provider(&config);
    let s = ecs
        .wait_until_stable(&[(Color::Green, 3)], Duration::from_secs(600))
        .await
        .unwrap();
    assert!(s[0].is_stable_at(3));
    assert_eq!(
        calls.count("ecs:DescribeServices"),
        3,
        "stable only once one COMPLETED deployment is left"
    );
    assert_eq!(
        calls.count("ecs:DescribeTaskDefinition"),
        1,
        "the version is looked up once"
    );
}

#[tokio::test]
async fn throttling_is_temporary_and_rate_limited() {
    let (config, _) = common::canned(
        vec![(
            "ecs:UpdateService",
            vec![Canned::json_error(
                400,
                "ThrottlingException",
                "Rate exceeded",
            )],
        )],
        RetryConfig::disabled(),
    );
    let e = provider(&config).scale(Color::Green, 3).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.status(), ErrorStatus::Temporary);
    assert_eq!((e.provider(), e.operation()), ("ecs", "scale"));
    assert_eq!(e.retry_after(), None, "no Retry-After, no hint");
}

#[tokio::test]
async fn a_throttling_answer_with_retry_after_carries_the_wait() {
    let (config, _) = common::canned(
        vec![(
            "application-autoscaling:DescribeScalableTargets",
            vec![
                Canned::json_error(400, "ThrottlingException", "Rate exceeded")
                    .with_header("Retry-After", "7"),
            ],
        )],
        RetryConfig::disabled(),
    );
    let e = provider(&config)
        .suspend_autoscaling(Color::Green)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
}

#[tokio::test]
async fn a_5xx_is_temporary_and_unavailable() {
    let (config, _) = common::canned(
        vec![(
            "ecs:DescribeServices",
            vec![Canned::json_error(500, "ServerException", "internal error")],
        )],
        RetryConfig::disabled(),
    );
    let e = provider(&config).status(Color::Blue).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_temporary());
}

#[tokio::test]
async fn access_denied_is_permanent_and_names_the_iam_action() {
    let (config, _) = common::canned(
        vec![
            (
                "ecs:UpdateService",
                vec![Canned::json_error(
                    400,
                    "AccessDeniedException",
                    "not authorized to perform ecs:UpdateService",
                )],
            ),
            (
                "application-autoscaling:DescribeScalableTargets",
                vec![Canned::json_error(
                    400,
                    "AccessDeniedException",
                    "User is not authorized",
                )],
            ),
        ],
        RetryConfig::disabled(),
    );
    let ecs = provider(&config);
    let e = ecs.scale(Color::Green, 3).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(
        e.message().contains("`ecs:UpdateService`") && e.message().contains("order-api-green"),
        "{e}"
    );
    let e = ecs.suspend_autoscaling(Color::Blue).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.message()
            .contains("application-autoscaling:DescribeScalableTargets"),
        "{e}"
    );
}
