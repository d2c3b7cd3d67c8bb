//! Lock+unlock latency of the backend against the raw SQL round trips it
//! stands for, measured in the same run on the same server. Prints, asserts
//! nothing about timing (a noisy machine):
//!
//! `cargo test -p leasehold-postgres --test latency -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::{Server, key, options};
use leasehold_core::LockBackend;
use leasehold_postgres::{Mode, advisory_lock_id};
use sqlx::Connection;

const ROUNDS: usize = 400;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn backend_pairs(server: &Server, mode: Mode) -> Duration {
    let backend = server.backend(options(mode)).await;
    let k = key("latency");
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let lease = backend
            .try_acquire(&k, Duration::from_secs(30))
            .await
            .unwrap();
        backend.release(&lease).await.unwrap();
        samples.push(started.elapsed());
    }
    median(samples)
}

async fn raw_pairs(server: &Server, mode: Mode, with_counter: bool) -> Duration {
    let mut conn = sqlx::PgConnection::connect(&server.url).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS raw_leases (key text PRIMARY KEY, owner text, \
         counter bigint NOT NULL, expires_at timestamptz)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS raw_counters (key text PRIMARY KEY, counter bigint NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let id = advisory_lock_id("raw", "latency");
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let started = Instant::now();
        match mode {
            Mode::Advisory if with_counter => {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let _: i64 = sqlx::query_scalar(
                    "INSERT INTO raw_counters AS c (key, counter) VALUES ($1, 1) \
                     ON CONFLICT (key) DO UPDATE SET counter = c.counter + 1 RETURNING c.counter",
                )
                .bind("latency")
                .fetch_one(&mut conn)
                .await
                .unwrap();
                let freed: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert!(got && freed);
            }
            Mode::Advisory => {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let freed: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert!(got && freed);
            }
            Mode::Table => {
                let owner = format!("{round:032x}");
                let _: i64 = sqlx::query_scalar(
                    "INSERT INTO raw_leases AS l (key, owner, counter, expires_at) \
                     VALUES ($1, $2, 1, clock_timestamp() + interval '30 seconds') \
                     ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, \
                     counter = l.counter + 1, expires_at = EXCLUDED.expires_at \
                     WHERE l.owner IS NULL OR l.expires_at <= clock_timestamp() \
                     RETURNING l.counter",
                )
                .bind("latency")
                .bind(&owner)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                sqlx::query(
                    "UPDATE raw_leases SET owner = NULL, expires_at = NULL \
                     WHERE key = $1 AND owner = $2",
                )
                .bind("latency")
                .bind(&owner)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
        samples.push(started.elapsed());
    }
    median(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn lock_unlock_latency_against_raw_round_trips() {
    let server = Server::start(false).await;
    for mode in [Mode::Advisory, Mode::Table] {
        // Warm both paths, then interleave: raw, backend, raw, backend.
        raw_pairs(&server, mode, false).await;
        backend_pairs(&server, mode).await;
        let mut raw = Duration::MAX;
        let mut counted = Duration::MAX;
        let mut ours = Duration::MAX;
        for _ in 0..2 {
            raw = raw.min(raw_pairs(&server, mode, false).await);
            ours = ours.min(backend_pairs(&server, mode).await);
            if mode == Mode::Advisory {
                counted = counted.min(raw_pairs(&server, mode, true).await);
            }
        }
        let ratio = |d: Duration| ours.as_secs_f64() / d.as_secs_f64();
        println!(
            "{mode:?}: lock+unlock median {ours:?} vs raw two statements {raw:?}: ratio {:.2} \
             ({ROUNDS} rounds, best of two interleaved runs)",
            ratio(raw)
        );
        if mode == Mode::Advisory {
            println!(
                "{mode:?}: vs raw lock + durable counter upsert + unlock {counted:?}: ratio {:.2}",
                ratio(counted)
            );
        }
    }
}
