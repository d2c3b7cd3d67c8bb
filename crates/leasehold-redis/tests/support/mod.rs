//! Test servers: a `redis:7.0` container (published on 127.0.0.1 only,
//! labelled `leasehold.test`, removed on drop) or `LEASEHOLD_TEST_REDIS_URL`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A Redis server for one test.
pub struct Server {
    /// Where it listens.
    pub url: String,
    /// The container, when we started one (fault injection needs it).
    pub container: Option<ContainerAsync<GenericImage>>,
}

/// The run label value: `LEASEHOLD_TEST_RUN`, else this process's id.
pub fn run_id() -> String {
    std::env::var("LEASEHOLD_TEST_RUN").unwrap_or_else(|_| format!("pid-{}", std::process::id()))
}

/// A server: `LEASEHOLD_TEST_REDIS_URL` when set (then `args` are ignored and
/// `None` is returned if the test needs a container), else a fresh container
/// running `redis-server args..`.
pub async fn server(args: &[&str], needs_container: bool) -> Option<Server> {
    if let Ok(url) = std::env::var("LEASEHOLD_TEST_REDIS_URL") {
        if needs_container || !args.is_empty() {
            eprintln!(
                "SKIPPED: this test needs its own container; LEASEHOLD_TEST_REDIS_URL is set"
            );
            return None;
        }
        return Some(Server {
            url,
            container: None,
        });
    }
    let port = free_port();
    let image = std::env::var("LEASEHOLD_REDIS_IMAGE").unwrap_or_else(|_| "redis:7.0".into());
    let (name, tag) = image.split_once(':').unwrap_or((&image, "latest"));
    let mut cmd = vec!["redis-server".to_string()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let request = GenericImage::new(name, tag)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_label("leasehold.test", run_id())
        .with_cmd(cmd)
        .with_startup_timeout(Duration::from_secs(60))
        .with_host_config_modifier(move |config| {
            config.publish_all_ports = Some(false);
            config.port_bindings = Some(HashMap::from([(
                "6379/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            )]));
        });
    match request.start().await {
        Ok(container) => Some(Server {
            url: format!("redis://127.0.0.1:{port}"),
            container: Some(container),
        }),
        Err(error) => {
            let message = format!("SKIPPED: cannot start a {image} container: {error}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message} (CI=true: a skipped store is a failure)");
            }
            eprintln!("{message}");
            None
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
