//! [`RedisConfig`]: the options of a [`RedisBackend`], from a
//! `redis://`, `rediss://` or `redis+unix://` URL or built in code.

use std::fmt;
use std::time::Duration;

use leasehold_core::config::{
    BackendConfig, SharedConfig, apply_query, boolean, duration, invalid, redact_url,
};
use leasehold_core::{LockError, SharedClock, system_clock};

use crate::RedisBackend;
use crate::cluster::ClusterTarget;
use crate::replicas::ReplicaRule;
use crate::sentinel::SentinelTarget;
use crate::tls::TlsFiles;

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "leasehold";

/// Schemes the Redis client also parses, accepted by
/// [`RedisConfig::from_url`] as spellings of [`RedisConfig::SCHEMES`]
/// (`unix` and `valkey+unix` for `redis+unix`, `valkey`/`valkeys` for
/// `redis`/`rediss`).
const ALIASES: &[&str] = &["unix", "valkey", "valkeys", "valkey+unix"];

/// How to reach one Redis server and how to lock on it: the shared options
/// ([`SharedConfig`]: `namespace` default `"leasehold"`, `timeout` default
/// 2 s, `poll`, `holder`, `drift_factor`/`drift_fixed` default 1 % + 2 ms)
/// and Redis's own (`notifications`, and the client's `protocol`; for
/// `redis+unix://` also the client's `db`, `user` and `pass`).
///
/// `holder` is stored in every lock key's value beside the owner token
/// ([`RedisBackend::holder`]) and shown by `inspect` and `list`.
///
/// ```
/// use leasehold_core::config::BackendConfig;
/// use leasehold_redis::RedisConfig;
/// use std::time::Duration;
/// let config = RedisConfig::from_url("redis://:secret@127.0.0.1:6379/0?namespace=billing")?
///     .timeout(Duration::from_secs(1));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), leasehold_core::LockError>(())
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) target: Target,
    pub(crate) shared: SharedConfig,
    pub(crate) notifications: bool,
    pub(crate) clock: SharedClock,
    pub(crate) tls: TlsFiles,
    pub(crate) replicas: Option<ReplicaRule>,
}

/// Where the server is.
#[derive(Clone)]
pub(crate) enum Target {
    /// One address.
    Direct(redis::Client),
    /// The master a set of sentinels names.
    Sentinel(SentinelTarget),
    /// A Redis Cluster.
    Cluster(ClusterTarget),
}

impl RedisConfig {
    /// The options of the server behind an existing client (its connection
    /// info, credentials, database and TLS settings are used as they are),
    /// with every other option at its default.
    pub fn from_client(client: redis::Client) -> Self {
        RedisConfig {
            target: Target::Direct(client),
            shared: SharedConfig::default(),
            notifications: true,
            clock: system_clock(),
            tls: TlsFiles::default(),
            replicas: None,
        }
    }

    /// The option names `redis+unix://` knows beside the shared ones:
    /// [`RedisConfig::OPTIONS`] and the client's `db`, `user` and `pass`.
    pub const UNIX_OPTIONS: &'static [&'static str] =
        &["notifications", "protocol", "db", "user", "pass"];

    /// The TLS files (`ca`, `cert`, `key`) a `rediss://` URL was given
    /// (empty: the built-in web roots, no client certificate).
    pub fn tls_files(&self) -> &TlsFiles {
        &self.tls
    }

    leasehold_core::shared_setters!();

    /// Whether waiters are woken by pub/sub release messages (default on;
    /// option `notifications`); off, they only poll and no pub/sub
    /// connection is made.
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
        self
    }

    /// Requires `rule` for every grant and renewal (options `min_replicas`
    /// and `replica_timeout`, default 500 ms): after the script, `WAIT`
    /// must report `min_replicas` replicas within `replica_timeout`, else a
    /// grant is undone and the call is [`LockError::Unavailable`] (a
    /// renewal is not counted). `None` (the default): a write counts when
    /// the master has it.
    pub fn replica_rule(mut self, rule: Option<ReplicaRule>) -> Self {
        self.replicas = rule;
        self
    }

    /// The monotonic clock leases are measured on (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

impl BackendConfig for RedisConfig {
    type Backend = RedisBackend;

    const SCHEMES: &'static [&'static str] = &[
        "redis",
        "rediss",
        "redis+unix",
        "redis+sentinel",
        "redis+cluster",
    ];

    const OPTIONS: &'static [&'static str] = &[
        "notifications",
        "protocol",
        "ca",
        "cert",
        "key",
        "min_replicas",
        "replica_timeout",
        "tls",
    ];

    /// Parses `redis://[user][:password@]host[:port][/db][?options]`,
    /// `rediss://` for TLS (`#insecure` accepts any certificate), or
    /// `redis+unix:///path/to/socket?db=1`. `rediss://` takes `ca` (a PEM
    /// file of the CA certificates to trust instead of the web roots), and
    /// `cert` with `key` (PEM files of a client certificate and its key, for
    /// mutual TLS); the files are read here, and a missing or unreadable one
    /// is a [`LockError::Config`] naming the option ([`TlsFiles`]). These
    /// options on a plain `redis://` URL are a `Config` error too: asking
    /// for certificates never yields plaintext.
    ///
    /// `redis+sentinel://[user[:password]@]s1:26379,s2,s3/master[/db]`
    /// finds the master named `master` through the sentinels (port 26379
    /// when left out) and follows it across failovers; the credentials and
    /// database are the master's (the sentinels are reached without them).
    /// Every scheme but `redis+unix` takes `min_replicas` (a count, at
    /// least 1) and `replica_timeout` (see [`RedisConfig::replica_rule`]).
    ///
    /// `redis+cluster://[user[:password]@]n1:p1,n2:p2,n3:p3` connects to a
    /// Redis Cluster through those seed nodes (database 0 only; no
    /// `protocol` option: the backend picks each connection's).
    ///
    /// **TLS on a topology**: `redis+sentinel://…?tls=true` and
    /// `redis+cluster://…?tls=true` reach every server with TLS (the
    /// sentinels and the masters they name; every cluster node), taking
    /// the same `ca`, `cert` and `key` as `rediss://`, one set for all
    /// servers. An option, not a `rediss+…` scheme, so the facade's scheme
    /// table stays as it is. Those files without `tls=true` are a `Config`
    /// error, and so is `tls` on `redis://`, `rediss://` or
    /// `redis+unix://` (the scheme says it there). Every server's name (the
    /// address the client reaches it at: a sentinel's as given, a master's
    /// or a cluster node's as announced) is checked against its
    /// certificate. Durations take a unit (`2s`,
    /// `500ms`: a bare number is an error). An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never
    /// falls back to a default (`?namspace=billing` would share the default
    /// namespace with every other application). Errors never show the
    /// password, even for a malformed URL. Nothing is contacted.
    fn from_url(url: &str) -> Result<Self, LockError> {
        let shown = || redact_url(url);
        let (rest, fragment) = match url.split_once('#') {
            Some((rest, fragment)) => (rest, Some(fragment)),
            None => (url, None),
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let scheme = base
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default();
        if !Self::SCHEMES.contains(&scheme.as_str()) && !ALIASES.contains(&scheme.as_str()) {
            return Err(LockError::Config(format!(
                "redis url {:?}: the scheme must be one of {}",
                shown(),
                Self::SCHEMES.join(", ")
            )));
        }
        let unix = scheme.ends_with("unix");
        let own = if unix {
            Self::UNIX_OPTIONS
        } else {
            Self::OPTIONS
        };
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let mut shared = SharedConfig::default();
        let mut notifications = true;
        let mut passed = Vec::new();
        let mut tls = TlsFiles::default();
        let (mut min_replicas, mut replica_timeout) = (None, None);
        let mut tls_on = None;
        apply_query(
            &scheme,
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            own,
            |name, value| {
                match name {
                    "notifications" => notifications = boolean(name, value)?,
                    "tls" if !unix => tls_on = Some(boolean(name, value)?),
                    _ if !unix && tls.set(crate::NAME, name, value)? => {}
                    "min_replicas" if !unix => min_replicas = Some(count(name, value)?),
                    "replica_timeout" if !unix => replica_timeout = Some(duration(name, value)?),
                    "protocol" => passed.push((name.to_owned(), value.to_owned())),
                    "db" | "user" | "pass" if unix => {
                        passed.push((name.to_owned(), value.to_owned()))
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
        let replicas = match (min_replicas, replica_timeout) {
            (Some(min_replicas), timeout) => Some(ReplicaRule {
                min_replicas,
                timeout: timeout.unwrap_or(ReplicaRule::DEFAULT_TIMEOUT),
            }),
            (None, Some(_)) => {
                return Err(LockError::Config(
                    "redis option `replica_timeout` needs `min_replicas`".into(),
                ));
            }
            (None, None) => None,
        };
        let topology = scheme == "redis+cluster" || scheme == "redis+sentinel";
        if tls_on.is_some() && !topology {
            return Err(LockError::Config(format!(
                "redis url {:?}: the option `tls` is for redis+sentinel:// and redis+cluster:// \
                 (one server: rediss:// is TLS, redis:// is not)",
                shown()
            )));
        }
        let target = if scheme == "redis+cluster" {
            if !passed.is_empty() {
                return Err(LockError::Config(format!(
                    "redis url {:?}: redis+cluster takes no `protocol` option",
                    shown()
                )));
            }
            let tls = crate::tls::topology(&tls, tls_on.unwrap_or(false), &shown())?;
            Target::Cluster(ClusterTarget::parse(base, &shown(), tls)?)
        } else if scheme == "redis+sentinel" {
            let tls = crate::tls::topology(&tls, tls_on.unwrap_or(false), &shown())?;
            Target::Sentinel(SentinelTarget::parse(base, &shown(), &passed, tls)?)
        } else {
            let mut client_url = base.to_owned();
            if !passed.is_empty() {
                client_url.push('?');
                client_url.push_str(
                    &url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(passed)
                        .finish(),
                );
            }
            if let Some(fragment) = fragment {
                client_url.push('#');
                client_url.push_str(fragment);
            }
            Target::Direct(crate::tls::tls_client(&tls, &client_url, &shown())?)
        };
        Ok(RedisConfig {
            target,
            shared,
            notifications,
            tls,
            replicas,
            clock: system_clock(),
        })
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    /// Connects ([`RedisBackend::connect_with`]).
    async fn connect(self) -> Result<RedisBackend, LockError> {
        RedisBackend::connect_with(self).await
    }
}

/// Shows the address or the sentinels, never a password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Direct(client) => write!(f, "{}", client.get_connection_info().addr()),
            Target::Sentinel(target) => target.fmt(f),
            Target::Cluster(target) => target.fmt(f),
        }
    }
}

/// Shows the server's address, never its password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("server", &self.target)
            .field("shared", &self.shared)
            .field("notifications", &self.notifications)
            .field("tls", &self.tls)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// A replica count: a whole number, at least 1.
fn count(name: &str, value: &str) -> Result<u32, LockError> {
    match value.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            name,
            value,
            "expected a whole number of replicas, at least 1",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::WaitPolicy;

    #[test]
    fn the_url_sets_shared_and_own_options_and_passes_the_clients_on() {
        let config = RedisConfig::from_url(
            "redis://:pw@127.0.0.1:6379/2?namespace=bill%2Fing&timeout=1500ms&poll=50ms\
             &holder=web-1&drift_factor=0.02&drift_fixed=3ms&notifications=false\
             &protocol=resp3&ttl=5s",
        )
        .unwrap();
        assert_eq!(config.shared.namespace.as_deref(), Some("bill/ing"));
        assert_eq!(config.shared.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.shared.poll, Some(Duration::from_millis(50)));
        assert_eq!(config.shared.holder.as_deref(), Some("web-1"));
        let drift = config.shared.drift.unwrap();
        assert_eq!(drift.fixed, Duration::from_millis(3));
        assert!(!config.notifications);
        let Target::Direct(client) = &config.target else {
            panic!("a direct target")
        };
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(
            info.redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
    }

    #[test]
    fn other_schemes_and_unix_only_options_elsewhere_are_refused() {
        assert!(matches!(
            RedisConfig::from_url("notredis://x"),
            Err(LockError::Config(_))
        ));
        let err = RedisConfig::from_url("redis://h?db=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option `db`"), "{err}");
        let unix = RedisConfig::from_url("redis+unix:///run/redis.sock?db=3&pass=pw").unwrap();
        let Target::Direct(client) = &unix.target else {
            panic!("a direct target")
        };
        assert_eq!(client.get_connection_info().redis_settings().db(), 3);
        assert!(!format!("{unix:?}").contains("pw"));
    }

    #[test]
    fn topologies_take_tls_as_an_option_and_files_only_with_it() {
        for url in [
            "redis+cluster://n1:7000,n2:7001?tls=true",
            "redis+sentinel://s1,s2/m?tls=true",
        ] {
            let config = RedisConfig::from_url(url).unwrap();
            let tls = match &config.target {
                Target::Cluster(target) => target.tls.is_some(),
                Target::Sentinel(target) => target.tls.is_some(),
                Target::Direct(_) => false,
            };
            assert!(tls, "{url}: {config:?}");
        }
        let plain = RedisConfig::from_url("redis+cluster://n1:7000?tls=false").unwrap();
        assert!(matches!(&plain.target, Target::Cluster(t) if t.tls.is_none()));
        for (url, says) in [
            ("redis+cluster://n1:7000?ca=/etc/ca.pem", "tls=true"),
            ("redis+sentinel://s1/m?ca=/etc/ca.pem", "tls=true"),
            ("redis://h?tls=true", "rediss://"),
            ("rediss://h?tls=true", "rediss://"),
            ("redis+cluster://n1:7000?tls=maybe", "tls"),
        ] {
            let error = RedisConfig::from_url(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
        let missing = RedisConfig::from_url("redis+cluster://n1:7000?tls=true&ca=/nonexistent.pem")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("`ca`"), "{missing}");
    }

    #[test]
    fn a_cluster_takes_the_replica_rule() {
        let config =
            RedisConfig::from_url("redis+cluster://n1:7000?min_replicas=1&replica_timeout=200ms")
                .unwrap();
        assert_eq!(
            config.replicas,
            Some(ReplicaRule {
                min_replicas: 1,
                timeout: Duration::from_millis(200)
            })
        );
    }

    #[test]
    fn poll_caps_both_delays() {
        let wait = WaitPolicy::default();
        assert_eq!(wait.polling_at(None), wait);
        let capped = wait.polling_at(Some(Duration::from_millis(5)));
        assert_eq!(capped.min_delay, Duration::from_millis(5));
        assert_eq!(capped.max_delay, Duration::from_millis(5));
        assert_eq!(capped.deadline, wait.deadline);
    }
}
