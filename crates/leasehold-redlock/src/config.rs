//! [`RedlockConfig`]: the options of a [`RedlockBackend`], from a
//! `redlock://h1:p1,h2:p2,h3:p3` URL or built in code.

use std::fmt;
use std::time::Duration;

use leasehold_core::config::{
    BackendConfig, SharedConfig, apply_query, boolean, duration, invalid, redact_url,
};
use leasehold_core::{LockError, SharedClock, system_clock};

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
/// `min_node_timeout`, `tls`).
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
        }
    }

    /// One server per `redis://` / `rediss://` URL (each with its own
    /// credentials and database), every other option at its default.
    /// Nothing is contacted.
    pub fn from_node_urls(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self, LockError> {
        let servers = urls
            .into_iter()
            .map(|url| open(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_clients(servers))
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

    /// The monotonic clock leases are measured on (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

impl BackendConfig for RedlockConfig {
    type Backend = RedlockBackend;

    const SCHEMES: &'static [&'static str] = &["redlock"];

    const OPTIONS: &'static [&'static str] = &["node_timeout_factor", "min_node_timeout", "tls"];

    /// Parses `redlock://[user][:password@]h1:p1,h2:p2,h3:p3[/db][?options]`.
    /// The credentials and database apply to every server; `tls=true` makes
    /// every server `rediss://`. Durations take a unit (`250ms`, `2s`: a
    /// bare number is an error). An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never falls
    /// back to a default (`?namspace=billing` would share the default
    /// namespace). Errors never show the password. Nothing is contacted.
    fn from_url(url: &str) -> Result<Self, LockError> {
        let parsed = parse(url)?;
        let mut config = Self::from_node_urls(&parsed.nodes)?;
        let (mut factor, mut floor) = (config.node_timeout_factor, config.min_node_timeout);
        apply_query(
            "redlock",
            parsed.options.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut config.shared,
            Self::OPTIONS,
            |name, value| {
                match name {
                    "node_timeout_factor" => factor = fraction(name, value)?,
                    "min_node_timeout" => floor = duration(name, value)?,
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )?;
        Ok(config.node_timeout_factor(factor).min_node_timeout(floor))
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
            .finish_non_exhaustive()
    }
}

/// The client of one server's URL; its error shows the URL redacted.
fn open(url: &str) -> Result<redis::Client, LockError> {
    redis::Client::open(url)
        .map_err(|e| LockError::Config(format!("redis url {:?}: {e}", redact_url(url))))
}

/// A parsed Redlock URL: one `redis://` (or `rediss://`) URL per server and
/// the options from the query.
#[derive(Clone, Debug, PartialEq)]
struct ParsedUrl {
    nodes: Vec<String>,
    options: Vec<(String, String)>,
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
    Ok(ParsedUrl { nodes, options })
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
mod tests {
    use super::*;

    #[test]
    fn each_server_gets_the_credentials_database_and_tls_of_the_url() {
        let parsed =
            parse("redlock://app:s%40cret@h1:6379,h2:6380,h3/2?namespace=billing&tls=true")
                .unwrap();
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
}
