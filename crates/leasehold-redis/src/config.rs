//! [`RedisConfig`]: the options of a [`RedisBackend`], from a
//! `redis://`, `rediss://` or `redis+unix://` URL or built in code.

use std::fmt;
use std::time::Duration;

use leasehold_core::config::{BackendConfig, SharedConfig, apply_query, boolean, redact_url};
use leasehold_core::{LockError, SharedClock, system_clock};

use crate::RedisBackend;

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
    pub(crate) client: redis::Client,
    pub(crate) shared: SharedConfig,
    pub(crate) notifications: bool,
    pub(crate) clock: SharedClock,
}

impl RedisConfig {
    /// The options of the server behind an existing client (its connection
    /// info, credentials, database and TLS settings are used as they are),
    /// with every other option at its default.
    pub fn from_client(client: redis::Client) -> Self {
        RedisConfig {
            client,
            shared: SharedConfig::default(),
            notifications: true,
            clock: system_clock(),
        }
    }

    /// The option names `redis+unix://` knows beside the shared ones:
    /// [`RedisConfig::OPTIONS`] and the client's `db`, `user` and `pass`.
    pub const UNIX_OPTIONS: &'static [&'static str] =
        &["notifications", "protocol", "db", "user", "pass"];

    leasehold_core::shared_setters!();

    /// Whether waiters are woken by pub/sub release messages (default on;
    /// option `notifications`); off, they only poll and no pub/sub
    /// connection is made.
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
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

    const SCHEMES: &'static [&'static str] = &["redis", "rediss", "redis+unix"];

    const OPTIONS: &'static [&'static str] = &["notifications", "protocol"];

    /// Parses `redis://[user][:password@]host[:port][/db][?options]`,
    /// `rediss://` for TLS (`#insecure` accepts any certificate), or
    /// `redis+unix:///path/to/socket?db=1`. Durations take a unit (`2s`,
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
        apply_query(
            &scheme,
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            own,
            |name, value| {
                match name {
                    "notifications" => notifications = boolean(name, value)?,
                    "protocol" => passed.push((name.to_owned(), value.to_owned())),
                    "db" | "user" | "pass" if unix => {
                        passed.push((name.to_owned(), value.to_owned()))
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
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
        let client = redis::Client::open(client_url.as_str())
            .map_err(|e| LockError::Config(format!("redis url {:?}: {e}", shown())))?;
        Ok(RedisConfig {
            shared,
            notifications,
            ..Self::from_client(client)
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

/// Shows the server's address, never its password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("shared", &self.shared)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
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
        let info = config.client.get_connection_info();
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
        assert_eq!(unix.client.get_connection_info().redis_settings().db(), 3);
        assert!(!format!("{unix:?}").contains("pw"));
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
