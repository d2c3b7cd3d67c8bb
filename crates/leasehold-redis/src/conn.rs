//! [`NodeConnection`]: the connection a [`RedisNode`](crate::RedisNode)'s
//! calls go through, one type for every topology.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed connection to one server (auto-reconnecting), or to a
/// Redis Cluster (each command routed to the node serving its key's slot,
/// `MOVED`/`ASK` followed). Cheap to clone; use it with `query_async` and
/// `invoke_async` for commands of your own.
#[derive(Clone)]
pub enum NodeConnection {
    /// One server (direct, or the master the sentinels named).
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for NodeConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            NodeConnection::Single(conn) => conn.req_packed_command(cmd),
            NodeConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            NodeConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            NodeConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            NodeConnection::Single(conn) => conn.get_db(),
            NodeConnection::Cluster(conn) => conn.get_db(),
        }
    }
}
