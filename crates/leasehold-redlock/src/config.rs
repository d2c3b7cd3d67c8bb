//! [`RedlockConfig`]: the options of a [`RedlockBackend`], from a
//! `redlock://h1:p1,h2:p2,h3:p3` URL or built in code.

use std::fmt;
use std::time::Duration;

use leasehold_core::config::{
    BackendConfig, SharedConfig, apply_query, boolean, duration, invalid, redact_url,
};
use leasehold_core::{LockError, SharedClock, system_clock};

use leasehold_redis::TlsFiles;

use crate::RedlockBackend;

/// The default per-call timeout (connects, `inspect`, and the ceiling of the
/// per-node timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default per-node timeout as a fraction of the TTL (redsync's 0.05).
pub const DEFAULT_NODE_TIMEOUT_FACTOR: f64 = 0.05;

/// The default floor of the per-node timeout.
pub const DEFAULT_MIN_NODE_TIMEOUT: Duration = Duration::from_millis(10);

/// The default namespace (the same as `leasehold-redis`'s, so both see the
/// same key layout).
pub const DEFAULT_NAMESPACE: &str = leasehold_redis::DEFAULT_NAMESPACE;

/// How to reach N independent Redis servers and how to lock on them: the
/// shared options ([`SharedConfig`]: `namespace` default `"leasehold"`,
/// `timeout` default 2 s, `poll`, `holder`, `drift_factor`/`drift_fixed`
/// default 1 % + 2 ms) and Redlock's own (`node_timeout_factor`,
/// `min_node_timeout`, `notifications`, `tls`, and with `tls=true` the TLS files `ca`,
/// `cert`, `key` that every server is reached with).
///
/// `holder` is stored in every server's lock key beside the owner token
/// ([`RedlockBackend::holder`]) and shown by `inspect` and `list`.
///
/// ```
/// use leasehold_core::config::BackendConfig;
/// use leasehold_redlock::RedlockConfig;
/// use std::time::Duration;
/// let config = RedlockConfig::from_url("redlock://:secret@h1:6379,h2:6379,h3:6379?namespace=billing")?
///     .timeout(Duration::from_secs(1));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), leasehold_core::LockError>(())
/// ```
#[derive(Clone)]
pub struct RedlockConfig {
    pub(crate) servers: Vec<redis::Client>,
    pub(crate) shared: SharedConfig,
    pub(crate) node_timeout_factor: f64,
    pub(crate) min_node_timeout: Duration,
    pub(crate) clock: SharedClock,
    pub(crate) tls: TlsFiles,
    pub(crate) notifications: bool,
}

impl RedlockConfig {
    /// One server per existing client (their credentials, database and TLS
    /// settings are used as they are), every other option at its default.
    pub fn from_clients(servers: Vec<redis::Client>) -> Self {
        RedlockConfig {
            servers,
            shared: SharedConfig::default(),
            node_timeout_factor: DEFAULT_NODE_TIMEOUT_FACTOR,
            min_node_timeout: DEFAULT_MIN_NODE_TIMEOUT,
            clock: system_clock(),
            tls: TlsFiles::default(),
            notifications: true,
        }
    }

    /// One server per `redis://` / `rediss://` URL (each with its own
    /// credentials and database), every other option at its default.
    /// All servers must use TLS or none ([`LockError::Config`] otherwise):
    /// a quorum half in plaintext is as exposed as all of it. Nothing is
    /// contacted.
    pub fn from_node_urls(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self, LockError> {
        Self::from_node_urls_with_tls(urls, TlsFiles::default())
    }

    /// [`RedlockConfig::from_node_urls`], every server reached with the
    /// same TLS files (one CA, one client certificate); they need
    /// `rediss://` URLs. The files are read here.
    pub fn from_node_urls_with_tls(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
        tls: TlsFiles,
    ) -> Result<Self, LockError> {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let secure = urls
            .iter()
            .filter(|url| url.to_ascii_lowercase().starts_with("rediss://"))
            .count();
        if secure != 0 && secure != urls.len() {
            return Err(LockError::Config(format!(
                "redlock: {secure} of {} servers use TLS; use TLS on all of them or none",
                urls.len()
            )));
        }
        let servers = urls
            .iter()
            .map(|url| leasehold_redis::tls_client(&tls, url, &redact_url(url)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedlockConfig {
            tls,
            ..Self::from_clients(servers)
        })
    }

    leasehold_core::shared_setters!();

    /// Each server's share of an acquire, extend or release: `ttl × factor`
    /// (default 0.05; option `node_timeout_factor`, from 0 up to 1),
    /// clamped to [`RedlockConfig::min_node_timeout`] and the per-call
    /// timeout.
    pub fn node_timeout_factor(mut self, factor: f64) -> Self {
        self.node_timeout_factor = factor;
        self
    }

    /// The floor of the per-node timeout (default 10 ms; option
    /// `min_node_timeout`).
    pub fn min_node_timeout(mut self, floor: Duration) -> Self {
        self.min_node_timeout = floor;
        self
    }

    /// Whether waiters are woken by the servers' release messages (default
    /// on; option `notifications`): a pub/sub connection to every server,
    /// made when the first waiter waits. Off, waiters only poll.
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

impl BackendConfig for RedlockConfig {
    type Backend = RedlockBackend;

    const SCHEMES: &'static [&'static str] = &["redlock"];

    const OPTIONS: &'static [&'static str] = &[
        "notifications",
        "node_timeout_factor",
        "min_node_timeout",
        "tls",
        "ca",
        "cert",
        "key",
    ];

    /// Parses `redlock://[user][:password@]h1:p1,h2:p2,h3:p3[/db][?options]`.
    /// The credentials and database apply to every server; `tls=true` makes
    /// every server `rediss://`, and then `ca`, `cert` and `key` (PEM files:
    /// one private CA and one client certificate for every server, see
    /// [`TlsFiles`]) apply to all of them; without `tls=true` they are a
    /// [`LockError::Config`]. Durations take a unit (`250ms`, `2s`: a
    /// bare number is an error). An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never falls
    /// back to a default (`?namspace=billing` would share the default
    /// namespace). Errors never show the password. Nothing is contacted.
    fn from_url(url: &str) -> Result<Self, LockError> {
        let parsed = parse(url)?;
        let (mut factor, mut floor) = (DEFAULT_NODE_TIMEOUT_FACTOR, DEFAULT_MIN_NODE_TIMEOUT);
        let mut shared = SharedConfig::default();
        let mut tls = TlsFiles::default();
        let mut notifications = true;
        apply_query(
            "redlock",
            parsed.options.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            Self::OPTIONS,
            |name, value| {
                match name {
                    "notifications" => notifications = boolean(name, value)?,
                    "node_timeout_factor" => factor = fraction(name, value)?,
                    "min_node_timeout" => floor = duration(name, value)?,
                    // Named `redis` like the errors of reading the files (`tls_client`).
                    _ if tls.set(leasehold_redis::NAME, name, value)? => {}
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
        if !tls.is_empty() && !parsed.tls {
            return Err(LockError::Config(format!(
                "redlock url {:?}: the options ca, cert and key need tls=true",
                redact_url(url)
            )));
        }
        let config = RedlockConfig {
            shared,
            ..Self::from_node_urls_with_tls(&parsed.nodes, tls)?
        };
        Ok(config
            .node_timeout_factor(factor)
            .min_node_timeout(floor)
            .notifications(notifications))
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    /// Connects ([`RedlockBackend::connect_with`]).
    async fn connect(self) -> Result<RedlockBackend, LockError> {
        RedlockBackend::connect_with(self).await
    }
}

/// Shows the servers' addresses, never a password.
impl fmt::Debug for RedlockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|client| client.get_connection_info().addr().to_string())
            .collect();
        f.debug_struct("RedlockConfig")
            .field("servers", &servers)
            .field("shared", &self.shared)
            .field("node_timeout_factor", &self.node_timeout_factor)
            .field("min_node_timeout", &self.min_node_timeout)
            .field("tls", &self.tls)
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

/// A parsed Redlock URL: one `redis://` (or `rediss://`) URL per server and
/// the options from the query.
#[derive(Clone, Debug, PartialEq)]
struct ParsedUrl {
    nodes: Vec<String>,
    options: Vec<(String, String)>,
    tls: bool,
}

/// Splits a Redlock URL into per-server Redis URLs. The credentials and the
/// database apply to every server; `tls=true` makes them `rediss://`.
fn parse(url: &str) -> Result<ParsedUrl, LockError> {
    // Errors show the URL with its password hidden (even when malformed).
    let bad = |why: &str| LockError::Config(format!("redlock url {:?}: {why}", redact_url(url)));
    let rest = url
        .strip_prefix("redlock://")
        .ok_or_else(|| bad("the scheme must be redlock://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(bad("the path must be a database number"));
    }
    let mut options = Vec::new();
    let mut scheme = "redis";
    // Query values are form-decoded (`%2F`, and `+` for a space), as the
    // facade encodes them; the credentials (userinfo) are not touched here.
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name == "tls" {
            scheme = if boolean(&name, &value)? {
                "rediss"
            } else {
                "redis"
            };
        } else {
            options.push((name.into_owned(), value.into_owned()));
        }
    }
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(bad("a server address is empty (two commas, or none given)"));
        }
        if host.contains(['/', '?', '#', '@']) {
            return Err(bad("a server address contains a URL delimiter"));
        }
        let mut node = format!("{scheme}://");
        if let Some(userinfo) = userinfo {
            node.push_str(userinfo);
            node.push('@');
        }
        node.push_str(host);
        if !path.is_empty() {
            node.push('/');
            node.push_str(path);
        }
        nodes.push(node);
    }
    Ok(ParsedUrl {
        nodes,
        options,
        tls: scheme == "rediss",
    })
}

/// A fraction option (`0.05`), at least 0 and below 1.
fn fraction(name: &str, value: &str) -> Result<f64, LockError> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(invalid(
            name,
            value,
            "expected a number from 0 up to (not including) 1",
        )),
    }
}

#[cfg(test)]
mod tests;
