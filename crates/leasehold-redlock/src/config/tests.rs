//! The Redlock URL grammar: servers, options, TLS, and what errors show.

use super::*;

#[test]
fn each_server_gets_the_credentials_database_and_tls_of_the_url() {
    let parsed =
        parse("redlock://app:s%40cret@h1:6379,h2:6380,h3/2?namespace=billing&tls=true").unwrap();
    assert_eq!(
        parsed.nodes,
        [
            "rediss://app:s%40cret@h1:6379/2",
            "rediss://app:s%40cret@h2:6380/2",
            "rediss://app:s%40cret@h3/2"
        ]
    );
    assert_eq!(parsed.options, [("namespace".into(), "billing".into())]);
}

#[test]
fn plain_hosts_without_options_parse() {
    let parsed = parse("redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").unwrap();
    assert_eq!(parsed.nodes.len(), 3);
    assert_eq!(parsed.nodes[0], "redis://127.0.0.1:1");
    assert!(parsed.options.is_empty());
}

#[test]
fn malformed_urls_are_config_errors_that_hide_the_password() {
    for url in [
        "redis://h1:1",
        "redlock://",
        "redlock://h1:1,,h2:2",
        "redlock://h1:1/notadb",
        "redlock://h1:1?tls=maybe",
        "redlock:/u:pw@h1:1",
    ] {
        assert!(
            matches!(parse(url), Err(LockError::Config(_))),
            "{url} parsed"
        );
    }
    let error = parse("redlock://u:hunter2@h1:1/x").unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn query_values_are_form_decoded() {
    let parsed = parse("redlock://h1:1?namespace=a%2Fb+c&tls=false").unwrap();
    assert_eq!(parsed.options, [("namespace".into(), "a/b c".into())]);
    assert_eq!(parsed.nodes, ["redis://h1:1"]);
}

#[test]
fn fractions_stay_below_one() {
    assert!(fraction("f", "0.05").is_ok());
    assert!(fraction("f", "1.5").is_err());
}

const HOSTS: &str = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";

/// Issue 11: `?namspace=billing` used to be refused only by luck of the
/// option list; every misspelt option is refused naming the closest one,
/// before any server is contacted.
#[tokio::test]
async fn a_misspelt_option_is_refused_naming_the_closest_known_one() {
    for (option, hint) in [
        ("namspace=billing", "namespace"),
        ("timout=1s", "timeout"),
        ("drift_fixd=2ms", "drift_fixed"),
        ("min_node_timeot=5ms", "min_node_timeout"),
        ("tlss=true", "tls"),
    ] {
        let url = format!("redlock://{HOSTS}?{option}");
        match RedlockBackend::connect(&url).await {
            Err(LockError::Config(message)) => assert!(
                message.contains(&format!("did you mean `{hint}`")),
                "{url}: expected a hint for {hint}, got {message}"
            ),
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
}

/// Durations take the one grammar: a unit is required, a year at most.
#[test]
fn durations_need_a_unit() {
    for option in [
        "timeout=250",
        "min_node_timeout=10",
        "drift_fixed=2",
        "timeout=9000h",
    ] {
        let url = format!("redlock://{HOSTS}?{option}");
        let name = option.split('=').next().unwrap();
        match RedlockConfig::from_url(&url) {
            Err(LockError::Config(message)) => {
                assert!(message.contains(name), "{url}: {message}")
            }
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
    let config = RedlockConfig::from_url(&format!(
        "redlock://{HOSTS}?timeout=250ms&drift_fixed=3ms&drift_factor=0.02\
         &node_timeout_factor=0.1&min_node_timeout=5ms&poll=20ms&holder=web-1&ttl=5s"
    ))
    .expect("well-formed options");
    assert_eq!(config.shared.timeout, Some(Duration::from_millis(250)));
    assert_eq!(config.shared.drift.unwrap().fixed, Duration::from_millis(3));
    assert_eq!(config.shared.poll, Some(Duration::from_millis(20)));
    assert_eq!(config.shared.holder.as_deref(), Some("web-1"));
    assert_eq!(config.node_timeout_factor, 0.1);
    assert_eq!(config.min_node_timeout, Duration::from_millis(5));
    assert_eq!(config.servers.len(), 3);
}

/// Issue 11: no error and no `Debug` output made from a URL shows its
/// password, whether the URL is well formed or not.
#[tokio::test]
async fn no_error_or_debug_output_shows_the_password() {
    let secret = "S3nt1nel/+@pw";
    let encoded = "S3nt1nel%2F%2B%40pw";
    let urls = [
        format!("redlock://app:{encoded}@{HOSTS}?namspace=x"),
        format!("redlock://app:{encoded}@{HOSTS}/notadb"),
        format!("redlock://app:{secret}@{HOSTS}"),
        format!("redlock://app:{secret}@h1:1,,h2:2"),
        format!("redlock:/app:{secret}@{HOSTS}"),
        format!("redlock://app:{secret}@h1:notaport,h2:2,h3:3"),
        format!("redlock://app:{encoded}@127.0.0.1:1?timeout=10"),
        format!("redlock://app:{encoded}@127.0.0.1:1,127.0.0.1:1"),
    ];
    for url in &urls {
        let result = match RedlockConfig::from_url(url) {
            Ok(config) => {
                let shown = format!("{config:?}");
                assert!(!shown.contains("S3nt1nel"), "{url}: {shown}");
                RedlockBackend::connect_with(config.timeout(Duration::from_millis(200))).await
            }
            Err(error) => Err(error),
        };
        let shown = match &result {
            Ok(backend) => format!("{backend:?}"),
            Err(error) => format!("{error} {error:?}"),
        };
        for needle in [secret, encoded, "S3nt1nel"] {
            assert!(
                !shown.contains(needle),
                "{url} showed its password: {shown}"
            );
        }
    }
}

/// Issue 13: all servers TLS or none; the TLS files need `tls=true`, and a
/// missing one is a `Config` error naming its option.
#[test]
fn tls_is_all_or_nothing_and_its_files_need_tls() {
    let mixed = RedlockConfig::from_node_urls(["rediss://h1:1", "redis://h2:2", "rediss://h3:3"]);
    match mixed {
        Err(LockError::Config(message)) => assert!(message.contains("2 of 3"), "{message}"),
        other => panic!("mixed TLS accepted: {other:?}"),
    }
    let plain = RedlockConfig::from_url(&format!("redlock://{HOSTS}?ca=/etc/ca.pem"));
    match plain {
        Err(LockError::Config(message)) => assert!(message.contains("tls=true"), "{message}"),
        other => panic!("TLS files without tls=true accepted: {other:?}"),
    }
    let missing = RedlockConfig::from_url(&format!(
        "redlock://{HOSTS}?tls=true&ca=/nonexistent/ca.pem"
    ));
    match missing {
        Err(LockError::Config(message)) => {
            assert!(
                message.contains("`ca`") && message.contains("/nonexistent/ca.pem"),
                "{message}"
            )
        }
        other => panic!("a missing CA file accepted: {other:?}"),
    }
    let secure = RedlockConfig::from_url(&format!("redlock://{HOSTS}?tls=true")).unwrap();
    assert_eq!(secure.servers.len(), 3);
}

#[test]
fn notifications_are_on_unless_the_url_turns_them_off() {
    let on = RedlockConfig::from_url("redlock://h1:6379,h2:6379,h3:6379").unwrap();
    assert!(on.notifications);
    let off =
        RedlockConfig::from_url("redlock://h1:6379,h2:6379,h3:6379?notifications=false").unwrap();
    assert!(!off.notifications);
    assert!(matches!(
        RedlockConfig::from_url("redlock://h1:6379?notifications=sometimes"),
        Err(LockError::Config(_))
    ));
}
