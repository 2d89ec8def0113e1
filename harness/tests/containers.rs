//! The container provider against a real Docker engine: a Redis container that restarts,
//! crashes, pauses and keeps its address; a missing image named in one line; the leftovers of
//! a SIGKILLed run reaped by label and nothing else.
//!
//! Without Docker these tests say so on stderr and pass, unless `HC_DOCKER=1` (set by
//! `./ci/test` when Docker answers), where Docker failing is a failure.

mod support;

use std::time::Duration;

use harness::infra::container::{self, ContainerRedis, OWNER_LABEL};
use harness::infra::{Persistence, RedisNode, RedisSpec, Restart};
use support::docker_or_skip;
use testcontainers::bollard;

async fn get(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap()
}

async fn set(url: &str, key: &str, value: &str) {
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut c).await.unwrap();
}

async fn ping_within(url: &str, limit: Duration) -> bool {
    let probe = async {
        let mut c = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    matches!(tokio::time::timeout(limit, probe).await, Ok(Some(_)))
}

async fn exists(d: &bollard::Docker, id: &str) -> bool {
    d.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await.is_ok()
}

#[tokio::test]
async fn a_container_redis_restarts_crashes_pauses_and_keeps_its_address() {
    let Some(d) = docker_or_skip("a_container_redis_restarts_crashes_pauses_and_keeps_its_address").await else {
        return;
    };
    let mut r = ContainerRedis::start(RedisSpec::default().persistence(Persistence::AofAlways)).await.unwrap();
    let (url, id) = (r.url(), r.id().to_string());
    set(&url, "k", "v1").await;
    r.restart(Restart::Crash).await.unwrap();
    assert_eq!(get(&url, "k").await.as_deref(), Some("v1"), "appendfsync always keeps a write across SIGKILL");
    set(&url, "k", "v2").await;
    r.restart(Restart::Graceful).await.unwrap();
    assert_eq!(get(&url, "k").await.as_deref(), Some("v2"));
    assert_eq!(r.url(), url, "the address survives restarts");
    r.freeze().await.unwrap();
    assert!(!ping_within(&url, Duration::from_millis(500)).await, "a paused server answered");
    r.thaw().await.unwrap();
    assert!(ping_within(&url, Duration::from_secs(5)).await, "no answer after unpause");
    r.stop(Restart::Crash).await.unwrap();
    assert!(!ping_within(&url, Duration::from_millis(500)).await, "a stopped server answered");
    r.start().await.unwrap();
    r.flush().await.unwrap();
    assert_eq!(get(&url, "k").await, None);
    drop(r);
    // testcontainers removes the container when its handle drops (on a thread of its own).
    let gone = harness::poll_until(Duration::from_secs(20), Duration::from_millis(100), || async {
        (!exists(&d, &id).await).then_some(())
    })
    .await;
    assert!(gone.is_some(), "container {id} outlived its handle");
}

#[tokio::test]
async fn a_missing_image_is_one_line_naming_it_and_how_to_build_it() {
    if docker_or_skip("a_missing_image_is_one_line_naming_it_and_how_to_build_it").await.is_none() {
        return;
    }
    let err = ContainerRedis::start_image(RedisSpec::default(), "hybrid-chaos/no-such-image:0").await.unwrap_err();
    let err = err.to_string();
    assert!(!err.contains('\n'), "{err}");
    assert!(err.contains("hybrid-chaos/no-such-image:0") && err.contains("hc_ensure_redis_image"), "{err}");
}

#[tokio::test]
async fn leftovers_of_a_dead_run_are_reaped_by_label_and_nothing_else() {
    let Some(d) = docker_or_skip("leftovers_of_a_dead_run_are_reaped_by_label_and_nothing_else").await else {
        return;
    };
    use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
    use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
    let image = container::image();
    container::require_image(&d, &image).await.unwrap();
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let make = |labels: Option<std::collections::HashMap<String, String>>| ContainerCreateBody {
        image: Some(image.clone()),
        labels,
        ..Default::default()
    };
    // A pid that cannot be running: what a SIGKILLed run leaves.
    let dead = std::collections::HashMap::from([(OWNER_LABEL.to_string(), "999999999:1".to_string())]);
    let orphan = d
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&format!("hc-orphan-{suffix}")).build()),
            make(Some(dead.clone())),
        )
        .await
        .unwrap()
        .id;
    let bystander = d
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&format!("hc-bystander-{suffix}")).build()),
            make(None),
        )
        .await
        .unwrap()
        .id;
    let net = format!("hc-orphan-net-{suffix}");
    d.create_network(NetworkCreateRequest { name: net.clone(), labels: Some(dead), ..Default::default() })
        .await
        .unwrap();

    let removed = container::reap_orphans(&d).await.unwrap();
    let (orphan_left, bystander_left) = (exists(&d, &orphan).await, exists(&d, &bystander).await);
    let net_left = d.inspect_network(&net, None::<bollard::query_parameters::InspectNetworkOptions>).await.is_ok();
    let _ = d.remove_container(&bystander, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await;
    assert!(removed >= 2, "removed {removed}");
    assert!(!orphan_left, "the dead run's container is still there");
    assert!(!net_left, "the dead run's network is still there");
    assert!(bystander_left, "a container without the label was touched");
}
