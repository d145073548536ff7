//! Bad settings are refused when the router is built, before any AWS call.

use bluegreen_aws::testing as common;

use bluegreen_alb::AlbRouter;
use bluegreen_core::{Color, ErrorKind};

const RULE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
const LISTENER: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";
const BLUE: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/order-api-blue/73e2d6bc24d8a067";
const GREEN: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/order-api-green/83e2d6bc24d8a068";

fn config() -> aws_types::SdkConfig {
    common::config_with(
        aws_smithy_http_client::Builder::new().build_http(),
        "http://127.0.0.1:9",
        aws_smithy_types::retry::RetryConfig::disabled(),
    )
}

#[test]
fn arns_of_the_wrong_kind_or_region_are_refused_naming_the_field() {
    let c = config();
    let e = AlbRouter::builder(&c)
        .rule(LISTENER)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, GREEN)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message().starts_with("rule:") && e.message().contains("wrong kind"),
        "{e}"
    );

    let e = AlbRouter::builder(&c)
        .listener(LISTENER)
        .target_group(Color::Blue, RULE)
        .target_group(Color::Green, GREEN)
        .build()
        .unwrap_err();
    assert!(e.message().starts_with("target_groups.blue:"), "{e}");

    let west = GREEN.replace("us-east-1", "eu-west-1");
    let e = AlbRouter::builder(&c)
        .listener(LISTENER)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, &west)
        .build()
        .unwrap_err();
    assert!(
        e.message().starts_with("target_groups.green:") && e.message().contains("eu-west-1"),
        "{e}"
    );

    let e = AlbRouter::builder(&c)
        .rule(RULE)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, BLUE)
        .build()
        .unwrap_err();
    assert!(
        e.message()
            .contains("each color needs its own target group"),
        "{e}"
    );

    let e = AlbRouter::builder(&c)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, GREEN)
        .build()
        .unwrap_err();
    assert!(e.message().starts_with("listener:"), "{e}");

    let e = AlbRouter::builder(&c)
        .rule(RULE)
        .listener(LISTENER)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, GREEN)
        .build()
        .unwrap_err();
    assert!(e.message().contains("either"), "{e}");

    assert!(AlbRouter::builder(&c)
        .rule(RULE)
        .target_group(Color::Blue, BLUE)
        .target_group(Color::Green, GREEN)
        .build()
        .is_ok());
}
