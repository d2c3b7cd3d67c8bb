//! Named mode's session pool under more tasks than connections.

use std::time::{Duration, Instant};

use leasehold_conformance::fixtures;
use leasehold_core::{Key, ListQuery, LockBackend};
use leasehold_mysql::MysqlBackend;

const TTL: Duration = Duration::from_secs(30);

/// A named-mode backend on a MariaDB store of its own (kept while the
/// returned store is), `options` appended to its URL's query.
async fn named_backend(options: &str) -> (fixtures::Provisioned, MysqlBackend) {
    let spec = fixtures::mariadb_spec();
    let store = fixtures::provision(&spec).await.expect("a mariadb store");
    let backend = connect_when_ready(&named_url(&store, options)).await;
    (store, backend)
}

/// The URL of a named-mode backend on `store`, `options` appended to its
/// query.
fn named_url(store: &fixtures::Provisioned, options: &str) -> String {
    store.url(|port| {
        format!(
            "mysql://root:{}@127.0.0.1:{port}/leasehold?mode=named{options}",
            fixtures::MARIADB_PASSWORD
        )
    })
}

/// Connects (running the migration once) until the server answers.
async fn connect_when_ready(url: &str) -> MysqlBackend {
    let started = Instant::now();
    loop {
        match MysqlBackend::connect(url).await {
            Ok(backend) => return backend,
            Err(e) if started.elapsed() > Duration::from_secs(90) => {
                panic!("mariadb never became ready: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `tasks` tasks on `backend`, each taking and releasing its own key
/// (`<prefix>-<task>`) `rounds` times; every call must succeed.
async fn lock_and_unlock_own_keys(
    backend: &MysqlBackend,
    prefix: &str,
    tasks: usize,
    rounds: usize,
) {
    let tasks: Vec<_> = (0..tasks)
        .map(|task| {
            let backend = backend.clone();
            let key = Key::new(format!("{prefix}-{task}")).unwrap();
            tokio::spawn(async move {
                for round in 0..rounds {
                    let lease = backend
                        .try_acquire(&key, TTL)
                        .await
                        .map_err(|e| format!("task {task}, round {round}: {e}"))?;
                    backend
                        .release(&lease)
                        .await
                        .map_err(|e| format!("task {task}, round {round}: release: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("every attempt gets a session");
    }
}

/// Takes `key` (free) and releases it at once; its fencing token.
async fn take_and_release(backend: &MysqlBackend, key: &Key) -> u64 {
    let lease = backend.try_acquire(key, TTL).await.expect("granted");
    backend.release(&lease).await.expect("released");
    lease.fencing_token().0
}

/// Runs one statement of the test's own on the backend's pool.
async fn run(backend: &MysqlBackend, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(backend.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rebuilds the token table as a `MEMORY` table of at most `bytes`.
async fn shrink_token_table(backend: &MysqlBackend, bytes: u32) {
    let mut conn = backend.pool().acquire().await.expect("a connection");
    sqlx::raw_sql(&format!(
        "SET SESSION max_heap_table_size = {bytes}; \
         ALTER TABLE leasehold_fencing_held ENGINE = MEMORY"
    ))
    .execute(&mut *conn)
    .await
    .expect("the token table shrunk");
}

/// Four tasks share a backend of two sessions, each locking and unlocking
/// its own key: a session given back must reach a task already waiting for
/// one. (It did not: a kept session holds its pool slot, and a task
/// waiting on the full pool never saw it, so it failed `Unavailable` after
/// the timeout while sessions sat idle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_tasks_than_sessions_all_get_one() {
    let (_store, backend) = named_backend("&max_connections=2&timeout=2s").await;
    lock_and_unlock_own_keys(&backend, "pool", 4, 20).await;
}

/// One of this server's status counters (`SHOW GLOBAL STATUS`), counting
/// every client's work.
async fn server_count(backend: &MysqlBackend, counter: &str) -> u64 {
    // `SHOW` takes no placeholders; the names are this file's own.
    let (_, count): (String, String) =
        sqlx::query_as(&format!("SHOW GLOBAL STATUS LIKE '{counter}'"))
            .fetch_one(backend.pool())
            .await
            .expect("the server's status counters");
    count.parse().expect("a count")
}

/// A lease released at once starts no watcher. A watcher costs a connection
/// and two statements (`GET_LOCK` on the lease's alive lock, then
/// `RELEASE_LOCK` once granted); started with every lease, watchers of
/// released leases queued for connections ahead of live leases' watchers,
/// and at 64 tasks on the default 50 sessions calls failed `Unavailable`.
/// Counted on this test's own server: a lease's release is one `SELECT`
/// (a kept session's grant is an `INSERT ... SELECT`, counted apart), and
/// a watcher would add two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_at_once_starts_no_watcher() {
    const LEASES: u64 = 40;
    let (_store, backend) = named_backend("").await;
    let key = Key::new("short-leases").unwrap();
    // The first lease opens the session the others reuse (a new session
    // reads its id and `wait_timeout` with two statements of its own).
    take_and_release(&backend, &key).await;
    let before = server_count(&backend, "Com_select").await;
    for _ in 0..LEASES {
        take_and_release(&backend, &key).await;
    }
    let run = server_count(&backend, "Com_select").await - before;
    assert!(
        run < 2 * LEASES,
        "{LEASES} leases released at once ran {run} SELECTs: their watchers started"
    );
}

/// 48 tasks share a backend of 16 sessions, one of them open, each task
/// locking and unlocking its own key: the backend opens its other
/// sessions and not many more.
/// (A waiting checkout asked the pool anew each time a kept session woke
/// it, and dropped the ask it had made, with the connection the pool was
/// opening for it: a free slot went round the waiters, each opening a
/// connection and throwing it away, thousands a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_session_does_not_churn_connections() {
    const SESSIONS: u64 = 16;
    let (_store, backend) = named_backend(&format!("&max_connections={SESSIONS}")).await;
    // One session already kept: the tasks that find none wait for a new
    // one while this one is kept again and again, waking them.
    take_and_release(&backend, &Key::new("crowd-first").unwrap()).await;
    let before = server_count(&backend, "Connections").await;
    lock_and_unlock_own_keys(&backend, "crowd", 48, 50).await;
    let opened = server_count(&backend, "Connections").await - before;
    // The sessions, a connection of the backend's own pool for the
    // counter's queries, and room for a waiter that finds a kept session
    // while the pool opens one for it (15 or 16 in five runs; 37 to 3,030
    // in five runs before the fix).
    assert!(
        opened < 2 * SESSIONS,
        "{opened} connections opened for {SESSIONS} sessions"
    );
}

/// A grant of a key granted before waits for no disk flush: its token
/// comes from a `MEMORY` table. (Every grant bumped the key's counter row
/// in InnoDB, a commit the server flushed before answering, which cost
/// more than the bare `GET_LOCK` and `RELEASE_LOCK` pair together.)
/// Counted on this test's own server (`Innodb_data_fsyncs`), with room for
/// the server's own background flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_keys_grant_flushes_nothing() {
    const GRANTS: u64 = 40;
    let (_store, backend) = named_backend("").await;
    let key = Key::new("flush-free").unwrap();
    let mut last = take_and_release(&backend, &key).await;
    let before = server_count(&backend, "Innodb_data_fsyncs").await;
    for _ in 0..GRANTS {
        let token = take_and_release(&backend, &key).await;
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
    let flushes = server_count(&backend, "Innodb_data_fsyncs").await - before;
    assert!(
        flushes < GRANTS / 2,
        "{GRANTS} grants of a known key flushed InnoDB {flushes} times"
    );
}

/// Tokens keep rising when the server forgets what it held: a lost floor
/// (as after a restart, which empties the `MEMORY` tables) and a floor set
/// on another server (as after a failover) each start a higher epoch (and
/// the grants that find no floor all go through once one of them started
/// it: one that looked after another's start was refused as contended), and
/// a token table too small for the keys is pruned of unheld keys' rows,
/// a held key's row kept, and grants go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rise_across_a_lost_floor_a_failover_and_a_full_table() {
    const EPOCH: u64 = 1 << 44;
    let (_store, backend) = named_backend("").await;
    let key = Key::new("epochs").unwrap();
    let first = take_and_release(&backend, &key).await;
    assert!(first > EPOCH, "the first epoch's token {first}");

    run(&backend, "DELETE FROM leasehold_fencing_in_force").await;
    // Many first grants at once: one starts the epoch, none is refused.
    lock_and_unlock_own_keys(&backend, "restarted", 16, 1).await;
    let restarted = take_and_release(&backend, &key).await;
    assert!(
        restarted > 2 * EPOCH,
        "{restarted} after a lost floor, {first} before"
    );

    run(
        &backend,
        "UPDATE leasehold_fencing_in_force SET server = server + 1",
    )
    .await;
    let failed_over = take_and_release(&backend, &key).await;
    assert!(
        failed_over > 3 * EPOCH,
        "{failed_over} after a failover, {restarted} before"
    );

    // A MEMORY table of 64 KiB: some 50 rows of ours.
    shrink_token_table(&backend, 65536).await;
    let kept = Key::new("kept").unwrap();
    let held = backend.try_acquire(&kept, TTL).await.expect("granted");
    const KEYS: usize = 300;
    for n in 0..KEYS {
        take_and_release(&backend, &Key::new(format!("many-{n}")).unwrap()).await;
    }
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leasehold_fencing_held")
        .fetch_one(backend.pool())
        .await
        .expect("the token table's rows");
    assert!(
        (rows as usize) < KEYS,
        "{rows} rows for {KEYS} keys: the table was never full"
    );
    let info = backend
        .inspect(&kept)
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(
        info.fencing_token,
        Some(held.fencing_token()),
        "the held key's row"
    );
    backend.release(&held).await.expect("released");
    let after = take_and_release(&backend, &key).await;
    assert!(
        after > failed_over,
        "{after} after pruning, {failed_over} before"
    );
}

/// Grants of new keys on a full token table keep succeeding through many
/// prunes. A grant refused by the full table may hold the key's lock (the
/// `GET_LOCK`s run before the row is refused); it dropped its session to
/// free it, sqlx closed that on a task of its own, and the retry after the
/// prune sometimes found the key still held by the closing session: a free
/// key refused as contended (about one prune in twenty-five here). Now the
/// locks are freed on the session before the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_on_a_full_token_table_refuse_no_free_key() {
    const KEYS: usize = 1500;
    const TASKS: usize = 4;
    let (_store, backend) = named_backend("").await;
    // MariaDB's smallest MEMORY table holds 13 rows of ours (counted on the
    // stand-in): a prune leaves at least 9 free beside the tasks' at most 4
    // held keys, and the new keys fill it again more than a hundred times.
    shrink_token_table(&backend, 16384).await;
    // New keys from a few tasks at once: the load that made the race show.
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for n in (task..KEYS).step_by(TASKS) {
                    let key = Key::new(format!("full-{n}")).unwrap();
                    let lease = backend
                        .try_acquire(&key, TTL)
                        .await
                        .map_err(|e| format!("key {n} of {KEYS}: {e}"))?;
                    backend.release(&lease).await.expect("released");
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("every new key granted");
    }
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leasehold_fencing_held")
        .fetch_one(backend.pool())
        .await
        .expect("the token table's rows");
    assert!(
        (rows as usize) * 20 < KEYS,
        "{rows} rows for {KEYS} keys: fewer than twenty prunes"
    );
}

/// A key whose next token would reach its epoch's ceiling (the next
/// epoch's floor) is granted in the next epoch, and nothing is left locked.
/// Without the ceiling the key got 2⁴⁵ and then 2⁴⁵ + 1, the next
/// epoch's first token, which the first grant after a restart (which
/// forgets the key's row) hands out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_epochs_ceiling_is_granted_in_the_next_epoch() {
    const EPOCH: u64 = 1 << 44;
    let (_store, backend) = named_backend("").await;
    let key = Key::new("ceiling").unwrap();
    let first = take_and_release(&backend, &key).await;
    assert_eq!(first >> 44, 1, "the first epoch's token {first}");
    // The key's only row, one grant short of the ceiling.
    run(
        &backend,
        &format!(
            "UPDATE leasehold_fencing_held SET token = {}",
            2 * EPOCH - 1
        ),
    )
    .await;
    let at_ceiling = take_and_release(&backend, &key).await;
    let next = take_and_release(&backend, &key).await;
    assert!(
        at_ceiling > 2 * EPOCH && next > at_ceiling,
        "{at_ceiling} then {next} after the key's token {}",
        2 * EPOCH - 1
    );
    // What a restart forgets: both MEMORY tables.
    run(
        &backend,
        "DELETE FROM leasehold_fencing_held; DELETE FROM leasehold_fencing_in_force",
    )
    .await;
    let restarted = take_and_release(&backend, &key).await;
    assert!(
        restarted > next,
        "{restarted} after a restart, {next} before"
    );
}

/// A key whose registration failed is still listed once it is taken again,
/// from any process. A failed registration fails its grant but leaves the
/// key's token row, so later grants found the row, registered nothing, and
/// `list` missed the held key until the server restarted. Here the keys'
/// row is deleted after a grant, which leaves what a failed registration
/// leaves, and a second backend on the same store (another process) takes
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_registration_failed_is_listed_when_taken_again() {
    let (store, first) = named_backend("").await;
    let key = Key::new("unregistered").unwrap();
    take_and_release(&first, &key).await;
    run(&first, "DELETE FROM leasehold_fencing").await;
    let second = connect_when_ready(&named_url(&store, "")).await;
    let lease = second.try_acquire(&key, TTL).await.expect("granted");
    let listed = first
        .list(&ListQuery::new(""))
        .await
        .expect("a listing")
        .locks;
    assert_eq!(
        listed
            .iter()
            .map(|held| held.key.as_str())
            .collect::<Vec<_>>(),
        ["unregistered"],
        "the held key is listed"
    );
    second.release(&lease).await.expect("released");
}
