//! An ALB in moto's default VPC: two target groups with registered targets, a
//! listener and a rule forwarding all traffic to blue.

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, ProtocolEnum, RuleCondition, TargetDescription,
    TargetGroupStickinessConfig, TargetGroupTuple, TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client;

use super::{default_network, unique};

/// The ARNs a test routes on.
#[derive(Debug, Clone)]
pub struct AlbFixture {
    /// The listener.
    pub listener: String,
    /// The rule on `/orders*`.
    pub rule: String,
    /// The blue target group.
    pub blue: String,
    /// The green target group.
    pub green: String,
}

/// A forward to `tgs` with the given weights and stickiness enabled.
pub fn weighted_forward(tgs: &[(&str, i32)]) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .forward_config(
            ForwardActionConfig::builder()
                .set_target_groups(Some(
                    tgs.iter()
                        .map(|(arn, w)| {
                            TargetGroupTuple::builder()
                                .target_group_arn(*arn)
                                .weight(*w)
                                .build()
                        })
                        .collect(),
                ))
                .target_group_stickiness_config(
                    TargetGroupStickinessConfig::builder()
                        .enabled(true)
                        .duration_seconds(300)
                        .build(),
                )
                .build(),
        )
        .build()
}

/// The target groups and weights of the forwards among `actions`, in order
/// (a target group without a weight counts as 1).
pub fn forward_weights(actions: &[Action]) -> Vec<(String, i32)> {
    actions
        .iter()
        .filter_map(|a| a.forward_config.as_ref())
        .flat_map(|f| f.target_groups())
        .map(|t| (t.target_group_arn.clone().unwrap(), t.weight.unwrap_or(1)))
        .collect()
}

/// Creates a target group in `vpc` with `targets` registered IP targets.
pub async fn target_group(elb: &Client, vpc: &str, prefix: &str, targets: u8) -> String {
    let tg = elb
        .create_target_group()
        .name(unique(prefix))
        .protocol(ProtocolEnum::Http)
        .port(8080)
        .vpc_id(vpc)
        .target_type(TargetTypeEnum::Ip)
        .send()
        .await
        .expect("create target group")
        .target_groups()[0]
        .target_group_arn
        .clone()
        .unwrap();
    if targets > 0 {
        elb.register_targets()
            .target_group_arn(&tg)
            .set_targets(Some(
                (1..=targets)
                    .map(|i| {
                        TargetDescription::builder()
                            .id(format!("172.31.1.{i}"))
                            .port(8080)
                            .build()
                    })
                    .collect(),
            ))
            .send()
            .await
            .expect("register targets");
    }
    tg
}

/// A load balancer, blue and green target groups with `targets` targets each,
/// a listener whose default action is a fixed 404, and a rule on `/orders*`
/// forwarding everything to blue (stickiness on).
pub async fn alb_fixture(elb: &Client, targets: u8) -> AlbFixture {
    let (vpc, subnets) = default_network();
    let lb = elb
        .create_load_balancer()
        .name(unique("bg-lb"))
        .set_subnets(Some(subnets))
        .send()
        .await
        .expect("create load balancer")
        .load_balancers()[0]
        .load_balancer_arn
        .clone()
        .unwrap();
    let blue = target_group(elb, &vpc, "bg-b", targets).await;
    let green = target_group(elb, &vpc, "bg-g", targets).await;
    let listener = elb
        .create_listener()
        .load_balancer_arn(&lb)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .default_actions(weighted_forward(&[(&blue, 1)]))
        .send()
        .await
        .expect("create listener")
        .listeners()[0]
        .listener_arn
        .clone()
        .unwrap();
    let rule = elb
        .create_rule()
        .listener_arn(&listener)
        .priority(10)
        .conditions(
            RuleCondition::builder()
                .field("path-pattern")
                .values("/orders*")
                .build(),
        )
        .actions(weighted_forward(&[(&blue, 100), (&green, 0)]))
        .send()
        .await
        .expect("create rule")
        .rules()[0]
        .rule_arn
        .clone()
        .unwrap();
    AlbFixture {
        listener,
        rule,
        blue,
        green,
    }
}
