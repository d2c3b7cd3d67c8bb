//! `Bare`, the raw baselines' connections, against a real Postgres: a
//! connection handed back is the one the next call gets, no more are open
//! at a time than the pool's limit, and one dropped (after a failed call)
//! is closed and frees its room for a new one.

use std::time::Duration;

use leasehold_benches::bare::{Bare, Taken};
use leasehold_benches::stores::{err, pg_url, retry_connect};
use leasehold_conformance::fixtures;
use leasehold_postgres::sqlx::{self, Postgres, postgres::PgPoolOptions};

async fn pid(conn: &mut Taken<Postgres>) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **conn)
        .await
        .expect("pg_backend_pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_handed_back_is_reused_and_one_dropped_frees_its_room() {
    if !fixtures::docker_available() {
        eprintln!("skipped: no docker");
        return;
    }
    let store = fixtures::start(&fixtures::postgres_spec())
        .await
        .expect("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&pg_url(store.port))
        .expect("pool options");
    let conns = Bare::of(&pool);
    let mut first = retry_connect("postgres", Duration::from_secs(90), || async {
        conns.take().await.map_err(err)
    })
    .await
    .expect("a first connection");
    let first_pid = pid(&mut first).await;
    conns.give_back(first);

    let mut again = conns.take().await.expect("the kept connection");
    assert_eq!(pid(&mut again).await, first_pid, "not the kept connection");

    // The pool's limit is one: a second caller waits while `again` is out
    // (it can never get one then, so the bound only ends the wait).
    let waiting = tokio::spawn({
        let conns = conns.clone();
        async move {
            let mut next = conns.take().await.expect("a new connection");
            pid(&mut next).await
        }
    });
    let past_the_limit = tokio::time::timeout(Duration::from_millis(300), conns.take()).await;
    assert!(
        past_the_limit.is_err(),
        "took a second connection past the limit"
    );
    assert!(
        !waiting.is_finished(),
        "took a second connection past the limit"
    );

    drop(again);
    let next_pid = waiting.await.expect("the waiting caller");
    assert_ne!(next_pid, first_pid, "a dropped connection was kept");
    // Dropped, not handed back: its session ends (the server sees the
    // socket close a moment later).
    fixtures::eventually(
        Duration::from_secs(10),
        "the dropped connection's session ends",
        || async {
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(first_pid)
                .fetch_one(&pool)
                .await
                .expect("pg_stat_activity")
        },
    )
    .await;
}
