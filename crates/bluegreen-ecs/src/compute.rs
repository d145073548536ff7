//! The ECS [`ComputeProvider`]: one ECS service per color.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_applicationautoscaling::types::{ScalableDimension, ServiceNamespace, SuspendedState};
use aws_sdk_ecs::config::interceptors::InterceptorContext;
use aws_sdk_ecs::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ecs::types::{
    ContainerDefinition, DeploymentRolloutState, KeyValuePair, Secret, Service, SortOrder, Tag,
    TaskDefinition, TaskDefinitionField, TaskDefinitionStatus,
};
use aws_types::SdkConfig;
use bluegreen_core::{
    AutoscalingState, Color, ComputeProvider, ComputeStatus, Error, PreparedRelease, Release,
    Result, Rollout,
};

use crate::PROVIDER;
use bluegreen_aws::{check_arn, is_arn, sdk_error};

/// How often [`EcsCompute::wait_until_stable`] polls by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// The task-definition tag that records which release a revision carries.
pub const VERSION_TAG: &str = "bluegreen:version";

/// `DescribeServices` answers at most this many services per call.
const DESCRIBE_SERVICES_MAX: usize = 10;

/// Pages of `ListTaskDefinitions` (100 ARNs each) `prepare` reads at most
/// when it looks for a revision it registered before.
const LIST_PAGES_MAX: usize = 5;

/// The newest revisions of the family `prepare` describes at most when it
/// looks for one it registered before.
const REVISIONS_CHECKED_MAX: usize = 10;

/// The SDK's retry rule for `RegisterTaskDefinition`, which is not
/// idempotent: every call AWS applies registers one more revision.
///
/// The SDK retries a call whose connection dropped or timed out, or that
/// AWS answered with a 5xx error, and any of those may have been applied
/// (the reply, not the request, may be what was lost). Such a retry would
/// register a second revision, bypassing the lookup by [`VERSION_TAG`] that
/// `prepare` makes before registering; so it is forbidden, and the error
/// goes back to the caller, whose own retry (the driver's) calls `prepare`
/// again, which finds the revision if it was registered. An error AWS
/// answered with a 4xx status (throttling above all) was not applied: the
/// SDK retries it as it retries any call.
#[derive(Debug)]
struct NoRetryOfWhatAwsMayHaveApplied;

impl ClassifyRetry for NoRetryOfWhatAwsMayHaveApplied {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let refused = error.is_operation_error()
            && ctx.response().is_some_and(|r| r.status().is_client_error());
        if refused {
            // The SDK's own classifiers decide (throttling is retried).
            RetryAction::NoActionIndicated
        } else {
            RetryAction::RetryForbidden
        }
    }

    fn name(&self) -> &'static str {
        "bluegreen: no retry of a RegisterTaskDefinition AWS may have applied"
    }
}

/// Builds an [`EcsCompute`]; see [`EcsCompute::builder`].
#[derive(Debug, Clone)]
pub struct EcsComputeBuilder {
    config: SdkConfig,
    cluster: Option<String>,
    services: [Option<String>; 2],
    container: Option<String>,
    poll_interval: Duration,
}

impl EcsComputeBuilder {
    /// The cluster, by name or ARN (`arn:aws:ecs:REGION:ACCOUNT:cluster/NAME`).
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    /// The service that runs `color`, by name or ARN, e.g. `order-api-blue`.
    pub fn service(mut self, color: Color, service: impl Into<String>) -> Self {
        self.services[index(color)] = Some(service.into());
        self
    }

    /// The container whose image, environment and secrets a release sets.
    /// Needed only when the task definition has more than one container.
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }

    /// How often [`EcsCompute::wait_until_stable`] polls (default 15 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Checks the settings (ARN kinds and regions, both services given and
    /// distinct) and builds the provider. Makes no AWS call.
    pub fn build(self) -> Result<EcsCompute> {
        let region = self.config.region().map(|r| r.as_ref().to_string());
        let cluster = self.cluster.ok_or_else(|| {
            invalid("cluster: no ECS cluster given; set it with .cluster(name or ARN)")
        })?;
        let cluster_name = if is_arn(&cluster) {
            let arn = check_arn(
                PROVIDER,
                "cluster",
                &cluster,
                "ecs",
                "cluster/",
                region.as_deref(),
            )?;
            arn.resource.trim_start_matches("cluster/").to_string()
        } else {
            cluster.clone()
        };
        if cluster_name.is_empty() {
            return Err(invalid("cluster: the cluster name is empty"));
        }
        let mut names = Vec::with_capacity(2);
        for color in Color::ALL {
            let field = format!("services.{color}");
            let given = self.services[index(color)].clone().ok_or_else(|| {
                invalid(format!(
                    "{field}: no ECS service given for {color}; set it with .service(Color::{}, name)",
                    if color == Color::Blue { "Blue" } else { "Green" }
                ))
            })?;
            let name = if is_arn(&given) {
                let arn = check_arn(
                    PROVIDER,
                    &field,
                    &given,
                    "ecs",
                    "service/",
                    region.as_deref(),
                )?;
                let path: Vec<&str> = arn.resource.split('/').collect();
                match path.as_slice() {
                    ["service", name] => name.to_string(),
                    ["service", c, name] if *c == cluster_name => name.to_string(),
                    ["service", c, _] => {
                        return Err(invalid(format!(
                            "{field}: `{given}` belongs to cluster `{c}`, expected cluster `{cluster_name}`"
                        )))
                    }
                    _ => return Err(invalid(format!("{field}: `{given}` is not a service ARN"))),
                }
            } else {
                given.clone()
            };
            if name.is_empty() {
                return Err(invalid(format!("{field}: the service name is empty")));
            }
            names.push(ServiceRef { given, name });
        }
        if names[0].name == names[1].name {
            return Err(invalid(format!(
                "services: blue and green are both `{}`; each color needs its own ECS service",
                names[0].name
            )));
        }
        let green = names.pop().expect("two services");
        let blue = names.pop().expect("two services");
        Ok(EcsCompute {
            ecs: aws_sdk_ecs::Client::new(&self.config),
            autoscaling: aws_sdk_applicationautoscaling::Client::new(&self.config),
            cluster,
            cluster_name,
            services: [blue, green],
            container: self.container,
            poll_interval: self.poll_interval,
            prepared: Mutex::new(HashMap::new()),
            task_definitions: Mutex::new(HashMap::new()),
        })
    }
}

#[derive(Debug, Clone)]
struct ServiceRef {
    /// As configured (name or ARN); what the API calls use.
    given: String,
    /// The bare service name.
    name: String,
}

/// A task definition registered for a color by `prepare`.
#[derive(Debug, Clone)]
struct Prepared {
    arn: String,
    /// The release it carries.
    release: Release,
    /// Whether the service already uses it (set when prepare or scale updated it).
    applied: bool,
}

/// A [`ComputeProvider`] on Amazon ECS: one service per color (the reference's
/// `order-api-blue` and `order-api-green`), plus Application Auto Scaling.
///
/// * `prepare` registers a task-definition revision derived from the color's
///   current one with the release's image, environment and secrets (secrets by
///   ARN in `valueFrom`, never values), tagged [`VERSION_TAG`]. When the color
///   is at zero it also points the service at it, so the choice survives a
///   crash; otherwise the next `scale` does.
/// * `scale` is `UpdateService` with the desired count (and the prepared task
///   definition).
/// * `status` reads the service: desired, running and pending counts, the
///   failed tasks of the primary deployment, and the rollout: `Failed` when a
///   deployment's `rolloutState` is FAILED (the circuit breaker), `InProgress`
///   with more than one deployment or an IN_PROGRESS one, else `Completed`.
/// * `statuses` asks `DescribeServices` for up to 10 services per call.
/// * `suspend_autoscaling` / `restore_autoscaling` use `RegisterScalableTarget`
///   with `SuspendedState`, restoring exactly the state found before.
pub struct EcsCompute {
    ecs: aws_sdk_ecs::Client,
    autoscaling: aws_sdk_applicationautoscaling::Client,
    cluster: String,
    cluster_name: String,
    services: [ServiceRef; 2],
    container: Option<String>,
    poll_interval: Duration,
    prepared: Mutex<HashMap<Color, Prepared>>,
    /// Task definitions by ARN, with their tags. A revision never changes, so
    /// each is described once.
    task_definitions: Mutex<HashMap<String, (TaskDefinition, Vec<Tag>)>>,
}

impl std::fmt::Debug for EcsCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsCompute")
            .field("cluster", &self.cluster)
            .field("blue", &self.services[0].given)
            .field("green", &self.services[1].given)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
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

fn count_of(value: i32, what: &str, service: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::invalid_response(format!(
            "ECS reported {what} = {value} for service {service}"
        ))
        .with_provider(PROVIDER)
    })
}

impl EcsCompute {
    /// Starts building a provider whose clients come from `config` (the
    /// standard credential and region chain of `aws_config::load_defaults`,
    /// and its endpoint override, which tests point at an emulator).
    pub fn builder(config: &SdkConfig) -> EcsComputeBuilder {
        EcsComputeBuilder {
            config: config.clone(),
            cluster: None,
            services: [None, None],
            container: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The service name of `color`.
    pub fn service_name(&self, color: Color) -> &str {
        &self.services[index(color)].name
    }

    /// The Application Auto Scaling resource id of `color`'s service.
    pub fn scalable_resource_id(&self, color: Color) -> String {
        format!("service/{}/{}", self.cluster_name, self.service_name(color))
    }

    fn describe_of(&self, color: Color) -> String {
        format!(
            "ECS service {} ({color}) in cluster {}",
            self.service_name(color),
            self.cluster_name
        )
    }

    /// Describes the services of `colors` (deduplicated), up to 10 per call,
    /// and answers them in the order asked.
    async fn describe(&self, colors: &[Color], operation: &'static str) -> Result<Vec<Service>> {
        let mut unique: Vec<Color> = Vec::new();
        for c in colors {
            if !unique.contains(c) {
                unique.push(*c);
            }
        }
        let mut found: HashMap<Color, Service> = HashMap::new();
        for chunk in unique.chunks(DESCRIBE_SERVICES_MAX) {
            let resource = format!(
                "services {} in cluster {}",
                chunk
                    .iter()
                    .map(|c| self.service_name(*c))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.cluster_name
            );
            let out = self
                .ecs
                .describe_services()
                .cluster(&self.cluster)
                .set_services(Some(
                    chunk
                        .iter()
                        .map(|c| self.services[index(*c)].given.clone())
                        .collect(),
                ))
                .send()
                .await
                .map_err(|e| {
                    sdk_error(PROVIDER, e, operation, "ecs:DescribeServices", &resource)
                })?;
            for c in chunk {
                let sref = &self.services[index(*c)];
                let svc = out.services().iter().find(|s| {
                    s.service_name.as_deref() == Some(sref.name.as_str())
                        || s.service_arn.as_deref() == Some(sref.given.as_str())
                });
                match svc {
                    Some(s) if s.status.as_deref().is_none_or(|st| st == "ACTIVE") => {
                        found.insert(*c, s.clone());
                    }
                    Some(s) => {
                        return Err(Error::not_found(format!(
                            "{} is {}, expected ACTIVE",
                            self.describe_of(*c),
                            s.status.as_deref().unwrap_or("?")
                        ))
                        .with_provider(PROVIDER)
                        .with_operation(operation))
                    }
                    None => {
                        let reason = out
                            .failures()
                            .iter()
                            .find(|f| {
                                f.arn.as_deref().is_some_and(|a| {
                                    a == sref.given
                                        || a.rsplit('/').next() == Some(sref.name.as_str())
                                })
                            })
                            .and_then(|f| f.reason.clone())
                            .unwrap_or_else(|| "not in the answer".to_string());
                        return Err(Error::not_found(format!(
                            "{} does not exist ({reason}); expected an ACTIVE service",
                            self.describe_of(*c)
                        ))
                        .with_provider(PROVIDER)
                        .with_operation(operation));
                    }
                }
            }
        }
        Ok(colors
            .iter()
            .map(|c| found.get(c).cloned().expect("every color was described"))
            .collect())
    }

    async fn describe_task_definition(
        &self,
        arn: &str,
        operation: &'static str,
    ) -> Result<(TaskDefinition, Vec<Tag>)> {
        if let Some(found) = self
            .task_definitions
            .lock()
            .expect("task definitions lock")
            .get(arn)
        {
            return Ok(found.clone());
        }
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    operation,
                    "ecs:DescribeTaskDefinition",
                    &format!("task definition {arn}"),
                )
            })?;
        let tags = out.tags().to_vec();
        let td = out.task_definition.ok_or_else(|| {
            Error::invalid_response(format!(
                "DescribeTaskDefinition of {arn} returned no task definition"
            ))
            .with_provider(PROVIDER)
            .with_operation(operation)
        })?;
        self.task_definitions
            .lock()
            .expect("task definitions lock")
            .insert(arn.to_string(), (td.clone(), tags.clone()));
        Ok((td, tags))
    }

    /// The release version the task definition `arn` carries, from its
    /// [`VERSION_TAG`] tag (described once per ARN).
    async fn version_of(&self, arn: &str, operation: &'static str) -> Result<Option<String>> {
        let (_, tags) = self.describe_task_definition(arn, operation).await?;
        Ok(tags
            .iter()
            .find(|t| t.key.as_deref() == Some(VERSION_TAG))
            .and_then(|t| t.value.clone()))
    }

    async fn status_from(
        &self,
        color: Color,
        svc: &Service,
        operation: &'static str,
    ) -> Result<ComputeStatus> {
        let name = self.service_name(color);
        let deployments = svc.deployments();
        let primary = deployments
            .iter()
            .find(|d| d.status.as_deref() == Some("PRIMARY"))
            .or_else(|| deployments.first());
        let rollout = if deployments
            .iter()
            .any(|d| d.rollout_state == Some(DeploymentRolloutState::Failed))
        {
            Rollout::Failed
        } else if deployments.len() > 1
            || primary.is_some_and(|d| d.rollout_state == Some(DeploymentRolloutState::InProgress))
        {
            Rollout::InProgress
        } else {
            Rollout::Completed
        };
        // The release is the task definition the service runs: after a
        // circuit-breaker rollback ECS points the service (and its new
        // primary deployment) back at the last completed revision, not the
        // one `prepare` registered. moto keeps the first deployment's
        // revision on its PRIMARY deployment, so the service's own field
        // comes first and the primary deployment's is the fallback.
        let release_id = svc
            .task_definition
            .clone()
            .or_else(|| primary.and_then(|d| d.task_definition.clone()));
        let version = match release_id.as_deref() {
            Some(arn) => self.version_of(arn, operation).await?,
            None => None,
        };
        Ok(ComputeStatus {
            desired: count_of(svc.desired_count, "desiredCount", name)?,
            running: count_of(svc.running_count, "runningCount", name)?,
            pending: count_of(svc.pending_count, "pendingCount", name)?,
            failed: match primary {
                Some(d) => count_of(d.failed_tasks, "failedTasks", name)?,
                None => 0,
            },
            healthy: None,
            version,
            release_id,
            rollout,
        })
    }

    /// Polls the given colors together (one `DescribeServices` call per poll)
    /// until each is stable at its count: exactly one deployment, running
    /// equal to desired, nothing pending, `rolloutState` COMPLETED where
    /// present. Gives up after `deadline` with a `Timeout` error carrying the
    /// last statuses, and at once with a `Conflict` error when a rollout fails.
    pub async fn wait_until_stable(
        &self,
        targets: &[(Color, u32)],
        deadline: Duration,
    ) -> Result<Vec<ComputeStatus>> {
        let colors: Vec<Color> = targets.iter().map(|(c, _)| *c).collect();
        let start = tokio::time::Instant::now();
        loop {
            let statuses = self.statuses(&colors).await?;
            if let Some(((c, _), s)) = targets
                .iter()
                .zip(&statuses)
                .find(|(_, s)| s.rollout == Rollout::Failed)
            {
                return Err(Error::conflict(format!(
                    "the rollout of {} failed (deployment circuit breaker); last status {s:?}",
                    self.describe_of(*c)
                ))
                .with_provider(PROVIDER)
                .with_operation("wait_until_stable"));
            }
            if targets
                .iter()
                .zip(&statuses)
                .all(|((_, n), s)| s.is_stable_at(*n))
            {
                return Ok(statuses);
            }
            if start.elapsed() >= deadline {
                let last: Vec<String> = targets
                    .iter()
                    .zip(&statuses)
                    .map(|((c, n), s)| format!("{} (want {n}): {s:?}", self.service_name(*c)))
                    .collect();
                return Err(Error::timeout(format!(
                    "not stable within {deadline:?}; last state: {}",
                    last.join("; ")
                ))
                .with_provider(PROVIDER)
                .with_operation("wait_until_stable"));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// The newest ACTIVE revision of `family`, other than `current`, that
    /// carries the release: tagged [`VERSION_TAG`] = `version` and with the
    /// release's container exactly as `wanted` (image, environment and
    /// secrets). Reads at most [`LIST_PAGES_MAX`] pages of
    /// `ListTaskDefinitions` and describes at most the newest
    /// [`REVISIONS_CHECKED_MAX`] revisions (each once per process).
    async fn find_registered(
        &self,
        family: &str,
        current: &str,
        wanted: &ContainerDefinition,
        version: &str,
        operation: &'static str,
    ) -> Result<Option<String>> {
        if family.is_empty() {
            return Ok(None);
        }
        let mut revisions: Vec<(u64, String)> = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let out = self
                .ecs
                .list_task_definitions()
                .family_prefix(family)
                .status(TaskDefinitionStatus::Active)
                .sort(SortOrder::Desc)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        PROVIDER,
                        e,
                        operation,
                        "ecs:ListTaskDefinitions",
                        &format!("task definition family {family}"),
                    )
                })?;
            // `familyPrefix` also matches longer family names: keep the
            // family's own revisions.
            revisions.extend(out.task_definition_arns().iter().filter_map(|arn| {
                let (path, revision) = arn.rsplit_once(':')?;
                let name = path.rsplit('/').next()?;
                if name != family || arn == current {
                    return None;
                }
                Some((revision.parse::<u64>().ok()?, arn.clone()))
            }));
            token = out.next_token;
            if token.is_none() {
                break;
            }
        }
        revisions.sort_by_key(|r| std::cmp::Reverse(r.0));
        for (_, arn) in revisions.into_iter().take(REVISIONS_CHECKED_MAX) {
            let (td, tags) = self.describe_task_definition(&arn, operation).await?;
            if !carries_version(&tags, version) {
                continue;
            }
            let Ok((_, container)) = self.pick_container(&td, &arn) else {
                continue;
            };
            if same_release(container, wanted) && container.name == wanted.name {
                tracing::info!(provider = PROVIDER, task_definition = %arn, %version, "found the release's revision registered before");
                return Ok(Some(arn));
            }
        }
        Ok(None)
    }

    /// The container definition the release changes, and its index.
    fn pick_container<'a>(
        &self,
        td: &'a TaskDefinition,
        arn: &str,
    ) -> Result<(usize, &'a ContainerDefinition)> {
        let containers = td.container_definitions();
        match &self.container {
            Some(name) => containers
                .iter()
                .enumerate()
                .find(|(_, c)| c.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| {
                    invalid(format!(
                        "container: task definition {arn} has no container `{name}`; it has: {}",
                        container_names(containers)
                    ))
                }),
            None if containers.len() == 1 => Ok((0, &containers[0])),
            None => Err(invalid(format!(
                "container: task definition {arn} has {} containers ({}); name the one the release \
                 changes with .container(name)",
                containers.len(),
                container_names(containers)
            ))),
        }
    }

    fn check_release(&self, release: &Release) -> Result<()> {
        let region = self.ecs.config().region().map(|r| r.as_ref().to_string());
        if release.image.trim().is_empty() {
            return Err(invalid(
                "release.image: empty; expected a container image reference",
            ));
        }
        for (name, value_from) in &release.secrets {
            let field = format!("release.secrets.{name}");
            if release.env.contains_key(name) {
                return Err(invalid(format!(
                    "{field}: `{name}` is both a plain variable (release.env) and a secret"
                )));
            }
            if !is_arn(value_from) {
                return Err(invalid(format!(
                    "{field}: `{value_from}` is not an ARN; ECS takes secrets by ARN \
                     (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or an SSM parameter ARN)"
                )));
            }
            let kind = value_from.split(':').nth(2).unwrap_or("");
            if kind == "ssm" {
                check_arn(
                    PROVIDER,
                    &field,
                    value_from,
                    "ssm",
                    "parameter/",
                    region.as_deref(),
                )?;
            } else {
                check_arn(
                    PROVIDER,
                    &field,
                    value_from,
                    "secretsmanager",
                    "secret:",
                    region.as_deref(),
                )?;
            }
        }
        Ok(())
    }
}

fn container_names(containers: &[ContainerDefinition]) -> String {
    containers
        .iter()
        .map(|c| c.name.as_deref().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `current` with the release's image, and its environment and secrets merged
/// over the current ones (a release's entry replaces one of the same name;
/// entries the release does not name are kept).
fn derive_container(
    current: &ContainerDefinition,
    release: &Release,
) -> Result<ContainerDefinition> {
    let mut next = current.clone();
    next.image = Some(release.image.clone());
    let mut env: BTreeMap<String, String> = current
        .environment()
        .iter()
        .filter_map(|kv| Some((kv.name.clone()?, kv.value.clone().unwrap_or_default())))
        .collect();
    env.extend(release.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut secrets: BTreeMap<String, String> = current
        .secrets()
        .iter()
        .map(|s| (s.name.clone(), s.value_from.clone()))
        .collect();
    secrets.extend(release.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    next.environment = Some(
        env.into_iter()
            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
            .collect(),
    );
    next.secrets = if secrets.is_empty() {
        current.secrets.clone()
    } else {
        Some(
            secrets
                .into_iter()
                .map(|(k, v)| {
                    Secret::builder()
                        .name(&k)
                        .value_from(v)
                        .build()
                        .map_err(|e| invalid(format!("release.secrets.{k}: {e}")))
                })
                .collect::<Result<Vec<_>>>()?,
        )
    };
    Ok(next)
}

/// Whether a task definition's `tags` mark it as a revision of `version`.
fn carries_version(tags: &[Tag], version: &str) -> bool {
    tags.iter()
        .any(|t| t.key.as_deref() == Some(VERSION_TAG) && t.value.as_deref() == Some(version))
}

/// Whether two container definitions run the same release: image, environment
/// (as a set) and secrets (as a set).
fn same_release(a: &ContainerDefinition, b: &ContainerDefinition) -> bool {
    let env = |c: &ContainerDefinition| -> BTreeMap<String, String> {
        c.environment()
            .iter()
            .filter_map(|kv| Some((kv.name.clone()?, kv.value.clone().unwrap_or_default())))
            .collect()
    };
    let secrets = |c: &ContainerDefinition| -> BTreeMap<String, String> {
        c.secrets()
            .iter()
            .map(|s| (s.name.clone(), s.value_from.clone()))
            .collect()
    };
    a.image == b.image && env(a) == env(b) && secrets(a) == secrets(b)
}

#[async_trait]
impl ComputeProvider for EcsCompute {
    /// Registers a task-definition revision for `release`, derived from the
    /// color's current one. Idempotent, also across processes: when the
    /// service's current revision, the one this provider registered, or an
    /// ACTIVE revision of the family found by [`VERSION_TAG`] (a registration
    /// whose reply was lost, or made by a deployer that died) already carries
    /// the release, no new revision is registered. The SDK does not retry a
    /// `RegisterTaskDefinition` that AWS may have applied (a dropped
    /// connection, a timeout, a 5xx answer): the error comes back as
    /// temporary, and calling `prepare` again finds the revision by its tag.
    async fn prepare(&self, color: Color, release: &Release) -> Result<PreparedRelease> {
        const OP: &str = "prepare";
        self.check_release(release)
            .map_err(|e| e.with_operation(OP))?;
        let svc = self.describe(&[color], OP).await?.remove(0);
        let current_arn = svc.task_definition.clone().ok_or_else(|| {
            Error::invalid_response(format!(
                "{} has no task definition",
                self.describe_of(color)
            ))
            .with_provider(PROVIDER)
            .with_operation(OP)
        })?;
        let (td, tags) = self.describe_task_definition(&current_arn, OP).await?;
        let (i, container) = self
            .pick_container(&td, &current_arn)
            .map_err(|e| e.with_operation(OP))?;
        let wanted = derive_container(container, release).map_err(|e| e.with_operation(OP))?;
        if same_release(container, &wanted) && carries_version(&tags, &release.version) {
            // The service already runs a revision of this release (a repeat after a crash).
            self.prepared.lock().expect("prepared lock").insert(
                color,
                Prepared {
                    arn: current_arn.clone(),
                    release: release.clone(),
                    applied: true,
                },
            );
            return Ok(PreparedRelease::with_id(current_arn));
        }
        let reuse = self
            .prepared
            .lock()
            .expect("prepared lock")
            .get(&color)
            .filter(|p| p.release == *release)
            .cloned();
        let family = td.family.clone().unwrap_or_default();
        let found = match reuse {
            Some(p) => Some(p),
            // A new process (or a repeat after a lost reply) finds the
            // revision registered before by its tag instead of registering
            // a second one.
            None => self
                .find_registered(&family, &current_arn, &wanted, &release.version, OP)
                .await?
                .map(|arn| Prepared {
                    arn,
                    release: release.clone(),
                    applied: false,
                }),
        };
        let mut prepared = match found {
            Some(p) => p,
            None => {
                let mut containers = td.container_definitions().to_vec();
                containers[i] = wanted;
                let mut new_tags: Vec<Tag> = tags
                    .into_iter()
                    .filter(|t| t.key.as_deref() != Some(VERSION_TAG))
                    .collect();
                new_tags.push(
                    Tag::builder()
                        .key(VERSION_TAG)
                        .value(&release.version)
                        .build(),
                );
                let registered_tags = new_tags.clone();
                let out = self
                    .ecs
                    .register_task_definition()
                    .family(&family)
                    .set_task_role_arn(td.task_role_arn.clone())
                    .set_execution_role_arn(td.execution_role_arn.clone())
                    .set_network_mode(td.network_mode.clone())
                    .set_container_definitions(Some(containers))
                    .set_volumes(td.volumes.clone())
                    .set_placement_constraints(td.placement_constraints.clone())
                    .set_requires_compatibilities(td.requires_compatibilities.clone())
                    .set_cpu(td.cpu.clone())
                    .set_memory(td.memory.clone())
                    .set_pid_mode(td.pid_mode.clone())
                    .set_ipc_mode(td.ipc_mode.clone())
                    .set_proxy_configuration(td.proxy_configuration.clone())
                    .set_ephemeral_storage(td.ephemeral_storage.clone())
                    .set_runtime_platform(td.runtime_platform.clone())
                    .set_enable_fault_injection(td.enable_fault_injection)
                    .set_tags(Some(new_tags))
                    .customize()
                    .config_override(
                        aws_sdk_ecs::config::Builder::default()
                            .retry_classifier(NoRetryOfWhatAwsMayHaveApplied),
                    )
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            PROVIDER,
                            e,
                            OP,
                            "ecs:RegisterTaskDefinition",
                            &format!("task definition family {family}"),
                        )
                    })?;
                let arn = out
                    .task_definition()
                    .and_then(|t| t.task_definition_arn.clone())
                    .ok_or_else(|| {
                        Error::invalid_response(
                            "RegisterTaskDefinition returned no task definition ARN",
                        )
                        .with_provider(PROVIDER)
                        .with_operation(OP)
                    })?;
                if let Some(registered) = out.task_definition.clone() {
                    self.task_definitions
                        .lock()
                        .expect("task definitions lock")
                        .insert(arn.clone(), (registered, registered_tags));
                }
                tracing::info!(provider = PROVIDER, %color, task_definition = %arn, version = %release.version, "registered task definition");
                Prepared {
                    arn,
                    release: release.clone(),
                    applied: false,
                }
            }
        };
        if !prepared.applied && svc.desired_count == 0 {
            // At zero nothing runs: point the service at the new revision now,
            // so the choice is kept in ECS itself, not only in this process.
            self.update_service(color, None, Some(&prepared.arn), OP)
                .await?;
            prepared.applied = true;
        }
        let arn = prepared.arn.clone();
        self.prepared
            .lock()
            .expect("prepared lock")
            .insert(color, prepared);
        Ok(PreparedRelease::with_id(arn))
    }

    /// `UpdateService` with `count` (and the prepared task definition, if the
    /// service does not use it yet). Idempotent.
    async fn scale(&self, color: Color, count: u32) -> Result<()> {
        const OP: &str = "scale";
        let desired = i32::try_from(count).map_err(|_| {
            invalid(format!("count: {count} is larger than ECS accepts")).with_operation(OP)
        })?;
        let pending = self
            .prepared
            .lock()
            .expect("prepared lock")
            .get(&color)
            .filter(|p| !p.applied)
            .map(|p| p.arn.clone());
        self.update_service(color, Some(desired), pending.as_deref(), OP)
            .await?;
        if let Some(p) = self.prepared.lock().expect("prepared lock").get_mut(&color) {
            p.applied = true;
        }
        Ok(())
    }

    async fn status(&self, color: Color) -> Result<ComputeStatus> {
        let svc = self.describe(&[color], "status").await?.remove(0);
        self.status_from(color, &svc, "status").await
    }

    /// One `DescribeServices` call per 10 services.
    async fn statuses(&self, colors: &[Color]) -> Result<Vec<ComputeStatus>> {
        let services = self.describe(colors, "statuses").await?;
        let mut out = Vec::with_capacity(colors.len());
        for (c, s) in colors.iter().zip(&services) {
            out.push(self.status_from(*c, s, "statuses").await?);
        }
        Ok(out)
    }

    /// The service's scalable target as `DescribeScalableTargets` reports it.
    async fn autoscaling_state(&self, color: Color) -> Result<AutoscalingState> {
        self.read_autoscaling(color, "autoscaling_state").await
    }

    /// Suspends dynamic scale-in, scale-out and scheduled scaling with
    /// `RegisterScalableTarget`, and returns the state found before. A service
    /// without a scalable target is left alone (`registered: false`). When
    /// everything is already suspended, nothing is called beyond the read.
    async fn suspend_autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        const OP: &str = "suspend_autoscaling";
        let before = self.read_autoscaling(color, OP).await?;
        if !before.registered
            || (before.scale_in_suspended
                && before.scale_out_suspended
                && before.scheduled_suspended)
        {
            return Ok(before);
        }
        let all = AutoscalingState {
            registered: true,
            scale_in_suspended: true,
            scale_out_suspended: true,
            scheduled_suspended: true,
        };
        self.register_suspended_state(color, all, OP).await?;
        tracing::info!(provider = PROVIDER, %color, ?before, "suspended autoscaling");
        Ok(before)
    }

    /// Puts back exactly `previous`: the three suspended flags as they were.
    /// Nothing is called when there was no scalable target.
    async fn restore_autoscaling(&self, color: Color, previous: AutoscalingState) -> Result<()> {
        if !previous.registered {
            return Ok(());
        }
        self.register_suspended_state(color, previous, "restore_autoscaling")
            .await
    }
}

impl EcsCompute {
    async fn update_service(
        &self,
        color: Color,
        desired: Option<i32>,
        task_definition: Option<&str>,
        operation: &'static str,
    ) -> Result<()> {
        self.ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.services[index(color)].given)
            .set_desired_count(desired)
            .set_task_definition(task_definition.map(str::to_string))
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    operation,
                    "ecs:UpdateService",
                    &self.describe_of(color),
                )
            })?;
        tracing::info!(provider = PROVIDER, %color, ?desired, ?task_definition, "updated service");
        Ok(())
    }

    /// The Application Auto Scaling state of `color`'s service, read with
    /// `DescribeScalableTargets`. Read-only.
    pub async fn autoscaling(&self, color: Color) -> Result<AutoscalingState> {
        self.read_autoscaling(color, "autoscaling").await
    }

    async fn read_autoscaling(
        &self,
        color: Color,
        operation: &'static str,
    ) -> Result<AutoscalingState> {
        let id = self.scalable_resource_id(color);
        let out = self
            .autoscaling
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_ids(&id)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    operation,
                    "application-autoscaling:DescribeScalableTargets",
                    &format!("scalable target {id}"),
                )
            })?;
        let Some(target) = out.scalable_targets().iter().find(|t| t.resource_id == id) else {
            return Ok(AutoscalingState::default());
        };
        let s = target
            .suspended_state
            .clone()
            .unwrap_or_else(|| SuspendedState::builder().build());
        Ok(AutoscalingState {
            registered: true,
            scale_in_suspended: s.dynamic_scaling_in_suspended.unwrap_or(false),
            scale_out_suspended: s.dynamic_scaling_out_suspended.unwrap_or(false),
            scheduled_suspended: s.scheduled_scaling_suspended.unwrap_or(false),
        })
    }

    async fn register_suspended_state(
        &self,
        color: Color,
        state: AutoscalingState,
        operation: &'static str,
    ) -> Result<()> {
        let id = self.scalable_resource_id(color);
        self.autoscaling
            .register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(&id)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .suspended_state(
                SuspendedState::builder()
                    .dynamic_scaling_in_suspended(state.scale_in_suspended)
                    .dynamic_scaling_out_suspended(state.scale_out_suspended)
                    .scheduled_scaling_suspended(state.scheduled_suspended)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    PROVIDER,
                    e,
                    operation,
                    "application-autoscaling:RegisterScalableTarget",
                    &format!("scalable target {id}"),
                )
            })?;
        Ok(())
    }
}
