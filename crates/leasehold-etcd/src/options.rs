//! Options and the `etcd://` URL.

use std::time::Duration;

use leasehold_core::{Drift, LockError, SharedClock, system_clock};

/// The default namespace: every etcd key the backend writes starts with it.
pub const DEFAULT_NAMESPACE: &str = "leasehold/";

/// Options of an [`EtcdBackend`](crate::EtcdBackend).
///
/// ```
/// use leasehold_etcd::EtcdOptions;
/// use std::time::Duration;
/// let options = EtcdOptions::new()
///     .namespace("billing/locks/")
///     .operation_timeout(Duration::from_secs(2));
/// assert_eq!(options.namespace_str(), "billing/locks/");
/// ```
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub(crate) namespace: String,
    pub(crate) operation_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) drift: Drift,
    pub(crate) clock: SharedClock,
    pub(crate) user: Option<(String, String)>,
    pub(crate) tls: bool,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            operation_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            drift: Drift::default(),
            clock: system_clock(),
            user: None,
            tls: false,
        }
    }
}

impl EtcdOptions {
    /// Namespace `leasehold/`, 5 s per call, 1 s fallback poll, default drift.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix of every etcd key this backend writes (default
    /// `leasehold/`). Applications sharing an etcd cluster use different
    /// namespaces, neither of which may be a prefix of the other (`app/` and
    /// `app/x/` would see each other's queues and could block each other; they
    /// still never share a lock).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The namespace.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }

    /// The bound on every single store call (default 5 s). A dead or paused
    /// store yields [`LockError::Unavailable`] after it.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// How often a queued waiter re-reads its predecessor in case a watch
    /// event was lost (default 1 s, jittered). Waiters are woken by their
    /// watch; this only bounds the latency a lost event can cost.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The clock drift allowance subtracted from every lease's validity.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// The clock the backend reads (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// etcd user and password (used by the `connect*` constructors).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connect with TLS (needs the crate's `tls` feature; used by the
    /// `connect*` constructors).
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }
}

/// A parsed `etcd://[user:password@]h1:p1,h2:p2[?namespace=..&timeout=..&poll=..]`
/// (or `etcds://` for TLS).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub tls: bool,
    pub namespace: Option<String>,
    pub timeout: Option<Duration>,
    pub poll: Option<Duration>,
}

fn config(message: impl Into<String>) -> LockError {
    LockError::Config(message.into())
}

fn percent_decode(text: &str) -> Result<String, LockError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| config(format!("bad percent escape in etcd URL at byte {i}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config("etcd URL user info is not UTF-8"))
}

/// `250ms`, `5s`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, LockError> {
    let bad = || config(format!("bad duration {text:?}: use e.g. 250ms or 5s"));
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 || value * scale > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value * scale))
}

pub(crate) fn parse_url(url: &str) -> Result<ParsedUrl, LockError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
        (true, rest)
    } else {
        return Err(config(format!(
            "an etcd URL starts with etcd:// or etcds://, got {:?}",
            url.split("://").next().unwrap_or(url)
        )));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(config(
            "an etcd URL has no path; give the namespace as ?namespace=...",
        ));
    }
    let (user, hosts) = match rest.rsplit_once('@') {
        Some((info, hosts)) => {
            let (name, password) = info.split_once(':').unwrap_or((info, ""));
            (
                Some((percent_decode(name)?, percent_decode(password)?)),
                hosts,
            )
        }
        None => (None, rest),
    };
    let scheme = if tls { "https" } else { "http" };
    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(config("an etcd URL needs at least one host:port"));
        }
        // `host:port`, `[v6]:port`; a bare `host` or `[v6]` gets 2379.
        let port_ok = host.rsplit_once(':').is_some_and(|(h, p)| {
            let plain = !h.is_empty() && !h.contains(':');
            let bracketed = h.starts_with('[') && h.ends_with(']');
            (plain || bracketed) && p.parse::<u16>().is_ok()
        });
        let endpoint = if port_ok {
            format!("{scheme}://{host}")
        } else if !host.contains(':') || (host.starts_with('[') && host.ends_with(']')) {
            format!("{scheme}://{host}:2379")
        } else {
            return Err(config(format!("bad etcd endpoint {host:?}")));
        };
        endpoints.push(endpoint);
    }
    let mut parsed = ParsedUrl {
        endpoints,
        user,
        tls,
        namespace: None,
        timeout: None,
        poll: None,
    };
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "namespace" => parsed.namespace = Some(value.into_owned()),
            "timeout" => parsed.timeout = Some(parse_duration(&value)?),
            "poll" => parsed.poll = Some(parse_duration(&value)?),
            other => {
                return Err(config(format!(
                    "unknown etcd URL option {other:?} (known: namespace, timeout, poll)"
                )));
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_hosts_user_and_options_parses() {
        let parsed = parse_url(
            "etcd://root:p%40ss@h1:2379,h2:32379?namespace=app%2Flocks%2F&timeout=250ms&poll=2s",
        )
        .unwrap();
        assert_eq!(parsed.endpoints, ["http://h1:2379", "http://h2:32379"]);
        assert_eq!(parsed.user, Some(("root".into(), "p@ss".into())));
        assert_eq!(parsed.namespace.as_deref(), Some("app/locks/"));
        assert_eq!(parsed.timeout, Some(Duration::from_millis(250)));
        assert_eq!(parsed.poll, Some(Duration::from_secs(2)));
        assert!(!parsed.tls);
    }

    #[test]
    fn default_port_and_tls_scheme() {
        let parsed = parse_url("etcds://etcd.internal").unwrap();
        assert_eq!(parsed.endpoints, ["https://etcd.internal:2379"]);
        assert!(parsed.tls);
    }

    #[test]
    fn bad_urls_are_config_errors_not_panics() {
        for url in [
            "redis://h:1",
            "etcd://",
            "etcd://h:1,,h:2",
            "etcd://h:notaport:1",
            "etcd://h:1/path",
            "etcd://h:1?nope=1",
            "etcd://h:1?timeout=fast",
            "etcd://u%zz:p@h:1",
        ] {
            assert!(
                matches!(parse_url(url), Err(LockError::Config(_))),
                "{url} should be a config error"
            );
        }
    }
}
