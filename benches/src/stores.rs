//! The subjects: each backend through `Locker`, the raw store operations the
//! same lock needs at the least (same client crate, same connection kind),
//! and one raw round trip.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all};
use leasehold_core::{Key, LockBackend, Locker, OwnerToken, WaitPolicy};
use leasehold_mysql::sqlx::{MySql, MySqlPool};
use leasehold_postgres::sqlx::{self, Postgres};
use leasehold_redis::KeyLayout;
use leasehold_redis::scripts;
use leasehold_zookeeper::zookeeper_client::{Acls, CreateMode, LockOptions, LockPrefix};
use redis::aio::ConnectionManager;

use crate::bare::Bare;
use crate::harness::{Acquire, Op, Release};

/// TTL of every benchmark lock (long: nothing should expire mid-sample).
pub const TTL: Duration = Duration::from_secs(30);

/// One thing under measurement.
pub struct Subject {
    /// Row name.
    pub name: String,
    /// Library (or peer) one-shot acquire.
    pub try_lock: Acquire,
    /// Library (or peer) waiting acquire.
    pub lock: Acquire,
    /// Raw lock+unlock with the store's client.
    pub raw: Option<Op>,
    /// What `raw` sends.
    pub raw_desc: &'static str,
    /// Raw waiting acquire through the store's own queue (a blocking lock
    /// call, or the client crate's lock recipe), or where the store has none,
    /// the bare client waiting as the library does: the floor a handoff can
    /// reach through this client.
    pub raw_wait: Option<Acquire>,
    /// What `raw_wait` sends.
    pub raw_wait_desc: &'static str,
    /// One raw round trip.
    pub rtt: Option<Op>,
    /// What `rtt` sends.
    pub rtt_desc: &'static str,
    /// How waiters learn of a release.
    pub waiting: &'static str,
    /// The backend, for subjects that are leasehold's own (the
    /// reader–writer and semaphore rows use it).
    pub backend: Option<Arc<dyn LockBackend>>,
}

/// A store or library error as the harness's error text.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn key_of(s: &str) -> Result<Key, String> {
    Key::new(s).map_err(|e| format!("{e:?}"))
}

/// An [`Op`] from an async closure over the key.
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |k| Box::pin(f(k)) as BoxFuture<'static, _>)
}

/// Acquire through a [`Locker`] (`try_lock`, or `lock` when `wait`).
pub fn locker_acquire(locker: Locker, wait: bool) -> Acquire {
    Arc::new(move |key: String| {
        let locker = locker.clone();
        Box::pin(async move {
            let guard = if wait {
                locker.lock(key.as_str()).await
            } else {
                locker.try_lock(key.as_str()).await
            }
            .map_err(err)?;
            let release: Release =
                Box::new(move || Box::pin(async move { guard.release().await.map_err(err) }));
            Ok(release)
        })
    })
}

/// A subject for a backend through the default `Locker`.
pub fn library(name: &str, backend: Arc<dyn LockBackend>, waiting: &'static str) -> Subject {
    let locker = Locker::builder_from_arc(backend.clone())
        .wait(WaitPolicy::new(Duration::from_secs(60)))
        .build();
    Subject {
        name: name.to_owned(),
        try_lock: locker_acquire(locker.clone(), false),
        lock: locker_acquire(locker, true),
        raw: None,
        raw_desc: "-",
        raw_wait: None,
        raw_wait_desc: "-",
        rtt: None,
        rtt_desc: "-",
        waiting,
        backend: Some(backend),
    }
}

/// Key `k`'s lock key, fencing counter key and the release channel, as
/// leasehold-redis names them under `layout`.
fn redis_names(layout: &KeyLayout, k: &str) -> Result<(String, String, String), String> {
    let key = key_of(k)?;
    Ok((
        layout.lock_key(&key),
        layout.fence_key(&key),
        layout.channel(),
    ))
}

/// leasehold-redis's release script for `lock` held by `owner`, which
/// publishes on `channel`.
async fn release_script(
    conn: &mut ConnectionManager,
    lock: &str,
    owner: &str,
    channel: &str,
) -> redis::RedisResult<i64> {
    scripts::release()
        .key(lock)
        .arg(owner)
        .arg(channel)
        .invoke_async(conn)
        .await
}

/// The acquire script on every connection at once (one for Redis, N for
/// Redlock's raw fan-out): whether each server granted `lock` to `owner`.
async fn acquire_on(
    conns: &[ConnectionManager],
    lock: &str,
    fence: &str,
    owner: &str,
) -> Result<Vec<bool>, String> {
    let ttl_ms = TTL.as_millis() as u64;
    join_all(conns.iter().map(|c| {
        let mut c = c.clone();
        async move {
            scripts::acquire()
                .key(lock)
                .key(fence)
                .arg(owner)
                .arg(ttl_ms)
                .invoke_async::<(i64, i64, i64, String)>(&mut c)
                .await
                .map(|(granted, ..)| granted == 1)
                .map_err(err)
        }
    }))
    .await
    .into_iter()
    .collect()
}

/// The release script (which publishes) on every connection of `conns`
/// at once.
async fn release_on<'a>(
    conns: impl Iterator<Item = &'a ConnectionManager>,
    lock: &str,
    owner: &str,
    channel: &str,
) -> Result<(), String> {
    let released = join_all(conns.map(|c| {
        let mut c = c.clone();
        async move { release_script(&mut c, lock, owner, channel).await }
    }))
    .await;
    for r in released {
        r.map_err(err)?;
    }
    Ok(())
}

/// The acquire and release scripts sent directly to every connection (one
/// for Redis, N concurrently for Redlock's raw fan-out).
pub fn redis_raw(conns: Vec<ConnectionManager>) -> Op {
    let layout = Arc::new(KeyLayout::new("bench-raw").expect("a valid namespace"));
    let conns = Arc::new(conns);
    op(move |k| {
        let (layout, conns) = (layout.clone(), conns.clone());
        async move {
            let (lock, fence, channel) = redis_names(&layout, &k)?;
            let owner = OwnerToken::generate().to_hex();
            if !acquire_on(&conns, &lock, &fence, &owner)
                .await?
                .iter()
                .all(|&granted| granted)
            {
                return Err(format!("raw acquire of {k} found it held"));
            }
            release_on(conns.iter(), &lock, &owner, &channel).await
        }
    })
}

/// Redis and Redlock: leasehold's two scripts sent straight from redis-rs
/// (to every server at once) by a waiter that waits the way the library
/// does. It subscribes to the release channel on every server, on
/// connections of its own (before its first attempt, so no release is
/// missed), then runs the acquire script, and after each refusal (fewer
/// than a majority granted: it gives the partial grants back, as the
/// library does) waits for a `PUBLISH` naming its key on any server and
/// runs it again. The release is the release script, which publishes.
/// No validity or drift is computed.
pub fn redis_raw_wait(clients: Vec<redis::Client>, conns: Vec<ConnectionManager>) -> Acquire {
    let layout = Arc::new(KeyLayout::new("bench-raw").expect("a valid namespace"));
    let (clients, conns) = (Arc::new(clients), Arc::new(conns));
    Arc::new(move |k: String| {
        let (clients, conns, layout) = (clients.clone(), conns.clone(), layout.clone());
        Box::pin(async move {
            let (lock, fence, channel) = redis_names(&layout, &k)?;
            let owner = OwnerToken::generate().to_hex();
            let mut streams = Vec::new();
            for client in clients.iter() {
                let mut pubsub = client.get_async_pubsub().await.map_err(err)?;
                pubsub.subscribe(&channel).await.map_err(err)?;
                streams.push(pubsub.into_on_message());
            }
            let mut released = futures_util::stream::select_all(streams);
            let quorum = conns.len() / 2 + 1;
            loop {
                let granted = acquire_on(&conns, &lock, &fence, &owner).await?;
                if granted.iter().filter(|&&g| g).count() >= quorum {
                    break;
                }
                let partial = conns.iter().zip(&granted).filter(|(_, g)| **g);
                release_on(partial.map(|(c, _)| c), &lock, &owner, &channel).await?;
                loop {
                    let message = released
                        .next()
                        .await
                        .ok_or("the release subscription ended")?;
                    if message.get_payload_bytes() == lock.as_bytes() {
                        break;
                    }
                }
            }
            let release: Release = Box::new(move || {
                Box::pin(async move { release_on(conns.iter(), &lock, &owner, &channel).await })
            });
            Ok(release)
        })
    })
}

/// `PING`.
pub fn redis_ping(conn: ConnectionManager) -> Op {
    op(move |_| {
        let mut c = conn.clone();
        async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(|_| ())
                .map_err(err)
        }
    })
}

/// A Redis stand-in started for a cost tool: the container (kept alive
/// while held), the backend on it and leasehold's raw scripts' pair
/// ([`redis_raw`]) on a connection of its own.
pub async fn redis_stand_in() -> Result<
    (
        leasehold_conformance::fixtures::Container,
        leasehold_redis::RedisBackend,
        Op,
    ),
    String,
> {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&fixtures::redis_spec(false)).await?;
    let url = format!("redis://127.0.0.1:{}", store.port);
    let backend = retry_connect("redis", Duration::from_secs(60), || async {
        leasehold_redis::RedisBackend::connect(&url)
            .await
            .map_err(err)
    })
    .await?;
    let raw = redis_raw(vec![redis_conn(&url).await?]);
    Ok((store, backend, raw))
}

/// Opens a connection manager (the kind `leasehold-redis` uses).
pub async fn redis_conn(url: &str) -> Result<ConnectionManager, String> {
    redis::Client::open(url)
        .map_err(err)?
        .get_connection_manager()
        .await
        .map_err(err)
}

/// rslock's `LockManager` over `urls`.
pub fn rslock_subject(name: &str, urls: Vec<String>) -> Subject {
    let manager = Arc::new(rslock::LockManager::new(urls));
    let acquire = |wait: bool| -> Acquire {
        let manager = manager.clone();
        Arc::new(move |key: String| {
            let manager = manager.clone();
            Box::pin(async move {
                let lock = if wait {
                    manager.acquire_no_guard(key.as_str(), TTL).await
                } else {
                    manager.lock(key.as_str(), TTL).await
                }
                .map_err(|e| format!("rslock: {e:?}"))?;
                let release: Release = Box::new(move || {
                    Box::pin(async move {
                        manager.unlock(&lock).await;
                        Ok(())
                    })
                });
                Ok(release)
            })
        })
    };
    Subject {
        name: name.to_owned(),
        try_lock: acquire(false),
        lock: acquire(true),
        raw: None,
        raw_desc: "-",
        raw_wait: None,
        raw_wait_desc: "-",
        rtt: None,
        rtt_desc: "-",
        waiting: "polled (rslock retry loop)",
        backend: None,
    }
}

/// etcd: a txn (create-if-absent put, under `lease` if given) and a delete.
pub fn etcd_raw(client: etcd_client::Client, lease: Option<i64>) -> Op {
    op(move |k| {
        let mut client = client.clone();
        async move {
            let key = format!("bench-raw/{k}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    OwnerToken::generate().to_hex(),
                    lease.map(|lease| etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            let resp = client.txn(txn).await.map_err(err)?;
            if !resp.succeeded() {
                return Err(format!("raw etcd txn found {key} held"));
            }
            client.delete(key, None).await.map_err(err)?;
            Ok(())
        }
    })
}

/// etcd: a range get of one key.
pub fn etcd_rtt(client: etcd_client::Client) -> Op {
    op(move |_| {
        let mut client = client.clone();
        async move { client.get("bench-rtt", None).await.map(|_| ()).map_err(err) }
    })
}

/// ZooKeeper: create an ephemeral node and delete it.
pub fn zk_raw(client: leasehold_zookeeper::zookeeper_client::Client) -> Op {
    op(move |k| {
        let client = client.clone();
        async move {
            let path = format!("{ZK_RAW_PARENT}/{}", k.replace('/', "_"));
            let options = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
            client.create(&path, &[], &options).await.map_err(err)?;
            client.delete(&path, None).await.map_err(err)?;
            Ok(())
        }
    })
}

/// The raw benchmark's parent node ([`zk_prepare`]).
pub const ZK_RAW_PARENT: &str = "/leasehold-bench-raw";

/// Creates the raw benchmark's parent node.
pub async fn zk_prepare(
    client: &leasehold_zookeeper::zookeeper_client::Client,
) -> Result<(), String> {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    match client.create(ZK_RAW_PARENT, &[], &options).await {
        Ok(_) | Err(leasehold_zookeeper::zookeeper_client::Error::NodeExists) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// ZooKeeper: `exists`.
pub fn zk_rtt(client: leasehold_zookeeper::zookeeper_client::Client) -> Op {
    op(move |_| {
        let client = client.clone();
        async move {
            client
                .check_stat(ZK_RAW_PARENT)
                .await
                .map(|_| ())
                .map_err(err)
        }
    })
}

/// A Postgres fixture started from `spec`, and an advisory-mode backend on
/// it with the URL options `query` (e.g. `namespace=bench-raw`).
pub async fn pg_advisory_backend(
    spec: leasehold_conformance::fixtures::ContainerSpec,
    query: &str,
) -> Result<
    (
        leasehold_conformance::fixtures::Container,
        leasehold_postgres::PostgresBackend,
    ),
    String,
> {
    use leasehold_conformance::fixtures;
    let store = fixtures::start(&spec).await?;
    let url = format!("{}?mode=advisory&{query}", pg_url(store.port));
    let backend = retry_connect("postgres", Duration::from_secs(90), || async {
        leasehold_postgres::PostgresBackend::connect(&url)
            .await
            .map_err(err)
    })
    .await?;
    Ok((store, backend))
}

/// Postgres advisory: `pg_try_advisory_lock` and `pg_advisory_unlock` on one
/// connection.
pub fn pg_advisory_raw(conns: Bare<Postgres>) -> Op {
    pg_advisory_statements(
        conns,
        "SELECT pg_try_advisory_lock($1)",
        "SELECT pg_advisory_unlock($1)",
    )
}

/// Postgres advisory: `lock` then `unlock` on one connection, both
/// bound to the key's advisory lock id (`$1`, namespace `bench-raw`). The
/// first column of `lock`'s row says whether it took the lock.
pub fn pg_advisory_statements(
    conns: Bare<Postgres>,
    lock: &'static str,
    unlock: &'static str,
) -> Op {
    op(move |k| {
        let conns = conns.clone();
        async move {
            let id = leasehold_postgres::advisory_lock_id("bench-raw", &k);
            let mut conn = conns.take().await?;
            let got: bool = sqlx::query_scalar(lock)
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            if !got {
                return Err(format!("raw advisory lock {k} held"));
            }
            sqlx::query(unlock)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// A raw waiting acquire that holds a connection: `lock` blocks on
/// it until the server grants, `unlock` gives the lock back on it.
pub fn held_on_a_connection<DB: sqlx::Database>(
    conns: Bare<DB>,
    lock: &'static str,
    unlock: &'static str,
    name: fn(&str) -> String,
) -> Acquire
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    Arc::new(move |k: String| {
        let conns = conns.clone();
        Box::pin(async move {
            let name = name(&k);
            let mut conn = conns.take().await?;
            sqlx::query(lock)
                .bind(name.clone())
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            let release: Release = Box::new(move || {
                Box::pin(async move {
                    sqlx::query(unlock)
                        .bind(name)
                        .execute(&mut *conn)
                        .await
                        .map_err(err)?;
                    conns.give_back(conn);
                    Ok(())
                })
            });
            Ok(release)
        })
    })
}

/// Postgres advisory: blocking `pg_advisory_lock` on a connection.
pub fn pg_advisory_raw_wait(conns: Bare<Postgres>) -> Acquire {
    held_on_a_connection(
        conns,
        "SELECT pg_advisory_lock($1::text::int8)",
        "SELECT pg_advisory_unlock($1::text::int8)",
        |k| leasehold_postgres::advisory_lock_id("bench-raw", k).to_string(),
    )
}

/// MySQL named: blocking `GET_LOCK(name, 60)` on a connection.
pub fn mysql_named_raw_wait(conns: Bare<MySql>) -> Acquire {
    held_on_a_connection(
        conns,
        "SELECT GET_LOCK(?, 60)",
        "SELECT RELEASE_LOCK(?)",
        |k| leasehold_mysql::lock_name("bench-raw", k),
    )
}

/// etcd: the server's own Lock RPC (`v3lock`, as etcdctl's `lock`; the
/// server queues the waiter and waits for its predecessor's key to be
/// deleted) under a lease granted first, then Unlock and the lease revoked.
pub fn etcd_raw_wait(client: etcd_client::Client) -> Acquire {
    Arc::new(move |k: String| {
        let mut client = client.clone();
        Box::pin(async move {
            let lease = client
                .lease_grant(TTL.as_secs() as i64, None)
                .await
                .map_err(err)?
                .id();
            let options = etcd_client::LockOptions::new().with_lease(lease);
            let locked = client
                .lock(format!("bench-raw-lock/{k}"), Some(options))
                .await
                .map_err(err)?;
            let lock_key = locked.key().to_vec();
            let release: Release = Box::new(move || {
                Box::pin(async move {
                    client.unlock(lock_key).await.map_err(err)?;
                    client.lease_revoke(lease).await.map(|_| ()).map_err(err)
                })
            });
            Ok(release)
        })
    })
}

/// ZooKeeper: the client crate's lock recipe (`Client::lock`, Curator's
/// layout: an ephemeral sequential node, a watch on the one before it);
/// dropping the lock deletes its node.
pub fn zk_raw_wait(client: leasehold_zookeeper::zookeeper_client::Client) -> Acquire {
    Arc::new(move |k: String| {
        let client = client.clone();
        Box::pin(async move {
            let dir = format!("{ZK_RAW_PARENT}/{}", k.replace('/', "_"));
            let prefix = LockPrefix::new_curator(&dir, "lock-").map_err(err)?;
            let options = LockOptions::new(Acls::anyone_all())
                .with_ancestor_options(CreateMode::Persistent.with_acls(Acls::anyone_all()))
                .map_err(err)?;
            let lock = client
                .lock(prefix, &[], options)
                .await
                .map_err(err)?
                .into_owned();
            let release: Release = Box::new(move || {
                Box::pin(async move {
                    lock.delete(lock.lock_path(), None).await.map_err(err)?;
                    // Its drop deletes the path again, in the background
                    // (answered "no node", ignored).
                    drop(lock);
                    Ok(())
                })
            });
            Ok(release)
        })
    })
}

/// Creates the raw table benchmark's table.
pub async fn pg_prepare(pool: &sqlx::PgPool) -> Result<(), String> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS leasehold_bench_raw \
         (k text PRIMARY KEY, owner text, expires_at timestamptz)",
    )
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(err)
}

/// Postgres table: a conditional upsert and a compare-and-clear update.
pub fn pg_table_raw(conns: Bare<Postgres>) -> Op {
    op(move |k| {
        let conns = conns.clone();
        async move {
            let owner = OwnerToken::generate().to_hex();
            let mut conn = conns.take().await?;
            if !pg_table_take(&mut conn, &k, &owner).await? {
                return Err(format!("raw table lock {k} held"));
            }
            sqlx::query(
                "UPDATE leasehold_bench_raw SET owner = NULL, expires_at = NULL \
                 WHERE k = $1 AND owner = $2",
            )
            .bind(&k)
            .bind(&owner)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// The raw table lock's conditional upsert: whether `owner` took `k`.
async fn pg_table_take(
    conn: &mut sqlx::PgConnection,
    k: &str,
    owner: &str,
) -> Result<bool, String> {
    let took = sqlx::query(
        "INSERT INTO leasehold_bench_raw AS t (k, owner, expires_at) \
         VALUES ($1, $2, clock_timestamp() + interval '30 seconds') \
         ON CONFLICT (k) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
         WHERE t.owner IS NULL OR t.expires_at <= clock_timestamp()",
    )
    .bind(k)
    .bind(owner)
    .execute(conn)
    .await
    .map_err(err)?;
    Ok(took.rows_affected() == 1)
}

/// The channel the raw table waiter LISTENs on (the payload names the key).
const PG_RAW_CHANNEL: &str = "leasehold_bench_raw";

/// Postgres table: the least a notified waiter needs, sent straight from
/// sqlx. LISTEN on a connection of its own from `pool`, then the conditional
/// upsert (on a connection from `conns`, as the release), and after each
/// refusal the next NOTIFY for the key and the upsert again. The release is
/// the compare-and-clear update with its NOTIFY in the same statement, its
/// commit not flushed (as leasehold's release; the grant's commit is
/// flushed in both).
pub fn pg_table_raw_wait(pool: sqlx::PgPool, conns: Bare<Postgres>) -> Acquire {
    Arc::new(move |k: String| {
        let (pool, conns) = (pool.clone(), conns.clone());
        Box::pin(async move {
            let owner = OwnerToken::generate().to_hex();
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
                .await
                .map_err(err)?;
            listener.listen(PG_RAW_CHANNEL).await.map_err(err)?;
            let mut conn = conns.take().await?;
            while !pg_table_take(&mut conn, &k, &owner).await? {
                while listener.recv().await.map_err(err)?.payload() != k {}
            }
            conns.give_back(conn);
            // Returns its connection to the pool (after `UNLISTEN *`).
            drop(listener);
            let release: Release = Box::new(move || {
                Box::pin(async move {
                    let mut conn = conns.take().await?;
                    sqlx::query(
                        "UPDATE leasehold_bench_raw SET owner = NULL, expires_at = NULL \
                         WHERE k = $1 AND owner = $2 \
                         RETURNING pg_notify($3, $1)::text, \
                             set_config('synchronous_commit', 'off', true)",
                    )
                    .bind(&k)
                    .bind(&owner)
                    .bind(PG_RAW_CHANNEL)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(err)?;
                    conns.give_back(conn);
                    Ok(())
                })
            });
            Ok(release)
        })
    })
}

/// Postgres: `SELECT 1`.
pub fn pg_rtt(conns: Bare<Postgres>) -> Op {
    select_one(conns)
}

/// `SELECT 1` on a connection from `conns`.
fn select_one<DB: sqlx::Database>(conns: Bare<DB>) -> Op
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    op(move |_| {
        let conns = conns.clone();
        async move {
            let mut conn = conns.take().await?;
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// MySQL named: `GET_LOCK(name, 0)` and `RELEASE_LOCK(name)` on one
/// connection, with the lock names the backend uses.
pub fn mysql_named_raw(conns: Bare<MySql>) -> Op {
    op(move |k| {
        let conns = conns.clone();
        async move {
            let name = leasehold_mysql::lock_name("bench-raw", &k);
            let mut conn = conns.take().await?;
            let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
                .bind(&name)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            if got != Some(1) {
                return Err(format!("raw named lock {k} held"));
            }
            sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(&name)
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// Creates the raw MySQL table benchmark's table (keys compared byte for
/// byte, as the backend's).
pub async fn mysql_prepare(pool: &MySqlPool) -> Result<(), String> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS leasehold_bench_raw \
         (k VARBINARY(1024) PRIMARY KEY, owner CHAR(32) CHARACTER SET ascii NULL, \
          expires_at DATETIME(6) NULL) ENGINE = InnoDB",
    )
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(err)
}

/// MySQL table: the statements table mode's lock needs, by the database
/// clock: a conditional update that takes the row if it is free or expired
/// (a key's first use inserts it), and a compare-and-clear update.
pub fn mysql_table_raw(conns: Bare<MySql>) -> Op {
    op(move |k| {
        let conns = conns.clone();
        async move {
            let owner = OwnerToken::generate().to_hex();
            let mut conn = conns.take().await?;
            let took = sqlx::query(
                "UPDATE leasehold_bench_raw \
                 SET owner = ?, expires_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND \
                 WHERE k = ? AND (owner IS NULL OR expires_at <= UTC_TIMESTAMP(6))",
            )
            .bind(&owner)
            .bind(&k)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
            if took.rows_affected() != 1 {
                // A key never locked before (a duplicate: it is held).
                sqlx::query(
                    "INSERT INTO leasehold_bench_raw (k, owner, expires_at) \
                     VALUES (?, ?, UTC_TIMESTAMP(6) + INTERVAL 30 SECOND)",
                )
                .bind(&k)
                .bind(&owner)
                .execute(&mut *conn)
                .await
                .map_err(|e| format!("raw table lock {k}: {e}"))?;
            }
            let cleared = sqlx::query(
                "UPDATE leasehold_bench_raw SET owner = NULL, expires_at = NULL \
                 WHERE k = ? AND owner = ? AND expires_at > UTC_TIMESTAMP(6)",
            )
            .bind(&k)
            .bind(&owner)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
            if cleared.rows_affected() != 1 {
                return Err(format!("raw table lock {k} was not ours at release"));
            }
            conns.give_back(conn);
            Ok(())
        }
    })
}

/// MySQL: `SELECT 1`.
pub fn mysql_rtt(conns: Bare<MySql>) -> Op {
    select_one(conns)
}

/// The benchmark's Postgres URL for a stand-in on `port`, without options.
pub fn pg_url(port: u16) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{port}/postgres",
        leasehold_conformance::fixtures::POSTGRES_PASSWORD
    )
}

/// The benchmark's DynamoDB URL for a stand-in on `port`: the table made
/// at connect, no durable write wait, a 5 s operation timeout.
pub fn dynamo_url(port: u16) -> String {
    format!(
        "dynamodb://test:test@leasehold-bench?region=us-east-1\
         &endpoint=http://127.0.0.1:{port}&durable=false&create_table=true&timeout=5s"
    )
}

/// Milliseconds since the Unix epoch, as DynamoDB items record times.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// DynamoDB: two conditional `UpdateItem`s (take if free, clear if ours).
pub fn dynamo_raw(client: aws_sdk_dynamodb::Client, table: String, pk: String) -> Op {
    op(move |k| {
        let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
        async move {
            let owner = OwnerToken::generate().to_hex();
            let item = AttributeValue::S(format!("bench-raw#{k}"));
            let now = unix_ms();
            client
                .update_item()
                .table_name(&table)
                .key(&pk, item.clone())
                .update_expression("SET #o = :o, #e = :e")
                .condition_expression("attribute_not_exists(#o) OR #e < :now")
                .expression_attribute_names("#o", "bench_owner")
                .expression_attribute_names("#e", "bench_expires")
                .expression_attribute_values(":o", AttributeValue::S(owner.clone()))
                .expression_attribute_values(":e", AttributeValue::N((now + 30_000).to_string()))
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            client
                .update_item()
                .table_name(&table)
                .key(&pk, item)
                .update_expression("REMOVE #o, #e")
                .condition_expression("#o = :o")
                .expression_attribute_names("#o", "bench_owner")
                .expression_attribute_names("#e", "bench_expires")
                .expression_attribute_values(":o", AttributeValue::S(owner))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(())
        }
    })
}

/// DynamoDB: one `GetItem`.
pub fn dynamo_rtt(client: aws_sdk_dynamodb::Client, table: String, pk: String) -> Op {
    op(move |_| {
        let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
        async move {
            client
                .get_item()
                .table_name(&table)
                .key(&pk, AttributeValue::S("bench-rtt".into()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
    })
}

/// Retries `connect` until it succeeds or `within` passes (stores accept
/// TCP before they serve).
pub async fn retry_connect<T, F, Fut>(
    what: &str,
    within: Duration,
    mut connect: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("{what} never became ready: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
