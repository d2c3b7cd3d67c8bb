//! Advisory mode against a real `postgres:15`.

mod common;

use std::time::{Duration, Instant};

use common::{Server, abandon_and_count, advisory_holder_pid, key, options};
use leasehold_conformance::fixtures::eventually;
use leasehold_core::{Lease, LockBackend, LockError, LockKind, Locker, TtlPolicy, WaitPolicy};
use leasehold_postgres::{Mode, PostgresBackend, advisory_lock_id};
use sqlx::postgres::PgPoolOptions;

const TTL: Duration = Duration::from_secs(30);

/// How many advisory locks the session of `conn` holds.
async fn locks_held_by(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
    .expect("query pg_locks")
}

/// Checks out the next pool connection: it must hold no advisory lock.
/// Returns its backend pid.
async fn next_user_holds_no_lock(pool: &sqlx::PgPool, after: &str) -> i32 {
    let mut next = pool
        .acquire()
        .await
        .expect("the pool's only slot comes back");
    assert_eq!(
        locks_held_by(&mut next).await,
        0,
        "after {after} the pool handed out a connection still holding an advisory lock"
    );
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *next)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_never_hands_out_a_still_locked_connection() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&server.url)
        .await
        .unwrap();
    let opts = options(Mode::Advisory);
    let namespace = opts.namespace_str().to_owned();
    let backend = PostgresBackend::from_pool(pool.clone(), opts)
        .await
        .unwrap();

    // 1. A lease dropped without release.
    let k = key("pool-of-one:lease");
    let id = advisory_lock_id(&namespace, k.as_str());
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let holder = advisory_holder_pid(&observer, id).await;
    assert!(holder.is_some(), "the lock should be held after acquire");
    drop(lease);
    let pid = next_user_holds_no_lock(&pool, "a lease drop").await;
    assert_ne!(
        Some(pid),
        holder,
        "the locked connection went back to the pool"
    );
    eventually(
        Duration::from_secs(10),
        "lock freed after its connection closed",
        || async { advisory_holder_pid(&observer, id).await.is_none() },
    )
    .await;

    // 2. A guard dropped without release (released in the background).
    let locker = Locker::new(backend.clone());
    let k = key("pool-of-one:guard");
    let id = advisory_lock_id(&namespace, k.as_str());
    let guard = locker.try_lock(&k).await.unwrap();
    assert!(advisory_holder_pid(&observer, id).await.is_some());
    drop(guard);
    next_user_holds_no_lock(&pool, "a guard drop").await;
    eventually(Duration::from_secs(10), "guard's lock freed", || async {
        advisory_holder_pid(&observer, id).await.is_none()
    })
    .await;

    // 3. A released lease returns its (unlocked) connection.
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    backend.release(&lease).await.unwrap();
    let mut next = pool.acquire().await.unwrap();
    assert_eq!(locks_held_by(&mut next).await, 0);
    let idle: String = sqlx::query_scalar("SHOW idle_session_timeout")
        .fetch_one(&mut *next)
        .await
        .unwrap();
    assert_eq!(
        idle, "0",
        "a released connection must come back without the lease's idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_release_and_strictly_increasing_fencing() {
    let server = Server::start(false).await;
    let opts = options(Mode::Advisory);
    let a = server.backend(opts.clone()).await;
    let b = server.backend(opts).await;
    let k = key("orders:42");

    let first = a.try_acquire(&k, TTL).await.unwrap();
    match b.try_acquire(&k, TTL).await {
        Err(LockError::Contended { holder, .. }) => {
            let holder = holder.expect("advisory mode reports the holder");
            assert_eq!(holder.fencing_token, Some(first.fencing_token()));
        }
        other => panic!("expected Contended while held, got {other:?}"),
    }
    let info = b
        .inspect(&k)
        .await
        .unwrap()
        .expect("inspect sees the holder");
    assert_eq!(info.fencing_token, Some(first.fencing_token()));
    let first = a.extend(&first, TTL).await.expect("extend a live session");
    a.release(&first).await.unwrap();
    assert!(
        matches!(a.release(&first).await, Err(LockError::NotHeld { .. })),
        "a second release must be NotHeld"
    );
    assert!(matches!(
        a.extend(&first, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert_eq!(b.inspect(&k).await.unwrap(), None);

    let second = b.try_acquire(&k, TTL).await.unwrap();
    assert!(
        second.fencing_token() > first.fencing_token(),
        "tokens must strictly increase: {} then {}",
        first.fencing_token(),
        second.fencing_token()
    );
    // A waiter is woken by the release notification (or its poll).
    let waiter = tokio::spawn({
        let a = a.clone();
        let k = k.clone();
        async move {
            a.acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(20)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.release(&second).await.unwrap();
    let third = waiter.await.unwrap().expect("the waiter gets the lock");
    assert!(third.fencing_token() > second.fencing_token());
    a.release(&third).await.unwrap();
}

/// What a crash does to an advisory store, by hand: every other session
/// ended (the server restarts all its processes to recover), the unlogged
/// epoch table emptied, and the token sequence set back (its last draws
/// were committed without a flush). For a server of the test's own.
async fn lose_the_epoch(observer: &sqlx::PgPool) {
    sqlx::raw_sql(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
           WHERE backend_type = 'client backend' AND pid <> pg_backend_pid(); \
         TRUNCATE leasehold_fencing_in_force; \
         SELECT setval('leasehold_fencing_token', 1);",
    )
    .execute(observer)
    .await
    .unwrap();
}

/// Sets the sequence so its next draw is exactly the ceiling of the epoch
/// in force; returns that ceiling and the epoch.
async fn next_draw_at_the_ceiling(observer: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "WITH e AS (SELECT max(epoch) AS e FROM leasehold_fencing_in_force) \
         SELECT setval('leasehold_fencing_token', ((SELECT e FROM e) << 40) - 1) + 1, \
                (SELECT e FROM e)",
    )
    .fetch_one(observer)
    .await
    .unwrap()
}

/// What a crash does to an advisory store, done by hand
/// ([`lose_the_epoch`]). The next grant must still exceed every earlier
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_epoch_lifts_tokens_above_every_earlier_grant() {
    let server = Server::start(true).await;
    let namespace = format!("epoch{}", common::rand_suffix());
    let backend = server
        .backend(options(Mode::Advisory).namespace(namespace.clone()))
        .await;
    let k = key("epoch");
    let mut last = 0;
    for _ in 0..3 {
        let lease = backend.try_acquire(&k, TTL).await.unwrap();
        last = lease.fencing_token().get();
        backend.release(&lease).await.unwrap();
    }
    let observer = server.observer().await;
    lose_the_epoch(&observer).await;
    let lifted = common::when_back(async || backend.try_acquire(&k, TTL).await).await;
    assert!(
        lifted.fencing_token().get() > last,
        "token went from {last} to {} after the epoch was lost",
        lifted.fencing_token()
    );
    backend.release(&lifted).await.unwrap();
    let next = backend.try_acquire(&k, TTL).await.unwrap();
    assert!(next.fencing_token() > lifted.fencing_token());
    backend.release(&next).await.unwrap();
}

/// An epoch hands out no token at or above the next epoch's floor (2⁴⁰
/// draws): a crash could set the sequence back below it, and the next
/// epoch's tokens would repeat it. A draw that reaches it gives its lock
/// back and the next epoch starts, above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_at_the_epochs_ceiling_starts_the_next_epoch() {
    let server = Server::start(false).await;
    let namespace = format!("ceiling{}", common::rand_suffix());
    let backend = server
        .backend(options(Mode::Advisory).namespace(namespace.clone()))
        .await;
    let k = key("ceiling");
    let first = backend.try_acquire(&k, TTL).await.unwrap();
    backend.release(&first).await.unwrap();
    let observer = server.observer().await;
    let (ceiling, epoch) = next_draw_at_the_ceiling(&observer).await;
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    assert!(
        lease.fencing_token().get() > ceiling as u64,
        "epoch {epoch} handed out {} (its ceiling is {ceiling})",
        lease.fencing_token()
    );
    let (now,): (i64,) = sqlx::query_as("SELECT max(epoch) FROM leasehold_fencing_in_force")
        .fetch_one(&observer)
        .await
        .unwrap();
    assert!(now > epoch, "the epoch stayed at {now}");
    let other = server
        .backend(options(Mode::Advisory).namespace(namespace))
        .await;
    assert!(matches!(
        other.try_acquire(&k, TTL).await,
        Err(LockError::Contended { .. })
    ));
    backend.release(&lease).await.unwrap();
}

/// A grant on a kept session takes the store epoch its earlier grant read
/// on the same server process, never from another: bound with another
/// session's pid, it reads no epoch and takes no lock (the client then
/// reads the epoch from the store again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_epoch_counts_only_on_the_session_that_read_it() {
    let server = Server::start(false).await;
    let namespace = format!("remembered{}", common::rand_suffix());
    let config = options(Mode::Advisory).namespace(namespace.clone());
    let backend = server.backend(config.clone()).await;
    let k = key("remembered");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    backend.release(&lease).await.unwrap();
    let grant = leasehold_postgres::advisory_mutex_statements(&config).grant;
    let id = advisory_lock_id(&namespace, k.as_str());
    let observer = server.observer().await;
    let mut session = observer.acquire().await.unwrap();
    let (pid, epoch): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), max(epoch) FROM leasehold_fencing_in_force")
            .fetch_one(&mut *session)
            .await
            .unwrap();
    // The grant's token (its first column) and the epoch it read (its fifth).
    let grant_binding = |pid: i32| {
        sqlx::query_as::<_, (Option<i64>, Option<String>, Option<i32>, i32, Option<i64>)>(&grant)
            .bind(id)
            .bind(namespace.clone())
            .bind(k.as_str().to_owned())
            .bind("test")
            .bind("30000")
            .bind(epoch)
            .bind(pid)
    };
    let (token, _, _, _, read) = grant_binding(pid + 1)
        .fetch_one(&mut *session)
        .await
        .unwrap();
    assert_eq!(
        (token, read),
        (None, None),
        "a grant bound to another session's pid took the remembered epoch"
    );
    assert_eq!(locks_held_by(&mut session).await, 0, "and took the lock");
    let (token, _, _, _, read) = grant_binding(pid).fetch_one(&mut *session).await.unwrap();
    assert!(
        token.is_some(),
        "the session that read the epoch is refused"
    );
    assert_eq!(read, Some(epoch));
    assert_eq!(locks_held_by(&mut session).await, 1);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(id)
        .execute(&mut *session)
        .await
        .unwrap();
}

/// Clients of the two releases before every grant drew from the token
/// sequence: the first bumped row counters and kept the epoch in
/// `<table>_alive`, the second drew mutex tokens from the sequence but
/// bumped a counter row per reader, writer and permit, and kept the epoch in
/// `<table>_live`. Mixed in, either would hand out tokens below ours (or we
/// below theirs). After this release migrated the table, each one's epoch
/// bump (its statement, verbatim) fails and its grant reads "no epoch", so
/// it grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_clients_are_refused_not_mixed_in() {
    let server = Server::start(false).await;
    let backend = server.backend(options(Mode::Advisory)).await;
    let lease = backend.try_acquire(&key("mixed"), TTL).await.unwrap();
    backend.release(&lease).await.unwrap();
    let observer = server.observer().await;
    let first_generation = "BEGIN;\n\
         SET LOCAL synchronous_commit = on;\n\
         SELECT pg_advisory_xact_lock(7810756276994994019);\n\
         WITH u AS (UPDATE \"public\".\"leasehold_fencing_epoch\" SET epoch = epoch + 1 \
                    WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"leasehold_fencing_alive\") \
                    RETURNING epoch) \
         INSERT INTO \"public\".\"leasehold_fencing_alive\" (epoch) SELECT epoch FROM u;\n\
         COMMIT;\n";
    let second_generation = "BEGIN;\n\
         SET LOCAL synchronous_commit = on;\n\
         SELECT pg_advisory_xact_lock(7810756276994994019);\n\
         WITH c AS MATERIALIZED (SELECT max(epoch) AS e FROM \"public\".\"leasehold_fencing_live\"), \
         h AS MATERIALIZED (SELECT GREATEST((SELECT last_value FROM \"public\".\"leasehold_fencing_token\"), \
               (SELECT max(counter) FROM \"public\".\"leasehold_fencing\")) AS high), \
         u AS (UPDATE \"public\".\"leasehold_fencing_epoch\" SET epoch = GREATEST(epoch + 1, \
                   ((SELECT high FROM h) >> 40) + 1) \
               WHERE (SELECT e FROM c) IS NULL \
                  OR (SELECT last_value FROM \"public\".\"leasehold_fencing_token\") >= ((SELECT e FROM c) << 40) \
               RETURNING epoch), \
         d AS (DELETE FROM \"public\".\"leasehold_fencing_live\" WHERE EXISTS (SELECT 1 FROM u)), \
         s AS MATERIALIZED (SELECT setval('\"public\".\"leasehold_fencing_token\"'::regclass, \
               GREATEST((SELECT high FROM h), ((u.epoch - 1) << 40))) AS lifted FROM u) \
         INSERT INTO \"public\".\"leasehold_fencing_live\" (epoch) SELECT u.epoch FROM u, s;\n\
         COMMIT;\n";
    for (generation, bump, table) in [
        ("first", first_generation, "leasehold_fencing_alive"),
        ("second", second_generation, "leasehold_fencing_live"),
    ] {
        // Its own connection: the failed transaction is left open on it.
        let mut older = <sqlx::PgConnection as sqlx::Connection>::connect(&server.url)
            .await
            .unwrap();
        let refused = sqlx::raw_sql(bump)
            .execute(&mut older)
            .await
            .expect_err("an older client's epoch bump must fail");
        let refused = refused.to_string();
        assert!(
            refused.contains("cannot insert into view")
                || refused.contains("cannot delete from view"),
            "{generation}: {refused}"
        );
        let (epoch,): (Option<i64>,) =
            sqlx::query_as(&format!("SELECT max(epoch) FROM \"public\".\"{table}\""))
                .fetch_one(&observer)
                .await
                .unwrap();
        assert_eq!(
            epoch, None,
            "a {generation}-generation client would find an epoch in force"
        );
    }
}

/// A table the release before this one left: its reader, writer and permit
/// grants bumped counter rows in `<table>_shared`, far above the token
/// sequence, and its epoch in force sat in `<table>_live`. After this
/// release migrates the table, a reader's and a permit's tokens lie above
/// every counter the older release handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_upgraded_from_counter_rows_keep_their_tokens_increasing() {
    let server = Server::start(true).await;
    let namespace = format!("upgrade{}", common::rand_suffix());
    let config = options(Mode::Advisory).namespace(namespace.clone());
    drop(server.backend(config.clone()).await);
    let observer = server.observer().await;
    // The older release's state, by hand: its epoch table in force, and
    // the counters its readers and permits reached.
    sqlx::raw_sql(
        "DROP TABLE leasehold_fencing_in_force; \
         DROP VIEW leasehold_fencing_live; \
         CREATE UNLOGGED TABLE leasehold_fencing_live (epoch bigint NOT NULL); \
         INSERT INTO leasehold_fencing_live (epoch) VALUES (1);",
    )
    .execute(&observer)
    .await
    .unwrap();
    for (family, counter) in [("r", 5_000_i64), ("s", 7_000)] {
        sqlx::query(
            "INSERT INTO leasehold_fencing_shared (namespace, family, key, owner, kind, counter) \
             VALUES ($1, $2, 'upgraded', '', 'c', $3)",
        )
        .bind(&namespace)
        .bind(family)
        .bind(counter)
        .execute(&observer)
        .await
        .unwrap();
    }
    let backend = server.backend(config).await;
    let k = key("upgraded");
    for (kind, older) in [
        (LockKind::Read, 5_000),
        (LockKind::Permit { permits: 2 }, 7_000),
    ] {
        let lease = backend.try_acquire_kind(&k, kind, TTL).await.unwrap();
        assert!(
            lease.fencing_token().get() > older,
            "{kind:?} token {} after the older release handed out {older}",
            lease.fencing_token()
        );
        backend.release(&lease).await.unwrap();
    }
}

/// Readers, writers and permits draw from the store's sequence like the
/// mutex: a lost epoch (what a crash may do, by hand) lifts their next
/// tokens above every earlier one, and a draw at the epoch's ceiling gives
/// its lock back and starts the next epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_tokens_survive_a_lost_epoch_and_stop_at_its_ceiling() {
    let server = Server::start(true).await;
    let backend = server.backend(options(Mode::Advisory)).await;
    let observer = server.observer().await;
    let k = key("kinds");
    let kinds = [
        LockKind::Read,
        LockKind::Write,
        LockKind::Permit { permits: 3 },
    ];
    let mut last = 0;
    for kind in kinds {
        let lease = backend.try_acquire_kind(&k, kind, TTL).await.unwrap();
        assert!(lease.fencing_token().get() > last, "{kind:?}");
        last = lease.fencing_token().get();
        backend.release(&lease).await.unwrap();
    }
    lose_the_epoch(&observer).await;
    for kind in kinds {
        let lease = common::when_back(async || backend.try_acquire_kind(&k, kind, TTL).await).await;
        assert!(
            lease.fencing_token().get() > last,
            "{kind:?} token went from {last} to {} after the epoch was lost",
            lease.fencing_token()
        );
        last = lease.fencing_token().get();
        backend.release(&lease).await.unwrap();
    }
    for kind in kinds {
        let (ceiling, epoch) = next_draw_at_the_ceiling(&observer).await;
        let lease = backend.try_acquire_kind(&k, kind, TTL).await.unwrap();
        assert!(
            lease.fencing_token().get() > ceiling as u64,
            "{kind:?}: epoch {epoch} handed out {} (its ceiling is {ceiling})",
            lease.fencing_token()
        );
        backend.release(&lease).await.unwrap();
        // The grant is retried on the session that drew the ceiling: had
        // that draw kept its lock, the session would still hold it.
        let (held,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1",
        )
        .fetch_one(&observer)
        .await
        .unwrap();
        assert_eq!(held, 0, "{kind:?}: the draw at the ceiling kept its lock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holders_connection_frees_the_lock_and_the_holder_learns_it_is_lost() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let namespace = opts.namespace_str().to_owned();
    let holder = server.backend(opts.clone()).await;
    let other = server.backend(opts).await;
    let k = key("jobs:nightly");
    let lease = holder.try_acquire(&k, TTL).await.unwrap();
    assert!(lease.loss_signal().is_some());

    let pid = advisory_holder_pid(&observer, advisory_lock_id(&namespace, k.as_str()))
        .await
        .expect("the lock is held");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&observer)
        .await
        .unwrap();
    assert!(killed);

    let next = other
        .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(20)))
        .await
        .expect("the lock is free once its session is gone");
    assert!(next.fencing_token() > lease.fencing_token());
    match holder.extend(&lease, TTL).await {
        Err(LockError::Lost { .. }) => {}
        other => panic!("extend after the session died must be Lost, got {other:?}"),
    }
    assert!(
        lease.loss_signal().unwrap().is_cancelled(),
        "the loss signal fires"
    );
    assert!(holder.release(&lease).await.is_err());
    other.release(&next).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_applications_apart() {
    let server = Server::start(false).await;
    let a = server.backend(options(Mode::Advisory)).await;
    let b = server.backend(options(Mode::Advisory)).await;
    let k = key("shared-name");
    let la = a.try_acquire(&k, TTL).await.unwrap();
    let lb = b
        .try_acquire(&k, TTL)
        .await
        .expect("other namespace, other lock");
    a.release(&la).await.unwrap();
    b.release(&lb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_extending_loses_the_lock_after_its_ttl() {
    let server = Server::start(false).await;
    let opts = options(Mode::Advisory);
    let holder = server.backend(opts.clone()).await;
    let other = server.backend(opts).await;
    let k = key("stalled");
    // The holder stays connected but goes quiet (a paused process).
    let lease = holder
        .try_acquire(&k, Duration::from_millis(700))
        .await
        .unwrap();
    assert!(matches!(
        other.try_acquire(&k, TTL).await,
        Err(LockError::Contended { .. })
    ));
    let next = other
        .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(20)))
        .await
        .expect("the server ends the idle session after the TTL");
    assert!(next.fencing_token() > lease.fencing_token());
    match holder.extend(&lease, TTL).await {
        Err(LockError::Lost { .. }) => {}
        other => panic!("extend after the idle timeout must be Lost, got {other:?}"),
    }
    other.release(&next).await.unwrap();
}

/// Terminates server process `pid` from the observer's connection; returns
/// when the server has done it.
async fn terminate(observer: &sqlx::PgPool, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(observer)
        .await
        .expect("pg_terminate_backend");
    assert!(killed, "pg_terminate_backend({pid}) found no such process");
}

/// The server frees an advisory lock the moment the holder's session ends
/// (terminated backend, restart, failover, dropped connection); the holder's
/// guard must learn it then, not ~30 s later at its next renewal, or two
/// holders both believe they hold the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_holders_session_fires_lost_at_once() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let namespace = opts.namespace_str().to_owned();
    let backend = server.backend(opts.clone()).await;
    let other = server.backend(opts).await;
    // A long TTL: the first renewal is 20 s away, so only the session watch
    // can report the loss within the bound below.
    let locker = Locker::builder(backend)
        .ttl(TtlPolicy::Fixed(Duration::from_secs(60)))
        .build();
    let k = key("session-end:guard");
    let guard = locker.try_lock(&k).await.expect("the key is free");
    let pid = advisory_holder_pid(&observer, advisory_lock_id(&namespace, k.as_str()))
        .await
        .expect("the lock is held");

    terminate(&observer, pid).await;
    let ended = Instant::now();
    let bound = Duration::from_secs(10);
    let fired = tokio::time::timeout(bound, guard.lost()).await;
    assert!(
        fired.is_ok(),
        "guard.lost() had not completed {bound:?} after the holder's session was terminated \
         (is_lost() = {}, validity left {:?}); meanwhile the server had freed the lock",
        guard.is_lost(),
        guard
            .valid_until()
            .saturating_duration_since(tokio::time::Instant::now())
    );
    println!("session end to lost(): {:?}", ended.elapsed());
    assert!(guard.is_lost(), "is_lost() must agree with lost()");

    let next = other
        .try_acquire(&k, TTL)
        .await
        .expect("another client can lock the key once the session is gone");
    assert!(next.fencing_token() > guard.fencing_token());
    other.release(&next).await.unwrap();
}

/// Measures session end (the terminate call returning) to `lost()` over 20
/// terminations, p50 and max. Run with
/// `cargo test -p leasehold-postgres --test advisory session_end_to_lost -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_to_lost_latency_over_twenty_terminations() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let backend = server.backend(opts).await;
    let locker = Locker::builder(backend)
        .ttl(TtlPolicy::Fixed(Duration::from_secs(60)))
        .build();
    let mut samples = Vec::new();
    for round in 0..20 {
        let k = key(&format!("session-end:measure:{round}"));
        let guard = locker.try_lock(&k).await.expect("the key is free");
        let pid = leasehold_postgres::session_pid(&guard.lease()).expect("an advisory lease");
        terminate(&observer, pid).await;
        let ended = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), guard.lost())
            .await
            .unwrap_or_else(|_| panic!("round {round}: lost() did not complete within 10 s"));
        samples.push(ended.elapsed());
        assert!(guard.is_lost());
    }
    samples.sort();
    println!(
        "session end to lost() over {} terminations: p50 {:?}, max {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

/// Sends `signal` (`STOP`, `CONT`) to server process `pid` inside the
/// container.
fn signal_server_process(server: &Server, pid: i32, signal: &str) {
    let status = std::process::Command::new("docker")
        .args([
            "exec",
            server.container().id(),
            "sh",
            "-c",
            &format!("kill -{signal} {pid}"),
        ])
        .status()
        .expect("run docker exec");
    assert!(
        status.success(),
        "docker exec kill -{signal} {pid} failed: {status}"
    );
}

/// A renewal batch where one lease's server process is stalled: the other
/// leases' renewals must reach the server at once, not after the stalled
/// one gives up (advisory leases each have their own session, so
/// `extend_many` renews them concurrently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_does_not_delay_the_other_renewals() {
    let server = Server::start(true).await;
    let observer = server.observer().await;
    let timeout = Duration::from_secs(3);
    let opts = options(Mode::Advisory).timeout(timeout);
    let namespace = opts.namespace_str().to_owned();
    let backend = server.backend(opts).await;
    let mut leases = Vec::new();
    let mut pids = Vec::new();
    for name in ["renew:stalled", "renew:b", "renew:c"] {
        let k = key(name);
        leases.push(backend.try_acquire(&k, TTL).await.unwrap());
        pids.push(
            advisory_holder_pid(&observer, advisory_lock_id(&namespace, k.as_str()))
                .await
                .expect("held"),
        );
    }
    let before: chrono_free::ServerTime = chrono_free::now(&observer).await;
    signal_server_process(&server, pids[0], "STOP");
    let renewals: Vec<_> = leases.iter().map(|l| (l.clone(), TTL)).collect();
    let results = backend
        .extend_many(&renewals)
        .await
        .expect("each renewal has its own session: no whole-call error");
    signal_server_process(&server, pids[0], "CONT");
    assert!(
        matches!(results[0], Err(LockError::Unavailable { .. })),
        "the stalled lease's renewal should time out, got {:?}",
        results[0]
    );
    for (i, result) in results.iter().enumerate().skip(1) {
        assert!(result.is_ok(), "lease {i} should renew, got {result:?}");
        let reached: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM query_start - $1::timestamptz)::float8 \
             FROM pg_stat_activity WHERE pid = $2",
        )
        .bind(&before.0)
        .bind(pids[i])
        .fetch_one(&observer)
        .await
        .unwrap();
        println!("renewal {i} reached the server {reached:.4} s after the batch began");
        assert!(
            reached < timeout.as_secs_f64(),
            "renewal {i} reached the server {reached:.3} s after the batch began, i.e. only after \
             the stalled lease's renewal gave up ({timeout:?}): renewals ran one after another"
        );
    }
    for lease in &leases[1..] {
        backend.release(lease).await.unwrap();
    }
}

/// The server's clock as text, without a date-time crate.
mod chrono_free {
    pub struct ServerTime(pub String);
    pub async fn now(pool: &sqlx::PgPool) -> ServerTime {
        ServerTime(
            sqlx::query_scalar("SELECT clock_timestamp()::text")
                .fetch_one(pool)
                .await
                .expect("clock_timestamp"),
        )
    }
}

/// A backend of one session, on a server of its own, with that session
/// pinned by a lease of `held`: further acquisitions wait for a session.
async fn one_session_pinned(held: &str, timeout: Duration) -> (Server, PostgresBackend, Lease) {
    let server = Server::start(false).await;
    let backend = server
        .backend(options(Mode::Advisory).max_connections(1).timeout(timeout))
        .await;
    let lease = backend.try_acquire(&key(held), TTL).await.unwrap();
    (server, backend, lease)
}

/// With every session in use, an acquisition waits for one; a lease released
/// meanwhile keeps its clean session for reuse, and the waiting acquisition
/// must get that session instead of timing out on the full pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_waiting_for_a_session_gets_one_that_is_released() {
    let (_server, backend, held) = one_session_pinned("full:held", Duration::from_secs(5)).await;
    let waiting = tokio::spawn({
        let backend = backend.clone();
        async move { backend.try_acquire(&key("full:next"), TTL).await }
    });
    // Let the acquisition reach the full pool (either order must work; this
    // makes the interesting one likely).
    tokio::time::sleep(Duration::from_millis(200)).await;
    backend.release(&held).await.unwrap();
    let next = waiting.await.unwrap().unwrap_or_else(|e| {
        panic!("the waiting acquisition should get the released session, got {e}")
    });
    backend.release(&next).await.unwrap();
}

/// Acquisitions waiting on a full pool each start one connection attempt
/// (it waits on the pool for a slot), however many sessions are handed back
/// while they wait. Every session handed back used to wake every waiter,
/// and each one that lost the race started another attempt, left parked
/// until the timeout: thousands per second with 64 callers on 50 sessions.
/// Counted as the runtime's live tasks (a parked attempt is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquisitions_start_one_connection_attempt_each() {
    const WAITING: usize = 6;
    let (_server, backend, held) = one_session_pinned("herd:held", Duration::from_secs(60)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let waiting: Vec<_> = (0..WAITING)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let lease = backend.try_acquire(&key(&format!("herd:{i}")), TTL).await?;
                backend.release(&lease).await
            })
        })
        .collect();
    // Each waiter's task and its one attempt, parked on the full pool.
    eventually(Duration::from_secs(10), "waiters parked", || async {
        metrics.num_alive_tasks() >= before + 2 * WAITING
    })
    .await;
    // The one session now passes from waiter to waiter.
    backend.release(&held).await.unwrap();
    drop(held);
    for waiter in waiting {
        waiter.await.unwrap().unwrap();
    }
    // What is left beyond `before`: the parked attempts (the held lease's
    // task has ended, or is ending).
    let left = metrics.num_alive_tasks().saturating_sub(before);
    assert!(
        left <= WAITING,
        "{left} tasks outlived {WAITING} waiting acquisitions: more than one connection \
         attempt each"
    );
}

/// An acquisition whose caller left while it waited for a session stops
/// there, asking the store nothing (an advisory attempt runs in its
/// caller's future, so it is dropped with it). It used to run on (on its own task) to
/// take the lock and give it back, so under cancellations abandoned
/// attempts took kept sessions ahead of the callers still waiting, which
/// then waited on connects of their own: in CI no acquisition of a sweep
/// of cancelled ones finished within 20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_caller_left_while_waiting_for_a_session_stops() {
    let (_server, backend, held) = one_session_pinned("left:held", Duration::from_secs(60)).await;
    // The caller's task (the attempt runs in its future) and the attempt's
    // connection attempt, parked on the full pool; left: the connection
    // attempt (its session would be kept).
    abandon_and_count(
        {
            let backend = backend.clone();
            async move { backend.try_acquire(&key("left:abandoned"), TTL).await }
        },
        2,
        1,
        "the abandoned attempt stops waiting for a session",
    )
    .await;
    backend.release(&held).await.unwrap();
}

/// How many sessions wait in the server's queue for the advisory lock `id`.
async fn queued_for(observer: &sqlx::PgPool, id: i64) -> i64 {
    let id = id as u64;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND objsubid = 1 AND classid::int8 = $1 AND objid::int8 = $2",
    )
    .bind((id >> 32) as i64)
    .bind((id & 0xffff_ffff) as i64)
    .fetch_one(observer)
    .await
    .expect("query pg_locks")
}

/// A wait whose own attempts are an hour apart: only the server's queue (or
/// a release signal) can hand it the lock within the test.
fn hour_apart(deadline: Duration) -> WaitPolicy {
    WaitPolicy::new(deadline).with_delays(Duration::from_secs(3600), Duration::from_secs(3600))
}

/// A key held on its own server, with waiters to queue behind the holder.
struct Queue {
    server: Server,
    observer: sqlx::PgPool,
    backend: PostgresBackend,
    key: leasehold_core::Key,
    id: i64,
    lease: leasehold_core::Lease,
}

impl Queue {
    /// `name` held (TTL [`TTL`]) through a backend of `opts`.
    async fn behind_a_holder(name: &str, opts: leasehold_postgres::PostgresConfig) -> Queue {
        let server = Server::start(false).await;
        let observer = server.observer().await;
        let id = advisory_lock_id(opts.namespace_str(), name);
        let backend = server.backend(opts).await;
        let key = key(name);
        let lease = backend.try_acquire(&key, TTL).await.unwrap();
        Queue {
            server,
            observer,
            backend,
            key,
            id,
            lease,
        }
    }

    /// A waiter for the key on `backend`: it acquires with `ttl` and `wait`.
    fn waiter(
        &self,
        backend: &PostgresBackend,
        ttl: Duration,
        wait: WaitPolicy,
    ) -> tokio::task::JoinHandle<Result<leasehold_core::Lease, LockError>> {
        let (backend, key) = (backend.clone(), self.key.clone());
        tokio::spawn(async move { backend.acquire(&key, ttl, &wait).await })
    }

    /// Returns once `n` sessions wait in the server's queue for the key.
    async fn until_queued(&self, n: i64) {
        eventually(
            Duration::from_secs(20),
            &format!("{n} waiters queued in the server"),
            || async { queued_for(&self.observer, self.id).await == n },
        )
        .await;
    }
}

/// How many grants `table`'s counting holder function has seen refused
/// (see below).
async fn refusals(observer: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {table}_refusals"
    ))
    .fetch_one(observer)
    .await
    .expect("read the refusal count")
}

/// A waiter queues in the server at once, without a refused
/// `pg_try_advisory_lock` first: that refusal cost every contended wait one
/// more statement on the server all waiters share. Only a refused grant
/// calls the holder function, and the migration creates it only when it is
/// missing, so the test puts its own first: one that counts its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queues_in_the_server_without_a_refused_attempt_first() {
    let table = format!("refusals{}", common::rand_suffix());
    let opts = options(Mode::Advisory).table(&table);
    let server = Server::start(false).await;
    let observer = server.observer().await;
    sqlx::raw_sql(&format!(
        "CREATE SEQUENCE {table}_refusals; \
         CREATE FUNCTION {table}_holder(bigint) RETURNS text LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM nextval('{table}_refusals'); RETURN NULL; END $$"
    ))
    .execute(&observer)
    .await
    .expect("create the counting holder function");
    let name = "queue:no-refusal-first";
    let backend = server.backend(opts.clone()).await;
    let key = key(name);
    let lease = backend.try_acquire(&key, TTL).await.unwrap();
    // The count works: a refused attempt is counted.
    let refused = backend.try_acquire(&key, TTL).await;
    assert!(
        matches!(refused, Err(LockError::Contended { .. })),
        "{refused:?}"
    );
    assert_eq!(refusals(&observer, &table).await, 1);
    let queue = Queue {
        id: advisory_lock_id(opts.namespace_str(), name),
        server,
        observer,
        backend,
        key,
        lease,
    };
    let waiting = queue.waiter(&queue.backend, TTL, hour_apart(Duration::from_secs(60)));
    queue.until_queued(1).await;
    queue.backend.release(&queue.lease).await.unwrap();
    let granted = waiting
        .await
        .unwrap()
        .expect("the queued waiter gets the lock");
    assert_eq!(
        refusals(&queue.observer, &table).await,
        1,
        "the waiter was refused before it queued"
    );
    queue.backend.release(&granted).await.unwrap();
}

/// A queued wait is bounded by the `lock_timeout` its own statement sets
/// (the grant sets it, then waits, in one statement): behind a holder that
/// keeps the key, the wait ends with the server's answer, `WaitTimedOut`,
/// not with the client's bound on a statement that got no answer, and
/// leaves the server's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_wait_runs_out_by_its_own_lock_timeout() {
    let queue = Queue::behind_a_holder("queue:runs-out", options(Mode::Advisory)).await;
    let waiting = queue.waiter(&queue.backend, TTL, hour_apart(Duration::from_millis(1500)));
    queue.until_queued(1).await;
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Err(LockError::WaitTimedOut { .. })),
        "{outcome:?}"
    );
    assert_eq!(queued_for(&queue.observer, queue.id).await, 0);
    queue.backend.release(&queue.lease).await.unwrap();
}

/// Returns once the backend connected as `application` holds a waiter mark
/// (on its mark session) and, after taking it, was refused again: one of
/// its sessions went idle after a grant statement (matched by its start,
/// `attempt`: the server shows a statement's first 1,024 bytes) later than
/// the mark session after the mark.
async fn until_marked_then_refused(observer: &sqlx::PgPool, application: &str, attempt: &str) {
    eventually(
        Duration::from_secs(20),
        "the waiter marked the key, then was refused again",
        || async {
            let refused_after_mark: Option<bool> = sqlx::query_scalar(
                "SELECT (SELECT max(state_change) FROM pg_stat_activity \
                         WHERE application_name = $1 AND state = 'idle' AND query LIKE $2) \
                      > (SELECT max(a.state_change) FROM pg_stat_activity a \
                         JOIN pg_locks l ON l.pid = a.pid \
                         WHERE a.application_name = $1 AND l.granted \
                         AND l.locktype = 'advisory' AND l.mode = 'ShareLock')",
            )
            .bind(application)
            .bind(attempt)
            .fetch_one(observer)
            .await
            .expect("query pg_stat_activity");
            refused_after_mark == Some(true)
        },
    )
    .await;
}

/// A release signals the waiters that could not queue in the server: a
/// backend with one session has no place in the queue (at most half its
/// sessions wait there), so its waiter, its own attempts an hour apart,
/// waits with core's loop, and only the holder's `NOTIFY` can hand it the
/// lock. (Nothing tested that signal: a mutex release that never sent it
/// passed every test.) The waiter marks the key first, which is what makes
/// the release signal (`a_release_nobody_waits_for_sends_no_signal`), and
/// gives the mark back when its wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_signals_a_waiter_that_could_not_queue_in_the_server() {
    let opts = options(Mode::Advisory);
    let queue = Queue::behind_a_holder("queue:signalled", opts.clone()).await;
    let url = queue.server.url_with("application_name=unqueued-waiter");
    let unqueued = PostgresBackend::connect_with(opts.max_connections(1).url(&url))
        .await
        .expect("connect the waiter's backend");
    let waiting = queue.waiter(&unqueued, TTL, hour_apart(Duration::from_secs(60)));
    // It marks the key on its backend's mark session, then asks again: its
    // one session goes idle after that refused grant statement (which
    // labels a session only when it takes the lock) later than the mark
    // session after the mark. The server shows a statement's first 1,024
    // bytes: matched by its start.
    until_marked_then_refused(
        &queue.observer,
        "unqueued-waiter",
        "SELECT CASE WHEN g.t <%",
    )
    .await;
    assert_eq!(queued_for(&queue.observer, queue.id).await, 0);
    queue.backend.release(&queue.lease).await.unwrap();
    // Well inside the holder's TTL, after which the waiter would try again.
    let granted = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the release's signal hands the waiter the lock within 20 s")
        .unwrap()
        .expect("the waiter gets the lock");
    // Its wait over, the waiter gives its mark back.
    eventually(
        Duration::from_secs(20),
        "the waiter's mark is gone",
        || async {
            let marks: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE a.application_name = 'unqueued-waiter' AND l.locktype = 'advisory' \
             AND l.mode = 'ShareLock'",
            )
            .fetch_one(&queue.observer)
            .await
            .expect("query pg_locks");
            marks == 0
        },
    )
    .await;
    unqueued.release(&granted).await.unwrap();
}

/// A server, a backend of it signalling on a channel of its own, and a
/// connection listening there: to see whether a step sent a release
/// signal ([`Signals::first_after_probe`]).
struct Signals {
    observer: sqlx::PgPool,
    backend: PostgresBackend,
    channel: &'static str,
    listener: sqlx::postgres::PgListener,
    _server: Server,
}

impl Signals {
    async fn start(channel: &'static str) -> Signals {
        let server = Server::start(false).await;
        let observer = server.observer().await;
        let backend = server
            .backend(options(Mode::Advisory).channel(channel))
            .await;
        let mut listener = sqlx::postgres::PgListener::connect(&server.url)
            .await
            .expect("connect the listener");
        listener.listen(channel).await.expect("LISTEN");
        Signals {
            observer,
            backend,
            channel,
            listener,
            _server: server,
        }
    }

    /// Sends a probe on the channel and returns the first payload heard:
    /// notifications arrive in commit order, so it is the probe only if
    /// nothing was signalled since the listener started.
    async fn first_after_probe(&mut self) -> String {
        sqlx::query("SELECT pg_notify($1, 'probe')")
            .bind(self.channel)
            .execute(&self.observer)
            .await
            .expect("send the probe");
        let first = tokio::time::timeout(Duration::from_secs(20), self.listener.recv())
            .await
            .expect("the probe arrives")
            .expect("LISTEN connection");
        first.payload().to_owned()
    }
}

/// A mutex release that no waiter marked sends no `NOTIFY` (a transaction
/// id, a commit record and the server's notification lock at every
/// release, for nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_nobody_waits_for_sends_no_signal() {
    let mut signals = Signals::start("unwaited_releases").await;
    let backend = &signals.backend;
    let lease = backend.try_acquire(&key("unwaited"), TTL).await.unwrap();
    backend.release(&lease).await.unwrap();
    assert_eq!(
        signals.first_after_probe().await,
        "probe",
        "a release nobody waited for sent a NOTIFY"
    );
}

/// Like a mutex's, a reader's release that no writer waits for sends no
/// `NOTIFY`: readers never wait for readers, so with many readers on one
/// key nearly every release signalled nobody (and every notifying commit
/// takes the server's notification lock in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_release_no_writer_waits_for_sends_no_signal() {
    let mut signals = Signals::start("unwaited_readers").await;
    let backend = &signals.backend;
    let k = key("read-unwaited");
    let first = backend
        .try_acquire_kind(&k, LockKind::Read, TTL)
        .await
        .unwrap();
    let second = backend
        .try_acquire_kind(&k, LockKind::Read, TTL)
        .await
        .unwrap();
    backend.release(&first).await.unwrap();
    backend.release(&second).await.unwrap();
    assert_eq!(
        signals.first_after_probe().await,
        "probe",
        "a reader's release nobody waited for sent a NOTIFY"
    );
}

/// A permit's release that nobody waits for sends no `NOTIFY`, as a
/// mutex's: a permit's waiters mark the semaphore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_release_nobody_waits_for_sends_no_signal() {
    let mut signals = Signals::start("unwaited_permits").await;
    let backend = &signals.backend;
    let permit = backend
        .try_acquire_kind(&key("pool"), LockKind::Permit { permits: 2 }, TTL)
        .await
        .unwrap();
    backend.release(&permit).await.unwrap();
    assert_eq!(
        signals.first_after_probe().await,
        "probe",
        "a permit's release nobody waited for sent a NOTIFY"
    );
}

/// A waiter for a permit marks the semaphore, so the holder's release
/// signals it: with its own attempts minutes apart, only that signal can
/// hand it the permit within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_release_signals_a_marked_waiter() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let holders = server.backend(opts.clone()).await;
    let waiters =
        PostgresBackend::connect_with(opts.url(server.url_with("application_name=permit-waiter")))
            .await
            .expect("connect the waiter's backend");
    let (k, one) = (key("one-permit"), LockKind::Permit { permits: 1 });
    let held = holders.try_acquire_kind(&k, one, TTL).await.unwrap();
    let waiting = {
        let (waiters, k) = (waiters.clone(), k.clone());
        tokio::spawn(async move {
            // A kind's wait also tries again at half its TTL: ten minutes.
            let (wait, ttl) = (hour_apart(Duration::from_secs(60)), TTL * 40);
            waiters.acquire_kind(&k, one, ttl, &wait).await
        })
    };
    until_marked_then_refused(&observer, "permit-waiter", "SELECT CASE WHEN d.t <%").await;
    holders.release(&held).await.unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the release signals the marked waiter within 20 s")
        .unwrap()
        .expect("the waiter gets the permit");
    waiters.release(&permit).await.unwrap();
}

/// A writer waiting behind a reader holds the key's gate, so the reader's
/// release signals it: with its own attempts minutes apart, only that
/// signal can hand it the lock within the test. And the gate held
/// *exclusively*, as a reader's grant or release holds it for an instant
/// to look for a waiting writer, does not refuse readers: only a waiting
/// writer's shared hold does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_release_signals_a_waiting_writer_and_its_gate_check_refuses_no_reader() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let readers = server.backend(opts.clone()).await;
    let writers =
        PostgresBackend::connect_with(opts.url(server.url_with("application_name=waiting-writer")))
            .await
            .expect("connect the writer's backend");
    let k = key("read-then-write");
    let reader = readers
        .try_acquire_kind(&k, LockKind::Read, TTL)
        .await
        .unwrap();
    let waiting = {
        let (writers, k) = (writers.clone(), k.clone());
        tokio::spawn(async move {
            // A waiting writer also tries again at half its TTL: ten
            // minutes here.
            let (wait, ttl) = (hour_apart(Duration::from_secs(60)), TTL * 40);
            writers.acquire_kind(&k, LockKind::Write, ttl, &wait).await
        })
    };
    // The writer holds the gate (shared) on the session it waits on, and its
    // attempt there was refused: the session is idle after the attempt.
    let parked = "SELECT (l.classid::int8 << 32) | l.objid::int8 \
         FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
         WHERE a.application_name = 'waiting-writer' AND a.state = 'idle' \
         AND a.query LIKE 'SELECT CASE WHEN d.t <%' AND l.locktype = 'advisory' \
         AND l.granted AND l.mode = 'ShareLock'";
    eventually(
        Duration::from_secs(20),
        "the writer holds the gate and was refused",
        || async {
            let gate: Option<i64> = sqlx::query_scalar(parked)
                .fetch_optional(&observer)
                .await
                .expect("query pg_locks");
            gate.is_some()
        },
    )
    .await;
    let gate: i64 = sqlx::query_scalar(parked)
        .fetch_one(&observer)
        .await
        .expect("read the gate's id");
    readers.release(&reader).await.unwrap();
    let writer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the reader's release signals the waiting writer within 20 s")
        .unwrap()
        .expect("the writer gets the lock");
    writers.release(&writer).await.unwrap();

    let mut holder = observer.acquire().await.expect("a connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(gate)
        .execute(&mut *holder)
        .await
        .expect("hold the gate exclusively");
    let reader = readers
        .try_acquire_kind(&k, LockKind::Read, TTL)
        .await
        .expect("the gate held exclusively refuses no reader");
    readers.release(&reader).await.unwrap();
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(gate)
        .execute(&mut *holder)
        .await
        .expect("give the gate back");
}

/// A killed holder sends no release signal; a waiter queued in the server
/// gets the lock as the server ends the holder's session, with its own next
/// attempt an hour away. (Before waiters queued in the server, the waiter
/// never showed in `pg_locks` and waited for that attempt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_waiter_gets_the_lock_as_its_killed_holders_session_ends() {
    let opts = options(Mode::Advisory);
    let queue = Queue::behind_a_holder("queue:killed", opts.clone()).await;
    let other = queue.server.backend(opts).await;
    let waiting = queue.waiter(&other, TTL, hour_apart(Duration::from_secs(60)));
    queue.until_queued(1).await;
    let pid = advisory_holder_pid(&queue.observer, queue.id)
        .await
        .expect("the lock is held");
    terminate(&queue.observer, pid).await;

    let next = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the queued waiter was not handed the lock when its holder's session ended")
        .unwrap()
        .expect("the queued waiter gets the lock");
    assert!(next.fencing_token() > queue.lease.fencing_token());
    assert_eq!(
        advisory_holder_pid(&queue.observer, queue.id).await,
        leasehold_postgres::session_pid(&next),
        "the waiter's own session holds the lock"
    );
    other.release(&next).await.unwrap();
}

/// A waiter whose call is dropped while it is queued leaves the server's
/// queue at once, rather than taking the lock at the next release for
/// nobody (sqlx closes a dropped session only once its statement has
/// answered). Seen failing "not true within 5s" before the dropped call
/// cancelled its statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_queued_waiter_leaves_the_servers_queue() {
    let queue = Queue::behind_a_holder("queue:dropped", options(Mode::Advisory)).await;
    let waiting = queue.waiter(&queue.backend, TTL, hour_apart(Duration::from_secs(60)));
    queue.until_queued(1).await;
    waiting.abort();
    // Well within the 10 s one queued wait lasts (its `lock_timeout`), which
    // would also empty the queue: the dropped call cancels its statement.
    eventually(
        Duration::from_secs(5),
        "the dropped waiter's server process left the queue",
        || async { queued_for(&queue.observer, queue.id).await == 0 },
    )
    .await;
    queue.backend.release(&queue.lease).await.unwrap();
    assert_eq!(
        advisory_holder_pid(&queue.observer, queue.id).await,
        None,
        "nobody holds the key after its release"
    );
    let next = queue.backend.try_acquire(&queue.key, TTL).await.unwrap();
    assert!(next.fencing_token() > queue.lease.fencing_token());
    queue.backend.release(&next).await.unwrap();
}

/// A grant's validity counts from when its statement was sent. A waiter that
/// sat in the queue for half its TTL is renewed before it is handed out, so
/// its lease starts with (nearly) the whole TTL instead of the half left.
/// Seen failing "kept only 1.93s of its 4s" without the renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_queued_long_starts_with_its_whole_ttl() {
    let queue = Queue::behind_a_holder("queue:long", options(Mode::Advisory)).await;
    let ttl = Duration::from_secs(4);
    let waiting = queue.waiter(&queue.backend, ttl, hour_apart(Duration::from_secs(60)));
    queue.until_queued(1).await;
    // The scenario, not a race: the waiter waits half its TTL in the queue.
    tokio::time::sleep(ttl / 2).await;
    let released_at = tokio::time::Instant::now();
    queue.backend.release(&queue.lease).await.unwrap();
    let next = waiting
        .await
        .unwrap()
        .expect("the queued waiter gets the lock");
    assert!(
        next.valid_until() > released_at + ttl * 3 / 4,
        "the lease kept only {:?} of its {ttl:?} after the release",
        next.valid_until().saturating_duration_since(released_at)
    );
    queue.backend.release(&next).await.unwrap();
}

/// Queued waiters pin sessions: at most half the backend's sessions queue
/// (here one of two), and a key's waiters of one backend queue one at a
/// time; the rest wait in turn or with the notified loop. Three waiters
/// behind a holder on a backend of two sessions all get the key in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_beyond_the_queues_share_of_sessions_still_get_the_key() {
    let opts = options(Mode::Advisory).max_connections(2);
    let queue = Queue::behind_a_holder("queue:share", opts).await;
    // Each waiter releases as soon as it has the key, whichever comes first.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (backend, key) = (queue.backend.clone(), queue.key.clone());
            tokio::spawn(async move {
                let wait = WaitPolicy::new(Duration::from_secs(60));
                let lease = backend.acquire(&key, TTL, &wait).await?;
                backend.release(&lease).await?;
                Ok::<_, LockError>(lease.fencing_token())
            })
        })
        .collect();
    queue.until_queued(1).await;
    queue.backend.release(&queue.lease).await.unwrap();
    let mut tokens = Vec::new();
    for waiter in waiters {
        tokens.push(waiter.await.unwrap().expect("every waiter gets the key"));
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "three grants, three tokens");
    assert!(tokens[0] > queue.lease.fencing_token());
}

/// 64 tasks of one backend take turns on one key, each lock+unlock five
/// times, none waiting more than 30 s: a liveness check. Before a key's
/// waiters queued in turn, a task that released and asked again took the
/// server-queue place its own grant had just freed, and the release-built
/// benchmark's hot key with 64 tasks saw one call wait past 30 s; this
/// debug-built test did not starve without the turns (its client is too
/// slow to win every round), so the benchmark is the regression check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_starves_no_waiter() {
    let server = Server::start(false).await;
    let backend = server.backend(options(Mode::Advisory)).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let k = key("queue:hot");
                for _ in 0..5 {
                    let wait = WaitPolicy::new(Duration::from_secs(30));
                    let lease = backend.acquire(&k, TTL, &wait).await?;
                    backend.release(&lease).await?;
                }
                Ok::<_, LockError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every task gets the hot key within its wait, five times");
    }
}

/// A `statement_timeout` shorter than the wait (set for the role, the
/// database or, here, the connection) ends a queued statement early; the
/// waiter carries on waiting (here woken by the release signal) instead of
/// failing. Seen failing with `canceling statement due to statement
/// timeout` before the queue took 57014 as the end of one wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_shorter_than_the_wait_does_not_fail_a_waiter() {
    let opts = options(Mode::Advisory);
    let queue = Queue::behind_a_holder("queue:statement-timeout", opts.clone()).await;
    let url = queue
        .server
        .url_with("options=-c%20statement_timeout%3D300");
    let short = PostgresBackend::connect_with(opts.url(url)).await.unwrap();
    let waiting = queue.waiter(&short, TTL, hour_apart(Duration::from_secs(60)));
    queue.until_queued(1).await;
    // Past a few statement timeouts of the queued wait.
    eventually(
        Duration::from_secs(20),
        "the queued statement was ended by its statement_timeout",
        || async { queued_for(&queue.observer, queue.id).await == 0 },
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "the waiter gave up: {:?}",
        waiting.await
    );
    queue.backend.release(&queue.lease).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiter was not woken by the release")
        .unwrap()
        .expect("the waiter gets the lock");
    short.release(&next).await.unwrap();
}

/// Waiter entries (core's `waits` registry, one lease per waiting call) are
/// bookkeeping: they take a session only while fewer than half the
/// backend's sessions are in use, so many waiters' entries cannot take the
/// sessions the waits themselves need (the waiting call then carries on
/// unrecorded). Ordinary keys are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_entries_take_sessions_only_while_half_are_free() {
    let server = Server::start(false).await;
    let backend = server
        .backend(options(Mode::Advisory).max_connections(4))
        .await;
    let entry = key(&format!(
        "{}0123456789abcdef/0/room/",
        leasehold_core::waits::WAITS_PREFIX
    ));
    let a = backend.try_acquire(&key("room:a"), TTL).await.unwrap();
    let b = backend.try_acquire(&key("room:b"), TTL).await.unwrap();
    match backend.try_acquire(&entry, TTL).await {
        Err(LockError::Unavailable { .. }) => {}
        other => panic!("an entry with half the sessions in use must wait for room, got {other:?}"),
    }
    let c = backend.try_acquire(&key("room:c"), TTL).await.unwrap();
    backend.release(&c).await.unwrap();
    backend.release(&b).await.unwrap();
    let recorded = backend
        .try_acquire(&entry, TTL)
        .await
        .expect("an entry gets a session once fewer than half are in use");
    backend.release(&recorded).await.unwrap();
    backend.release(&a).await.unwrap();
}

/// The mark id of advisory lock `id` (`marks.rs`), written out again here
/// so that a change to it, which would split waiters and releases of
/// different versions, fails this test too.
fn mark_id(id: i64) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"leasehold\0mark\0")
        .chain_update(id.to_be_bytes())
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Waiters mark their keys one after another on one mark session, so a
/// mark the server does not answer held up every mark queued behind it:
/// each waiter's wait is bounded by its own deadline plus one timeout, not
/// by the timeouts of the marks ahead of it. Here the observer holds every
/// key's mark id, so no mark is granted. Seen failing before the bound: of
/// 8 waiters (1 s timeout, 1 s wait), one answered after 6.9 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_the_server_does_not_answer_costs_a_waiter_one_timeout() {
    const WAITERS: usize = 8;
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let opts = options(Mode::Advisory);
    let namespace = opts.namespace_str().to_owned();
    let holder = server.backend(opts.clone()).await;
    let timeout = Duration::from_secs(1);
    // One session: no place in the server's queue, so every waiter marks.
    let waiting = server
        .backend(opts.max_connections(1).timeout(timeout))
        .await;
    let mut blocker = observer.acquire().await.unwrap();
    let mut leases = Vec::new();
    let mut calls = Vec::new();
    for n in 0..WAITERS {
        let k = key(&format!("unanswered-mark:{n}"));
        leases.push(holder.try_acquire(&k, TTL).await.unwrap());
        let id = advisory_lock_id(&namespace, k.as_str());
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(mark_id(id))
            .execute(&mut *blocker)
            .await
            .unwrap();
        let waiting = waiting.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = waiting
                .acquire(&k, TTL, &hour_apart(Duration::from_secs(1)))
                .await;
            (outcome, started.elapsed())
        }));
    }
    for call in calls {
        let (outcome, took) = call.await.unwrap();
        assert!(
            matches!(outcome, Err(LockError::WaitTimedOut { .. })),
            "the key stays held: {outcome:?}"
        );
        // The wait (1 s) and one timeout, with room for a slow machine;
        // unbounded, the last waiter took the 8 timeouts of the marks ahead.
        assert!(
            took < Duration::from_secs(6),
            "a waiter took {took:?} behind marks the server did not answer"
        );
    }
    for lease in leases {
        holder.release(&lease).await.unwrap();
    }
}
