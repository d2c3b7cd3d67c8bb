//! Connection and behaviour options, and `zk://` URLs.

use std::time::Duration;

use leasehold_core::config;
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
    /// The timeout of the session that serves calls holding no lock
    /// (`inspect`, [`ZkBackend::client`](crate::ZkBackend::client)); the
    /// server clamps it to `[2, 20] × tickTime`. Leases live in sessions of
    /// their own TTL class instead (see the crate docs), so this no longer
    /// decides how long a crashed holder keeps a lock. Default 10 s.
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
    /// The path is the namespace (default `/leasehold`); durations follow the
    /// one grammar of [`config::duration`] (`250ms`, `2s`, `1m`; a bare number
    /// is an error); an unknown option is an error naming the closest known
    /// one. Known: `session_timeout`, `timeout`, `recheck`, and the shared
    /// `namespace` (instead of the path), `drift_factor`, `drift_fixed`.
    ///
    /// There is no authentication option: a URL with user information
    /// (`zk://user:password@host`) is refused, and the error shows it only as
    /// [`config::redact_url`] prints it.
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        let Some(rest) = url.strip_prefix("zk://") else {
            // Only a plain scheme is quoted: without `://` the text before
            // the first `:` may be a user name followed by a password.
            let scheme = url.split_once("://").map(|(scheme, _)| scheme).filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            });
            return Err(LockError::Config(match scheme {
                Some(scheme) => format!("a ZooKeeper URL starts with zk://, got {scheme}://"),
                None => "a ZooKeeper URL starts with zk://".to_owned(),
            }));
        };
        if rest.contains('@') {
            return Err(LockError::Config(format!(
                "zk:// URLs carry no user information (digest authentication is not supported): {}",
                config::redact_url(url)
            )));
        }
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
            match name.as_ref() {
                "session_timeout" => options.session_timeout = config::duration(&name, &value)?,
                "timeout" => options.operation_timeout = config::duration(&name, &value)?,
                "recheck" => options.recheck_interval = config::duration(&name, &value)?,
                "namespace" => {
                    options =
                        options.with_namespace(&format!("/{}", value.trim_start_matches('/')))?
                }
                "drift_factor" => {
                    let factor: f64 = value.parse().map_err(|_| {
                        config::invalid(&name, &value, "expected a number like 0.01")
                    })?;
                    if !(0.0..1.0).contains(&factor) {
                        return Err(config::invalid(&name, &value, "must be in [0, 1)"));
                    }
                    options.drift.factor = factor;
                }
                "drift_fixed" => options.drift.fixed = config::duration(&name, &value)?,
                other => return Err(config::unknown_option("zk", other, KNOWN_OPTIONS)),
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

/// The URL options `zk://` knows.
const KNOWN_OPTIONS: &[&str] = &[
    "session_timeout",
    "timeout",
    "recheck",
    "namespace",
    "drift_factor",
    "drift_fixed",
];

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
            "zk://a:1?timeout=250",
            "zk://a:1?sesion_timeout=2s",
            "zk://a:1?drift_factor=1.5",
            "zk://u:S3cret@a:1",
        ] {
            assert!(
                matches!(ZkOptions::from_url(url), Err(LockError::Config(_))),
                "{url:?} was accepted"
            );
        }
    }

    #[test]
    fn durations_take_a_unit_and_bare_numbers_are_errors() {
        let options =
            ZkOptions::from_url("zk://a:1/ns?timeout=250ms&recheck=1.5s&session_timeout=4s")
                .unwrap();
        assert_eq!(options.operation_timeout, Duration::from_millis(250));
        assert_eq!(options.recheck_interval, Duration::from_millis(1500));
        assert_eq!(options.session_timeout, Duration::from_secs(4));
        // Bare numbers meant milliseconds here and seconds on etcd: now an error.
        let error = ZkOptions::from_url("zk://a:1?session_timeout=4000").unwrap_err();
        assert!(error.to_string().contains("unit"), "{error}");
    }

    #[test]
    fn a_misspelt_option_names_the_closest_known_one() {
        let error = ZkOptions::from_url("zk://a:1?sesion_timeout=2s").unwrap_err();
        assert!(
            error.to_string().contains("did you mean `session_timeout`"),
            "{error}"
        );
    }

    #[test]
    fn user_information_is_refused_without_showing_the_password() {
        let error = ZkOptions::from_url("zk://app:S3ntinel@a:1/ns").unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("S3ntinel"), "{shown}");
        let error = ZkOptions::from_url("zk://app:S3nt/inel@a:1").unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("S3nt"), "{shown}");
    }

    #[test]
    fn shared_options_apply() {
        let options = ZkOptions::from_url(
            "zk://a:1?namespace=apps/billing&drift_factor=0.02&drift_fixed=5ms",
        )
        .unwrap();
        assert_eq!(options.namespace, "/apps/billing");
        assert_eq!(options.drift.factor, 0.02);
        assert_eq!(options.drift.fixed, Duration::from_millis(5));
    }
}
