//! The ALB router against the moto emulator (started by scripts/test).

use bluegreen_aws::testing as common;

use aws_sdk_elasticloadbalancingv2::Client;
use bluegreen_alb::AlbRouter;
use bluegreen_core::testing::conformance;
use bluegreen_core::{Color, ErrorKind, TrafficRouter, TrafficSplit};
use common::alb::{alb_fixture, forward_weights, target_group, weighted_forward, AlbFixture};

async fn rule_of(elb: &Client, rule: &str) -> aws_sdk_elasticloadbalancingv2::types::Rule {
    elb.describe_rules()
        .rule_arns(rule)
        .send()
        .await
        .unwrap()
        .rules()[0]
        .clone()
}

fn on_rule(config: &aws_types::SdkConfig, f: &AlbFixture) -> AlbRouter {
    AlbRouter::builder(config)
        .rule(&f.rule)
        .target_group(Color::Blue, &f.blue)
        .target_group(Color::Green, &f.green)
        .build()
        .unwrap()
}

#[tokio::test]
async fn conformance_suite_passes_on_a_listener_rule_and_keeps_conditions_and_stickiness() {
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 2).await;
    let router = on_rule(&config, &f);
    assert_eq!(
        router.check().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );

    conformance::router(&router).await;

    router
        .set_split(TrafficSplit::with_percent(Color::Green, 10))
        .await
        .unwrap();
    let rule = rule_of(&elb, &f.rule).await;
    assert_eq!(
        forward_weights(rule.actions()),
        vec![(f.blue.clone(), 90), (f.green.clone(), 10)]
    );
    let conditions = rule.conditions();
    assert_eq!(conditions.len(), 1, "conditions kept: {conditions:?}");
    assert_eq!(conditions[0].field.as_deref(), Some("path-pattern"));
    assert_eq!(conditions[0].values(), ["/orders*".to_string()]);
    let stickiness = rule.actions()[0]
        .forward_config
        .as_ref()
        .and_then(|f| f.target_group_stickiness_config.clone())
        .expect("stickiness kept");
    assert_eq!(stickiness.enabled, Some(true));
    assert_eq!(stickiness.duration_seconds, Some(300));
}

#[tokio::test]
async fn conformance_suite_passes_on_a_listener_default_action() {
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 1).await;
    let router = AlbRouter::builder(&config)
        .listener(&f.listener)
        .target_group(Color::Blue, &f.blue)
        .target_group(Color::Green, &f.green)
        .build()
        .unwrap();
    assert_eq!(
        router.current_split().await.unwrap(),
        TrafficSplit::all_on(Color::Blue)
    );
    conformance::router(&router).await;
    router
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap();
    let listener = elb
        .describe_listeners()
        .listener_arns(&f.listener)
        .send()
        .await
        .unwrap()
        .listeners()[0]
        .clone();
    assert_eq!(
        forward_weights(listener.default_actions()),
        vec![(f.blue.clone(), 0), (f.green.clone(), 100)]
    );
    // The rule was not touched.
    let rule = rule_of(&elb, &f.rule).await;
    assert_eq!(
        forward_weights(rule.actions()),
        vec![(f.blue.clone(), 100), (f.green.clone(), 0)]
    );
}

#[tokio::test]
async fn a_rule_forwarding_to_a_third_target_group_is_refused_and_left_unchanged() {
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 1).await;
    let (vpc, _) = common::default_network();
    let third = target_group(&elb, &vpc, "bg-x", 1).await;
    elb.modify_rule()
        .rule_arn(&f.rule)
        .actions(weighted_forward(&[(&f.blue, 50), (&third, 50)]))
        .send()
        .await
        .unwrap();
    let before = rule_of(&elb, &f.rule).await;
    let router = on_rule(&config, &f);

    let e = router
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.message().contains(&third),
        "the error names the third target group: {e}"
    );
    assert!(
        e.message().contains(&f.rule),
        "the error names the rule: {e}"
    );
    let after = rule_of(&elb, &f.rule).await;
    assert_eq!(before.actions(), after.actions(), "nothing changed");

    let e = router.current_split().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        router.check().await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
}

#[tokio::test]
async fn target_health_reports_healthy_and_total_targets_per_color() {
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 3).await;
    let (vpc, _) = common::default_network();
    let empty = target_group(&elb, &vpc, "bg-e", 0).await;
    let router = on_rule(&config, &f);
    let blue = router.target_health(Color::Blue).await.unwrap();
    assert_eq!((blue.healthy, blue.total), (3, 3));
    assert_eq!(blue.unhealthy_fraction(), 0.0);

    let router = AlbRouter::builder(&config)
        .rule(&f.rule)
        .target_group(Color::Blue, &f.blue)
        .target_group(Color::Green, &empty)
        .build()
        .unwrap();
    let green = router.target_health(Color::Green).await.unwrap();
    assert_eq!((green.healthy, green.total), (0, 0));
    assert_eq!(
        green.unhealthy_fraction(),
        1.0,
        "no targets counts as all unhealthy"
    );
}

#[tokio::test]
async fn missing_target_groups_and_rules_are_not_found_before_anything_changes() {
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 1).await;
    let missing_tg = f.green.replace("targetgroup/", "targetgroup/gone-");
    let router = AlbRouter::builder(&config)
        .rule(&f.rule)
        .target_group(Color::Blue, &f.blue)
        .target_group(Color::Green, &missing_tg)
        .build()
        .unwrap();
    let e = router.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains(&missing_tg), "{e}");
    let e = router.target_health(Color::Green).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let missing_rule = format!("{}0", f.rule);
    let router = AlbRouter::builder(&config)
        .rule(&missing_rule)
        .target_group(Color::Blue, &f.blue)
        .target_group(Color::Green, &f.green)
        .build()
        .unwrap();
    let e = router
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains(&missing_rule), "{e}");
    assert_eq!(
        forward_weights(rule_of(&elb, &f.rule).await.actions()),
        vec![(f.blue.clone(), 100), (f.green.clone(), 0)]
    );
}

#[tokio::test]
async fn set_split_reads_once_and_writes_only_when_the_split_changes() {
    let (config, calls) = common::counted_moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 1).await;
    let router = on_rule(&config, &f);
    calls.reset();
    router
        .set_split(TrafficSplit::all_on(Color::Blue))
        .await
        .unwrap();
    assert_eq!(calls.count("elasticloadbalancing:DescribeRules"), 1);
    assert_eq!(
        calls.count("elasticloadbalancing:ModifyRule"),
        0,
        "{:?}",
        calls.counts()
    );
    router
        .set_split(TrafficSplit::all_on(Color::Green))
        .await
        .unwrap();
    assert_eq!(calls.count("elasticloadbalancing:DescribeRules"), 2);
    assert_eq!(calls.count("elasticloadbalancing:ModifyRule"), 1);
}

#[tokio::test]
async fn drain_period_is_the_longer_deregistration_delay_of_the_two_target_groups() {
    use aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute;
    use std::time::Duration;
    let config = common::moto();
    let elb = Client::new(&config);
    let f = alb_fixture(&elb, 1).await;
    let router = on_rule(&config, &f);
    // AWS's default deregistration delay is 300 s.
    assert_eq!(
        router.drain_period().await.unwrap(),
        Some(Duration::from_secs(300))
    );
    for (tg, secs) in [(&f.blue, "45"), (&f.green, "120")] {
        elb.modify_target_group_attributes()
            .target_group_arn(tg)
            .attributes(
                TargetGroupAttribute::builder()
                    .key("deregistration_delay.timeout_seconds")
                    .value(secs)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        router.drain_period().await.unwrap(),
        Some(Duration::from_secs(120))
    );
}
