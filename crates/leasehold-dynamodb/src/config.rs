//! Building a backend: options, the SDK client, URLs.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
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
/// The longest namespace, in bytes (keys add up to 1024 more; DynamoDB allows
/// 2048-byte partition keys).
pub const MAX_NAMESPACE_BYTES: usize = 512;

/// Options for a [`DynamoDbBackend`]; start with [`DynamoDbBackend::builder`]
/// or [`DynamoDbBuilder::from_url`].
///
/// Region, endpoint and credentials come from the standard AWS configuration
/// chain (environment, profile files, web identity, container and instance
/// metadata) unless set here; set them for a local endpoint.
#[derive(Debug, Clone)]
pub struct DynamoDbBuilder {
    pub(crate) table: String,
    pub(crate) namespace: String,
    pub(crate) partition_key: String,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) credentials: Option<(String, String)>,
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

    /// Options from `dynamodb://[access_key_id:secret@]table?query`.
    ///
    /// Query parameters: `region`, `endpoint` (for example
    /// `http://127.0.0.1:8000`), `namespace`, `partition_key`, `timeout_ms`
    /// (per-call timeout), `durable` (`true`/`false`: whether the store keeps
    /// data across restarts, default `true`), `create_table` (`true`: create
    /// the table at connect if missing). Credentials in the URL are static
    /// keys, meant for local stand-ins; in production leave them out and let
    /// the AWS configuration chain find them.
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        let parsed =
            url::Url::parse(url).map_err(|e| LockError::Config(format!("bad URL {url:?}: {e}")))?;
        if parsed.scheme() != "dynamodb" {
            return Err(LockError::Config(format!(
                "scheme {:?} is not dynamodb://",
                parsed.scheme()
            )));
        }
        let table = parsed.host_str().filter(|t| !t.is_empty()).ok_or_else(|| {
            LockError::Config("dynamodb:// URL needs a table name as host".into())
        })?;
        let mut builder = DynamoDbBuilder::new(decode(table)?);
        if !parsed.username().is_empty() {
            let secret = parsed.password().ok_or_else(|| {
                LockError::Config("dynamodb:// URL has a user but no secret key".into())
            })?;
            builder = builder.static_credentials(decode(parsed.username())?, decode(secret)?);
        }
        for (name, value) in parsed.query_pairs() {
            let value = value.into_owned();
            builder = match name.as_ref() {
                "region" => builder.region(value),
                "endpoint" => builder.endpoint(value),
                "namespace" => builder.namespace(value),
                "partition_key" => builder.partition_key(value),
                "timeout_ms" => {
                    builder.operation_timeout(Duration::from_millis(parse_number(&name, &value)?))
                }
                "durable" => builder.durable_fencing(parse_bool(&name, &value)?),
                "create_table" => builder.create_table_if_missing(parse_bool(&name, &value)?),
                other => {
                    return Err(LockError::Config(format!(
                        "unknown dynamodb:// option {other:?} (known: region, endpoint, namespace, \
                         partition_key, timeout_ms, durable, create_table)"
                    )));
                }
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
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), secret_access_key.into()));
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
            loader =
                loader.credentials_provider(Credentials::new(id, secret, None, None, "leasehold"));
        }
        let shared = loader.load().await;
        let client = Client::new(&shared);
        self.with_client(client).await
    }

    /// Uses an existing SDK client. Its timeouts and retries are replaced by
    /// this builder's operation timeout (no SDK retries), so every call stays
    /// bounded; region, endpoint and credentials set here override its own.
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
            config =
                config.credentials_provider(Credentials::new(id, secret, None, None, "leasehold"));
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
        if self.operation_timeout.is_zero() {
            return Err(LockError::Config(
                "operation timeout must be positive".into(),
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

fn decode(part: &str) -> Result<String, LockError> {
    Ok(url::form_urlencoded::parse(format!("x={part}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default())
}

fn parse_number(name: &str, value: &str) -> Result<u64, LockError> {
    value
        .parse()
        .map_err(|_| LockError::Config(format!("{name}={value:?} is not a whole number")))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, LockError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(LockError::Config(format!(
            "{name}={value:?} is not true or false"
        ))),
    }
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
            Some(("AK".to_string(), "s/ecret".to_string()))
        );
    }

    #[test]
    fn bad_urls_and_options_are_config_errors() {
        for url in [
            "redis://locks",
            "dynamodb://",
            "dynamodb://locks?bogus=1",
            "dynamodb://locks?timeout_ms=soon",
            "dynamodb://locks?durable=maybe",
            "dynamodb://user@locks",
        ] {
            match DynamoDbBuilder::from_url(url) {
                Err(LockError::Config(_)) => {}
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
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
