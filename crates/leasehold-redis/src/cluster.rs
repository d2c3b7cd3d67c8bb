//! Redis Cluster: `redis+cluster://[user[:password]@]n1:p1,n2:p2,n3:p3`
//! ([`ClusterTarget`]), the node connecting through the client's cluster
//! connection, batches split per hash slot, and `SCAN` run on every master.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, LockError, with_timeout};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};

use crate::conn::NodeConnection;
use crate::error::map;
use crate::keys::KeyLayout;
use crate::link::Link;
use crate::store::RedisNode;
use crate::tls::TopologyTls;

/// The seed nodes and the login of a `redis+cluster://` URL.
#[derive(Clone)]
pub struct ClusterTarget {
    /// `host:port` of each seed node (the client learns the rest).
    pub nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    /// TLS to every node (`tls=true`), else plaintext.
    pub(crate) tls: Option<TopologyTls>,
}

impl ClusterTarget {
    /// Parses the part of a `redis+cluster://` URL before `?`; `shown` is
    /// the URL as errors may show it. A cluster has database 0 only: a path
    /// is a [`LockError::Config`]. `tls`: TLS to every node.
    pub(crate) fn parse(
        base: &str,
        shown: &str,
        tls: Option<TopologyTls>,
    ) -> Result<Self, LockError> {
        let bad = |why: &str| LockError::Config(format!("redis url {shown:?}: {why}"));
        let rest = base
            .split_once("://")
            .map(|(_, rest)| rest)
            .ok_or_else(|| bad("expected redis+cluster://n1:p1,n2:p2"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() {
            return Err(bad("a cluster has database 0 only: no path"));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() || host.contains(['?', '#', '@']) {
                return Err(bad("a node address is empty or malformed"));
            }
            nodes.push(host.to_owned());
        }
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("v={}", text.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((user, pass)) => (
                (!user.is_empty()).then(|| decode(user)),
                (!pass.is_empty()).then(|| decode(pass)),
            ),
            None => (None, None),
        };
        Ok(ClusterTarget {
            nodes,
            username,
            password,
            tls,
        })
    }
}

/// Shows the seed nodes, never the password.
impl fmt::Debug for ClusterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTarget")
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ClusterTarget {
    /// The URL of the node at `addr` (`host:port`): `rediss://` under TLS.
    fn url_of(&self, addr: &str) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{addr}")
    }

    /// A client of the node at `addr` alone, with the login and TLS.
    fn node_client(&self, addr: &str, backend: &'static str) -> Result<redis::Client, LockError> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.url_of(addr))
            .map_err(|e| map(backend, e))?;
        let mut login = info.redis_settings().clone();
        if let Some(user) = &self.username {
            login = login.set_username(user);
        }
        if let Some(password) = &self.password {
            login = login.set_password(password);
        }
        let info = info.set_redis_settings(login);
        match self.tls.as_ref().and_then(|tls| tls.certificates.clone()) {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
        .map_err(|e| map(backend, e))
    }

    /// A connection to the cluster through `builder` (from
    /// [`ClusterTarget::builder`] with `timeout`, plus whatever the caller
    /// adds), `Unavailable` when the cluster does not answer in time.
    ///
    /// The client dials every seed node at once, each within `timeout`, and
    /// then reads the slot map within `timeout`: so the bound is twice
    /// `timeout`. With the bound at one `timeout`, a seed node that is gone
    /// (a killed master, whose address no longer answers at all) made every
    /// connect fail, since its dial takes the whole `timeout`; the release
    /// feed, which reconnects after a failover, then never came back.
    pub(crate) async fn connect(
        &self,
        builder: ClusterClientBuilder,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<redis::cluster_async::ClusterConnection, LockError> {
        let client = builder
            .build()
            .map_err(|e| LockError::Config(format!("redis cluster {:?}: {e}", self.nodes)))?;
        with_timeout(backend, timeout.saturating_mul(2), async {
            client
                .get_async_connection()
                .await
                .map_err(|e| map(backend, e))
        })
        .await
    }

    /// A client builder for the seed nodes with the login, and `timeout` as
    /// the connect and response timeout of every node connection.
    pub(crate) fn builder(&self, timeout: Duration) -> ClusterClientBuilder {
        let urls: Vec<String> = self.nodes.iter().map(|n| self.url_of(n)).collect();
        let mut builder = ClusterClientBuilder::new(urls)
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(tls) = &self.tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if let Some(certificates) = &tls.certificates {
                builder = builder.certs(certificates.clone());
            }
        }
        if let Some(user) = &self.username {
            builder = builder.username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        builder
    }
}

impl RedisNode {
    /// A node on the cluster `target` names, connected now (an unreachable
    /// cluster is [`LockError::Unavailable`] after `timeout`). Every call is
    /// routed to the master of its key's slot; `MOVED`/`ASK` and the
    /// cluster's own failovers are followed by the client.
    pub async fn via_cluster(
        target: &ClusterTarget,
        layout: KeyLayout,
        timeout: Duration,
        backend: &'static str,
    ) -> Result<Self, LockError> {
        let conn = target
            .connect(target.builder(timeout), timeout, backend)
            .await?;
        let seed = target.node_client(&target.nodes[0], backend)?;
        Ok(RedisNode::from_link(
            Link::Cluster {
                conn,
                seed: Arc::new(seed),
            },
            layout,
            timeout,
            backend,
        ))
    }

    /// Whether calls go to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection(), NodeConnection::Cluster(_))
    }

    /// The positions of `names` grouped so that each group's names share a
    /// hash slot (a multi-key script may only touch one slot); one group of
    /// all of them outside a cluster. Groups keep input order.
    pub(crate) fn slot_groups(&self, names: &[String]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..names.len()).collect()];
        }
        let mut order: Vec<Slot> = Vec::new();
        let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let slot = Slot::for_key(name);
            groups
                .entry(slot)
                .or_insert_with(|| {
                    order.push(slot);
                    Vec::new()
                })
                .push(i);
        }
        order
            .into_iter()
            .filter_map(|slot| groups.remove(&slot))
            .collect()
    }

    /// The masters serving slots (`host:port`, sorted), from `CLUSTER
    /// NODES`; outside a cluster, the one server. Read-only; cancel safe.
    pub async fn masters(&self) -> Result<Vec<String>, LockError> {
        if !self.is_cluster() {
            return Ok(vec![self.addr()]);
        }
        let nodes = self.cluster_nodes().await?;
        let mut masters: Vec<String> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                let serving = fields.len() > 8;
                (flags.contains("master") && !flags.contains("fail") && serving)
                    .then(|| fields[1].split('@').next().unwrap_or_default().to_owned())
            })
            .collect();
        masters.sort();
        Ok(masters)
    }

    /// `CLUSTER NODES` as the node the client picks answers it.
    async fn cluster_nodes(&self) -> Result<String, LockError> {
        self.call(|mut conn| async move {
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// The most replicas any master serving slots has (from `CLUSTER
    /// NODES`: replicas not flagged `fail`, counted per master); 0 outside
    /// a cluster. Read-only; cancel safe.
    pub async fn cluster_replicas(&self) -> Result<u32, LockError> {
        if !self.is_cluster() {
            return Ok(0);
        }
        let nodes = self.cluster_nodes().await?;
        Ok(most_replicas(&nodes))
    }

    /// One `SCAN` step on the master at `addr` (see
    /// [`RedisNode::scan_raw`]); outside a cluster, on the one server.
    pub async fn scan_on(
        &self,
        addr: &str,
        cursor: u64,
        prefix: &str,
        count: usize,
    ) -> Result<(u64, Vec<Key>), LockError> {
        let NodeConnection::Cluster(_) = self.connection() else {
            return self.scan_raw(cursor, prefix, count).await;
        };
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
            .ok_or_else(|| LockError::backend(self.backend, format!("bad node address {addr}")))?;
        let scan = crate::admin::scan_cmd(self.layout(), cursor, prefix, count);
        let reply = self
            .call(|conn| async move {
                let NodeConnection::Cluster(mut conn) = conn else {
                    unreachable!("a cluster node's connection is a cluster connection")
                };
                let route =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(scan, route).await
            })
            .await?;
        let (next, names): (u64, Vec<Vec<u8>>) =
            redis::from_redis_value(reply).map_err(|e| LockError::backend(self.backend, e))?;
        Ok((
            next,
            names
                .iter()
                .filter_map(|name| self.layout().key_of(name))
                .collect(),
        ))
    }
}

/// The most healthy replicas of one master serving slots, in a `CLUSTER
/// NODES` reply (a line: `id addr flags master-id … slots`).
fn most_replicas(nodes: &str) -> u32 {
    let mut serving: HashMap<&str, u32> = HashMap::new();
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    for fields in &lines {
        if let [id, _, flags, ..] = fields[..]
            && flags.contains("master")
            && fields.len() > 8
        {
            serving.insert(id, 0);
        }
    }
    for fields in &lines {
        if let [_, _, flags, master, ..] = fields[..]
            && flags.contains("slave")
            && !flags.contains("fail")
            && let Some(count) = serving.get_mut(master)
        {
            *count += 1;
        }
    }
    serving.into_values().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_counted_per_master_serving_slots() {
        let nodes = "\
a 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460
b 10.0.0.2:6379@16379 master - 0 0 2 connected 5461-10922
c 10.0.0.3:6379@16379 slave a 0 0 1 connected
d 10.0.0.4:6379@16379 slave a 0 0 1 connected
e 10.0.0.5:6379@16379 slave,fail b 0 0 2 connected
f 10.0.0.6:6379@16379 master - 0 0 3 connected
g 10.0.0.7:6379@16379 slave f 0 0 3 connected
";
        assert_eq!(most_replicas(nodes), 2);
        assert_eq!(most_replicas(""), 0);
    }

    #[test]
    fn nodes_and_login_come_from_the_url_and_debug_hides_the_password() {
        let target = ClusterTarget::parse(
            "redis+cluster://app:s%40cret@n1:7000,n2:7001",
            "shown",
            None,
        )
        .unwrap();
        assert_eq!(target.nodes, ["n1:7000", "n2:7001"]);
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("s@cret"));
        assert!(!format!("{target:?}").contains("cret"));
        for url in ["redis+cluster://n1:1/0", "redis+cluster://n1:1,,n2:2"] {
            assert!(
                ClusterTarget::parse(url, url, None).is_err(),
                "{url} parsed"
            );
        }
    }
}
