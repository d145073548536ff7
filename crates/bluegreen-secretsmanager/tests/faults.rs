//! Faults moto cannot produce, from canned Secrets Manager answers.

use bluegreen_aws::testing as common;

use aws_smithy_types::retry::RetryConfig;
use bluegreen_core::{ErrorKind, ErrorStatus, SecretSource, Timestamp};
use bluegreen_secretsmanager::SecretsManagerSource;
use common::Canned;

#[tokio::test]
async fn the_last_rotation_wins_over_the_creation_date() {
    let (config, _) = common::canned(
        vec![(
            "secretsmanager:DescribeSecret",
            vec![Canned::ok(
                r#"{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf","Name":"db","CreatedDate":1600000000,"LastRotatedDate":1700000000.5}"#,
            )],
        )],
        RetryConfig::disabled(),
    );
    let m = SecretsManagerSource::new(&config)
        .metadata("db")
        .await
        .unwrap();
    assert_eq!(m.last_rotated, Some(Timestamp(1_700_000_000_500)));
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_counts_as_missing() {
    let (config, _) = common::canned(
        vec![(
            "secretsmanager:DescribeSecret",
            vec![Canned::ok(
                r#"{"Name":"db","CreatedDate":1600000000,"DeletedDate":1700000000}"#,
            )],
        )],
        RetryConfig::disabled(),
    );
    let e = SecretsManagerSource::new(&config)
        .metadata("db")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("scheduled for deletion"), "{e}");
}

#[tokio::test]
async fn throttling_is_temporary_and_access_denied_names_the_iam_action() {
    let (config, _) = common::canned(
        vec![
            (
                "secretsmanager:DescribeSecret",
                vec![Canned::json_error(
                    400,
                    "ThrottlingException",
                    "Rate exceeded",
                )],
            ),
            (
                "secretsmanager:GetSecretValue",
                vec![Canned::json_error(
                    400,
                    "AccessDeniedException",
                    "not authorized",
                )],
            ),
        ],
        RetryConfig::disabled(),
    );
    let source = SecretsManagerSource::new(&config);
    let e = source.metadata("db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.status(), ErrorStatus::Temporary);
    let e = source.get("db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(
        e.message().contains("`secretsmanager:GetSecretValue`")
            && e.message().contains("secret db"),
        "{e}"
    );
}

#[tokio::test]
async fn a_binary_secret_is_refused_without_printing_it() {
    let (config, _) = common::canned(
        vec![(
            "secretsmanager:GetSecretValue",
            vec![Canned::ok(
                r#"{"Name":"cert","SecretBinary":"c2VjcmV0LWJ5dGVz"}"#,
            )],
        )],
        RetryConfig::disabled(),
    );
    let e = SecretsManagerSource::new(&config)
        .get("cert")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(
        !e.to_string().contains("c2VjcmV0") && !e.to_string().contains("secret-bytes"),
        "{e}"
    );
}
