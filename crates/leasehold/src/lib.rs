//! # leasehold
//!
//! Distributed locks (leases) with fencing tokens, over the store of your
//! choice, picked by a URL at run time and a cargo feature at build time. The
//! same program runs on every store; only the URL changes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold::LockError> {
//! // `memory://` needs no server; swap in `redis://127.0.0.1:6379` (feature
//! // `redis`) or any other scheme below without changing the code.
//! let locker = leasehold::connect("memory://?ttl=10s&wait=5s").await?;
//! let guard = locker.lock("invoices:2026-11").await?;
//! let token = guard.fencing_token(); // hand it to the resource you protect
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! | scheme | feature | backend |
//! |---|---|---|
//! | `memory://[name]` | (always) | [`MemoryBackend`]: one process; the same name shares one store |
//! | `redis://`, `rediss://?ca=..&cert=..&key=..` | `redis` | single Redis server (TLS with a private CA, mTLS) |
//! | `redis+sentinel://s1,s2,s3/master` | `redis` | the master the sentinels name, followed across failovers (`min_replicas=N` for grants that survive one) |
//! | `redis+cluster://n1:p1,n2:p2,n3:p3` | `redis` | Redis Cluster: each lock on its key's slot |
//! | `redlock://h1:p1,h2:p2,h3:p3` | `redlock` | Redlock over N independent Redis servers |
//! | `etcd://h1:p1,h2:p2`, `etcds://..?ca=..&cert=..&key=..` | `etcd` | etcd cluster (sessions, FIFO; TLS with a private CA, mTLS) |
//! | `zk://[user:password@]h1:p1,h2:p2/namespace` | `zookeeper` | ZooKeeper ensemble (sessions, FIFO); with credentials, digest auth and creator-only ACLs on lock nodes |
//! | `zks://[user:password@]h1:p1,h2:p2/namespace?ca=..&cert=..&key=..` | `zookeeper-tls` | the same over TLS (a private CA, mTLS) |
//! | `postgres://..?mode=advisory\|table` | `postgres` | advisory locks on pinned sessions, or a lease table |
//! | `mysql://..?mode=named\|table`, `mariadb://..` | `mysql` | `GET_LOCK` on watched pinned sessions, or a lease table (MySQL 5.7+ or MariaDB; CI runs MariaDB 10.11) |
//! | `dynamodb://table?region=..&endpoint=..` | `dynamodb` | DynamoDB table (conditional writes) |
//! | `file:///var/lock/app` | `file` | the processes of one host, no server: flock + fsync'd counter files (local file systems only, not NFS) |
//!
//! Shared options (TTL, wait, namespace, timeouts, drift) come from query
//! parameters or [`Options`]; see [`Options`] for their names. A scheme whose
//! feature is off fails with [`LockError::Config`] naming the feature.
#![warn(missing_docs)]

mod options;

/// The README's code blocks, compiled and run as doctests so the first
/// thing a newcomer copies works.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[cfg(any(
    feature = "redis",
    feature = "redlock",
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb",
    feature = "file"
))]
use leasehold_core::config::BackendConfig;

pub use leasehold_core::*;
pub use options::Options;

#[cfg(feature = "dynamodb")]
pub use leasehold_dynamodb as dynamodb;
#[cfg(feature = "etcd")]
pub use leasehold_etcd as etcd;
#[cfg(feature = "file")]
pub use leasehold_file as file;
#[cfg(feature = "mysql")]
pub use leasehold_mysql as mysql;
#[cfg(feature = "postgres")]
pub use leasehold_postgres as postgres;
#[cfg(feature = "redis")]
pub use leasehold_redis as redis;
#[cfg(feature = "redlock")]
pub use leasehold_redlock as redlock;
#[cfg(feature = "zookeeper")]
pub use leasehold_zookeeper as zookeeper;

/// Connects to the store named by `url` with default options (overridden by
/// the URL's query parameters) and returns a [`Locker`].
pub async fn connect(url: &str) -> Result<Locker, LockError> {
    connect_with(url, Options::new()).await
}

/// The environment variable [`connect_from_env`] reads.
pub const URL_ENV: &str = "LEASEHOLD_URL";

/// Connects to the store named by the `LEASEHOLD_URL` environment variable,
/// so one binary runs on any store by deployment configuration alone. A
/// missing or non-UTF-8 variable is a [`LockError::Config`] naming it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), leasehold::LockError> {
/// # unsafe { std::env::set_var("LEASEHOLD_URL", "memory://from-env?ttl=5s") };
/// let locker = leasehold::connect_from_env().await?;
/// locker.lock("nightly-report").await?.release().await?;
/// # Ok(()) }
/// ```
pub async fn connect_from_env() -> Result<Locker, LockError> {
    let url = std::env::var(URL_ENV).map_err(|error| {
        LockError::Config(format!(
            "{URL_ENV} must name the lock store (e.g. redis://127.0.0.1:6379): {error}"
        ))
    })?;
    connect(&url).await
}

/// Connects with `options`; the URL's query parameters override them.
pub async fn connect_with(url: &str, options: Options) -> Result<Locker, LockError> {
    let (backend, options) = open(url, options).await?;
    Ok(Locker::builder_from_arc(backend)
        .ttl(options.ttl_value().clone())
        .wait(options.wait_value().clone())
        .auto_extend(options.auto_extend_value())
        .build())
}

/// The backend named by `url`, and the options after the URL's query was
/// applied (for callers that build their own [`Locker`] or layers).
///
/// The URL's query overrides `options`. Locker options (`ttl`, `wait`,
/// `retry_min`, `retry_max`, `auto_extend`) go to the returned [`Options`];
/// shared store options (`namespace`, `timeout`, `poll`, `holder`,
/// `drift_*`) and the backend's own go to the backend's
/// [`BackendConfig`], exactly as the backend crate's
/// own `connect(url)` parses them.
pub async fn open(
    url: &str,
    mut options: Options,
) -> Result<(Arc<dyn LockBackend>, Options), LockError> {
    // Errors show the URL only redacted: it may carry a password.
    let shown = config::redact_url(url);
    let (scheme, after) = url.split_once("://").ok_or_else(|| {
        LockError::Config(format!("{shown:?} is not a URL: expected scheme://..."))
    })?;
    if scheme.is_empty() {
        return Err(LockError::Config(format!("{shown:?} has no scheme")));
    }
    let scheme = scheme.to_ascii_lowercase();
    let (rest, query) = after.split_once('?').unwrap_or((after, ""));
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    for (name, value) in &pairs {
        options.apply_locker(name, value)?;
    }
    let backend = match scheme.as_str() {
        "memory" => {
            // No store of its own to configure: anything but the shared and
            // locker names is a typo.
            let mut shared = config::SharedConfig::default();
            config::apply_query(
                "memory",
                pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                &mut shared,
                &[],
                |_, _| Ok(false),
            )?;
            // Checked like any backend's, though one process needs none.
            options.fill_shared(&mut shared);
            shared_memory(rest.trim_end_matches('/'))
        }
        #[cfg(feature = "redis")]
        s if redis::RedisConfig::SCHEMES.contains(&s) => {
            connect_config::<redis::RedisConfig>(url, &options).await?
        }
        #[cfg(feature = "redlock")]
        s if redlock::RedlockConfig::SCHEMES.contains(&s) => {
            connect_config::<redlock::RedlockConfig>(url, &options).await?
        }
        #[cfg(feature = "etcd")]
        s if etcd::EtcdConfig::SCHEMES.contains(&s) => {
            connect_config::<etcd::EtcdConfig>(url, &options).await?
        }
        #[cfg(feature = "zookeeper")]
        s if zookeeper::ZkConfig::SCHEMES.contains(&s) => {
            connect_config::<zookeeper::ZkConfig>(url, &options).await?
        }
        #[cfg(feature = "postgres")]
        s if postgres::PostgresConfig::SCHEMES.contains(&s) => {
            connect_config::<postgres::PostgresConfig>(url, &options).await?
        }
        #[cfg(feature = "mysql")]
        s if mysql::MysqlConfig::SCHEMES.contains(&s) => {
            connect_config::<mysql::MysqlConfig>(url, &options).await?
        }
        #[cfg(feature = "dynamodb")]
        s if dynamodb::DynamoDbConfig::SCHEMES.contains(&s) => {
            connect_config::<dynamodb::DynamoDbConfig>(url, &options).await?
        }
        #[cfg(feature = "file")]
        s if file::FileConfig::SCHEMES.contains(&s) => {
            connect_config::<file::FileConfig>(url, &options).await?
        }
        other => return Err(unavailable_scheme(other)),
    };
    Ok((backend, options))
}

/// Parses `url` with the backend's own config (as its crate's `connect(url)`
/// does), fills in the shared settings the URL left unset from `options`,
/// and connects.
#[cfg(any(
    feature = "redis",
    feature = "redlock",
    feature = "etcd",
    feature = "zookeeper",
    feature = "postgres",
    feature = "mysql",
    feature = "dynamodb",
    feature = "file"
))]
async fn connect_config<C: config::BackendConfig>(
    url: &str,
    options: &Options,
) -> Result<Arc<dyn LockBackend>, LockError> {
    let mut config = C::from_url(url)?;
    options.fill_shared(config.shared_mut());
    // Boxed: one store client future per arm made `open`'s type too deep
    // for the compiler once every store was in.
    Ok(Arc::new(Box::pin(config.connect()).await?))
}

/// The process-wide memory store called `name`.
fn shared_memory(name: &str) -> Arc<dyn LockBackend> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<MemoryBackend>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    stores
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(MemoryBackend::new()))
        .clone()
}

/// The error for a scheme that is unknown or whose feature is off.
fn unavailable_scheme(scheme: &str) -> LockError {
    let feature = match scheme {
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" => Some("redis"),
        "redlock" => Some("redlock"),
        "etcd" | "etcds" => Some("etcd"),
        "zk" | "zookeeper" => Some("zookeeper"),
        "zks" => Some("zookeeper-tls"),
        "postgres" | "postgresql" => Some("postgres"),
        "mysql" | "mariadb" => Some("mysql"),
        "dynamodb" => Some("dynamodb"),
        "file" => Some("file"),
        _ => None,
    };
    match feature {
        Some(feature) => LockError::Config(format!(
            "the {scheme}:// scheme needs leasehold's cargo feature `{feature}`, which is off in this build"
        )),
        None => LockError::Config(format!(
            "unknown scheme {scheme}://; leasehold knows memory, file, redis, rediss, redis+sentinel, redis+cluster, redlock, etcd, etcds, zk, zks, postgres, mysql, mariadb, dynamodb"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_urls_with_one_name_share_a_store() {
        let a = connect("memory://shared-test").await.unwrap();
        let b = connect("memory://shared-test").await.unwrap();
        let other = connect("memory://elsewhere").await.unwrap();
        let guard = a.try_lock("k").await.unwrap();
        assert!(matches!(
            b.try_lock("k").await,
            Err(LockError::Contended { .. })
        ));
        other.try_lock("k").await.unwrap().release().await.unwrap();
        guard.release().await.unwrap();
    }

    #[tokio::test]
    async fn malformed_urls_and_options_say_what_is_wrong() {
        let cases = [
            ("no-scheme", "not a URL"),
            ("://x", "no scheme"),
            ("gopher://x", "unknown scheme gopher"),
            ("memory://?ttl=fast", "ttl"),
            ("memory://?wait=1d", "wait"),
            ("memory://?colour=blue", "unknown option `colour`"),
            ("memory://?namspace=billing", "did you mean `namespace`"),
            ("memory://?wait=30", "needs a unit"),
        ];
        for (url, expected) in cases {
            let error = connect(url).await.unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{url}: expected {expected:?} in {error:?}"
            );
        }
    }

    /// `etcds://` reaches the etcd backend with TLS compiled in: a missing
    /// CA file is the `Config` error naming it, not "TLS needs a feature".
    #[cfg(feature = "etcd")]
    #[tokio::test]
    async fn etcds_urls_take_the_tls_files() {
        let error = connect("etcds://root:pw@127.0.0.1:1?ca=/nonexistent/leasehold-ca.pem")
            .await
            .unwrap_err();
        let shown = error.to_string();
        assert!(
            matches!(error, LockError::Config(_))
                && shown.contains("`ca`")
                && shown.contains("/nonexistent/leasehold-ca.pem"),
            "{shown}"
        );
    }

    /// `zks://` reaches the ZooKeeper backend with TLS compiled in: a
    /// missing CA file is the `Config` error naming it.
    #[cfg(feature = "zookeeper-tls")]
    #[tokio::test]
    async fn zks_urls_take_the_tls_files() {
        let error = connect("zks://app:pw@127.0.0.1:1/ns?ca=/nonexistent/leasehold-ca.pem")
            .await
            .unwrap_err();
        let shown = error.to_string();
        assert!(
            matches!(error, LockError::Config(_))
                && shown.contains("`ca`")
                && shown.contains("/nonexistent/leasehold-ca.pem")
                && !shown.contains("pw"),
            "{shown}"
        );
    }

    /// With ZooKeeper but not its TLS, `zks://` is a `Config` error naming
    /// the feature, never a plaintext connection.
    #[cfg(all(feature = "zookeeper", not(feature = "zookeeper-tls")))]
    #[tokio::test]
    async fn zks_urls_without_the_tls_feature_name_it() {
        let error = connect("zks://127.0.0.1:1?ca=/nonexistent/leasehold-ca.pem")
            .await
            .unwrap_err();
        let shown = error.to_string();
        assert!(
            matches!(error, LockError::Config(_)) && shown.contains("`zookeeper-tls`"),
            "{shown}"
        );
    }

    #[test]
    fn a_scheme_whose_feature_is_off_names_the_feature() {
        for (scheme, feature) in [
            ("etcd", "etcd"),
            ("etcds", "etcd"),
            ("zk", "zookeeper"),
            ("zks", "zookeeper-tls"),
            ("postgres", "postgres"),
            ("mysql", "mysql"),
            ("mariadb", "mysql"),
            ("redlock", "redlock"),
        ] {
            let error = unavailable_scheme(scheme).to_string();
            assert!(error.contains(&format!("feature `{feature}`")), "{error}");
        }
    }

    #[tokio::test]
    async fn query_options_reach_the_locker() {
        let locker = connect("memory://opts?ttl=7s&wait=250ms").await.unwrap();
        assert_eq!(
            locker.wait_policy().deadline,
            std::time::Duration::from_millis(250)
        );
        assert!(
            matches!(locker.ttl_policy(), TtlPolicy::Fixed(d) if *d == std::time::Duration::from_secs(7))
        );
    }
}
