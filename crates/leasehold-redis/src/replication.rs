//! The replica rule (`min_replicas=N&replica_timeout=…`): a grant or a
//! renewal counts only once `WAIT` says N replicas have it, so a failover to
//! one of them keeps it. The script and its `WAIT` go in one pipeline on one
//! connection, so the `WAIT` covers exactly that write (a `WAIT` sent on a
//! fresh connection after a reconnect would confirm nothing and still count
//! the replicas).

use std::time::Duration;

use leasehold_core::LockError;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{FromRedisValue, ScriptInvocation, Value};

use crate::conn::NodeConnection;

use crate::replicas::{Confirmation, ReplicaRule};
use crate::store::RedisNode;

impl RedisNode {
    /// The replica rule of this node (`None`: writes count as soon as the
    /// master has them).
    pub fn replica_rule(&self) -> Option<ReplicaRule> {
        self.replicas
    }

    /// Requires `rule` for every later grant and renewal through this node.
    pub fn with_replica_rule(mut self, rule: Option<ReplicaRule>) -> Self {
        self.replicas = rule;
        self
    }

    /// Runs `invocation`, followed under a replica rule by `WAIT` in the
    /// same pipeline. A server that lost the script (`NOSCRIPT`) gets it
    /// loaded and the pipeline sent again (the script had not run).
    ///
    /// `slot_key` is a key the script touches: on a cluster the pipeline is
    /// routed to the master of its hash slot, so the `WAIT` counts that
    /// master's replicas and covers that write (the client would otherwise
    /// route a lone `WAIT` to every master and answer the least count).
    pub(crate) async fn invoke<T>(
        &self,
        slot_key: &str,
        invocation: ScriptInvocation<'static>,
    ) -> Result<(T, Confirmation), LockError>
    where
        T: FromRedisValue + Send + 'static,
    {
        let Some(rule) = self.replicas else {
            let value = self
                .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            return Ok((value, Confirmation::NotAsked));
        };
        let route =
            SingleNodeRoutingInfo::SpecificNode(Route::with_key(slot_key, SlotAddr::Master));
        let (value, acked): (T, u32) = self
            .call(|conn| async move {
                let mut pipe = redis::pipe();
                pipe.invoke_script(&invocation)
                    .cmd("WAIT")
                    .arg(rule.min_replicas)
                    .arg(rule.timeout.as_millis().max(1) as u64);
                let send = |mut conn: NodeConnection, pipe: redis::Pipeline| {
                    let route = route.clone();
                    async move {
                        match &mut conn {
                            NodeConnection::Cluster(cluster) => {
                                // A routed pipeline answers a command's error
                                // (`NOSCRIPT`) as a value: make it the error.
                                let values = cluster.route_pipeline(pipe, 0, 2, route).await?;
                                let values = Value::Array(values).extract_error()?;
                                Ok(redis::from_redis_value(values)?)
                            }
                            NodeConnection::Single(_) => pipe.query_async(&mut conn).await,
                        }
                    }
                };
                match send(conn.clone(), pipe.clone()).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        invocation.load_async(&mut conn.clone()).await?;
                        send(conn, pipe).await
                    }
                    other => other,
                }
            })
            .await?;
        let confirmation = if acked >= rule.min_replicas {
            Confirmation::Confirmed
        } else {
            Confirmation::Short(acked)
        };
        Ok((value, confirmation))
    }

    /// How many replicas the server reports connected (`connected_slaves`
    /// of `INFO replication`). Read-only; cancel safe.
    pub async fn connected_replicas(&self) -> Result<u32, LockError> {
        let info: String = self
            .call(|mut conn| async move {
                redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The error of a write that too few replicas confirmed.
    pub(crate) fn short_of_replicas(&self, what: &str, acked: u32) -> LockError {
        let rule = self.replicas.unwrap_or(ReplicaRule {
            min_replicas: 0,
            timeout: Duration::ZERO,
        });
        let error = LockError::unavailable(
            self.backend,
            format!(
                "{what}: {acked} of the required {} replicas confirmed it within {:?} (min_replicas)",
                rule.min_replicas, rule.timeout
            ),
        );
        // A master without its replicas may be one that came back empty
        // after a failover: have a Sentinel link ask where the master is.
        self.link.failed(&error);
        error
    }
}
