//! One grammar on every scheme: the same query gives the same shared
//! settings through every backend crate's own `XConfig::from_url` (which is
//! what `leasehold::connect` calls, too), and a bare-number duration or an
//! unknown option is a `Config` error naming it on every scheme, through the
//! backend crate and through the facade alike. (Built with at least one
//! store feature; CI builds them all.)
#![cfg(any(
    feature = "redis",
    feature = "redlock",
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "dynamodb"
))]

use std::time::Duration;

use leasehold::config::{BackendConfig, SharedConfig};
use leasehold::{Drift, LockError};

/// Every shared option, and the locker's, which backends accept and leave.
const QUERY: &str = "namespace=billing&timeout=1500ms&poll=250ms&holder=worker-3\
                     &drift_factor=0.02&drift_fixed=3ms&ttl=10s&wait=2s&auto_extend=false";

fn expected() -> SharedConfig {
    let mut shared = SharedConfig::default();
    shared.namespace = Some("billing".to_owned());
    shared.timeout = Some(Duration::from_millis(1500));
    shared.poll = Some(Duration::from_millis(250));
    shared.holder = Some("worker-3".to_owned());
    shared.drift = Some(Drift {
        factor: 0.02,
        fixed: Duration::from_millis(3),
    });
    shared
}

/// A URL of each compiled scheme, with `{q}` for the query.
fn schemes() -> Vec<(&'static str, String)> {
    [
        #[cfg(feature = "redis")]
        ("redis", "redis://127.0.0.1:1/0?{q}"),
        #[cfg(feature = "redlock")]
        (
            "redlock",
            "redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3?{q}",
        ),
        #[cfg(feature = "etcd")]
        ("etcd", "etcd://127.0.0.1:1?{q}"),
        #[cfg(feature = "zookeeper")]
        ("zk", "zk://127.0.0.1:1/app?{q}"),
        #[cfg(feature = "postgres")]
        ("postgres", "postgres://u@127.0.0.1:1/db?mode=table&{q}"),
        #[cfg(feature = "dynamodb")]
        (
            "dynamodb",
            "dynamodb://locks?region=us-east-1&endpoint=http://127.0.0.1:1&{q}",
        ),
    ]
    .into_iter()
    .map(|(scheme, url): (&'static str, &'static str)| (scheme, url.to_owned()))
    .collect()
}

/// The shared settings `url` gives through its backend crate's own config.
fn shared_of(scheme: &str, url: &str) -> Result<SharedConfig, LockError> {
    fn of<C: BackendConfig>(url: &str) -> Result<SharedConfig, LockError> {
        Ok(C::from_url(url)?.shared().clone())
    }
    match scheme {
        #[cfg(feature = "redis")]
        "redis" => of::<leasehold::redis::RedisConfig>(url),
        #[cfg(feature = "redlock")]
        "redlock" => of::<leasehold::redlock::RedlockConfig>(url),
        #[cfg(feature = "etcd")]
        "etcd" => of::<leasehold::etcd::EtcdConfig>(url),
        #[cfg(feature = "zookeeper")]
        "zk" => of::<leasehold::zookeeper::ZkConfig>(url),
        #[cfg(feature = "postgres")]
        "postgres" => of::<leasehold::postgres::PostgresConfig>(url),
        #[cfg(feature = "dynamodb")]
        "dynamodb" => of::<leasehold::dynamodb::DynamoDbConfig>(url),
        other => unreachable!("no config for {other}: {url}"),
    }
}

#[test]
fn the_same_query_gives_the_same_shared_settings_on_every_scheme() {
    let expected = expected();
    // The reference: the core's own parse of each pair.
    let mut reference = SharedConfig::default();
    for pair in QUERY.split('&') {
        let (name, value) = pair.split_once('=').unwrap();
        reference.apply(name, value).unwrap();
    }
    assert_eq!(reference, expected);
    for (scheme, template) in schemes() {
        let url = template.replace("{q}", QUERY);
        let shared = shared_of(scheme, &url).unwrap_or_else(|e| panic!("{scheme}: {e}"));
        assert_eq!(
            shared, expected,
            "{scheme} parsed the shared options differently"
        );
    }
}

#[test]
fn bare_numbers_and_unknown_options_are_config_errors_naming_them_everywhere() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut templates = schemes();
    templates.push(("memory", "memory://equivalence?{q}".to_owned()));
    for (scheme, template) in templates {
        for (query, named) in [
            ("timeout=5", "timeout"),
            ("poll=250", "poll"),
            ("ttl=30", "ttl"),
            ("namspace=billing", "namespace"),
            ("colour=blue", "colour"),
        ] {
            let url = template.replace("{q}", query);
            let through_facade = runtime
                .block_on(leasehold::connect(&url))
                .err()
                .unwrap_or_else(|| panic!("{url}: the facade accepted it"));
            assert!(
                matches!(&through_facade, LockError::Config(m) if m.contains(named)),
                "{url} through the facade: expected a Config error naming {named}, got {through_facade}"
            );
            if scheme == "memory" || query.starts_with("ttl") {
                // The locker's options are the facade's to check.
                continue;
            }
            let through_backend = shared_of(scheme, &url)
                .err()
                .unwrap_or_else(|| panic!("{url}: the backend crate accepted it"));
            assert!(
                matches!(&through_backend, LockError::Config(m) if m.contains(named)),
                "{url} through the backend crate: expected a Config error naming {named}, got {through_backend}"
            );
        }
    }
}
