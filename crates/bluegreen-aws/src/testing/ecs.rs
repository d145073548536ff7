//! An ECS cluster with a blue and a green service in moto, and read-backs of
//! what the services hold.
//!
//! Services are created at desiredCount 0 and then scaled with UpdateService:
//! moto sets a service's running count to its desired count on UpdateService,
//! but keeps the rolloutState its deployment got at creation (COMPLETED only
//! when created at 0, with `MOTO_ECS_SERVICE_RUNNING` unset), so a service
//! created above 0 would never look stable.

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, PortMapping};
use aws_sdk_ecs::Client;
use aws_types::SdkConfig;

use super::unique;

/// What a test deploys onto.
#[derive(Debug, Clone)]
pub struct EcsFixture {
    /// The cluster's name.
    pub cluster: String,
    /// The blue service's name.
    pub blue: String,
    /// The green service's name.
    pub green: String,
    /// The ARN of the task definition both services start on.
    pub task_definition: String,
}

/// An ECS client on `config` (so that a test needs no direct dependency on
/// the ECS SDK to use [`ecs_fixture`]).
pub fn client(config: &SdkConfig) -> Client {
    Client::new(config)
}

/// A cluster, a task definition `order-api:2.4.0` with one container `app`,
/// and two services on it; blue scaled to `blue_count`, green at zero.
pub async fn ecs_fixture(ecs: &Client, blue_count: i32) -> EcsFixture {
    let cluster = unique("bg-cluster");
    ecs.create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .expect("create cluster");
    let td = ecs
        .register_task_definition()
        .family(unique("order-api"))
        .container_definitions(
            ContainerDefinition::builder()
                .name("app")
                .image("order-api:2.4.0")
                .memory(512)
                .cpu(256)
                .essential(true)
                .port_mappings(PortMapping::builder().container_port(8080).build())
                .environment(
                    KeyValuePair::builder()
                        .name("LOG_LEVEL")
                        .value("info")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("register task definition")
        .task_definition()
        .unwrap()
        .task_definition_arn
        .clone()
        .unwrap();
    let blue = unique("order-api-blue");
    let green = unique("order-api-green");
    for name in [&blue, &green] {
        ecs.create_service()
            .cluster(&cluster)
            .service_name(name)
            .task_definition(&td)
            .desired_count(0)
            .send()
            .await
            .expect("create service");
    }
    if blue_count > 0 {
        ecs.update_service()
            .cluster(&cluster)
            .service(&blue)
            .desired_count(blue_count)
            .send()
            .await
            .expect("scale blue");
    }
    EcsFixture {
        cluster,
        blue,
        green,
        task_definition: td,
    }
}

/// What one service holds, as `DescribeServices` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// desiredCount.
    pub desired: i32,
    /// runningCount.
    pub running: i32,
    /// The task definition's ARN.
    pub task_definition: String,
    /// The image of the task definition's first container.
    pub image: String,
    /// The secrets of that container: (environment variable, `valueFrom`).
    pub secrets: Vec<(String, String)>,
}

/// The state of `service` in `cluster`.
pub async fn service_state(ecs: &Client, cluster: &str, service: &str) -> ServiceState {
    let out = ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .expect("describe the service");
    let svc = out
        .services()
        .iter()
        .find(|s| s.service_name.as_deref() == Some(service))
        .unwrap_or_else(|| panic!("service {service} in cluster {cluster}: {out:?}"));
    let task_definition = svc.task_definition.clone().unwrap_or_default();
    let td = ecs
        .describe_task_definition()
        .task_definition(&task_definition)
        .send()
        .await
        .expect("describe the task definition");
    let container = td
        .task_definition()
        .and_then(|t| t.container_definitions().first())
        .cloned()
        .unwrap_or_else(|| panic!("task definition {task_definition} has a container"));
    ServiceState {
        desired: svc.desired_count,
        running: svc.running_count,
        task_definition,
        image: container.image.clone().unwrap_or_default(),
        secrets: container
            .secrets()
            .iter()
            .map(|s| (s.name.clone(), s.value_from.clone()))
            .collect(),
    }
}
