//! Table mode, and key encoding in both modes, against a real `postgres:15`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Server, abandon_and_count, key, options};
use leasehold_conformance::fixtures::eventually;
use leasehold_core::relay::{MAX_RELAYS, Relay};
use leasehold_core::{LockBackend, LockError, LockKind, WaitPolicy};
use leasehold_postgres::{Mode, PostgresBackend, PostgresConfig, migration_sql};
use sqlx::postgres::PgPoolOptions;

const TTL: Duration = Duration::from_secs(30);

const NASTY: &[&str] = &[
    "'; DROP TABLE x; --",
    "\"; DROP TABLE x; --",
    "%",
    "_",
    "a%",
    "a_c",
    "abc",
    "ab",
    "\\",
    "\\\\",
    "a\\%b",
    "$1",
    "E'\\x41'",
    "🔒émoji/ключ/鍵",
    " spaced key ",
    "trailing\u{a0}nbsp",
];

async fn nasty_keys_match_exactly(server: &Server, mode: Mode) {
    let observer = server.observer().await;
    sqlx::query("CREATE TABLE IF NOT EXISTS x (v int)")
        .execute(&observer)
        .await
        .unwrap();
    // Advisory mode pins a connection per held lease.
    let opts = options(mode).max_connections(NASTY.len() as u32 + 2);
    let namespace = opts.namespace_str().to_owned();
    let a = server.backend(opts.clone()).await;
    let b = server.backend(opts).await;
    // Every key is its own lock: all can be held at once...
    let mut leases = Vec::new();
    for name in NASTY {
        let lease = a
            .try_acquire(&key(name), TTL)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {name:?} should be free: {e}"));
        leases.push(lease);
    }
    // ...and each one is held: nobody else gets any of them.
    for name in NASTY {
        match b.try_acquire(&key(name), TTL).await {
            Err(LockError::Contended { .. }) => {}
            other => panic!("{mode:?}: {name:?} should be contended, got {other:?}"),
        }
        assert!(
            b.inspect(&key(name)).await.unwrap().is_some(),
            "{mode:?}: inspect {name:?}"
        );
    }
    // The keys are stored byte for byte.
    let table = match mode {
        Mode::Advisory => "leasehold_fencing",
        Mode::Table => "leasehold_leases",
    };
    let stored: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT key FROM {table} WHERE namespace = $1 ORDER BY key"
    ))
    .bind(&namespace)
    .fetch_all(&observer)
    .await
    .unwrap();
    let mut expected: Vec<String> = NASTY.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "{mode:?}: stored keys differ from the keys given"
    );
    for lease in &leases {
        a.release(lease).await.unwrap();
    }
    let survived: bool = sqlx::query_scalar("SELECT to_regclass('x') IS NOT NULL")
        .fetch_one(&observer)
        .await
        .unwrap();
    assert!(survived, "table x was dropped: injection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metacharacter_keys_match_exactly_in_both_modes() {
    let server = Server::start(false).await;
    nasty_keys_match_exactly(&server, Mode::Table).await;
    nasty_keys_match_exactly(&server, Mode::Advisory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_lock_lifecycle_keeps_the_row_and_its_counter() {
    let server = Server::start(false).await;
    let opts = options(Mode::Table).holder("worker-7");
    let a = server.backend(opts.clone()).await;
    let b = server.backend(opts).await;
    let k = key("invoice:1");

    let first = a.try_acquire(&k, TTL).await.unwrap();
    match b.try_acquire(&k, TTL).await {
        Err(LockError::Contended { holder, .. }) => {
            let holder = holder.expect("table mode reports the holder");
            assert_eq!(holder.fencing_token, Some(first.fencing_token()));
            assert_eq!(holder.owner_hint, Some(first.owner().short()));
            assert_eq!(holder.metadata.as_deref(), Some("worker-7"));
            assert!(holder.remaining.unwrap() <= TTL);
        }
        other => panic!("expected Contended, got {other:?}"),
    }
    // Extend and release by a non-owner are refused.
    let forged = b.try_acquire(&key("invoice:other"), TTL).await.unwrap();
    let first = a.extend(&first, TTL).await.unwrap();
    a.release(&first).await.unwrap();
    assert!(matches!(
        a.release(&first).await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(matches!(
        a.extend(&first, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert_eq!(a.inspect(&k).await.unwrap(), None);
    let second = b.try_acquire(&k, TTL).await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    // A batch renewal renews what is ours and reports the rest as lost.
    let results = b
        .extend_many(&[
            (second.clone(), TTL),
            (first.clone(), TTL),
            (forged.clone(), TTL),
        ])
        .await
        .expect("the batch statement ran");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(LockError::Lost { .. })),
        "{results:?}"
    );
    b.release(&second).await.unwrap();
    b.release(&forged).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_row_frees_after_its_ttl_by_the_database_clock() {
    let server = Server::start(false).await;
    let opts = options(Mode::Table);
    let holder = server.backend(opts.clone()).await;
    let other = server.backend(opts).await;
    let k = key("report:daily");
    let ttl = Duration::from_millis(800);
    // The holder "dies": it never extends or releases.
    let lease = holder.try_acquire(&k, ttl).await.unwrap();
    drop(holder);
    assert!(matches!(
        other.try_acquire(&k, TTL).await,
        Err(LockError::Contended { .. })
    ));
    let next = other
        .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(20)))
        .await
        .expect("the row frees once its TTL passed");
    assert!(next.fencing_token() > lease.fencing_token());
    // The dead holder's lease cannot come back.
    assert!(matches!(
        other.extend(&lease, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(
        other.release(&lease).await,
        Err(LockError::NotHeld { .. })
    ));
    other.release(&next).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_schema_and_table_by_url_and_printable_migration() {
    let server = Server::start(false).await;
    let url =
        server.url_with("mode=table&schema=my%20locks&table=lease%22s&namespace=u&timeout=2s");
    let backend = PostgresBackend::connect(&url).await.unwrap();
    // Idempotent: a second connect migrates again without error.
    let again = PostgresBackend::connect(&url).await.unwrap();
    let lease = backend.try_acquire(&key("k"), TTL).await.unwrap();
    assert!(matches!(
        again.try_acquire(&key("k"), TTL).await,
        Err(LockError::Contended { .. })
    ));
    backend.release(&lease).await.unwrap();
    let observer = server.observer().await;
    let rows: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "my locks"."lease""s""#)
        .fetch_one(&observer)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let sql = migration_sql(
        &PostgresConfig::new(Mode::Table)
            .schema("my locks")
            .table("lease\"s"),
    );
    assert!(
        sql.contains(r#"CREATE SCHEMA IF NOT EXISTS "my locks";"#),
        "{sql}"
    );
    assert!(sql.contains(r#""my locks"."lease""s""#), "{sql}");
}

/// An attempt whose caller left while it waited for a pooled connection
/// stops there, having asked nothing, for every kind of lock. Before, it went
/// on (on its own task) to take a connection ahead of the callers still
/// waiting, run its grant and give it back. Counted as the live tasks of a
/// runtime of its own: the caller's and the attempt's while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_caller_left_while_waiting_for_a_connection_stops() {
    let server = Server::start(false).await;
    let backend = server
        .backend(
            options(Mode::Table)
                .max_connections(1)
                .timeout(Duration::from_secs(60)),
        )
        .await;
    let pinned = backend.pool().acquire().await.unwrap();
    for kind in [LockKind::Exclusive, LockKind::Read] {
        let backend = backend.clone();
        // The caller's task and the attempt's, parked on the full pool.
        abandon_and_count(
            async move { backend.try_acquire_kind(&key("left"), kind, TTL).await },
            2,
            0,
            &format!("the abandoned {kind:?} attempt stops waiting for a connection"),
        )
        .await;
    }
    drop(pinned);
    let lease = backend.try_acquire(&key("left"), TTL).await.unwrap();
    backend.release(&lease).await.unwrap();
}

/// A pool of at most `max` connections to `server` that counts, in
/// `returned`, every connection handed back to it (its `after_release`
/// hook).
fn counted_pool(server: &Server, max: u32, returned: Arc<AtomicUsize>) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        .after_release(move |_, _| {
            returned.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .connect_lazy(&server.url)
        .unwrap()
}

async fn pid(connection: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(connection)
        .await
        .unwrap()
}

/// Polls `take` once: it must wait (every connection taken, or one
/// being opened for it).
async fn waiting<F: std::future::Future>(mut take: std::pin::Pin<&mut F>) {
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(take.as_mut().poll(cx)));
    assert!(polled.await.is_pending(), "the call waits");
}

/// Table mode's statements run on a [`Relay`]: a connection whose call
/// finished goes straight to a call already waiting for one, without the
/// pool's release (and its ping); with nobody waiting, a waiter that left,
/// a dropped connection or [`MAX_RELAYS`] handoffs in a row, it goes back
/// to the pool. Counted with the pool's `after_release` hook, which runs
/// for every connection the pool takes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_calls_connection_goes_to_the_waiting_call_not_through_the_pool() {
    let server = Server::start(false).await;
    let returned = Arc::new(AtomicUsize::new(0));
    let relay = Relay::new(counted_pool(&server, 1, returned.clone()));

    let mut first = relay.take().await.unwrap();
    let first_pid = pid(&mut first).await;
    // Handed to a waiting call: the same session, and the pool saw nothing.
    for handoff in 1..=MAX_RELAYS {
        let next = relay.take();
        tokio::pin!(next);
        waiting(next.as_mut()).await;
        first.give_back();
        first = next.await.unwrap();
        assert_eq!(pid(&mut first).await, first_pid, "handoff {handoff}");
        assert_eq!(
            returned.load(Ordering::SeqCst),
            0,
            "handoff {handoff} went through the pool"
        );
    }
    // The next one after MAX_RELAYS in a row goes back to the pool.
    let next = relay.take();
    tokio::pin!(next);
    waiting(next.as_mut()).await;
    first.give_back();
    let mut second = next.await.unwrap();
    assert_eq!(returned.load(Ordering::SeqCst), 1, "back to the pool");
    assert_eq!(pid(&mut second).await, first_pid);

    // A waiting call that left does not swallow the connection: it goes
    // back to the pool, and the next call gets it.
    {
        let left = relay.take();
        tokio::pin!(left);
        waiting(left.as_mut()).await;
    }
    second.give_back();
    eventually(Duration::from_secs(10), "back to the pool", || async {
        returned.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut third = relay.take().await.unwrap();
    assert_eq!(pid(&mut third).await, first_pid);

    // Dropped instead of given back (a failed or interrupted statement),
    // it goes back to the pool even with a call waiting.
    let next = relay.take();
    tokio::pin!(next);
    waiting(next.as_mut()).await;
    drop(third);
    let _fourth = next.await.unwrap();
    assert_eq!(returned.load(Ordering::SeqCst), 3, "a dropped connection");
}

/// A call that waits while the pool opens a connection for it keeps that
/// connection even when a finished call's connection comes free first: a
/// connect cut short by a handoff cost the server a session start for
/// nothing, and under load kept the pool at a connection or two (16 tasks
/// on MySQL table mode: 336 grants/s against 2,000 unrelayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_in_progress_is_not_cut_short_by_a_handoff() {
    let server = Server::start(false).await;
    let returned = Arc::new(AtomicUsize::new(0));
    let relay = Relay::new(counted_pool(&server, 2, returned.clone()));
    let mut first = relay.take().await.unwrap();
    let first_pid = pid(&mut first).await;
    // Room for a second connection: the pool starts opening it.
    let next = relay.take();
    tokio::pin!(next);
    waiting(next.as_mut()).await;
    first.give_back();
    let mut second = next.await.unwrap();
    assert_ne!(
        pid(&mut second).await,
        first_pid,
        "the new connection was dropped for the handed one"
    );
    assert_eq!(relay.pool().size(), 2, "the pool grew to its limit");
}
