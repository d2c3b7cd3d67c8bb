//! The container fixtures: labelled, restartable at the same address, and
//! removed when dropped.

use std::time::Duration;

use leasehold_conformance::Store;
use leasehold_conformance::fixtures::{self, LABEL};

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Without Docker the tests say they skipped (and fail under `CI=true`).
fn skipped_without_docker() -> bool {
    if fixtures::docker_available() {
        return false;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but no Docker engine answers"
    );
    eprintln!("SKIPPED: no Docker engine");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_is_labelled_survives_restart_at_same_port_and_is_removed_on_drop() {
    if skipped_without_docker() {
        return;
    }
    let container = fixtures::start(&fixtures::redis_spec(false))
        .await
        .expect("redis container starts");
    let id = container.id().to_owned();
    let label = docker(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{LABEL}\"}}}}"),
        &id,
    ]);
    assert_eq!(
        label,
        fixtures::run_id(),
        "the container must carry the run label"
    );

    let bound = docker(&["port", &id]);
    assert!(
        bound.lines().all(|line| line.contains("127.0.0.1:")),
        "ports must be published on loopback only, got {bound:?}"
    );

    container.pause().await.expect("pause");
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Paused}}", &id]),
        "true"
    );
    container.unpause().await.expect("unpause");

    let port = container.port;
    container.restart().await.expect("restart");
    fixtures::wait_for_port(port, Duration::from_secs(30))
        .await
        .expect("same port after restart");

    drop(container);
    // Removal happens in the background on drop; it must finish promptly.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !docker(&["ps", "-aq", "--filter", &format!("id={id}")]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "container {id} was not removed after drop"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_is_labelled_its_members_stop_and_start_and_drop_removes_them() {
    if skipped_without_docker() {
        return;
    }
    let network = fixtures::Network::create("fixtures-test").expect("network");
    let name = network.name().to_owned();
    assert_eq!(
        docker(&[
            "network",
            "inspect",
            "--format",
            &format!("{{{{index .Labels \"{LABEL}\"}}}}"),
            &name,
        ]),
        fixtures::run_id(),
        "the network must carry the run label"
    );
    let port = fixtures::free_port().expect("a free port");
    let spec = fixtures::redis_spec(false)
        .args(["--port", "6379"])
        .host_port(port)
        .on_network(&network, format!("{name}-member"));
    let container = fixtures::start(&spec).await.expect("member starts");
    assert_eq!(container.port, port, "the asked-for host port");
    let id = container.id().to_owned();
    assert_eq!(
        docker(&["inspect", "--format", "{{.HostConfig.NetworkMode}}", &id]),
        name
    );
    container.stop(Some(1)).await.expect("stop");
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &id]),
        "false"
    );
    container.start().await.expect("start at the same port");

    drop(network);
    assert!(
        docker(&["ps", "-aq", "--filter", &format!("id={id}")]).is_empty(),
        "dropping the network removes its members"
    );
    assert!(
        docker(&["network", "ls", "-q", "--filter", &format!("name=^{name}$")]).is_empty(),
        "and the network"
    );
    drop(container);
}
