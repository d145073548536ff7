//! Faults moto cannot produce, from canned AWS answers: throttling, 5xx,
//! access denied, and a write whose answer disagrees with what was asked.

use bluegreen_aws::testing as common;

use aws_smithy_types::retry::RetryConfig;
use bluegreen_alb::AlbRouter;
use bluegreen_core::{Color, ErrorKind, ErrorStatus, TrafficRouter, TrafficSplit};
use common::Canned;

const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
const BLUE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/order-api-blue/73e2d6bc24d8a067";
const GREEN: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/order-api-green/83e2d6bc24d8a068";

/// A DescribeRules or ModifyRule answer: the rule forwarding with these weights.
fn rule_answer(op: &str, blue: i32, green: i32) -> Canned {
    Canned::ok(format!(
        r#"<{op}Response xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><{op}Result><Rules><member>
<RuleArn>{RULE}</RuleArn><Priority>10</Priority><IsDefault>false</IsDefault>
<Conditions><member><Field>path-pattern</Field><Values><member>/orders*</member></Values></member></Conditions>
<Actions><member><Type>forward</Type><ForwardConfig><TargetGroups>
<member><TargetGroupArn>{BLUE}</TargetGroupArn><Weight>{blue}</Weight></member>
<member><TargetGroupArn>{GREEN}</TargetGroupArn><Weight>{green}</Weight></member>
</TargetGroups><TargetGroupStickinessConfig><Enabled>true</Enabled><DurationSeconds>300</DurationSeconds></TargetGroupStickinessConfig></ForwardConfig></member></Actions>
</member></Rules></{op}Result><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></{op}Response>"#
    ))
}

fn router(config: &aws_types::SdkConfig) -> AlbRouter {
    AlbRouter::builder(config)
        .rule(RULE)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, GREEN)
        .build()
        .unwrap()
}

#[tokio::test]
async fn throttling_is_temporary_and_rate_limited() {
    let (config, _) = common::canned(
        vec![(
            "elasticloadbalancing:DescribeRules",
            vec![Canned::query_error(400, "Throttling", "Rate exceeded")],
        )],
        RetryConfig::disabled(),
    );
    let e = router(&config).current_split().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.status(), ErrorStatus::Temporary);
    assert_eq!(e.provider(), "alb");
    assert_eq!(e.operation(), "current_split");
    assert_eq!(e.retry_after(), None, "no Retry-After, no hint");
}

#[tokio::test]
async fn a_throttling_answer_with_retry_after_carries_the_wait() {
    let (config, _) = common::canned(
        vec![(
            "elasticloadbalancing:DescribeRules",
            vec![Canned::query_error(400, "Throttling", "Rate exceeded")
                .with_header("Retry-After", "12")],
        )],
        RetryConfig::disabled(),
    );
    let e = router(&config).current_split().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(12)));
}

#[tokio::test]
async fn the_sdk_retries_throttling_before_we_see_it() {
    let (config, calls) = common::canned(
        vec![(
            "elasticloadbalancing:DescribeRules",
            vec![
                Canned::query_error(400, "Throttling", "Rate exceeded"),
                rule_answer("DescribeRules", 30, 70),
            ],
        )],
        RetryConfig::standard().with_initial_backoff(std::time::Duration::from_millis(1)),
    );
    let split = router(&config).current_split().await.unwrap();
    assert_eq!(split, TrafficSplit::with_percent(Color::Green, 70));
    assert_eq!(calls.count("elasticloadbalancing:DescribeRules"), 2);
}

#[tokio::test]
async fn a_5xx_is_temporary_and_unavailable() {
    let (config, _) = common::canned(
        vec![(
            "elasticloadbalancing:DescribeRules",
            vec![Canned::query_error(503, "ServiceUnavailable", "try later")],
        )],
        RetryConfig::disabled(),
    );
    let e = router(&config)
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_temporary());
}

#[tokio::test]
async fn access_denied_is_permanent_and_names_the_iam_action() {
    let (config, calls) = common::canned(
        vec![
            (
                "elasticloadbalancing:DescribeRules",
                vec![rule_answer("DescribeRules", 100, 0)],
            ),
            (
                "elasticloadbalancing:ModifyRule",
                vec![Canned::query_error(
                    403,
                    "AccessDenied",
                    "User is not authorized",
                )],
            ),
        ],
        RetryConfig::disabled(),
    );
    let e = router(&config)
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(
        e.message().contains("elasticloadbalancing:ModifyRule"),
        "{e}"
    );
    assert!(e.message().contains(RULE), "{e}");
    assert_eq!(calls.count("elasticloadbalancing:ModifyRule"), 1);
}

#[tokio::test]
async fn a_write_whose_answer_disagrees_is_an_invalid_response() {
    let (config, _) = common::canned(
        vec![
            (
                "elasticloadbalancing:DescribeRules",
                vec![rule_answer("DescribeRules", 100, 0)],
            ),
            (
                "elasticloadbalancing:ModifyRule",
                vec![rule_answer("ModifyRule", 100, 0)],
            ),
        ],
        RetryConfig::disabled(),
    );
    let r = router(&config);
    let e = r
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.message().contains("blue 100% / green 0%"), "{e}");
    // And the read-back the engine confirms with tells the truth.
    assert_eq!(
        r.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );
}
