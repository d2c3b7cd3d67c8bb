//! [`ZkConfig`]: the `zk://` URL and the builder, one shape with every other
//! backend's configuration.

use std::time::Duration;

use leasehold_core::config::{self, BackendConfig, Secret, SharedConfig, apply_query};
use leasehold_core::tls::TlsFiles;
use leasehold_core::{Drift, LockError};

use crate::ZkBackend;

/// The default namespace.
const DEFAULT_NAMESPACE: &str = "/leasehold";
/// The default bound on each store call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default re-check interval of queued waiters.
const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// The configuration of a [`ZkBackend`]: the ensemble, the session of calls
/// that hold no lock, digest credentials, TLS (a private CA, a client
/// certificate) and the [`SharedConfig`] settings (`namespace`, `timeout`,
/// `poll`, `holder`, drift). Parsed from a `zk://` or `zks://` URL
/// ([`BackendConfig::from_url`]) or built in code;
/// [`ZkBackend::connect_with`] connects it. `Debug` shows the TLS files by
/// path, never their contents, and the password as `***`.
///
/// ```
/// use leasehold_core::config::BackendConfig;
/// use leasehold_zookeeper::ZkConfig;
/// use std::time::Duration;
/// let config = ZkConfig::from_url("zk://127.0.0.1:2181,127.0.0.1:2182/apps/billing?session_timeout=6s&timeout=2s").unwrap();
/// assert_eq!(config.hosts, "127.0.0.1:2181,127.0.0.1:2182");
/// assert_eq!(config.namespace_path().unwrap(), "/apps/billing");
/// assert_eq!(config.session_timeout, Duration::from_secs(6));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ZkConfig {
    /// `host:port` list, comma separated (ZooKeeper's connect string without
    /// a chroot).
    pub hosts: String,
    /// The timeout of the session that serves calls holding no lock
    /// (`inspect`, [`ZkBackend::client`](crate::ZkBackend::client)); the
    /// server clamps it to `[2, 20] × tickTime`. Leases live in sessions of
    /// their own TTL class instead (see the crate docs), so this does not
    /// decide how long a crashed holder keeps a lock. Default 10 s.
    pub session_timeout: Duration,
    /// The shared settings: `namespace` (an absolute path under which all
    /// lock nodes live, created on demand, default `/leasehold`), `timeout`
    /// (each store call, default 5 s), `poll` (a queued waiter re-checks the
    /// queue this often without a watch event, default 2 s), `holder` (the
    /// data of every contender node, shown by `inspect` and listings) and the
    /// drift allowance.
    pub shared: SharedConfig,
    /// Digest credentials (`user`, password): every session authenticates
    /// with them, and lock nodes get the ACL "creator may do anything, the
    /// world may read" (see the crate docs, *Authentication and ACLs*).
    pub(crate) digest: Option<(String, Secret)>,
    /// Connect with TLS (`zks://`).
    pub(crate) tls: bool,
    /// `ca`, `cert`, `key`: PEM files, read at connect.
    pub(crate) tls_files: TlsFiles,
}

impl Default for ZkConfig {
    fn default() -> Self {
        Self::new("127.0.0.1:2181")
    }
}

impl ZkConfig {
    /// Defaults with the given `host:port[,host:port]` list.
    pub fn new(hosts: impl Into<String>) -> Self {
        ZkConfig {
            hosts: hosts.into(),
            session_timeout: Duration::from_secs(10),
            shared: SharedConfig::default(),
            digest: None,
            tls: false,
            tls_files: TlsFiles::default(),
        }
    }

    /// Connect with TLS (what `zks://` sets; needs the crate's `tls`
    /// feature, else connecting is a `Config` error). TLS needs
    /// [`ca`](Self::ca): the client has no built-in roots.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Trust the CA certificates in this PEM file (the `ca` option) and no
    /// other; turns TLS on. The file is read at connect: a missing or
    /// unreadable one is a `Config` error naming it.
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls = true;
        self.tls_files.ca = Some(path.into());
        self
    }

    /// Present this client certificate chain and private key, PEM files
    /// (the `cert` and `key` options), to servers that require one
    /// (`ssl.clientAuth=need`: mutual TLS); turns TLS on. Read at connect.
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls = true;
        self.tls_files.cert = Some(cert.into());
        self.tls_files.key = Some(key.into());
        self
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The TLS files (`ca`, `cert`, `key`) given.
    pub fn tls_files(&self) -> &TlsFiles {
        &self.tls_files
    }

    /// Authenticate every session with ZooKeeper's `digest` scheme as `user`
    /// with `password`, and create lock nodes with the ACL "the creating
    /// identity may do anything, the world may read": another client of the
    /// ensemble (unauthenticated, or with other credentials) cannot delete a
    /// holder's node or queue under this namespace. The password is kept as a
    /// [`Secret`]: `Debug` prints `***`, and no error or log line of this
    /// crate contains it.
    pub fn digest_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), Secret::new(password)));
        self
    }

    /// The digest user, when credentials are set.
    pub fn user(&self) -> Option<&str> {
        self.digest.as_ref().map(|(user, _)| user.as_str())
    }

    leasehold_core::shared_setters!();

    /// Sets [`ZkConfig::session_timeout`].
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// The namespace in use, checked: an absolute ZooKeeper path like
    /// `/leasehold/app` (default `/leasehold`).
    pub fn namespace_path(&self) -> Result<String, LockError> {
        let raw = self
            .shared
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE);
        let namespace = format!("/{}", raw.trim_start_matches('/'));
        let namespace = namespace.as_str();
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
        Ok(namespace.to_owned())
    }

    /// The per-call timeout in use.
    pub(crate) fn timeout_value(&self) -> Duration {
        self.shared.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The re-check interval in use.
    pub(crate) fn poll_value(&self) -> Duration {
        self.shared.poll.unwrap_or(DEFAULT_POLL)
    }

    /// The drift allowance in use.
    pub(crate) fn drift_value(&self) -> Drift {
        self.shared.drift.unwrap_or_default()
    }
}

impl BackendConfig for ZkConfig {
    type Backend = ZkBackend;
    /// `zks` is `zk` with TLS.
    const SCHEMES: &'static [&'static str] = &["zk", "zookeeper", "zks"];
    /// `session_timeout` and the TLS files `ca`, `cert`, `key` (`zks://`
    /// only).
    const OPTIONS: &'static [&'static str] = &["session_timeout", "ca", "cert", "key"];

    /// Parses `zk://h1:p1,h2:p2/namespace?session_timeout=10s&timeout=5s&poll=2s`.
    /// The path is the namespace (default `/leasehold`); durations follow
    /// the one grammar of [`config::duration`] (`250ms`, `2s`, `1m`; a bare
    /// number is an error); an unknown option is an error naming the closest
    /// known one. Its own option is `session_timeout`; `recheck` is the old
    /// name of `poll` (accepted, with a warning); the shared and locker
    /// options apply as on every scheme.
    ///
    /// User information is digest authentication:
    /// `zk://user:password@h1:p1,h2:p2/namespace` (percent-encode `/`, `?`
    /// and `%` in either; see [`ZkConfig::digest_auth`] for the ACLs it
    /// brings). No error shows the password: a URL is shown only as
    /// [`config::redact_url`] prints it.
    ///
    /// `zks://` is the same with TLS (the `tls` feature), with the options:
    ///
    /// | option | meaning |
    /// |---|---|
    /// | `ca` | PEM file of the CA certificates to trust (required: the client has no built-in roots) |
    /// | `cert` | PEM file of the client certificate chain, for `ssl.clientAuth=need` (mutual TLS); needs `key` |
    /// | `key` | PEM file of that certificate's private key; needs `cert` |
    ///
    /// The TLS files with `zk://` are a `Config` error (asking for
    /// certificates and getting plaintext must not pass silently); they are
    /// read at connect, where a missing one is a `Config` error naming it.
    fn from_url(url: &str) -> Result<Self, LockError> {
        let tls = url.starts_with("zks://");
        let Some(rest) = url
            .strip_prefix("zk://")
            .or_else(|| url.strip_prefix("zookeeper://"))
            .or_else(|| url.strip_prefix("zks://"))
        else {
            // Only a plain scheme is quoted: without `://` the text before
            // the first `:` may be a user name followed by a password.
            let scheme = url.split_once("://").map(|(scheme, _)| scheme).filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            });
            return Err(LockError::Config(match scheme {
                Some(scheme) => {
                    format!("a ZooKeeper URL starts with zk:// or zks://, got {scheme}://")
                }
                None => "a ZooKeeper URL starts with zk:// or zks://".to_owned(),
            }));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (digest, rest) = match rest[..authority_end].rsplit_once('@') {
            Some((info, _)) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = decode_userinfo(user, url)?;
                if user.is_empty() {
                    return Err(LockError::Config(format!(
                        "a zk:// URL with user information needs a user name: {}",
                        config::redact_url(url)
                    )));
                }
                let digest = (user, Secret::new(decode_userinfo(password, url)?));
                (Some(digest), &rest[info.len() + 1..])
            }
            None => (None, rest),
        };
        let (hosts, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if hosts.is_empty() || hosts.split(',').any(|h| h.trim().is_empty()) {
            return Err(LockError::Config(format!(
                "{} names no host",
                config::redact_url(url)
            )));
        }
        let mut parsed = ZkConfig::new(hosts).tls(tls);
        parsed.digest = digest;
        if !path.is_empty() && path != "/" {
            parsed = parsed.namespace(path.trim_end_matches('/'));
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let mut session_timeout = None;
        let mut recheck = None;
        let mut tls_files = TlsFiles::default();
        apply_query(
            "zk",
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut parsed.shared,
            Self::OPTIONS,
            |name, value| match name {
                "session_timeout" => {
                    session_timeout = Some(config::positive(name, value)?);
                    Ok(true)
                }
                "recheck" => {
                    tracing::warn!("zk:// option `recheck` is deprecated: use `poll`");
                    recheck = Some(config::positive(name, value)?);
                    Ok(true)
                }
                _ => tls_files.set(crate::NAME, name, value),
            },
        )?;
        if !tls && !tls_files.is_empty() {
            return Err(LockError::Config(format!(
                "the ZooKeeper options {} need TLS: use zks:// ({})",
                tls_files.given(),
                config::redact_url(url)
            )));
        }
        tls_files.check_pairs(crate::NAME)?;
        parsed.tls_files = tls_files;
        if let Some(timeout) = session_timeout {
            parsed.session_timeout = timeout;
        }
        if let Some(poll) = recheck
            && parsed.shared.poll.is_none()
        {
            parsed.shared.poll = Some(poll);
        }
        parsed.namespace_path()?;
        Ok(parsed)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    async fn connect(self) -> Result<ZkBackend, LockError> {
        ZkBackend::connect_with(self).await
    }
}

/// Percent-decodes a user name or password of `url`; a bad escape is a
/// `Config` error that shows the URL only redacted.
fn decode_userinfo(text: &str, url: &str) -> Result<String, LockError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| {
            LockError::Config(format!(
                "the user information of {} is not UTF-8 once percent-decoded",
                config::redact_url(url)
            ))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::config::BackendConfig;

    #[test]
    fn url_without_path_uses_the_default_namespace() {
        let options = ZkConfig::from_url("zk://localhost:2181").unwrap();
        assert_eq!(options.hosts, "localhost:2181");
        assert_eq!(options.namespace_path().unwrap(), "/leasehold");
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
            "zk://:S3cret@a:1",
            "zk://u:S3cret@/ns",
        ] {
            assert!(
                matches!(ZkConfig::from_url(url), Err(LockError::Config(_))),
                "{url:?} was accepted"
            );
        }
    }

    #[test]
    fn durations_take_a_unit_and_bare_numbers_are_errors() {
        let options =
            ZkConfig::from_url("zk://a:1/ns?timeout=250ms&recheck=1.5s&session_timeout=4s")
                .unwrap();
        assert_eq!(options.timeout_value(), Duration::from_millis(250));
        assert_eq!(options.poll_value(), Duration::from_millis(1500));
        assert_eq!(options.session_timeout, Duration::from_secs(4));
        // Bare numbers meant milliseconds here and seconds on etcd: now an error.
        let error = ZkConfig::from_url("zk://a:1?session_timeout=4000").unwrap_err();
        assert!(error.to_string().contains("unit"), "{error}");
    }

    #[test]
    fn a_misspelt_option_names_the_closest_known_one() {
        let error = ZkConfig::from_url("zk://a:1?sesion_timeout=2s").unwrap_err();
        assert!(
            error.to_string().contains("did you mean `session_timeout`"),
            "{error}"
        );
    }

    #[test]
    fn user_information_is_digest_auth_and_the_password_never_shows() {
        let parsed = ZkConfig::from_url("zk://app:S3nt%2Finel%3F@a:1,b:2/ns?timeout=2s").unwrap();
        assert_eq!(parsed.hosts, "a:1,b:2");
        assert_eq!(parsed.namespace_path().unwrap(), "/ns");
        assert_eq!(parsed.user(), Some("app"));
        let (_, password) = parsed.digest.as_ref().unwrap();
        assert_eq!(password.expose(), "S3nt/inel?");
        assert!(!format!("{parsed:?}").contains("S3nt"));
        for url in [
            "zk://:S3ntinel@a:1/ns",
            "zk://app:S3ntinel@/ns",
            "zk://app:S3%ffntinel@a:1",
        ] {
            let error = ZkConfig::from_url(url).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("S3"), "{shown}");
        }
        let error = ZkConfig::from_url("zk://app:S3ntinel@a:1?nope=1").unwrap_err();
        assert!(!format!("{error} {error:?}").contains("S3ntinel"));
    }

    #[test]
    fn zks_is_tls_with_the_ca_cert_and_key_files_and_zk_refuses_them() {
        let parsed = ZkConfig::from_url(
            "zks://app:S3cret@h1:2281,h2:2281/ns?ca=%2Fpki%2Fca.pem&cert=/pki/c.pem&key=/pki/c.key&timeout=2s",
        )
        .unwrap();
        assert!(parsed.is_tls());
        assert_eq!(parsed.hosts, "h1:2281,h2:2281");
        assert_eq!(parsed.user(), Some("app"));
        assert_eq!(
            parsed.tls_files().ca.as_deref(),
            Some("/pki/ca.pem".as_ref())
        );
        assert_eq!(
            parsed.tls_files().key.as_deref(),
            Some("/pki/c.key".as_ref())
        );
        let shown = format!("{parsed:?}");
        assert!(
            shown.contains("/pki/c.key") && !shown.contains("S3cret"),
            "{shown}"
        );
        assert!(!ZkConfig::from_url("zk://h:1").unwrap().is_tls());

        let error = ZkConfig::from_url("zk://u:S3cret@h:1?ca=/pki/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("zks://") && error.contains("`ca`") && !error.contains("S3cret"),
            "{error}"
        );
        for (url, expected) in [
            ("zks://h:1?ca=", "`ca` needs a file path"),
            ("zks://h:1?ca=/ca.pem&cert=/c.pem", "`cert` needs `key`"),
            ("zks://h:1?ca=/ca.pem&key=/c.key", "`key` needs `cert`"),
            ("zks://h:1?cafile=/ca.pem", "session_timeout, ca, cert, key"),
        ] {
            let error = ZkConfig::from_url(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn shared_options_apply() {
        let options =
            ZkConfig::from_url("zk://a:1?namespace=apps/billing&drift_factor=0.02&drift_fixed=5ms")
                .unwrap();
        assert_eq!(options.namespace_path().unwrap(), "/apps/billing");
        assert_eq!(options.drift_value().factor, 0.02);
        assert_eq!(options.drift_value().fixed, Duration::from_millis(5));
    }

    #[test]
    fn poll_wins_over_its_old_name_and_locker_options_are_left_to_the_locker() {
        let options =
            ZkConfig::from_url("zk://a:1?recheck=5s&poll=1s&holder=w-7&ttl=5s&wait=1s").unwrap();
        assert_eq!(options.poll_value(), Duration::from_secs(1));
        assert_eq!(options.shared().holder.as_deref(), Some("w-7"));
        let error = ZkConfig::from_url("zk://a:1?pol=1s")
            .unwrap_err()
            .to_string();
        assert!(error.contains("did you mean `poll`"), "{error}");
    }
}
