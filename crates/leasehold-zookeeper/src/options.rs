//! Connection and behaviour options, and `zk://` URLs.

use std::time::Duration;

use leasehold_core::{Drift, LockError};

/// Options of a [`ZkBackend`](crate::ZkBackend).
///
/// ```
/// use leasehold_zookeeper::ZkOptions;
/// use std::time::Duration;
/// let options = ZkOptions::from_url("zk://127.0.0.1:2181,127.0.0.1:2182/apps/billing?session_timeout=6s&timeout=2s").unwrap();
/// assert_eq!(options.hosts, "127.0.0.1:2181,127.0.0.1:2182");
/// assert_eq!(options.namespace, "/apps/billing");
/// assert_eq!(options.session_timeout, Duration::from_secs(6));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ZkOptions {
    /// `host:port` list, comma separated (ZooKeeper's connect string without
    /// a chroot).
    pub hosts: String,
    /// Absolute path under which all lock nodes live: one application's
    /// namespace (its "chroot"). Created on demand as a persistent node.
    /// Default `/leasehold`.
    pub namespace: String,
    /// The session timeout asked of the server (it clamps it to
    /// `[2, 20] × tickTime`). It is also the longest validity a lease gets and
    /// how long a crashed holder keeps the lock. Default 10 s.
    pub session_timeout: Duration,
    /// The bound on every single store call; running out is
    /// [`LockError::Unavailable`]. Default 5 s.
    pub operation_timeout: Duration,
    /// While waiting in the queue, re-check the queue this often even without
    /// a watch event (the fallback for a lost notification). Default 2 s.
    pub recheck_interval: Duration,
    /// Subtracted from every lease's validity.
    pub drift: Drift,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            hosts: "127.0.0.1:2181".to_owned(),
            namespace: "/leasehold".to_owned(),
            session_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(5),
            recheck_interval: Duration::from_secs(2),
            drift: Drift::default(),
        }
    }
}

impl ZkOptions {
    /// Defaults with the given `host:port[,host:port]` list.
    pub fn new(hosts: impl Into<String>) -> Self {
        ZkOptions {
            hosts: hosts.into(),
            ..Self::default()
        }
    }

    /// Parses `zk://h1:p1,h2:p2/namespace?session_timeout=10s&timeout=5s&recheck=2s`.
    /// The path is the namespace (default `/leasehold`); durations take `ms`
    /// or `s` suffixes (bare numbers are milliseconds).
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| LockError::Config(format!("{url:?} is not a zk:// URL")))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if hosts.is_empty() || hosts.split(',').any(|h| h.trim().is_empty()) {
            return Err(LockError::Config(format!("{url:?} names no host")));
        }
        let mut options = ZkOptions::new(hosts);
        if !path.is_empty() && path != "/" {
            options = options.with_namespace(path.trim_end_matches('/'))?;
        }
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let duration = parse_duration(&value)
                .ok_or_else(|| LockError::Config(format!("{name}={value:?} is not a duration")))?;
            match name.as_ref() {
                "session_timeout" => options.session_timeout = duration,
                "timeout" => options.operation_timeout = duration,
                "recheck" => options.recheck_interval = duration,
                other => {
                    return Err(LockError::Config(format!(
                        "unknown zk:// option {other:?} (known: session_timeout, timeout, recheck)"
                    )));
                }
            }
        }
        Ok(options)
    }

    /// Sets [`ZkOptions::namespace`]; it must be an absolute ZooKeeper path
    /// (`/a/b`, no trailing slash, no empty, `.` or `..` segment).
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self, LockError> {
        let valid = namespace.starts_with('/')
            && namespace.len() > 1
            && namespace[1..]
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && valid_segment(s));
        if !valid {
            return Err(LockError::Config(format!(
                "namespace {namespace:?} is not an absolute ZooKeeper path like /leasehold/app"
            )));
        }
        self.namespace = namespace.to_owned();
        Ok(self)
    }

    /// Sets [`ZkOptions::session_timeout`].
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets [`ZkOptions::operation_timeout`].
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`ZkOptions::recheck_interval`].
    pub fn with_recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck_interval = interval;
        self
    }

    /// Sets [`ZkOptions::drift`].
    pub fn with_drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }
}

fn valid_segment(segment: &str) -> bool {
    segment.chars().all(|c| {
        let u = u32::from(c);
        !(u <= 0x1f
            || (0x7f..=0x9f).contains(&u)
            || (0xd800..=0xf8ff).contains(&u)
            || (0xfff0..=0xffff).contains(&u)
            || u > 0xffff)
    })
}

fn parse_duration(value: &str) -> Option<Duration> {
    if let Some(ms) = value.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = value.strip_suffix('s') {
        return s
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
    }
    value.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_without_path_uses_the_default_namespace() {
        let options = ZkOptions::from_url("zk://localhost:2181").unwrap();
        assert_eq!(options.hosts, "localhost:2181");
        assert_eq!(options.namespace, "/leasehold");
    }

    #[test]
    fn bad_urls_get_config_errors() {
        for url in [
            "redis://x",
            "zk://",
            "zk://a:1,,b:2",
            "zk://a:1/x/../y",
            "zk://a:1/x?nope=1",
            "zk://a:1?timeout=soon",
        ] {
            assert!(
                matches!(ZkOptions::from_url(url), Err(LockError::Config(_))),
                "{url:?} was accepted"
            );
        }
    }

    #[test]
    fn durations_take_ms_and_s() {
        let options =
            ZkOptions::from_url("zk://a:1/ns?timeout=250ms&recheck=1.5s&session_timeout=4000")
                .unwrap();
        assert_eq!(options.operation_timeout, Duration::from_millis(250));
        assert_eq!(options.recheck_interval, Duration::from_millis(1500));
        assert_eq!(options.session_timeout, Duration::from_secs(4));
    }
}
