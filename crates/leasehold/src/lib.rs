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
//! | `redis://`, `rediss://` | `redis` | single Redis server |
//! | `redlock://h1:p1,h2:p2,h3:p3` | `redlock` | Redlock over N independent Redis servers |
//! | `etcd://h1:p1,h2:p2` | `etcd` | etcd cluster (sessions, FIFO) |
//! | `zk://h1:p1,h2:p2/namespace` | `zookeeper` | ZooKeeper ensemble (sessions, FIFO) |
//! | `postgres://..?mode=advisory\|table` | `postgres` | advisory locks on pinned sessions, or a lease table |
//! | `dynamodb://table?region=..&endpoint=..` | `dynamodb` | DynamoDB table (conditional writes) |
//!
//! Shared options (TTL, wait, namespace, timeouts, drift) come from query
//! parameters or [`Options`]; see [`Options`] for their names. A scheme whose
//! feature is off fails with [`LockError::Config`] naming the feature.
#![warn(missing_docs)]

mod options;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use leasehold_core::*;
pub use options::Options;

#[cfg(feature = "dynamodb")]
pub use leasehold_dynamodb as dynamodb;
#[cfg(feature = "etcd")]
pub use leasehold_etcd as etcd;
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
        .ttl(options.ttl)
        .retry(options.retry)
        .auto_extend(options.auto_extend)
        .build())
}

/// The backend named by `url`, and the options after the URL's query was
/// applied (for callers that build their own [`Locker`] or layers).
pub async fn open(
    url: &str,
    mut options: Options,
) -> Result<(Arc<dyn LockBackend>, Options), LockError> {
    let target = Target::parse(url, &mut options)?;
    let backend = target.connect(&options).await?;
    Ok((backend, options))
}

/// A parsed URL: scheme, the part after `://` up to `?`, and the query
/// parameters that belong to the backend.
#[derive(Debug)]
struct Target {
    scheme: String,
    rest: String,
    backend_query: Vec<(String, String)>,
}

impl Target {
    fn parse(url: &str, options: &mut Options) -> Result<Self, LockError> {
        // Errors show the URL only redacted: it may carry a password.
        let shown = leasehold_core::config::redact_url(url);
        let (scheme, after) = url.split_once("://").ok_or_else(|| {
            LockError::Config(format!("{shown:?} is not a URL: expected scheme://..."))
        })?;
        if scheme.is_empty() {
            return Err(LockError::Config(format!("{shown:?} has no scheme")));
        }
        let (rest, query) = after.split_once('?').unwrap_or((after, ""));
        let mut backend_query = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if !options.apply(&name, &value)? {
                backend_query.push((name.into_owned(), value.into_owned()));
            }
        }
        Ok(Target {
            scheme: scheme.to_ascii_lowercase(),
            rest: rest.to_owned(),
            backend_query,
        })
    }

    /// The URL to hand the backend: its scheme, host part and own parameters.
    #[allow(dead_code)]
    fn backend_url(&self) -> String {
        let mut url = format!("{}://{}", self.scheme, self.rest);
        if !self.backend_query.is_empty() {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(self.backend_query.iter())
                .finish();
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    /// The part after `://` with the backend's own parameters.
    #[allow(dead_code)]
    fn backend_url_rest(&self) -> String {
        let url = self.backend_url();
        url.split_once("://")
            .map_or(url.clone(), |(_, rest)| rest.to_owned())
    }

    /// For a scheme whose backend takes no options of its own: any left
    /// over is a typo of a shared one (or a mistake), never ignored.
    fn reject_backend_query(&self) -> Result<(), LockError> {
        match self.backend_query.first() {
            Some((name, _)) => Err(leasehold_core::config::unknown_option(
                &self.scheme,
                name,
                options::SHARED,
            )),
            None => Ok(()),
        }
    }

    async fn connect(&self, options: &Options) -> Result<Arc<dyn LockBackend>, LockError> {
        // Each arm hands the shared options to its backend's own builder:
        // `with_shared!(builder, options, namespace, timeout, drift)` names the
        // builder's three setters.
        #[allow(unused_macros)]
        macro_rules! with_shared {
            ($builder:expr, $namespace:ident, $timeout:ident, $drift:ident) => {{
                let mut builder = $builder;
                if let Some(namespace) = &options.namespace {
                    builder = builder.$namespace(namespace);
                }
                if let Some(timeout) = options.timeout {
                    builder = builder.$timeout(timeout);
                }
                if let Some(drift) = options.drift {
                    builder = builder.$drift(drift);
                }
                builder
            }};
        }
        let _ = options;
        match self.scheme.as_str() {
            "memory" => {
                self.reject_backend_query()?;
                Ok(shared_memory(self.rest.trim_end_matches('/')))
            }
            #[cfg(feature = "redis")]
            "redis" | "rediss" => {
                let builder = with_shared!(
                    leasehold_redis::RedisBackend::builder(),
                    namespace,
                    timeout,
                    drift
                );
                Ok(Arc::new(builder.connect(&self.backend_url()).await?))
            }
            #[cfg(feature = "redlock")]
            "redlock" => {
                let builder = with_shared!(
                    leasehold_redlock::RedlockBackend::builder(),
                    namespace,
                    timeout,
                    drift
                );
                Ok(Arc::new(builder.connect(&self.backend_url()).await?))
            }
            #[cfg(feature = "etcd")]
            "etcd" | "etcds" => {
                let etcd = with_shared!(
                    leasehold_etcd::EtcdOptions::new(),
                    namespace,
                    operation_timeout,
                    drift
                );
                Ok(Arc::new(
                    leasehold_etcd::EtcdBackend::connect_with(&self.backend_url(), etcd).await?,
                ))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let (postgres, url) =
                    leasehold_postgres::PostgresOptions::from_url(&self.backend_url())?;
                let postgres = with_shared!(postgres, namespace, operation_timeout, drift);
                Ok(Arc::new(
                    leasehold_postgres::PostgresBackend::connect_with(&url, postgres).await?,
                ))
            }
            #[cfg(feature = "zookeeper")]
            "zk" | "zookeeper" => {
                // ZooKeeper's namespace is a path and can be invalid: set it apart.
                let mut zk = leasehold_zookeeper::ZkOptions::from_url(&format!(
                    "zk://{}",
                    self.backend_url_rest()
                ))?;
                if let Some(namespace) = &options.namespace {
                    zk = zk.with_namespace(&format!("/{}", namespace.trim_start_matches('/')))?;
                }
                if let Some(timeout) = options.timeout {
                    zk = zk.with_operation_timeout(timeout);
                }
                if let Some(drift) = options.drift {
                    zk = zk.with_drift(drift);
                }
                Ok(Arc::new(leasehold_zookeeper::ZkBackend::connect(zk).await?))
            }
            #[cfg(feature = "dynamodb")]
            "dynamodb" => {
                let builder = leasehold_dynamodb::DynamoDbBuilder::from_url(&self.backend_url())?;
                let builder = with_shared!(builder, namespace, operation_timeout, drift);
                Ok(Arc::new(builder.connect().await?))
            }
            scheme => Err(unavailable_scheme(scheme)),
        }
    }
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
        "etcd" => Some("etcd"),
        "zk" | "zookeeper" => Some("zookeeper"),
        "postgres" | "postgresql" => Some("postgres"),
        "dynamodb" => Some("dynamodb"),
        _ => None,
    };
    match feature {
        Some(feature) => LockError::Config(format!(
            "the {scheme}:// scheme needs leasehold's cargo feature `{feature}`, which is off in this build"
        )),
        None => LockError::Config(format!(
            "unknown scheme {scheme}://; leasehold knows memory, redis, rediss, redlock, etcd, zk, postgres, dynamodb"
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

    #[test]
    fn a_scheme_whose_feature_is_off_names_the_feature() {
        for (scheme, feature) in [
            ("etcd", "etcd"),
            ("zk", "zookeeper"),
            ("postgres", "postgres"),
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
            locker.retry_policy().deadline,
            std::time::Duration::from_millis(250)
        );
        assert!(
            matches!(locker.ttl_policy(), TtlPolicy::Fixed(d) if *d == std::time::Duration::from_secs(7))
        );
    }
}
