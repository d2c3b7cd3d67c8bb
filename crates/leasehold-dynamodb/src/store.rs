//! Client plumbing: the SDK client (bounded, no SDK retries), the table,
//! strongly consistent reads, and the error path that re-creates a table a
//! non-durable store lost.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
use leasehold_core::config::Secret;
use leasehold_core::{Attempts, Key, LockError, WaitPolicy, with_timeout};

use crate::config::DynamoDbConfig;
use crate::error::{self, NAME, is_missing_table, is_table_in_use};
use crate::item::{LockItem, OWNER};

/// The SDK client and the table it works on.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) client: Client,
    pub(crate) table: String,
    partition_key: String,
    namespace: String,
    timeout: Duration,
    create_table: bool,
    pub(crate) durable: bool,
}

impl Store {
    /// Builds the client: from the AWS configuration chain with `config`'s
    /// overrides, or from `client` (its timeouts and retries replaced by the
    /// operation timeout and none, so every call stays bounded). Creates the
    /// table if `config` asks for it.
    pub(crate) async fn open(
        config: &DynamoDbConfig,
        client: Option<Client>,
    ) -> Result<Store, LockError> {
        config.validate()?;
        let ca = config.ca_bundle()?;
        let (client, given) = match client {
            Some(client) => (client, true),
            None => (Client::new(&load_chain(config, ca.clone()).await?), false),
        };
        let timeout = config.timeout_or_default();
        let has_http_client = client.config().http_client().is_some();
        if given && has_http_client && ca.is_some() {
            return Err(LockError::Config(
                "dynamodb option `ca` cannot reach a client that brings its own HTTP client: \
                 give that client the CA, or leave the HTTP client to leasehold"
                    .into(),
            ));
        }
        let mut sdk = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .operation_attempt_timeout(timeout)
                    .build(),
            );
        if !has_http_client {
            sdk = sdk.http_client(http_client(ca)?);
        }
        if let Some(region) = &config.region {
            sdk = sdk.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            sdk = sdk.endpoint_url(endpoint.clone());
        }
        if let Some((id, secret)) = &config.credentials {
            sdk = sdk.credentials_provider(static_credentials(id, secret));
        }
        let store = Store {
            client: Client::from_conf(sdk.build()),
            table: config.table.clone(),
            partition_key: config.partition_key.clone(),
            namespace: config.namespace_or_default().to_owned(),
            timeout,
            create_table: config.create_table,
            durable: config.durable,
        };
        if store.create_table {
            store.create_table().await?;
        }
        Ok(store)
    }

    /// The operation timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The namespace.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The item's partition key value for `key`: `namespace#key`.
    pub(crate) fn partition_key_for(&self, key: &Key) -> String {
        format!("{}#{}", self.namespace, key.as_str())
    }

    /// One page of a strongly consistent `Scan` for the held items whose
    /// partition key starts with `prefix`: at most `limit` items *read*
    /// (DynamoDB applies the filter after the limit, so a page may hold
    /// fewer, even none), from after the partition key `after`. Returns the
    /// items and the partition key to continue after, if the scan is not
    /// over.
    pub(crate) async fn scan_held(
        &self,
        prefix: &str,
        limit: i32,
        after: Option<&str>,
    ) -> Result<(Vec<HashMap<String, AttributeValue>>, Option<String>), LockError> {
        let pk = &self.partition_key;
        let mut request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .limit(limit)
            .filter_expression("begins_with(#pk, :prefix) AND attribute_exists(#owner)")
            .expression_attribute_names("#pk", pk)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()));
        if let Some(after) = after {
            request = request.exclusive_start_key(pk, AttributeValue::S(after.to_owned()));
        }
        let output = match self.bounded(request.send()).await? {
            Ok(output) => output,
            Err(err) => return Err(self.fail(err).await),
        };
        let next = match output.last_evaluated_key().map(|last| last.get(pk)) {
            None => None,
            Some(Some(AttributeValue::S(last))) => Some(last.clone()),
            Some(_) => {
                return Err(LockError::backend(
                    NAME,
                    format!(
                        "table {}: a scan stopped at a key without a string `{pk}`",
                        self.table
                    ),
                ));
            }
        };
        Ok((output.items.unwrap_or_default(), next))
    }

    /// The partition key attribute's name.
    pub(crate) fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// Which item an error is about.
    pub(crate) fn what(&self, key: &Key) -> String {
        format!("key {:?} in table {}", key.as_str(), self.table)
    }

    /// An `UpdateItem` of the item `pk`.
    pub(crate) fn update(&self, pk: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(&self.partition_key, AttributeValue::S(pk.to_owned()))
    }

    /// Creates the lock table (partition key only, a string, on-demand
    /// billing) and waits until it is `ACTIVE`; an existing table is fine.
    /// Each call is bounded by the operation timeout; waiting for `ACTIVE`
    /// by 60 operation timeouts.
    pub(crate) async fn create_table(&self) -> Result<(), LockError> {
        let (table, pk) = (&self.table, &self.partition_key);
        let create = self
            .client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(pk)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| LockError::backend(NAME, e))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(pk)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| LockError::backend(NAME, e))?,
            );
        match self.bounded(create.send()).await? {
            Ok(_) => tracing::info!(table, "created lock table"),
            Err(err) if is_table_in_use(&err) => {}
            Err(err) => return Err(error::map(table, err)),
        }
        let poll = Duration::from_millis(200);
        let policy = WaitPolicy::new(self.timeout.saturating_mul(60)).with_delays(poll, poll);
        let mut attempts = Attempts::new(&policy);
        loop {
            let described = self
                .bounded(self.client.describe_table().table_name(table).send())
                .await?
                .map_err(|e| error::map(table, e))?;
            let status = described.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            let Some(delay) = attempts.next_delay(None) else {
                return Err(LockError::unavailable(
                    NAME,
                    format!("table {table} did not become ACTIVE in time (status {status:?})"),
                ));
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs an SDK call under the operation timeout (a backstop to the SDK's
    /// own, which is the same).
    pub(crate) async fn bounded<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, LockError> {
        with_timeout(NAME, self.timeout, async { Ok(call.await) }).await
    }

    /// Maps an SDK error of a lock operation. When the table is missing and
    /// the store was configured as not durable with `create_table`, it
    /// re-creates the table and reports a retryable error (the store lost its
    /// data, counters start over, which `durable_fencing(false)` already
    /// says). A durable store's table is never re-created behind the caller's
    /// back.
    pub(crate) async fn fail<E>(&self, err: SdkError<E>) -> LockError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let missing = is_missing_table(&err);
        let mapped = error::map(&self.table, err);
        if !(missing && self.create_table && !self.durable) {
            return mapped;
        }
        tracing::warn!(
            table = %self.table,
            "lock table is missing (a non-durable store lost its data): re-creating it"
        );
        match self.create_table().await {
            Ok(()) => LockError::Backend {
                backend: NAME,
                retryable: true,
                source: format!(
                    "table {} was missing and has been re-created; fencing counters started over",
                    self.table
                )
                .into(),
            },
            Err(create_error) => create_error,
        }
    }

    /// A strongly consistent read of `key`'s item, decoded.
    pub(crate) async fn read(&self, key: &Key) -> Result<Option<LockItem>, LockError> {
        let request = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(
                &self.partition_key,
                AttributeValue::S(self.partition_key_for(key)),
            )
            .consistent_read(true);
        let output = match self.bounded(request.send()).await? {
            Ok(output) => output,
            Err(err) => return Err(self.fail(err).await),
        };
        output
            .item()
            .map(|item: &HashMap<String, AttributeValue>| LockItem::decode(item, &self.what(key)))
            .transpose()
    }
}

/// The AWS configuration chain with `config`'s overrides (so a given region
/// or endpoint is never looked up).
async fn load_chain(
    config: &DynamoDbConfig,
    ca: Option<Vec<u8>>,
) -> Result<aws_config::SdkConfig, LockError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client(ca)?);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some((id, secret)) = &config.credentials {
        loader = loader.credentials_provider(static_credentials(id, secret));
    }
    Ok(loader.load().await)
}

fn static_credentials(id: &str, secret: &Secret) -> Credentials {
    Credentials::new(id, secret.expose(), None, None, "leasehold")
}

/// HTTP and HTTPS with rustls on ring (no aws-lc build), trusting the
/// system's roots and `ca` (a PEM bundle already checked by
/// [`DynamoDbConfig::ca_bundle`]).
fn http_client(ca: Option<Vec<u8>>) -> Result<SharedHttpClient, LockError> {
    let builder =
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring));
    let Some(ca) = ca else {
        return Ok(builder.build_https());
    };
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(ca))
        .build()
        .map_err(|e| LockError::Config(format!("dynamodb option `ca`: {e}")))?;
    Ok(builder.tls_context(context).build_https())
}
