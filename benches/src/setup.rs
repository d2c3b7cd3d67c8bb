//! The stores beyond Redis (etcd, ZooKeeper, Postgres, DynamoDB, MySQL):
//! their containers, and the subjects set up on each.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;

use crate::bare::Bare;
use crate::stores::{self, Subject};
use crate::{Config, Results, start_container};

/// A subject set up on a store, or the store's container kept alive.
pub(crate) type Started = (Option<Subject>, Option<fixtures::Container>);

/// etcd, ZooKeeper, Postgres (advisory and table), DynamoDB, MySQL (named
/// and table, on MariaDB): those the config includes, started in parallel;
/// a store that fails to start is recorded and skipped.
pub(crate) async fn other_stores(config: &Config, results: &mut Results) -> Vec<Started> {
    let start = |store: &str, spec: fixtures::ContainerSpec| {
        let wanted = config.includes(store);
        async move {
            if wanted {
                Some(start_container(spec).await)
            } else {
                None
            }
        }
    };
    let (etcd, zk, pg, dynamo, mysql) = tokio::join!(
        start("etcd", fixtures::etcd_spec()),
        start("zookeeper", fixtures::zookeeper_spec()),
        start("postgres", postgres_spec()),
        start("dynamodb", fixtures::dynamodb_spec()),
        start("mysql", mariadb_spec()),
    );
    let mut out: Vec<Started> = Vec::new();
    let mut push =
        |name: &str, r: Result<Vec<Subject>, String>, c: Option<fixtures::Container>| match r {
            Ok(subjects) => {
                out.extend(subjects.into_iter().map(|s| (Some(s), None)));
                out.push((None, c));
            }
            Err(e) => {
                results.failures.push((name.into(), e));
                out.push((None, c));
            }
        };

    if let Some(etcd) = etcd {
        let r = match &etcd {
            Ok(c) => setup_etcd(c.port).await,
            Err(e) => Err(e.clone()),
        };
        push("etcd", r, etcd.ok());
    }
    if let Some(zk) = zk {
        let r = match &zk {
            Ok(c) => setup_zk(c.port).await,
            Err(e) => Err(e.clone()),
        };
        push("zookeeper", r, zk.ok());
    }
    if let Some(pg) = pg {
        let r = match &pg {
            Ok(c) => setup_pg(c.port).await,
            Err(e) => Err(e.clone()),
        };
        push("postgres", r, pg.ok());
    }
    if let Some(dynamo) = dynamo {
        let r = match &dynamo {
            Ok(c) => setup_dynamo(c.port).await,
            Err(e) => Err(e.clone()),
        };
        push("dynamodb", r, dynamo.ok());
    }
    if let Some(mysql) = mysql {
        let r = match &mysql {
            Ok(c) => setup_mysql(c.port).await,
            Err(e) => Err(e.clone()),
        };
        push("mysql", r, mysql.ok());
    }
    out
}

async fn setup_etcd(port: u16) -> Result<Vec<Subject>, String> {
    let url = format!("etcd://127.0.0.1:{port}");
    let backend = stores::retry_connect("etcd", Duration::from_secs(60), || async {
        leasehold_etcd::EtcdBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let client = backend.client().clone();
    let mut s = stores::library("etcd", Arc::new(backend), "notified (watch)");
    s.raw = Some(stores::etcd_raw(client.clone(), None));
    s.raw_desc = "txn (create-if-absent put) + delete";
    s.raw_wait = Some(stores::etcd_raw_wait(client.clone()));
    s.raw_wait_desc = "etcd's Lock RPC under a lease, then Unlock";
    s.rtt = Some(stores::etcd_rtt(client));
    s.rtt_desc = "range get";
    Ok(vec![s])
}

async fn setup_zk(port: u16) -> Result<Vec<Subject>, String> {
    let url = format!("zk://127.0.0.1:{port}");
    let backend = stores::retry_connect("zookeeper", Duration::from_secs(90), || async {
        leasehold_zookeeper::ZkBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let client = backend.client().await.map_err(|e| e.to_string())?;
    stores::zk_prepare(&client).await?;
    let mut s = stores::library("zookeeper", Arc::new(backend), "notified (watch)");
    s.raw = Some(stores::zk_raw(client.clone()));
    s.raw_desc = "create ephemeral + delete";
    s.raw_wait = Some(stores::zk_raw_wait(client.clone()));
    s.raw_wait_desc = "zookeeper-client's lock recipe, then delete";
    s.rtt = Some(stores::zk_rtt(client));
    s.rtt_desc = "exists";
    Ok(vec![s])
}

async fn setup_pg(port: u16) -> Result<Vec<Subject>, String> {
    let base = stores::pg_url(port);
    let mut out = Vec::new();
    for mode in ["advisory", "table"] {
        let url = format!("{base}?mode={mode}");
        let backend = stores::retry_connect("postgres", Duration::from_secs(90), || async {
            leasehold_postgres::PostgresBackend::connect(&url)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        let pool = backend.pool().clone();
        let mut s = stores::library(
            &format!("postgres-{mode}"),
            Arc::new(backend),
            "notified (LISTEN/NOTIFY)",
        );
        // The raw ops' connections: the pool's limit, not its release ping.
        let conns = Bare::of(&pool);
        if mode == "advisory" {
            s.raw = Some(stores::pg_advisory_raw(conns.clone()));
            s.raw_desc = "pg_try_advisory_lock + pg_advisory_unlock on one connection";
            s.raw_wait = Some(stores::pg_advisory_raw_wait(conns.clone()));
            s.raw_wait_desc = "blocking pg_advisory_lock, then pg_advisory_unlock";
        } else {
            stores::pg_prepare(&pool).await?;
            s.raw = Some(stores::pg_table_raw(conns.clone()));
            s.raw_desc = "conditional upsert + compare-and-clear update";
            s.raw_wait = Some(stores::pg_table_raw_wait(pool.clone(), conns.clone()));
            s.raw_wait_desc =
                "LISTEN, conditional upsert after each NOTIFY; release with its NOTIFY";
        }
        s.rtt = Some(stores::pg_rtt(conns));
        s.rtt_desc = "SELECT 1";
        out.push(s);
    }
    Ok(out)
}

async fn setup_dynamo(port: u16) -> Result<Vec<Subject>, String> {
    let url = stores::dynamo_url(port);
    let backend = stores::retry_connect("dynamodb", Duration::from_secs(90), || async {
        leasehold_dynamodb::DynamoDbBackend::connect(&url)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let (client, table) = (backend.client().clone(), backend.table().to_owned());
    let pk = leasehold_dynamodb::DEFAULT_PARTITION_KEY.to_owned();
    let mut s = stores::library("dynamodb (moto stand-in)", Arc::new(backend), "polled");
    s.raw = Some(stores::dynamo_raw(
        client.clone(),
        table.clone(),
        pk.clone(),
    ));
    s.raw_desc = "2 conditional UpdateItem";
    s.rtt = Some(stores::dynamo_rtt(client, table, pk));
    s.rtt_desc = "GetItem";
    Ok(vec![s])
}

/// The Postgres fixture with room for the benchmark's connections: the
/// advisory backend pins up to 50 sessions and keeps the clean ones for
/// reuse, beside the table backend's pool and the raw baselines' pools, more
/// than the server's default `max_connections` of 100 (the 64-task figures
/// failed with pool timeouts).
fn postgres_spec() -> fixtures::ContainerSpec {
    fixtures::postgres_spec().args(["-c", "max_connections=500"])
}

/// The MariaDB fixture with room for the benchmark's connections: a named
/// backend holds up to 50 pinned sessions and as many watchers beside its
/// pool of 50 (which the raw baseline uses), more than the server's default
/// `max_connections` of 151 once the table backend's pool is added.
fn mariadb_spec() -> fixtures::ContainerSpec {
    fixtures::mariadb_spec().args(["--max-connections=500"])
}

/// MySQL's two modes on one MariaDB 10.11 server, each beside the raw
/// statements its lock needs at the least, sent on its backend's own pool
/// (plain sqlx connections): named mode `GET_LOCK(name, 0)` and
/// `RELEASE_LOCK(name)` on one connection; table mode a conditional update
/// and a compare-and-clear update of a lease row.
async fn setup_mysql(port: u16) -> Result<Vec<Subject>, String> {
    let base = format!(
        "mysql://root:{}@127.0.0.1:{port}/leasehold",
        fixtures::MARIADB_PASSWORD
    );
    let mut out = Vec::new();
    for mode in ["named", "table"] {
        let url = format!("{base}?mode={mode}");
        let backend = stores::retry_connect("mysql", Duration::from_secs(90), || async {
            leasehold_mysql::MysqlBackend::connect(&url)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        let pool = backend.pool().clone();
        let mut s = stores::library(
            &format!("mysql-{mode}"),
            Arc::new(backend),
            "polled (this process's releases wake its waiters)",
        );
        let conns = Bare::of(&pool);
        if mode == "named" {
            s.raw = Some(stores::mysql_named_raw(conns.clone()));
            s.raw_desc = "GET_LOCK(name, 0) + RELEASE_LOCK(name) on one connection";
            s.raw_wait = Some(stores::mysql_named_raw_wait(conns.clone()));
            s.raw_wait_desc = "blocking GET_LOCK(name, 60), then RELEASE_LOCK(name)";
        } else {
            stores::mysql_prepare(&pool).await?;
            s.raw = Some(stores::mysql_table_raw(conns.clone()));
            s.raw_desc = "conditional update + compare-and-clear update";
        }
        s.rtt = Some(stores::mysql_rtt(conns));
        s.rtt_desc = "SELECT 1";
        out.push(s);
    }
    Ok(out)
}
