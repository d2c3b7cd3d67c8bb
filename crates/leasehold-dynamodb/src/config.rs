//! Building a backend: options, the SDK client, URLs.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use leasehold_core::config::{self, MAX_DURATION, Secret, redact_url};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};

use crate::DynamoDbBackend;
use crate::observe::Observations;

/// The default per-call timeout.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "leasehold";
/// The default partition key attribute name.
pub const DEFAULT_PARTITION_KEY: &str = "pk";
/// How many other holders' keys a backend remembers observations of.
pub const DEFAULT_OBSERVATION_CAPACITY: usize = 10_000;
/// The URL options `dynamodb://` knows (see [`DynamoDbBuilder::from_url`]).
pub const OPTIONS: &[&str] = &[
    "region",
    "endpoint",
    "namespace",
    "partition_key",
    "timeout",
    "timeout_ms",
    "durable",
    "create_table",
    "drift_factor",
    "drift_fixed",
];
/// The longest namespace, in bytes (keys add up to 1024 more; DynamoDB allows
/// 2048-byte partition keys).
pub const MAX_NAMESPACE_BYTES: usize = 512;

/// Options for a [`DynamoDbBackend`]; start with [`DynamoDbBackend::builder`]
/// or [`DynamoDbBuilder::from_url`].
///
/// Region, endpoint and credentials come from the standard AWS configuration
/// chain (environment, profile files, web identity, container and instance
/// metadata) unless set here; set them for a local endpoint.
///
/// `Debug` shows the access key id but never the secret key (a
/// [`Secret`]).
#[derive(Debug, Clone)]
pub struct DynamoDbBuilder {
    pub(crate) table: String,
    pub(crate) namespace: String,
    pub(crate) partition_key: String,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) credentials: Option<(String, Secret)>,
    pub(crate) operation_timeout: Duration,
    pub(crate) clock: SharedClock,
    pub(crate) drift: Drift,
    pub(crate) holder_metadata: Option<String>,
    pub(crate) durable_fencing: bool,
    pub(crate) observation_capacity: usize,
    pub(crate) create_table: bool,
}

impl DynamoDbBuilder {
    pub(crate) fn new(table: impl Into<String>) -> Self {
        DynamoDbBuilder {
            table: table.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            partition_key: DEFAULT_PARTITION_KEY.into(),
            region: None,
            endpoint: None,
            credentials: None,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            clock: system_clock(),
            drift: Drift::default(),
            holder_metadata: default_holder_metadata(),
            durable_fencing: true,
            observation_capacity: DEFAULT_OBSERVATION_CAPACITY,
            create_table: false,
        }
    }

    /// Options from `dynamodb://[access_key_id:secret_access_key@]table?query`.
    ///
    /// Query parameters ([`OPTIONS`]): `region`, `endpoint` (for example
    /// `http://127.0.0.1:8000`), `namespace`, `partition_key`, `timeout`
    /// (per-call timeout, a duration such as `2s` or `750ms`: a bare number
    /// is an error), `timeout_ms` (the same in whole milliseconds, kept for
    /// existing URLs), `durable` (`true`/`false`: whether the store keeps
    /// data across restarts, default `true`), `create_table` (`true`: create
    /// the table at connect if missing), `drift_factor` and `drift_fixed`
    /// (the drift allowance). An unknown option is a [`LockError::Config`]
    /// naming the closest known one: a typo never falls back to a default.
    ///
    /// Credentials in the URL are static keys, meant for local stand-ins; in
    /// production leave them out and let the AWS configuration chain find
    /// them. They are percent-decoded and nothing else: `+` and `/` (both
    /// common in AWS secret keys) are taken literally, as AWS does; only
    /// `%`, `@`, `?` and `#` must be written `%25`, `%40`, `%3F`, `%23`.
    /// The user information ends at the *last* `@` before the query, so a
    /// literal `/` in the secret works. No error and no `Debug` output shows
    /// the secret key, even for a malformed URL.
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        let bad = |why: &str| LockError::Config(format!("dynamodb url {:?}: {why}", redact(url)));
        let rest = url
            .strip_prefix("dynamodb://")
            .ok_or_else(|| bad("the scheme must be dynamodb://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, query),
            None => (rest, ""),
        };
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
        let mut builder = DynamoDbBuilder::new(table);
        if let Some(userinfo) = userinfo {
            let (id, secret) = userinfo
                .split_once(':')
                .ok_or_else(|| bad("has an access key id but no secret key (id:secret@table)"))?;
            let id = percent_decode(id).map_err(|why| bad(&format!("access key id {why}")))?;
            let secret = percent_decode(secret).map_err(|why| bad(&format!("secret key {why}")))?;
            builder = builder.static_credentials(id, secret);
        }
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            builder = match name.as_ref() {
                "region" => builder.region(value),
                "endpoint" => builder.endpoint(value),
                "namespace" => builder.namespace(value),
                "partition_key" => builder.partition_key(value),
                "timeout" => builder.operation_timeout(config::duration(&name, &value)?),
                "timeout_ms" => {
                    let millis: u64 = config::number(&name, &value)?;
                    let timeout = Duration::from_millis(millis);
                    if timeout > MAX_DURATION {
                        return Err(config::invalid(&name, &value, "longer than one year"));
                    }
                    builder.operation_timeout(timeout)
                }
                "durable" => builder.durable_fencing(config::boolean(&name, &value)?),
                "create_table" => builder.create_table_if_missing(config::boolean(&name, &value)?),
                "drift_factor" => {
                    let factor: f64 = value.parse().map_err(|_| {
                        config::invalid(&name, &value, "expected a number like 0.01")
                    })?;
                    if !(0.0..1.0).contains(&factor) {
                        return Err(config::invalid(&name, &value, "must be in [0, 1)"));
                    }
                    let drift = Drift {
                        factor,
                        ..builder.drift
                    };
                    builder.drift(drift)
                }
                "drift_fixed" => {
                    let drift = Drift {
                        fixed: config::duration(&name, &value)?,
                        ..builder.drift
                    };
                    builder.drift(drift)
                }
                other => return Err(config::unknown_option("dynamodb", other, OPTIONS)),
            };
        }
        Ok(builder)
    }

    /// Separates this application's locks from others' in a shared table
    /// (default `leasehold`). Must not contain `#` or control characters.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

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

    /// The endpoint set by [`DynamoDbBuilder::endpoint`] or a URL, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Static credentials instead of the configuration chain (local use).
    /// The secret key is kept as a [`Secret`]: never shown by `Debug`.
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), Secret::new(secret_access_key)));
        self
    }

    /// The bound on every store call (default 5 s); past it the call fails
    /// with [`LockError::Unavailable`]. The SDK's own retries are disabled so
    /// the bound holds; callers retry through their `RetryPolicy`.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The clock (inject pauses and skew in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The drift allowance subtracted from every lease's validity.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// Free-form metadata stored with each lease (default `pid=.. host=..`);
    /// shown by `inspect`, never trusted.
    pub fn holder_metadata(mut self, metadata: Option<String>) -> Self {
        self.holder_metadata = metadata;
        self
    }

    /// Whether the store keeps its data across restarts, so fencing counters
    /// survive them (default `true`, as DynamoDB does). Set `false` for an
    /// in-memory stand-in.
    pub fn durable_fencing(mut self, durable: bool) -> Self {
        self.durable_fencing = durable;
        self
    }

    /// How many other holders' keys to remember observations of (default
    /// 10 000). Past it the least recently seen half is forgotten, which only
    /// delays takeovers of those keys.
    pub fn observation_capacity(mut self, capacity: usize) -> Self {
        self.observation_capacity = capacity;
        self
    }

    /// Whether [`DynamoDbBuilder::connect`] creates the table when missing.
    pub fn create_table_if_missing(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Loads the AWS configuration chain (with this builder's overrides) and
    /// connects. Creates the table first if asked to.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn connect(self) -> Result<DynamoDbBackend, LockError> {
        self.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some((id, secret)) = &self.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "leasehold",
            ));
        }
        let shared = loader.load().await;
        let client = Client::new(&shared);
        self.with_client(client).await
    }

    /// Uses an existing SDK client. Its timeouts and retries are replaced by
    /// this builder's operation timeout (no SDK retries), so every call stays
    /// bounded; region, endpoint and credentials set here override its own.
    /// Cancel safe: a dropped connect takes no lock and leaves nothing behind.
    pub async fn with_client(self, client: Client) -> Result<DynamoDbBackend, LockError> {
        self.validate()?;
        let has_http_client = client.config().http_client().is_some();
        let mut config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.operation_timeout)
                    .operation_timeout(self.operation_timeout)
                    .operation_attempt_timeout(self.operation_timeout)
                    .build(),
            );
        if !has_http_client {
            config = config.http_client(http_client());
        }
        if let Some(region) = &self.region {
            config = config.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        if let Some((id, secret)) = &self.credentials {
            config = config.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "leasehold",
            ));
        }
        let client = Client::from_conf(config.build());
        let backend = DynamoDbBackend {
            client,
            observations: Arc::new(Observations::new(self.observation_capacity)),
            options: Arc::new(self),
        };
        if backend.options.create_table {
            backend.create_table().await?;
        }
        Ok(backend)
    }

    fn validate(&self) -> Result<(), LockError> {
        if self.table.len() < 3 || self.table.len() > 255 {
            return Err(LockError::Config(format!(
                "DynamoDB table name {:?} must be 3 to 255 characters",
                self.table
            )));
        }
        if self.namespace.contains('#') || self.namespace.chars().any(|c| c.is_control()) {
            return Err(LockError::Config(format!(
                "namespace {:?} must not contain '#' or control characters",
                self.namespace
            )));
        }
        if self.namespace.len() > MAX_NAMESPACE_BYTES {
            return Err(LockError::Config(format!(
                "namespace is {} bytes, at most {MAX_NAMESPACE_BYTES} allowed",
                self.namespace.len()
            )));
        }
        if self.partition_key.is_empty() {
            return Err(LockError::Config("partition key name is empty".into()));
        }
        if self.operation_timeout.is_zero() || self.operation_timeout > MAX_DURATION {
            return Err(LockError::Config(
                "operation timeout must be positive and at most one year".into(),
            ));
        }
        Ok(())
    }
}

/// HTTP and HTTPS with rustls on ring (no aws-lc build).
fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

fn default_holder_metadata() -> Option<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    Some(match host {
        Some(host) => format!("pid={} host={host}", std::process::id()),
        None => format!("pid={}", std::process::id()),
    })
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
        let b = DynamoDbBuilder::from_url(
            "dynamodb://AK:s%2Fecret@locks?region=eu-west-1&endpoint=http://127.0.0.1:8000\
             &namespace=app&partition_key=id&timeout_ms=750&durable=false&create_table=true",
        )
        .expect("parses");
        assert_eq!(b.table, "locks");
        assert_eq!(b.region.as_deref(), Some("eu-west-1"));
        assert_eq!(b.endpoint.as_deref(), Some("http://127.0.0.1:8000"));
        assert_eq!(b.namespace, "app");
        assert_eq!(b.partition_key, "id");
        assert_eq!(b.operation_timeout, Duration::from_millis(750));
        assert!(!b.durable_fencing);
        assert!(b.create_table);
        assert_eq!(
            b.credentials,
            Some(("AK".to_string(), Secret::new("s/ecret")))
        );
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
            match DynamoDbBuilder::from_url(url) {
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
            match DynamoDbBuilder::from_url(&url) {
                Err(LockError::Config(message)) => assert!(
                    message.contains(&format!("did you mean `{hint}`")),
                    "{url}: expected a hint for {hint}, got {message}"
                ),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        let b = DynamoDbBuilder::from_url(
            "dynamodb://locks?timeout=2s&drift_factor=0.02&drift_fixed=5ms&namespace=a%2Fb+c",
        )
        .expect("shared options parse");
        assert_eq!(b.operation_timeout, Duration::from_secs(2));
        assert_eq!(b.drift.factor, 0.02);
        assert_eq!(b.drift.fixed, Duration::from_millis(5));
        assert_eq!(b.namespace, "a/b c");
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
            let b = DynamoDbBuilder::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                b.credentials,
                Some((id.to_owned(), Secret::new(secret))),
                "{url}"
            );
            assert_eq!(b.table, "locks", "{url}");
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
            let shown = match DynamoDbBuilder::from_url(url) {
                Ok(builder) => {
                    let invalid = builder.validate().err().map(|e| e.to_string());
                    format!("{builder:?} {invalid:?}")
                }
                Err(error) => format!("{error} {error:?}"),
            };
            assert!(
                !shown.contains(sentinel),
                "{url} showed its secret: {shown}"
            );
        }
        let builder = DynamoDbBuilder::new("locks").static_credentials("AK", sentinel);
        assert!(!format!("{builder:?}").contains(sentinel));
    }

    #[test]
    fn namespaces_with_the_separator_are_refused() {
        let err = DynamoDbBuilder::new("locks")
            .namespace("a#b")
            .validate()
            .expect_err("'#' separates namespace and key");
        assert!(err.to_string().contains("'#'"), "{err}");
        assert!(DynamoDbBuilder::new("ab").validate().is_err());
    }
}
