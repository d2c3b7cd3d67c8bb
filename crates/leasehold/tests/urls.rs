//! Every scheme's URL, with extreme or malformed option values and a
//! sentinel secret: `connect` gives a locker or a typed error in bounded
//! time, never a panic, and no error or `Debug` output shows the secret.
//!
//! Servers are named at 127.0.0.1 port 1, where nothing listens, so a URL
//! that parses is refused at once; nothing leaves this machine.

use std::time::Duration;

use leasehold::{LockError, connect};
use proptest::prelude::*;

/// Never printed by a correct build.
const SENTINEL: &str = "Sent1nel/Secr+t";

/// One URL per scheme compiled into this build, with `{q}` where the query
/// options go.
fn templates() -> Vec<String> {
    let secret = SENTINEL.replace('/', "%2F").replace('+', "%2B");
    #[allow(unused_mut)]
    let mut urls = vec!["memory://props?{q}".to_owned()];
    #[cfg(feature = "redis")]
    {
        urls.push(format!("redis://app:{secret}@127.0.0.1:1/0?{{q}}"));
        urls.push(format!("redis:/app:{SENTINEL}@127.0.0.1:1?{{q}}"));
    }
    #[cfg(feature = "redlock")]
    urls.push(format!(
        "redlock://app:{secret}@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3?{{q}}"
    ));
    #[cfg(feature = "etcd")]
    urls.push(format!("etcd://root:{secret}@127.0.0.1:1?{{q}}"));
    #[cfg(feature = "zookeeper")]
    urls.push("zk://127.0.0.1:1/props?{q}".to_owned());
    #[cfg(feature = "postgres")]
    {
        urls.push(format!("postgres://app:{secret}@127.0.0.1:1/db?{{q}}"));
        urls.push(format!("postgres://app:{SENTINEL}@127.0.0.1:1/db?{{q}}"));
    }
    #[cfg(feature = "dynamodb")]
    {
        urls.push(format!(
            "dynamodb://AKIDEXAMPLE:{secret}@locks?region=us-east-1&endpoint=http://127.0.0.1:1&{{q}}"
        ));
        urls.push(format!(
            "dynamodb://AKIDEXAMPLE:{SENTINEL}@locks?region=us-east-1&{{q}}"
        ));
    }
    urls
}

fn option_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "ttl",
        "wait",
        "timeout",
        "retry_min",
        "retry_max",
        "drift_fixed",
        "drift_factor",
        "namespace",
        "auto_extend",
        "namspace",
        "tiemout",
        "mod",
        "password",
    ])
}

fn option_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0s",
            "1ms",
            "250ms",
            "30",
            "-1s",
            "NaNs",
            "1e308s",
            "8761h",
            "10000000000000000000s",
            "99999999999999999999999999h",
            "forever",
            "",
            "%00",
            "true",
            "1.5",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn check(url: &str) -> Result<(), TestCaseError> {
    let outcome = runtime()
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), connect(url)).await });
    let result = outcome.map_err(|_| {
        TestCaseError::fail(format!(
            "connect did not answer within 30 s: {}",
            leasehold::config::redact_url(url)
        ))
    })?;
    let shown = match &result {
        Ok(locker) => format!("{locker:?}"),
        Err(error) => format!("{error} / {error:?}"),
    };
    prop_assert!(
        !shown.contains("Sent1nel") && !shown.contains("Secr"),
        "the secret leaked from {}: {shown}",
        leasehold::config::redact_url(url)
    );
    if let Err(error) = &result {
        prop_assert!(
            matches!(
                error,
                LockError::Config(_) | LockError::Unavailable { .. } | LockError::Backend { .. }
            ),
            "unexpected error kind: {error:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_scheme_parses_extreme_options_without_panic_or_leak(
        options in prop::collection::vec((option_name(), option_value()), 0..3),
        template in 0usize..16,
    ) {
        let templates = templates();
        let template = &templates[template % templates.len()];
        let query = options
            .iter()
            .map(|(name, value)| format!("{name}={}", url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()))
            .collect::<Vec<_>>()
            .join("&");
        check(&template.replace("{q}", &query))?;
    }
}

#[test]
fn a_secret_in_an_option_value_is_not_echoed() {
    for template in templates() {
        let secret = SENTINEL.replace('/', "%2F").replace('+', "%2B");
        check(&template.replace("{q}", &format!("password={secret}"))).unwrap();
    }
}

#[test]
fn a_misspelt_option_names_the_closest_known_one_on_every_scheme() {
    // The malformed templates fail before any option is read.
    for template in templates().into_iter().filter(|t| t.contains("://")) {
        let url = template.replace("{q}", "namspace=billing");
        let error = runtime().block_on(connect(&url)).err().unwrap_or_else(|| {
            panic!(
                "{} accepted a misspelt option",
                leasehold::config::redact_url(&url)
            )
        });
        assert!(
            error.to_string().contains("namespace"),
            "{}: {error}",
            leasehold::config::redact_url(&url)
        );
    }
}
