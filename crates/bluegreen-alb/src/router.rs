//! The ALB [`TrafficRouter`]: a weighted forward on a listener or one rule.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple, TargetHealthStateEnum,
};
use aws_types::SdkConfig;
use bluegreen_core::{Color, Error, Result, TargetHealth, TrafficRouter, TrafficSplit};

use crate::PROVIDER;
use bluegreen_aws::{check_arn, sdk_error};

/// Where the weighted forward lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A listener's default action.
    Listener(String),
    /// One listener rule.
    Rule(String),
}

impl Place {
    fn describe(&self) -> String {
        match self {
            Place::Listener(arn) => format!("listener {arn}"),
            Place::Rule(arn) => format!("listener rule {arn}"),
        }
    }
}

/// Builds an [`AlbRouter`]; see [`AlbRouter::builder`].
#[derive(Debug, Clone)]
pub struct AlbRouterBuilder {
    config: SdkConfig,
    listener: Option<String>,
    rule: Option<String>,
    target_groups: [Option<String>; 2],
}

impl AlbRouterBuilder {
    /// Route on this listener's default action, by ARN
    /// (`arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/app/…`).
    pub fn listener(mut self, arn: impl Into<String>) -> Self {
        self.listener = Some(arn.into());
        self
    }

    /// Route on this listener rule, by ARN
    /// (`arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener-rule/app/…`).
    pub fn rule(mut self, arn: impl Into<String>) -> Self {
        self.rule = Some(arn.into());
        self
    }

    /// The target group that serves `color`, by ARN
    /// (`arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID`).
    pub fn target_group(mut self, color: Color, arn: impl Into<String>) -> Self {
        self.target_groups[index(color)] = Some(arn.into());
        self
    }

    /// Checks the ARNs (kind and region) and builds the router. Makes no AWS
    /// call; [`AlbRouter::check`] verifies the resources exist.
    pub fn build(self) -> Result<AlbRouter> {
        let region = self.config.region().map(|r| r.as_ref().to_string());
        let place = match (self.listener, self.rule) {
            (Some(l), None) => {
                check_arn(
                    PROVIDER,
                    "listener",
                    &l,
                    "elasticloadbalancing",
                    "listener/",
                    region.as_deref(),
                )?;
                Place::Listener(l)
            }
            (None, Some(r)) => {
                check_arn(
                    PROVIDER,
                    "rule",
                    &r,
                    "elasticloadbalancing",
                    "listener-rule/",
                    region.as_deref(),
                )?;
                Place::Rule(r)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "listener, rule: both given; route on either a listener's default action or one rule",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "listener: neither a listener nor a rule given; set one with .listener(arn) or .rule(arn)",
                ))
            }
        };
        let mut tgs = Vec::with_capacity(2);
        for color in Color::ALL {
            let field = format!("target_groups.{color}");
            let arn = self.target_groups[index(color)].clone().ok_or_else(|| {
                invalid(format!(
                    "{field}: no target group given for {color}; set it with .target_group"
                ))
            })?;
            check_arn(
                PROVIDER,
                &field,
                &arn,
                "elasticloadbalancing",
                "targetgroup/",
                region.as_deref(),
            )?;
            tgs.push(arn);
        }
        if tgs[0] == tgs[1] {
            return Err(invalid(format!(
                "target_groups: blue and green are both {}; each color needs its own target group",
                tgs[0]
            )));
        }
        let green = tgs.pop().expect("two target groups");
        let blue = tgs.pop().expect("two target groups");
        Ok(AlbRouter {
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&self.config),
            place,
            target_groups: [blue, green],
        })
    }
}

/// A [`TrafficRouter`] on an Application Load Balancer: a weighted forward to
/// the blue and green target groups, on a listener's default action or on one
/// listener rule.
///
/// * `set_split` reads the actions first, refuses (with nothing changed) a
///   forward to any target group other than the two configured, and replaces
///   only the forward's target groups and weights: the rule's conditions, the
///   forward's stickiness and the other actions stay as they were. It checks
///   the answer of `ModifyRule`/`ModifyListener` says the split is in force.
/// * `current_split` reads `DescribeRules` / `DescribeListeners`.
/// * `target_health` reads `DescribeTargetHealth` of the color's target group.
/// * `drain_period` reads `DescribeTargetGroupAttributes` of both target
///   groups: the longer deregistration delay.
#[derive(Debug, Clone)]
pub struct AlbRouter {
    elb: aws_sdk_elasticloadbalancingv2::Client,
    place: Place,
    target_groups: [String; 2],
}

fn index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_input(message).with_provider(PROVIDER)
}

impl AlbRouter {
    /// Starts building a router whose client comes from `config` (the
    /// standard credential and region chain, and its endpoint override).
    pub fn builder(config: &SdkConfig) -> AlbRouterBuilder {
        AlbRouterBuilder {
            config: config.clone(),
            listener: None,
            rule: None,
            target_groups: [None, None],
        }
    }

    /// The target group ARN of `color`.
    pub fn target_group(&self, color: Color) -> &str {
        &self.target_groups[index(color)]
    }

    /// Preflight: both target groups exist, and the listener or rule exists
    /// and forwards only to them. Read-only.
    pub async fn check(&self) -> Result<TrafficSplit> {
        const OP: &str = "check";
        self.elb
            .describe_target_groups()
            .set_target_group_arns(Some(self.target_groups.to_vec()))
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    OP,
                    "elasticloadbalancing:DescribeTargetGroups",
                    &format!(
                        "target groups blue {} and green {}",
                        self.target_groups[0], self.target_groups[1]
                    ),
                )
            })?;
        let actions = self.read_actions(OP).await?;
        Ok(self.parse(&actions, OP)?.1)
    }

    /// The actions of the listener or rule, as AWS has them now.
    async fn read_actions(&self, operation: &'static str) -> Result<Vec<Action>> {
        match &self.place {
            Place::Rule(arn) => {
                let out = self
                    .elb
                    .describe_rules()
                    .rule_arns(arn)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            PROVIDER,
                            e,
                            operation,
                            "elasticloadbalancing:DescribeRules",
                            &self.place.describe(),
                        )
                    })?;
                let rule = out
                    .rules()
                    .iter()
                    .find(|r| r.rule_arn.as_deref() == Some(arn.as_str()))
                    .ok_or_else(|| self.missing(operation))?;
                Ok(rule.actions().to_vec())
            }
            Place::Listener(arn) => {
                let out = self
                    .elb
                    .describe_listeners()
                    .listener_arns(arn)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            PROVIDER,
                            e,
                            operation,
                            "elasticloadbalancing:DescribeListeners",
                            &self.place.describe(),
                        )
                    })?;
                let listener = out
                    .listeners()
                    .iter()
                    .find(|l| l.listener_arn.as_deref() == Some(arn.as_str()))
                    .ok_or_else(|| self.missing(operation))?;
                Ok(listener.default_actions().to_vec())
            }
        }
    }

    fn missing(&self, operation: &'static str) -> Error {
        Error::not_found(format!("{} does not exist", self.place.describe()))
            .with_provider(PROVIDER)
            .with_operation(operation)
    }

    /// The index of the forward action and the split it carries. Refuses a
    /// forward to any target group but the two configured.
    fn parse(&self, actions: &[Action], operation: &'static str) -> Result<(usize, TrafficSplit)> {
        let Some((i, forward)) = actions
            .iter()
            .enumerate()
            .find(|(_, a)| a.r#type == Some(ActionTypeEnum::Forward))
        else {
            let kinds: Vec<&str> = actions
                .iter()
                .map(|a| a.r#type.as_ref().map_or("?", |t| t.as_str()))
                .collect();
            return Err(Error::conflict(format!(
                "{} has no forward action (its actions: {}); expected a forward to blue {} and green {}",
                self.place.describe(),
                if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") },
                self.target_groups[0],
                self.target_groups[1]
            ))
            .with_provider(PROVIDER)
            .with_operation(operation));
        };
        let tuples: Vec<(String, i64)> =
            match forward.forward_config.as_ref().map(|f| f.target_groups()) {
                Some(tgs) if !tgs.is_empty() => tgs
                    .iter()
                    .map(|t| {
                        (
                            t.target_group_arn.clone().unwrap_or_default(),
                            i64::from(t.weight.unwrap_or(1)),
                        )
                    })
                    .collect(),
                _ => forward
                    .target_group_arn
                    .clone()
                    .map(|arn| vec![(arn, 1)])
                    .unwrap_or_default(),
            };
        let mut weights = [0u64; 2];
        for (arn, weight) in &tuples {
            let Some(color) = Color::ALL
                .into_iter()
                .find(|c| self.target_groups[index(*c)] == *arn)
            else {
                return Err(Error::conflict(format!(
                    "{} forwards to target group {arn}, which is neither blue ({}) nor green ({}); \
                     refusing to change it",
                    self.place.describe(),
                    self.target_groups[0],
                    self.target_groups[1]
                ))
                .with_provider(PROVIDER)
                .with_operation(operation));
            };
            let weight = u64::try_from(*weight).map_err(|_| {
                Error::invalid_response(format!(
                    "{} gives target group {arn} the weight {weight}",
                    self.place.describe()
                ))
                .with_provider(PROVIDER)
                .with_operation(operation)
            })?;
            weights[index(color)] += weight;
        }
        let split = TrafficSplit::from_weights(weights[0], weights[1]).map_err(|e| {
            Error::invalid_response(format!("{}: {}", self.place.describe(), e.message()))
                .with_provider(PROVIDER)
                .with_operation(operation)
        })?;
        Ok((i, split))
    }

    /// `actions` with the forward at `i` replaced by a weighted forward for
    /// `split`, keeping its stickiness and every other action as it was.
    fn with_split(&self, actions: &[Action], i: usize, split: TrafficSplit) -> Vec<Action> {
        let mut next = actions.to_vec();
        let forward = &mut next[i];
        let stickiness = forward
            .forward_config
            .as_ref()
            .and_then(|f| f.target_group_stickiness_config.clone());
        let tuples = Color::ALL
            .into_iter()
            .map(|c| {
                TargetGroupTuple::builder()
                    .target_group_arn(&self.target_groups[index(c)])
                    .weight(i32::from(split.percent(c)))
                    .build()
            })
            .collect();
        forward.target_group_arn = None;
        forward.forward_config = Some(
            ForwardActionConfig::builder()
                .set_target_groups(Some(tuples))
                .set_target_group_stickiness_config(stickiness)
                .build(),
        );
        next
    }
}

#[async_trait]
impl TrafficRouter for AlbRouter {
    async fn current_split(&self) -> Result<TrafficSplit> {
        let actions = self.read_actions("current_split").await?;
        Ok(self.parse(&actions, "current_split")?.1)
    }

    /// Reads, validates, and writes only when the split differs. Idempotent.
    async fn set_split(&self, split: TrafficSplit) -> Result<()> {
        const OP: &str = "set_split";
        let actions = self.read_actions(OP).await?;
        let (i, current) = self.parse(&actions, OP)?;
        if current == split {
            return Ok(());
        }
        let next = self.with_split(&actions, i, split);
        let answered: Vec<Action> = match &self.place {
            Place::Rule(arn) => {
                let out = self
                    .elb
                    .modify_rule()
                    .rule_arn(arn)
                    .set_actions(Some(next))
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            PROVIDER,
                            e,
                            OP,
                            "elasticloadbalancing:ModifyRule",
                            &self.place.describe(),
                        )
                    })?;
                out.rules()
                    .iter()
                    .find(|r| r.rule_arn.as_deref() == Some(arn.as_str()))
                    .map(|r| r.actions().to_vec())
                    .unwrap_or_default()
            }
            Place::Listener(arn) => {
                let out = self
                    .elb
                    .modify_listener()
                    .listener_arn(arn)
                    .set_default_actions(Some(next))
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            PROVIDER,
                            e,
                            OP,
                            "elasticloadbalancing:ModifyListener",
                            &self.place.describe(),
                        )
                    })?;
                out.listeners()
                    .iter()
                    .find(|l| l.listener_arn.as_deref() == Some(arn.as_str()))
                    .map(|l| l.default_actions().to_vec())
                    .unwrap_or_default()
            }
        };
        let (_, now) = self.parse(&answered, OP).map_err(|e| {
            Error::invalid_response(format!(
                "after setting {split}, AWS answered actions that cannot be read: {}",
                e.message()
            ))
            .with_provider(PROVIDER)
            .with_operation(OP)
        })?;
        if now != split {
            return Err(Error::invalid_response(format!(
                "{} was set to {split}, but AWS answered {now}",
                self.place.describe()
            ))
            .with_provider(PROVIDER)
            .with_operation(OP));
        }
        tracing::info!(provider = PROVIDER, place = %self.place.describe(), %split, "traffic split set");
        Ok(())
    }

    /// Healthy and total targets of the color's target group; draining
    /// targets (leaving) are not counted.
    async fn target_health(&self, color: Color) -> Result<TargetHealth> {
        let tg = &self.target_groups[index(color)];
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(tg)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    "target_health",
                    "elasticloadbalancing:DescribeTargetHealth",
                    &format!("target group {tg} ({color})"),
                )
            })?;
        let mut health = TargetHealth {
            healthy: 0,
            total: 0,
        };
        for d in out.target_health_descriptions() {
            let state = d.target_health.as_ref().and_then(|h| h.state.clone());
            match state {
                Some(TargetHealthStateEnum::Draining) => {}
                Some(TargetHealthStateEnum::Healthy) => {
                    health.healthy += 1;
                    health.total += 1;
                }
                _ => health.total += 1,
            }
        }
        Ok(health)
    }

    /// The larger of the two target groups' deregistration delay
    /// (`deregistration_delay.timeout_seconds`, AWS's default 300 s), read
    /// with `DescribeTargetGroupAttributes`: how long the ALB keeps sending
    /// in-flight requests to targets that are leaving. Read-only.
    async fn drain_period(&self) -> Result<Option<Duration>> {
        let mut longest: Option<Duration> = None;
        for (i, tg) in self.target_groups.iter().enumerate() {
            let out = self
                .elb
                .describe_target_group_attributes()
                .target_group_arn(tg)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        PROVIDER,
                        e,
                        "drain_period",
                        "elasticloadbalancing:DescribeTargetGroupAttributes",
                        &format!("target group {tg} ({})", Color::ALL[i]),
                    )
                })?;
            let Some(value) = out
                .attributes()
                .iter()
                .find(|a| a.key.as_deref() == Some(DEREGISTRATION_DELAY))
                .and_then(|a| a.value.clone())
            else {
                continue;
            };
            let secs: u64 = value.trim().parse().map_err(|_| {
                Error::invalid_response(format!(
                    "target group {tg}: {DEREGISTRATION_DELAY} is {value:?}, not a number of seconds"
                ))
                .with_provider(PROVIDER)
                .with_operation("drain_period")
            })?;
            let d = Duration::from_secs(secs);
            longest = Some(longest.map_or(d, |l| l.max(d)));
        }
        Ok(longest)
    }
}

/// The target-group attribute holding its deregistration delay, in seconds.
const DEREGISTRATION_DELAY: &str = "deregistration_delay.timeout_seconds";
