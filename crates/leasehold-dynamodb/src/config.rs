//! [`DynamoDbConfig`]: the table, the AWS overrides and the shared settings,
//! from a `dynamodb://` URL or built in code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use leasehold_core::config::{
    self, BackendConfig, MAX_DURATION, Secret, SharedConfig, apply_query, redact_url,
};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::DynamoDbBackend;

/// The default per-call timeout.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "leasehold";
/// The default partition key attribute name.
pub const DEFAULT_PARTITION_KEY: &str = "pk";
/// How many other holders' keys a backend remembers observations of.
pub const DEFAULT_OBSERVATION_CAPACITY: usize = 10_000;
/// The longest namespace, in bytes (keys add up to 1024 more; DynamoDB allows
/// 2048-byte partition keys).
pub const MAX_NAMESPACE_BYTES: usize = 512;

/// How a [`DynamoDbBackend`] connects: from a URL
/// ([`BackendConfig::from_url`]) or built in code from
/// [`DynamoDbConfig::new`], then [`DynamoDbBackend::connect_with`].
///
/// Region, endpoint and credentials come from the standard AWS configuration
/// chain (environment, profile files, web identity, container and instance
/// metadata) unless set here; set them for a local endpoint.
///
/// `Debug` shows the access key id but never the secret key (a [`Secret`]).
///
/// ```
/// use leasehold_dynamodb::DynamoDbConfig;
/// use std::time::Duration;
/// let config = DynamoDbConfig::new("locks")
///     .namespace("billing")
///     .timeout(Duration::from_secs(2))
///     .region("eu-west-1");
/// assert_eq!(config.table(), "locks");
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbConfig {
    pub(crate) table: String,
    pub(crate) partition_key: String,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) credentials: Option<(String, Secret)>,
    pub(crate) clock: SharedClock,
    pub(crate) durable: bool,
    pub(crate) observation_capacity: usize,
    pub(crate) create_table: bool,
    pub(crate) shared: SharedConfig,
}

impl DynamoDbConfig {
    /// The defaults for `table`: the AWS configuration chain, namespace
    /// `leasehold`, partition key `pk`, a 5 s operation timeout, a durable
    /// store, no table creation.
    pub fn new(table: impl Into<String>) -> Self {
        DynamoDbConfig {
            table: table.into(),
            partition_key: DEFAULT_PARTITION_KEY.into(),
            region: None,
            endpoint: None,
            ca: None,
            credentials: None,
            clock: system_clock(),
            durable: true,
            observation_capacity: DEFAULT_OBSERVATION_CAPACITY,
            create_table: false,
            shared: SharedConfig::default(),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The endpoint set by [`DynamoDbConfig::endpoint`] or a URL, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    leasehold_core::shared_setters!();

    /// The name of the table's partition key attribute (a string, `S`), for
    /// an existing table (default `pk`). The table must have no sort key.
    pub fn partition_key(mut self, attribute: impl Into<String>) -> Self {
        self.partition_key = attribute.into();
        self
    }

    /// The AWS region, overriding the configuration chain.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The endpoint URL (a local DynamoDB or stand-in), overriding the chain.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// A PEM bundle of CA certificates to trust for HTTPS besides the
    /// system's roots (option `ca`): for a private endpoint whose
    /// certificate a private CA signed. The file is read when connecting
    /// (when a URL is parsed too); a file that cannot be read or holds no
    /// usable certificate is a [`LockError::Config`] naming it, and so is a
    /// CA with a plain `http://` endpoint. It serves the AWS configuration
    /// chain's own calls (STS, SSO, instance metadata) as well.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Static credentials instead of the configuration chain (local use).
    /// The secret key is kept as a [`Secret`]: never shown by `Debug`.
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), Secret::new(secret_access_key)));
        self
    }

    /// Whether the store keeps its data across restarts, so fencing counters
    /// survive them (default `true`, as DynamoDB does). Set `false` for an
    /// in-memory stand-in.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether connecting creates the table when it is missing (and, on a
    /// store configured with `durable(false)`, re-creates a table the store
    /// lost).
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// The clock (inject pauses and skew in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How many other holders' keys to remember observations of (default
    /// 10 000). Past it the least recently seen half is forgotten, which only
    /// delays takeovers of those keys.
    pub fn observation_capacity(mut self, capacity: usize) -> Self {
        self.observation_capacity = capacity;
        self
    }

    /// The namespace in effect.
    pub(crate) fn namespace_or_default(&self) -> &str {
        self.shared
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The operation timeout in effect.
    pub(crate) fn timeout_or_default(&self) -> Duration {
        self.shared.timeout.unwrap_or(DEFAULT_OPERATION_TIMEOUT)
    }

    /// The drift allowance in effect.
    pub(crate) fn drift_or_default(&self) -> Drift {
        self.shared.drift.unwrap_or_default()
    }

    /// The `ca` bundle's bytes, checked (`None` without one): every
    /// certificate in it parses and can serve as a trust anchor, so the HTTP
    /// client never meets a bad one (it would panic).
    pub(crate) fn ca_bundle(&self) -> Result<Option<Vec<u8>>, LockError> {
        let Some(path) = &self.ca else {
            return Ok(None);
        };
        if let Some(endpoint) = self.endpoint.as_deref()
            && endpoint.starts_with("http://")
        {
            return Err(LockError::Config(format!(
                "dynamodb option `ca` is for HTTPS, but the endpoint is {endpoint:?}"
            )));
        }
        read_ca_bundle(path).map(Some)
    }

    pub(crate) fn validate(&self) -> Result<(), LockError> {
        if self.table.len() < 3 || self.table.len() > 255 {
            return Err(LockError::Config(format!(
                "DynamoDB table name {:?} must be 3 to 255 characters",
                self.table
            )));
        }
        let namespace = self.namespace_or_default();
        if namespace.contains('#') || namespace.chars().any(|c| c.is_control()) {
            return Err(LockError::Config(format!(
                "namespace {namespace:?} must not contain '#' or control characters"
            )));
        }
        if namespace.len() > MAX_NAMESPACE_BYTES {
            return Err(LockError::Config(format!(
                "namespace is {} bytes, at most {MAX_NAMESPACE_BYTES} allowed",
                namespace.len()
            )));
        }
        if self.partition_key.is_empty() {
            return Err(LockError::Config("partition key name is empty".into()));
        }
        let timeout = self.timeout_or_default();
        if timeout.is_zero() || timeout > MAX_DURATION {
            return Err(LockError::Config(
                "operation timeout must be positive and at most one year".into(),
            ));
        }
        if self.shared.poll.is_some_and(|poll| poll.is_zero()) {
            return Err(LockError::Config("poll must be above zero".into()));
        }
        Ok(())
    }

    /// Applies one of this scheme's own query options; `Ok(false)` for any
    /// other name. `timeout_ms` is the deprecated spelling of `timeout`.
    fn apply(
        &mut self,
        name: &str,
        value: &str,
        timeout_ms: &mut Option<Duration>,
    ) -> Result<bool, LockError> {
        match name {
            "region" => self.region = Some(value.to_owned()),
            "endpoint" => self.endpoint = Some(value.to_owned()),
            "ca" if value.is_empty() => {
                return Err(config::invalid(name, value, "needs a file path"));
            }
            "ca" => self.ca = Some(PathBuf::from(value)),
            "partition_key" => self.partition_key = value.to_owned(),
            "durable" => self.durable = config::boolean(name, value)?,
            "create_table" => self.create_table = config::boolean(name, value)?,
            "timeout_ms" => {
                tracing::warn!(
                    "dynamodb:// option `timeout_ms` is deprecated: write `timeout={value}ms`"
                );
                let millis: u64 = config::number(name, value)?;
                let timeout = Duration::from_millis(millis);
                if timeout > MAX_DURATION {
                    return Err(config::invalid(name, value, "longer than one year"));
                }
                *timeout_ms = Some(timeout);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl BackendConfig for DynamoDbConfig {
    type Backend = DynamoDbBackend;

    const SCHEMES: &'static [&'static str] = &["dynamodb"];

    /// Besides the shared names: `region`, `endpoint`, `ca`,
    /// `partition_key`, `durable`, `create_table`, and `timeout_ms`
    /// (deprecated: `timeout`).
    const OPTIONS: &'static [&'static str] = &[
        "region",
        "endpoint",
        "ca",
        "partition_key",
        "durable",
        "create_table",
        "timeout_ms",
    ];

    /// Options from `dynamodb://[access_key_id:secret_access_key@]table?query`.
    ///
    /// Query parameters: the shared ones (`namespace`, `timeout` as a
    /// duration such as `2s` or `750ms`, `poll` (a waiter re-checks at least
    /// this often), `holder`, `drift_factor`, `drift_fixed`), the locker's
    /// (`ttl`, `wait`, ...: left to the locker), and `region`, `endpoint`
    /// (for example `http://127.0.0.1:8000`), `ca` (the path of a PEM
    /// bundle of CA certificates to trust for HTTPS besides the system's
    /// roots, for a private endpoint: [`DynamoDbConfig::ca`]; read and
    /// checked here, so a missing or unusable file is a
    /// [`LockError::Config`] naming the option and the path), `partition_key`, `durable`
    /// (`true`/`false`: whether the store keeps data across restarts, default
    /// `true`), `create_table` (`true`: create the table at connect if
    /// missing), `timeout_ms` (deprecated: the timeout in whole
    /// milliseconds, used when `timeout` is absent). An unknown option is a
    /// [`LockError::Config`] naming the closest known one: a typo never falls
    /// back to a default.
    ///
    /// Credentials in the URL are static keys, meant for local stand-ins; in
    /// production leave them out and let the AWS configuration chain find
    /// them. They are percent-decoded and nothing else: `+` and `/` (both
    /// common in AWS secret keys) are taken literally, as AWS does; only
    /// `%`, `@`, `?` and `#` must be written `%25`, `%40`, `%3F`, `%23`.
    /// The user information ends at the *last* `@` before the query, so a
    /// literal `/` in the secret works. No error and no `Debug` output shows
    /// the secret key, even for a malformed URL.
    fn from_url(url: &str) -> Result<Self, LockError> {
        let bad = |why: &str| LockError::Config(format!("dynamodb url {:?}: {why}", redact(url)));
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| bad("the scheme must be dynamodb://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (userinfo, table) = match rest.rsplit_once('@') {
            Some((userinfo, table)) => (Some(userinfo), table),
            None => (None, rest),
        };
        let table = table.strip_suffix('/').unwrap_or(table);
        if table.is_empty() {
            return Err(bad("needs a table name as host"));
        }
        if table.contains(['/', '#', ':']) {
            return Err(bad(
                "the table name must not contain '/', ':' or '#' (a credential with '@' must be written %40)",
            ));
        }
        let table = percent_decode(table).map_err(|why| bad(&format!("table name {why}")))?;
        let mut config = DynamoDbConfig::new(table);
        if let Some(userinfo) = userinfo {
            let (id, secret) = userinfo
                .split_once(':')
                .ok_or_else(|| bad("has an access key id but no secret key (id:secret@table)"))?;
            let id = percent_decode(id).map_err(|why| bad(&format!("access key id {why}")))?;
            let secret = percent_decode(secret).map_err(|why| bad(&format!("secret key {why}")))?;
            config = config.credentials(id, secret);
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let mut shared = SharedConfig::default();
        let mut timeout_ms = None;
        apply_query(
            "dynamodb",
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            Self::OPTIONS,
            |name, value| config.apply(name, value, &mut timeout_ms),
        )?;
        if shared.timeout.is_none() {
            shared.timeout = timeout_ms;
        }
        config.shared = shared;
        config.ca_bundle()?;
        Ok(config)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    /// [`DynamoDbBackend::connect_with`].
    async fn connect(self) -> Result<DynamoDbBackend, LockError> {
        DynamoDbBackend::connect_with(self).await
    }
}

/// Reads the PEM bundle of option `ca`. Errors name the option and the
/// path, not the contents.
fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, LockError> {
    let bad =
        |why: String| LockError::Config(format!("dynamodb option `ca`: {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("is not valid PEM".into()))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("holds a certificate unfit to trust ({e})")))?;
    }
    Ok(bytes)
}

/// `url` for error messages: [`redact_url`], and the whole user information
/// (access key id too) replaced by `***`: a URL missing its `:` may carry
/// the secret key where the id belongs.
fn redact(url: &str) -> String {
    let shown = redact_url(url);
    let start = shown.find("//").map_or(0, |at| at + 2);
    let end = shown.find('?').unwrap_or(shown.len());
    match shown[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &shown[..start], &shown[start + at..]),
        None => shown,
    }
}

/// Percent-decodes `part` (`%2F` → `/`); everything else, `+` included, is
/// taken literally. The error never repeats the input (it may be a secret).
fn percent_decode(part: &str) -> Result<String, &'static str> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a '%' not followed by two hex digits (write '%' as %25)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_sets_every_option() {
        let c = DynamoDbConfig::from_url(
            "dynamodb://AK:s%2Fecret@locks?region=eu-west-1&endpoint=http://127.0.0.1:8000\
             &namespace=app&partition_key=id&timeout_ms=750&durable=false&create_table=true\
             &holder=worker-7&poll=250ms",
        )
        .expect("parses");
        assert_eq!(c.table, "locks");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert_eq!(c.namespace_or_default(), "app");
        assert_eq!(c.partition_key, "id");
        assert_eq!(c.timeout_or_default(), Duration::from_millis(750));
        assert_eq!(c.shared.holder.as_deref(), Some("worker-7"));
        assert_eq!(c.shared.poll, Some(Duration::from_millis(250)));
        assert!(!c.durable);
        assert!(c.create_table);
        assert_eq!(
            c.credentials,
            Some(("AK".to_string(), Secret::new("s/ecret")))
        );
    }

    /// `timeout_ms` is the deprecated spelling of `timeout`: still accepted,
    /// and `timeout` wins when both are given.
    #[test]
    fn timeout_ms_is_a_deprecated_alias_of_timeout() {
        let c = DynamoDbConfig::from_url("dynamodb://locks?timeout_ms=1500").expect("parses");
        assert_eq!(c.timeout_or_default(), Duration::from_millis(1500));
        let c = DynamoDbConfig::from_url("dynamodb://locks?timeout_ms=1500&timeout=2s")
            .expect("parses");
        assert_eq!(c.timeout_or_default(), Duration::from_secs(2));
        let c = DynamoDbConfig::from_url("dynamodb://locks").expect("parses");
        assert_eq!(c.timeout_or_default(), DEFAULT_OPERATION_TIMEOUT);
    }

    /// The locker's options share the URL and are left to the locker.
    #[test]
    fn the_lockers_options_are_accepted_and_left_to_the_locker() {
        let c = DynamoDbConfig::from_url(
            "dynamodb://locks?ttl=30s&wait=5s&retry_min=10ms&retry_max=1s&auto_extend=true",
        )
        .expect("locker options parse");
        assert_eq!(c.shared, SharedConfig::default());
    }

    #[test]
    fn bad_urls_and_options_are_config_errors() {
        for url in [
            "redis://locks",
            "dynamodb://",
            "dynamodb://locks?bogus=1",
            "dynamodb://locks?timeout_ms=soon",
            "dynamodb://locks?timeout=2",
            "dynamodb://locks?timeout=9000h",
            "dynamodb://locks?durable=maybe",
            "dynamodb://user@locks",
        ] {
            match DynamoDbConfig::from_url(url) {
                Err(LockError::Config(_)) => {}
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
    }

    /// Issue 11: a misspelt option used to be refused without a hint; now
    /// every one names the closest known option.
    #[test]
    fn a_misspelt_option_is_refused_naming_the_closest_known_one() {
        for (option, hint) in [
            ("namspace=billing", "namespace"),
            ("regoin=eu-west-1", "region"),
            ("timout=2s", "timeout"),
            ("create_tabel=true", "create_table"),
        ] {
            let url = format!("dynamodb://locks?{option}");
            match DynamoDbConfig::from_url(&url) {
                Err(LockError::Config(message)) => assert!(
                    message.contains(&format!("did you mean `{hint}`")),
                    "{url}: expected a hint for {hint}, got {message}"
                ),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        let c = DynamoDbConfig::from_url(
            "dynamodb://locks?timeout=2s&drift_factor=0.02&drift_fixed=5ms&namespace=a%2Fb+c",
        )
        .expect("shared options parse");
        assert_eq!(c.timeout_or_default(), Duration::from_secs(2));
        assert_eq!(c.drift_or_default().factor, 0.02);
        assert_eq!(c.drift_or_default().fixed, Duration::from_millis(5));
        assert_eq!(c.namespace_or_default(), "a/b c");
    }

    /// Issue 11: `+` in a secret key became a space. AWS secret keys use `+`
    /// and `/`: both are literal in the URL's credentials; `%2B`/`%2F` work
    /// too.
    #[test]
    fn plus_and_slash_in_a_secret_key_are_literal() {
        for (url, id, secret) in [
            ("dynamodb://AK:a+b/c@locks", "AK", "a+b/c"),
            ("dynamodb://AK:a%2Bb%2Fc@locks", "AK", "a+b/c"),
            ("dynamodb://AK:p%40ss:w@locks/?region=x", "AK", "p@ss:w"),
            ("dynamodb://A%2BK:s@locks", "A+K", "s"),
        ] {
            let c = DynamoDbConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                c.credentials,
                Some((id.to_owned(), Secret::new(secret))),
                "{url}"
            );
            assert_eq!(c.table, "locks", "{url}");
        }
    }

    /// Issue 11: the secret key appeared in `connect`'s error for a URL whose
    /// secret contains `/`, in the URL errors, and in the builder's `Debug`.
    /// No error and no `Debug` output from a URL with a sentinel secret shows
    /// it, well formed or not.
    #[test]
    fn no_error_or_debug_output_shows_the_secret_key() {
        let sentinel = "S3nt1nel";
        let urls = [
            format!("dynamodb://AK:{sentinel}/x+y@locks?region=us-east-1"),
            format!("dynamodb://AK:{sentinel}%2Fx@locks?namspace=a"),
            format!("dynamodb://AK:{sentinel}@locks?timeout=5"),
            format!("dynamodb://AK:{sentinel}@lo?region=x"),
            format!("dynamodb://AK:{sentinel}%zz@locks"),
            format!("dynamodb:/AK:{sentinel}@locks"),
            format!("dynamodb://AK:{sentinel}@"),
            format!("dynamodb://AK:{sentinel}@locks/x"),
            format!("dynamodb://AK{sentinel}@locks"),
            format!("dynamodb://AK:{sentinel}@locks#frag?durable=maybe"),
        ];
        for url in &urls {
            let shown = match DynamoDbConfig::from_url(url) {
                Ok(config) => {
                    let invalid = config.validate().err().map(|e| e.to_string());
                    format!("{config:?} {invalid:?}")
                }
                Err(error) => format!("{error} {error:?}"),
            };
            assert!(
                !shown.contains(sentinel),
                "{url} showed its secret: {shown}"
            );
        }
        let config = DynamoDbConfig::new("locks").credentials("AK", sentinel);
        assert!(!format!("{config:?}").contains(sentinel));
    }

    /// `ca`: a missing file, a file without certificates, one whose PEM is
    /// broken, an empty path and a CA for a plain-HTTP endpoint are Config
    /// errors naming the option (and the path), never the contents.
    #[test]
    fn a_ca_bundle_that_cannot_serve_is_a_config_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("leasehold-ddb-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate: s3cr3t").unwrap();
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!s3cr3t!!\n").unwrap();
        let missing = dir.join("missing.pem");
        for (path, why) in [
            (&missing, "cannot read it"),
            (&garbage, "holds no PEM certificate"),
            (&broken, "is not valid PEM"),
        ] {
            let url = format!("dynamodb://locks?ca={}", path.display());
            match DynamoDbConfig::from_url(&url) {
                Err(LockError::Config(message)) => assert!(
                    message.contains("`ca`")
                        && message.contains(&path.display().to_string())
                        && message.contains(why)
                        && !message.contains("s3cr3t"),
                    "{url}: {message}"
                ),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        for url in [
            "dynamodb://locks?ca=".to_owned(),
            format!(
                "dynamodb://locks?endpoint=http://127.0.0.1:8000&ca={}",
                garbage.display()
            ),
        ] {
            match DynamoDbConfig::from_url(&url) {
                Err(LockError::Config(message)) => {
                    assert!(message.contains("ca"), "{url}: {message}")
                }
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn namespaces_with_the_separator_are_refused() {
        let err = DynamoDbConfig::new("locks")
            .namespace("a#b")
            .validate()
            .expect_err("'#' separates namespace and key");
        assert!(err.to_string().contains("'#'"), "{err}");
        assert!(DynamoDbConfig::new("ab").validate().is_err());
        assert!(
            DynamoDbConfig::new("locks")
                .poll(Duration::ZERO)
                .validate()
                .is_err(),
            "a zero poll would spin"
        );
    }
}
