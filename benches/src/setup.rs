//! The stores beyond Redis (etcd, ZooKeeper, Postgres, DynamoDB): their
//! containers, and the subjects set up on each.

use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;

use crate::stores::{self, Subject};
use crate::{Results, start_container};

/// A subject set up on a store, or the store's container kept alive.
pub(crate) type Started = (Option<Subject>, Option<fixtures::Container>);

/// etcd, ZooKeeper, Postgres (advisory and table), DynamoDB: started in
/// parallel; a store that fails to start is recorded and skipped.
pub(crate) async fn other_stores(results: &mut Results) -> Vec<Started> {
    let (etcd, zk, pg, dynamo) = tokio::join!(
        start_container(fixtures::etcd_spec()),
        start_container(fixtures::zookeeper_spec()),
        start_container(fixtures::postgres_spec()),
        start_container(fixtures::dynamodb_spec()),
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

    let r = match &etcd {
        Ok(c) => setup_etcd(c.port).await,
        Err(e) => Err(e.clone()),
    };
    push("etcd", r, etcd.ok());
    let r = match &zk {
        Ok(c) => setup_zk(c.port).await,
        Err(e) => Err(e.clone()),
    };
    push("zookeeper", r, zk.ok());
    let r = match &pg {
        Ok(c) => setup_pg(c.port).await,
        Err(e) => Err(e.clone()),
    };
    push("postgres", r, pg.ok());
    let r = match &dynamo {
        Ok(c) => setup_dynamo(c.port).await,
        Err(e) => Err(e.clone()),
    };
    push("dynamodb", r, dynamo.ok());
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
    s.raw = Some(stores::etcd_raw(client.clone()));
    s.raw_desc = "txn (create-if-absent put) + delete";
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
    s.rtt = Some(stores::zk_rtt(client));
    s.rtt_desc = "exists";
    Ok(vec![s])
}

async fn setup_pg(port: u16) -> Result<Vec<Subject>, String> {
    let base = format!(
        "postgres://postgres:{}@127.0.0.1:{port}/postgres",
        fixtures::POSTGRES_PASSWORD
    );
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
        if mode == "advisory" {
            s.raw = Some(stores::pg_advisory_raw(pool.clone()));
            s.raw_desc = "pg_try_advisory_lock + pg_advisory_unlock on one pooled connection";
        } else {
            stores::pg_prepare(&pool).await?;
            s.raw = Some(stores::pg_table_raw(pool.clone()));
            s.raw_desc = "conditional upsert + compare-and-clear update";
        }
        s.rtt = Some(stores::pg_rtt(pool));
        s.rtt_desc = "SELECT 1";
        out.push(s);
    }
    Ok(out)
}

async fn setup_dynamo(port: u16) -> Result<Vec<Subject>, String> {
    let url = format!(
        "dynamodb://test:test@leasehold-bench?region=us-east-1\
         &endpoint=http://127.0.0.1:{port}&durable=false&create_table=true&timeout=5s"
    );
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
