//! URL options and secrets: misspelt options are refused with a hint,
//! durations need a unit, and no error or `Debug` output shows a password.

mod support;

use std::time::Duration;

use leasehold_core::LockError;
use leasehold_core::config::BackendConfig;
use leasehold_redis::{RedisBackend, RedisConfig};

/// Nothing listens on port 1: a URL that parses fails fast with
/// `Unavailable`, one that does not with `Config`.
const NOWHERE: &str = "127.0.0.1:1";

async fn connect(url: &str) -> Result<RedisBackend, LockError> {
    let config = RedisConfig::from_url(url)?.timeout(Duration::from_millis(300));
    RedisBackend::connect_with(config).await
}

/// Issue 11: `redis://…?namspace=billing` ran in the shared default
/// namespace. Every misspelt option is now refused, naming the closest one,
/// before anything is sent.
#[tokio::test]
async fn a_misspelt_option_is_refused_naming_the_closest_known_one() {
    for (url, hint) in [
        (format!("redis://{NOWHERE}/0?namspace=billing"), "namespace"),
        (format!("rediss://{NOWHERE}?timout=1s"), "timeout"),
        (format!("redis://{NOWHERE}?drift_fixd=2ms"), "drift_fixed"),
        (
            format!("redis://{NOWHERE}?notification=false"),
            "notifications",
        ),
        ("redis+unix:///tmp/none.sock?dbb=1".to_owned(), "db"),
    ] {
        match connect(&url).await {
            Err(LockError::Config(message)) => assert!(
                message.contains(&format!("did you mean `{hint}`")),
                "{url}: expected a hint for {hint}, got {message}"
            ),
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
}

/// Durations take the one grammar: a unit is required, a year at most.
#[tokio::test]
async fn durations_in_the_url_need_a_unit() {
    for option in ["timeout=250", "drift_fixed=2", "timeout=9000h"] {
        let url = format!("redis://{NOWHERE}?{option}");
        match connect(&url).await {
            Err(LockError::Config(message)) => assert!(
                message.contains(option.split('=').next().unwrap()),
                "{url}: {message}"
            ),
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
}

/// The options reach the backend (and `protocol` the client).
#[tokio::test]
async fn url_options_set_the_namespace_timeout_and_notifications() {
    let Some(server) = support::server(&[], false).await else {
        return;
    };
    let url = format!(
        "{}/0?namespace=bill%2Fing&timeout=1500ms&drift_factor=0.02&drift_fixed=3ms\
         &notifications=false&protocol=resp3",
        server.url
    );
    let backend = RedisBackend::connect(&url).await.expect("connect");
    assert_eq!(backend.node().layout().namespace(), "bill/ing");
    assert_eq!(backend.node().timeout(), Duration::from_millis(1500));
    assert_eq!(backend.release_subscriptions(), 0);
    assert!(
        backend.subscribe_releases().await.is_err(),
        "notifications are off"
    );
}

/// Issue 11: the password appeared in `connect`'s error for a malformed
/// `redis:/user:pw@host`. No error and no `Debug` output made from a URL
/// with a sentinel password shows it, well formed or not.
#[tokio::test]
async fn no_error_or_debug_output_shows_the_password() {
    let sentinel = "S3nt1nel";
    let urls = [
        format!("redis://user:{sentinel}@{NOWHERE}/0"),
        format!("redis:/user:{sentinel}@{NOWHERE}"),
        format!("redis:user:{sentinel}@{NOWHERE}"),
        format!("redis://user:{sentinel}@127.0.0.1:notaport"),
        format!("redis://user:{sentinel}/x@{NOWHERE}"),
        format!("redis://:{sentinel}@{NOWHERE}/notadb"),
        format!("redis://:{sentinel}@{NOWHERE}?namspace=x"),
        format!("redis://:{sentinel}@{NOWHERE}?timeout=10"),
        format!("redis://:{sentinel}@{NOWHERE}?protocol=resp9"),
        format!("rediss://:{sentinel}@{NOWHERE}/#bogus"),
        format!("redis+unix:///tmp/none.sock?pass={sentinel}&bogus=1"),
        format!("redis+unix:///tmp/none.sock?pass={sentinel}"),
        format!("redis://user:{sentinel}@0.0.0.0:6379"),
    ];
    for url in &urls {
        let shown = match connect(url).await {
            Ok(backend) => format!("{backend:?}"),
            Err(error) => format!("{error} {error:?}"),
        };
        println!("{url} -> {shown}");
        assert!(
            !shown.contains(sentinel),
            "{url} showed its password: {shown}"
        );
    }
}
