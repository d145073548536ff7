//! An ECS cluster with a blue and a green service in moto. Services are
//! created at desiredCount 0 (moto keeps the rolloutState of creation:
//! COMPLETED only at 0) and then scaled with UpdateService.

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, PortMapping};
use aws_sdk_ecs::Client;

use super::unique;

/// What a test deploys onto.
#[derive(Debug, Clone)]
pub struct EcsFixture {
    pub cluster: String,
    pub blue: String,
    pub green: String,
    pub task_definition: String,
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
