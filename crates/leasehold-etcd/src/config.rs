//! [`EtcdConfig`]: the `etcd://` URL and the builder, one shape with every
//! other backend's configuration.

use std::time::Duration;

use leasehold_core::config::{self, BackendConfig, Secret, SharedConfig, apply_query};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};

use crate::EtcdBackend;
use leasehold_core::tls::{TLS_OPTIONS, TlsFiles};

/// The default namespace: every etcd key the backend writes starts with it.
pub const DEFAULT_NAMESPACE: &str = "leasehold/";
/// The default bound on each store call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default fallback poll of queued waiters.
const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// The configuration of an [`EtcdBackend`]: endpoints, credentials, TLS
/// (a private CA, a client certificate) and the [`SharedConfig`] settings (`namespace`, `timeout`, `poll`, `holder`,
/// drift). Parsed from an `etcd://` URL ([`BackendConfig::from_url`]) or
/// built in code; [`EtcdBackend::connect_with`] connects it.
///
/// ```
/// use leasehold_etcd::EtcdConfig;
/// use std::time::Duration;
/// let config = EtcdConfig::new(["127.0.0.1:2379"])
///     .namespace("billing/locks/")
///     .timeout(Duration::from_secs(2));
/// assert_eq!(config.namespace_str(), "billing/locks/");
/// ```
///
/// The password is a [`Secret`]: `Debug` prints `***`, and no error or log
/// line of this crate contains it. TLS files are shown by path, never by
/// content.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`.
    pub(crate) endpoints: Vec<String>,
    /// User name and password.
    pub(crate) user: Option<(String, Secret)>,
    pub(crate) tls: bool,
    /// `ca`, `cert`, `key`: PEM files, read at connect.
    pub(crate) tls_files: TlsFiles,
    pub(crate) clock: SharedClock,
    pub(crate) shared: SharedConfig,
}

impl Default for EtcdConfig {
    /// `127.0.0.1:2379`, namespace `leasehold/`, 5 s per call, 1 s fallback
    /// poll, default drift.
    fn default() -> Self {
        Self::new(["127.0.0.1:2379"])
    }
}

impl EtcdConfig {
    /// The defaults with the given endpoints (`host:port`, `http://host:port`
    /// or `https://host:port`).
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints
                .into_iter()
                .map(Into::into)
                .map(|e: String| {
                    if e.contains("://") {
                        e
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
            user: None,
            tls: false,
            tls_files: TlsFiles::default(),
            clock: system_clock(),
            shared: SharedConfig::default(),
        }
    }

    leasehold_core::shared_setters!();

    /// The namespace in use: the one set (with its `/` appended if missing)
    /// or [`DEFAULT_NAMESPACE`].
    pub fn namespace_str(&self) -> String {
        let mut namespace = self
            .shared
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if !namespace.is_empty() && !namespace.ends_with('/') {
            namespace.push('/');
        }
        namespace
    }

    /// The clock the backend reads (inject pauses in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// etcd user and password. The password is kept as a [`Secret`]: `Debug`
    /// prints `***`, and no error or log line of this crate contains it.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), Secret::new(password)));
        self
    }

    /// Connect with TLS (needs the crate's `tls` feature). Without
    /// [`ca`](Self::ca) the server's certificate must chain to one of the
    /// built-in web roots (Mozilla's, from `webpki-roots`).
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Trust the CA certificates in this PEM file (the `ca` option) instead
    /// of the built-in web roots; turns TLS on. The file is read at connect:
    /// a missing one is a [`LockError::Config`] naming the option and path.
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls = true;
        self.tls_files.ca = Some(path.into());
        self
    }

    /// Present this client certificate chain and its private key (PEM files,
    /// the `cert` and `key` options) to a server that asks for one (etcd's
    /// `--client-cert-auth`: mutual TLS); turns TLS on. etcd takes the
    /// certificate's common name as the user when auth is enabled. Read at
    /// connect; neither `Debug` nor any error shows the key's contents.
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

    /// The per-call timeout in use.
    pub(crate) fn timeout_value(&self) -> Duration {
        self.shared.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The fallback poll in use (at least 1 ms).
    pub(crate) fn poll_value(&self) -> Duration {
        self.shared
            .poll
            .unwrap_or(DEFAULT_POLL)
            .max(Duration::from_millis(1))
    }

    /// The drift allowance in use.
    pub(crate) fn drift_value(&self) -> Drift {
        self.shared.drift.unwrap_or_default()
    }
}

impl BackendConfig for EtcdConfig {
    type Backend = EtcdBackend;
    const SCHEMES: &'static [&'static str] = &["etcd", "etcds"];
    /// The TLS files: `ca`, `cert`, `key` (`etcds://` only).
    const OPTIONS: &'static [&'static str] = TLS_OPTIONS;

    /// Parses `etcd://[user:password@]h1:p1,h2:p2[?namespace=..&timeout=..&poll=..]`,
    /// `etcds://` for TLS (the `tls` feature).
    ///
    /// | option | meaning |
    /// |---|---|
    /// | `ca` | PEM file of the CA certificates to trust instead of the built-in web roots |
    /// | `cert` | PEM file of the client certificate chain (mutual TLS, etcd's `--client-cert-auth`); needs `key` |
    /// | `key` | PEM file of that certificate's private key; needs `cert` |
    ///
    /// The TLS files need `etcds://`: given with `etcd://` they are a
    /// `Config` error, never a silent plaintext connection. They are read at
    /// connect; a missing or unreadable file is a `Config` error naming the
    /// option and the path. A user and password (`etcds://user:pw@..`) work
    /// with TLS as without. `timeout` bounds every store
    /// call (default 5 s); `poll` is the fallback poll of queued waiters;
    /// `holder`, `drift_factor` and `drift_fixed` as on every scheme, and the
    /// locker's options are left to the locker. Durations take a unit
    /// (`250ms`, `2s`, `1m`; a bare number is an error), an unknown option
    /// is a `Config` error naming the closest known one.
    ///
    /// No error it returns contains the password, even for a malformed URL
    /// (a `?`, `/`, `,` or `@` left unescaped in a password splits it in
    /// surprising places): an error names the URL only as
    /// [`config::redact_url`] prints it, and quotes a piece of the URL (a
    /// host, an option) only when that piece lies after the last `@`,
    /// outside anything that could be user information.
    fn from_url(url: &str) -> Result<Self, LockError> {
        parse_url(url)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    async fn connect(self) -> Result<EtcdBackend, LockError> {
        EtcdBackend::connect_with(self).await
    }
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

/// Parses an etcd URL (see [`EtcdConfig::from_url`](BackendConfig::from_url)).
fn parse_url(url: &str) -> Result<EtcdConfig, LockError> {
    let text = UrlText::new(url);
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
        (true, rest)
    } else {
        // Only a plain scheme is quoted: without `://` the text before the
        // first `:` may be a user name followed by a password.
        let scheme = url.split_once("://").map(|(scheme, _)| scheme).filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        return Err(config(match scheme {
            Some(scheme) => format!("an etcd URL starts with etcd:// or etcds://, got {scheme}://"),
            None => "an etcd URL starts with etcd:// or etcds://".to_owned(),
        }));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(config(format!(
            "an etcd URL has no path; give the namespace as ?namespace=... ({}; \
             percent-encode / ? @ in a password)",
            text.redacted()
        )));
    }
    let (user, hosts) = match rest.rsplit_once('@') {
        Some((info, hosts)) => {
            let (name, password) = info.split_once(':').unwrap_or((info, ""));
            (
                Some((
                    percent_decode(name)?,
                    Secret::new(percent_decode(password)?),
                )),
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
            return Err(config(format!(
                "an etcd URL needs at least one host:port ({})",
                text.redacted()
            )));
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
            return Err(config(format!(
                "bad etcd endpoint {} in {}",
                text.quote(host),
                text.redacted()
            )));
        };
        endpoints.push(endpoint);
    }
    let mut parsed = EtcdConfig::new(endpoints).tls(tls);
    parsed.user = user;
    let mut tls_files = TlsFiles::default();
    let mut pairs = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
            continue;
        };
        if !text.is_safe(pair) {
            return Err(config(format!(
                "a malformed etcd URL: {} (percent-encode / ? @ in a password)",
                text.redacted()
            )));
        }
        pairs.push((name.into_owned(), value.into_owned()));
    }
    apply_query(
        "etcd",
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        &mut parsed.shared,
        EtcdConfig::OPTIONS,
        |name, value| tls_files.set(crate::NAME, name, value),
    )?;
    if !tls && !tls_files.is_empty() {
        return Err(config(format!(
            "the etcd options {} need TLS: use etcds:// ({})",
            tls_files.given(),
            text.redacted()
        )));
    }
    tls_files.check_pairs(crate::NAME)?;
    parsed.tls_files = tls_files;
    Ok(parsed)
}

/// A URL being parsed, and where its possible user information ends.
struct UrlText<'a> {
    url: &'a str,
    /// The byte offset of the last `@`, when the URL might carry a password
    /// before it: nothing up to there is ever quoted.
    secret_end: Option<usize>,
}

impl<'a> UrlText<'a> {
    fn new(url: &'a str) -> Self {
        let secret_end = if config::redact_url(url) == url {
            None
        } else {
            url.rfind('@')
        };
        UrlText { url, secret_end }
    }

    /// Whether `piece` (a slice of the URL) lies after any user information.
    fn is_safe(&self, piece: &str) -> bool {
        let offset = (piece.as_ptr() as usize).wrapping_sub(self.url.as_ptr() as usize);
        match self.secret_end {
            None => true,
            Some(end) => offset > end && offset <= self.url.len(),
        }
    }

    /// `piece` quoted, or a placeholder if it might hold a secret.
    fn quote(&self, piece: &str) -> String {
        if self.is_safe(piece) {
            format!("{piece:?}")
        } else {
            "(part of the user information)".to_owned()
        }
    }

    fn redacted(&self) -> String {
        config::redact_url(self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::config::BackendConfig;

    #[test]
    fn a_url_with_hosts_user_and_options_parses() {
        let parsed = EtcdConfig::from_url(
            "etcd://root:p%40ss@h1:2379,h2:32379?namespace=app%2Flocks%2F&timeout=250ms&poll=2s",
        )
        .unwrap();
        assert_eq!(parsed.endpoints, ["http://h1:2379", "http://h2:32379"]);
        assert_eq!(parsed.user, Some(("root".into(), Secret::new("p@ss"))));
        assert_eq!(parsed.namespace_str(), "app/locks/");
        assert_eq!(parsed.timeout_value(), Duration::from_millis(250));
        assert_eq!(parsed.poll_value(), Duration::from_secs(2));
        assert!(!parsed.tls);
    }

    #[test]
    fn default_port_and_tls_scheme() {
        let parsed = EtcdConfig::from_url("etcds://etcd.internal").unwrap();
        assert_eq!(parsed.endpoints, ["https://etcd.internal:2379"]);
        assert!(parsed.tls);
    }

    #[test]
    fn tls_files_parse_and_need_etcds() {
        let parsed = EtcdConfig::from_url(
            "etcds://u:pw@h:2379?ca=%2Fpki%2Fca.pem&cert=/pki/c.pem&key=/pki/c.key",
        )
        .unwrap();
        assert_eq!(parsed.tls_files.ca.as_deref(), Some("/pki/ca.pem".as_ref()));
        assert_eq!(parsed.tls_files.key.as_deref(), Some("/pki/c.key".as_ref()));
        assert!(parsed.user.is_some());
        let shown = format!("{parsed:?}");
        assert!(
            shown.contains("/pki/c.key") && !shown.contains("pw"),
            "{shown}"
        );

        let error = EtcdConfig::from_url("etcd://h:1?ca=/pki/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("etcds://") && error.contains("`ca`"),
            "{error}"
        );
        let error = EtcdConfig::from_url("etcds://h:1?cert=/pki/c.pem")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`cert` needs `key`"), "{error}");
        let error = EtcdConfig::from_url("etcds://h:1?ca=")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`ca` needs a file path"), "{error}");
        let error = EtcdConfig::from_url("etcds://h:1?cacert=/x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("did you mean"), "{error}");
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
            "etcd://h:1?namspace=x",
            "etcd://h:1?timeout=fast",
            "etcd://h:1?timeout=10",
            "etcd://h:1?poll=2",
            "etcd://h:1?drift_factor=2",
            "etcd://u%zz:p@h:1",
        ] {
            assert!(
                matches!(EtcdConfig::from_url(url), Err(LockError::Config(_))),
                "{url} should be a config error"
            );
        }
    }

    #[test]
    fn durations_need_a_unit_and_typos_name_the_closest_option() {
        // A bare number once meant seconds here and milliseconds elsewhere.
        let error = EtcdConfig::from_url("etcd://h:1?timeout=10")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unit"), "{error}");
        let error = EtcdConfig::from_url("etcd://h:1?namspace=x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("did you mean `namespace`"), "{error}");
        let parsed =
            EtcdConfig::from_url("etcd://h:1?drift_factor=0.02&drift_fixed=5ms&timeout=1m")
                .unwrap();
        assert_eq!(parsed.drift_value().factor, 0.02);
        assert_eq!(parsed.drift_value().fixed, Duration::from_millis(5));
        assert_eq!(parsed.timeout_value(), Duration::from_secs(60));
    }

    #[test]
    fn shared_and_locker_options_are_accepted() {
        let parsed =
            EtcdConfig::from_url("etcd://h:1?holder=worker-7&ttl=5s&wait=1s&auto_extend=true")
                .unwrap();
        assert_eq!(parsed.shared().holder.as_deref(), Some("worker-7"));
        assert_eq!(parsed.namespace_str(), DEFAULT_NAMESPACE);
    }
}
