//! Safety at the edges, both modes: dropped acquisitions, TTL bounds,
//! configuration typos and secrets.

mod common;

use std::time::Duration;

use common::{Server, key, options};
use leasehold_conformance::fixtures::eventually;
use leasehold_core::config::BackendConfig;
use leasehold_core::{Lease, LockBackend, LockError, WaitPolicy};
use leasehold_postgres::{Mode, PostgresBackend, PostgresConfig};

const TTL: Duration = Duration::from_secs(60);
/// The per-call bound for the cancellation tests. They are about what a
/// dropped call leaves behind, not about bounds: the shared 2 s bound turned
/// a connect slowed by a neighbouring test's container start into a
/// `PoolTimedOut` failure in CI.
const PATIENT: Duration = Duration::from_secs(15);
const MODES: [Mode; 2] = [Mode::Advisory, Mode::Table];

/// A backend that never contacts a server until used (lazy pool, no
/// migration): enough for checks that must fail before any store call.
async fn offline(mode: Mode) -> PostgresBackend {
    PostgresBackend::connect_with(
        PostgresConfig::new(mode)
            .url("postgres://u:p@127.0.0.1:1/db")
            .migrate(false),
    )
    .await
    .expect("a lazy backend needs no server")
}

/// Takes `name` with a fresh client (TTL 60 s) within a few seconds, then
/// releases it.
async fn a_fresh_client_takes(server: &Server, opts: &PostgresConfig, name: &str, why: &str) {
    let fresh = server.backend(opts.clone()).await;
    let started = std::time::Instant::now();
    let lease: Lease = fresh
        .acquire(&key(name), TTL, &WaitPolicy::new(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{:?}: a fresh client could not take {name:?} within 5 s after {why}: {e}",
                opts.mode_of()
            )
        });
    println!(
        "{:?}: fresh client took {name:?} after {why} in {:?}",
        opts.mode_of(),
        started.elapsed()
    );
    fresh.release(&lease).await.unwrap();
}

/// Hold the key, start an acquisition in a task, abort it while it waits,
/// release: the key must be free for a fresh client at once, not after the
/// aborted waiter's 60 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquisition_leaves_the_key_free() {
    let server = Server::start(false).await;
    for mode in MODES {
        let opts = options(mode);
        let holder = server.backend(opts.clone()).await;
        let waiter = server.backend(opts.clone()).await;
        let k = key("dropped:waiting");
        let held = holder.try_acquire(&k, TTL).await.unwrap();
        let task = tokio::spawn({
            let k = k.clone();
            async move {
                waiter
                    .acquire(&k, TTL, &WaitPolicy::new(Duration::from_secs(30)))
                    .await
            }
        });
        // Let it make at least one attempt and start waiting.
        eventually(Duration::from_secs(10), "the waiter is waiting", || async {
            holder.inspect(&k).await.is_ok_and(|info| info.is_some())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        holder.release(&held).await.unwrap();
        a_fresh_client_takes(&server, &opts, "dropped:waiting", "an aborted waiter").await;
    }
}

/// Sleeps `by` on a thread: finer than tokio's millisecond timer, so the
/// drops below land at sub-millisecond offsets.
async fn fine_sleep(by: Duration) {
    let (done, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(by);
        let _ = done.send(());
    });
    let _ = wait.await;
}

/// Acquisitions of a free key dropped at many points, mid-call included and
/// in the instant the answer arrives: a grant the server made after the
/// caller left must be released (or its session closed), never left to run
/// out its 60 s TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_dropped_mid_call_never_strands_a_grant() {
    let server = Server::start(false).await;
    for mode in MODES {
        let opts = options(mode).timeout(PATIENT);
        let client = server.backend(opts.clone()).await;
        let k = key("dropped:mid-call");
        // Warm up the pool so the drops land on the statement, not a connect.
        let lease = client.try_acquire(&k, TTL).await.unwrap();
        client.release(&lease).await.unwrap();
        let (mut dropped, mut answered, mut contended) = (0, 0, 0);
        // Every 100 µs up to 20 ms; then, where no attempt finished by then
        // (a loaded machine: connects alone took longer in CI), ever later
        // until some do, so the drops span the whole call: connect,
        // statement and the answer's arrival. An attempt given the whole
        // call bound answers, so this ends.
        let mut drop_after = Duration::ZERO;
        while drop_after <= Duration::from_millis(20) || answered + contended == 0 {
            let micros = drop_after.as_micros();
            let attempt = client.try_acquire(&k, TTL);
            tokio::select! {
                answer = attempt => match answer {
                    Ok(lease) => {
                        answered += 1;
                        client.release(&lease).await.unwrap();
                    }
                    // An earlier dropped grant still being given back.
                    Err(LockError::Contended { .. }) => contended += 1,
                    Err(e) => panic!("{mode:?}: attempt dropped at {micros} µs failed: {e}"),
                },
                () = fine_sleep(drop_after) => dropped += 1,
            }
            drop_after = if drop_after < Duration::from_millis(20) {
                drop_after + Duration::from_micros(100)
            } else {
                (drop_after * 5 / 4).min(PATIENT * 2)
            };
        }
        println!(
            "{mode:?}: {dropped} attempts dropped, {answered} answered, {contended} contended"
        );
        a_fresh_client_takes(&server, &opts, "dropped:mid-call", "the dropped attempts").await;
    }
}

/// A grant that reached the caller's side just as the caller stopped
/// looking: the acquisition future was polled once (starting the attempt),
/// then left unpolled until the store shows the grant, then dropped. Table
/// mode: the lease sitting in the answer channel must be released, not
/// dropped with it (a dropped table lease would hold the key for its 60 s
/// TTL). Advisory mode, whose attempt runs in the caller's future: the
/// first poll sends the grant on the session kept from warm-ups, and the
/// dropped attempt must close that session, whose answer it never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_arrives_as_the_caller_drops_is_given_back() {
    let server = Server::start(false).await;
    for mode in MODES {
        let opts = options(mode).timeout(PATIENT);
        let client = server.backend(opts.clone()).await;
        let observer = server.backend(opts.clone()).await;
        let k = key("dropped:answered");
        // Twice, so the session kept for the attempt has prepared the
        // statement the attempt sends (a kept session's grant of a known
        // key): the first poll sends it rather than wait for its Parse.
        for _ in 0..2 {
            let warm = client.try_acquire(&k, TTL).await.unwrap();
            client.release(&warm).await.unwrap();
        }
        // The first poll starts the attempt (on its own task, or sends the
        // grant); on a loaded machine the answer can arrive before the poll
        // returns (this thread descheduled meanwhile): then give the lease
        // back and start over.
        let mut tries = 0;
        let attempt = loop {
            tries += 1;
            let mut attempt = client.try_acquire(&k, TTL);
            let answered = tokio::select! {
                biased;
                answer = &mut attempt => Some(answer),
                () = std::future::ready(()) => None,
            };
            match answered {
                None => break attempt,
                Some(Ok(lease)) if tries < 20 => client.release(&lease).await.unwrap(),
                Some(answer) => {
                    panic!("{mode:?}: answered on the first poll {tries} times: {answer:?}")
                }
            }
        };
        eventually(
            Duration::from_secs(10),
            "the store shows the grant",
            || async { observer.inspect(&k).await.is_ok_and(|info| info.is_some()) },
        )
        .await;
        drop(attempt);
        a_fresh_client_takes(
            &server,
            &opts,
            "dropped:answered",
            "a dropped, answered attempt",
        )
        .await;
    }
}

/// TTLs above one year (and `Duration::MAX`) are `InvalidTtl` on every
/// operation that takes a TTL, checked before any store call, never a panic
/// from `Instant + Duration` overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_above_one_year_are_invalid_never_a_panic() {
    let year = Duration::from_secs(365 * 24 * 3600);
    for mode in MODES {
        let backend = offline(mode).await;
        let k = key("ttl");
        for ttl in [
            Duration::MAX,
            year + Duration::from_millis(1),
            Duration::from_secs(u64::MAX / 2),
            Duration::ZERO,
        ] {
            let tried = backend.try_acquire(&k, ttl).await;
            assert!(
                matches!(tried, Err(LockError::InvalidTtl { .. })),
                "{mode:?}: try_acquire with ttl {ttl:?} gave {tried:?}, expected InvalidTtl"
            );
            let waited = backend
                .acquire(&k, ttl, &WaitPolicy::new(Duration::from_secs(1)))
                .await;
            assert!(
                matches!(waited, Err(LockError::InvalidTtl { .. })),
                "{mode:?}: acquire with ttl {ttl:?} gave {waited:?}, expected InvalidTtl"
            );
        }
    }
    // Extending a real lease by Duration::MAX: InvalidTtl, and the lease
    // stays ours.
    let server = Server::start(false).await;
    for mode in MODES {
        let backend = server.backend(options(mode)).await;
        let lease = backend.try_acquire(&key("ttl:extend"), TTL).await.unwrap();
        let extended = backend.extend(&lease, Duration::MAX).await;
        assert!(
            matches!(extended, Err(LockError::InvalidTtl { .. })),
            "{mode:?}: extend by Duration::MAX gave {extended:?}"
        );
        let many = backend
            .extend_many(&[(lease.clone(), Duration::MAX), (lease.clone(), TTL)])
            .await
            .expect("a bad TTL fails only its own renewal");
        assert!(
            matches!(many[0], Err(LockError::InvalidTtl { .. })),
            "{mode:?}: extend_many by Duration::MAX gave {:?}",
            many[0]
        );
        assert!(
            many[1].is_ok(),
            "{mode:?}: a valid renewal in the same batch must still renew, got {:?}",
            many[1]
        );
        backend.release(&lease).await.unwrap();
    }
}

fn config_error(url: &str) -> String {
    match PostgresConfig::from_url(url) {
        Err(LockError::Config(message)) => message,
        other => panic!("{url} should be a Config error, got {other:?}"),
    }
}

/// A typo in an option name must not silently change safety
/// (`?mod=table` running in advisory mode): every unknown option is a
/// `Config` error naming the closest known one.
#[test]
fn misspelt_options_are_config_errors_naming_the_closest_known_one() {
    for (url, wanted) in [
        ("postgres://h/db?mod=table", "mode"),
        ("postgres://h/db?namspace=billing", "namespace"),
        ("postgres://h/db?timeout_ms=250", "timeout"),
        ("postgres://h/db?migrat=false", "migrate"),
        ("postgres://h/db?drift_factr=0.1", "drift_factor"),
        ("postgres://h/db?sslmod=require", "sslmode"),
    ] {
        let message = config_error(url);
        assert!(
            message.contains(&format!("did you mean `{wanted}`")),
            "{url}: expected a hint naming `{wanted}`, got: {message}"
        );
    }
    let message = config_error("postgres://h/db?zzzzzzzz=1");
    assert!(message.contains("zzzzzzzz"), "{message}");
    // Even when the URL itself does not parse (an unescaped `/` in the
    // password), the typo is named, and the password is not shown.
    let message = config_error("postgres://app:pa/ss+word@127.0.0.1:1/db?namspace=billing");
    assert!(
        message.contains("did you mean `namespace`") && !message.contains("pa/ss"),
        "{message}"
    );
}

/// Durations use the one grammar (`250ms`, `2s`, `1m`): a bare number is an
/// error, not a guess at the unit.
#[test]
fn durations_need_a_unit() {
    let config =
        PostgresConfig::from_url("postgres://h/db?timeout=250ms&drift_fixed=5ms&drift_factor=0.02")
            .unwrap();
    let shared = config.shared();
    assert_eq!(shared.timeout, Some(Duration::from_millis(250)));
    let drift = shared.drift.expect("drift_* were applied");
    assert_eq!(
        (drift.factor, drift.fixed),
        (0.02, Duration::from_millis(5))
    );
    for url in [
        "postgres://h/db?timeout=250",
        "postgres://h/db?timeout=0s",
        "postgres://h/db?timeout=2y",
        "postgres://h/db?drift_fixed=5",
        "postgres://h/db?drift_factor=1.5",
        "postgres://h/db?drift_factor=NaN",
        "postgres://h/db?max_connections=lots",
    ] {
        config_error(url);
    }
}

/// Options sqlx understands still reach sqlx; ours are removed.
#[test]
fn sqlx_options_pass_through() {
    let options = PostgresConfig::from_url(
        "postgres://u:p@h:5432/db?mode=table&sslmode=disable&application_name=app&timeout=1s\
         &statement-cache-capacity=10&options=-c%20search_path%3Dx",
    )
    .unwrap();
    assert_eq!(options.mode_of(), Mode::Table);
    assert_eq!(
        options.sqlx_url().unwrap(),
        "postgres://u:p@h:5432/db?sslmode=disable&application_name=app\
         &statement-cache-capacity=10&options=-c+search_path%3Dx"
    );
}

const SENTINEL: &str = "S3NT1NEL-pw";

/// A store whose schema this release's statements do not find (never
/// migrated, or migrated by hand by an older release: here its advisory
/// holder function is missing) is a `Config` error that says how to fix it,
/// not an opaque store error on every grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_older_than_the_release_is_a_config_error_naming_the_migration() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    for mode in MODES {
        let schema = format!("unmigrated_{}", common::rand_suffix());
        let opts = options(mode).schema(&schema).migrate(false);
        let backend = server.backend(opts.clone()).await;
        let expect_config = |result: Result<Lease, LockError>, why: &str| match result {
            Err(LockError::Config(message)) => assert!(
                message.contains("migration_sql"),
                "{mode:?}, {why}: the error should name the migration: {message}"
            ),
            other => panic!("{mode:?}, {why}: expected a Config error, got {other:?}"),
        };
        expect_config(
            backend.try_acquire(&key("unmigrated"), TTL).await,
            "never migrated",
        );
        backend.migrate().await.expect("migrate");
        let lease = backend.try_acquire(&key("unmigrated"), TTL).await.unwrap();
        backend.release(&lease).await.unwrap();
        if mode == Mode::Advisory {
            sqlx::query(&format!(
                "DROP FUNCTION \"{schema}\".\"leasehold_fencing_holder\"(bigint)"
            ))
            .execute(&observer)
            .await
            .expect("drop the holder function, as an older release's schema lacks it");
            let older = server.backend(opts.clone()).await;
            expect_config(
                older.try_acquire(&key("unmigrated"), TTL).await,
                "the holder function missing",
            );
        }
    }
}

/// Neither errors nor `Debug` output ever show the password, from good URLs
/// and malformed ones alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_errors_or_debug() {
    let check = |what: &str, shown: String| {
        assert!(
            !shown.contains(SENTINEL) && !shown.contains("S3NT1NEL"),
            "{what} shows the password: {shown}"
        );
    };
    for url in [
        format!("postgres://user:{SENTINEL}@127.0.0.1:1/db?mod=table"),
        format!("postgres://user:{SENTINEL}@127.0.0.1:1/db?mode=queue"),
        format!("postgres://user:{SENTINEL}@127.0.0.1:1/db?timeout=5"),
        format!("postgres://user:{SENTINEL}@127.0.0.1:notaport/db"),
        format!("postgres://user:{SENTINEL}@[::1/db"),
        format!("postgres:/user:{SENTINEL}@host/db"),
        format!("postgres//user:{SENTINEL}@host/db"),
        format!("mysql://user:{SENTINEL}@host/db"),
        format!("postgres://user:{SENTINEL}@h/db?sslmode=bogus"),
        format!("postgres://h/db?password={SENTINEL}&sslmode=bogus"),
        format!("postgres://h/db?pasword={SENTINEL}"),
    ] {
        match PostgresBackend::connect(&url).await {
            Ok(backend) => panic!("{url} should not connect: {backend:?}"),
            Err(error) => {
                check(&format!("the error for {url}"), error.to_string());
                check(
                    &format!("the error for {url} (Debug)"),
                    format!("{error:?}"),
                );
            }
        }
    }
    // A well-formed URL: the options, the backend and its leases' Debug.
    let server = Server::start(false).await;
    let good = server.url.replacen(
        leasehold_conformance::fixtures::POSTGRES_PASSWORD,
        SENTINEL,
        1,
    );
    for mode in MODES {
        // The wrong password: an authentication error.
        let query = if mode == Mode::Table {
            "?mode=table"
        } else {
            ""
        };
        let url = format!("{good}{query}");
        let parsed = PostgresConfig::from_url(&url).unwrap();
        check("PostgresConfig Debug", format!("{parsed:?}"));
        let error = PostgresBackend::connect(&url)
            .await
            .expect_err("the password is wrong");
        check("the authentication error", format!("{error} / {error:?}"));
        let backend = PostgresBackend::connect_with(parsed)
            .await
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        check("connect_with's error", backend);
        // Lazy, unmigrated: Debug of the backend and of a failed call.
        let lazy = PostgresBackend::connect_with(
            PostgresConfig::new(mode)
                .url(&url)
                .migrate(false)
                .timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        check("the backend's Debug", format!("{lazy:?}"));
        let failed = lazy.try_acquire(&key("secret"), TTL).await;
        check("a failed acquisition", format!("{failed:?}"));
    }
    // And with the right password (a role whose password is the sentinel):
    // the backend's, the lease's and an error's Debug never show it.
    let observer = server.observer().await;
    sqlx::query(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sentinel_user') \
         THEN CREATE ROLE sentinel_user LOGIN SUPERUSER PASSWORD '{SENTINEL}'; END IF; END $$"
    ))
    .execute(&observer)
    .await
    .expect("create the sentinel role");
    let url = url::Url::parse(&server.url).unwrap();
    let sentinel_url = format!(
        "postgres://sentinel_user:{SENTINEL}@{}:{}{}",
        url.host_str().unwrap(),
        url.port().unwrap(),
        url.path()
    );
    for mode in MODES {
        let backend = PostgresBackend::connect_with(options(mode).url(&sentinel_url))
            .await
            .expect("the sentinel role connects");
        let lease = backend.try_acquire(&key("secret"), TTL).await.unwrap();
        let refused = backend.try_acquire(&key("secret"), TTL).await;
        check(
            &format!("{mode:?}: Debug of a lease, the backend and an error"),
            format!("{lease:?} {backend:?} {refused:?}"),
        );
        backend.release(&lease).await.unwrap();
    }
}

/// A runtime shut down while an advisory lease is held (and sessions are
/// kept for reuse) neither panics nor keeps the lock: the session's socket
/// closes with the runtime, and the server frees the lock.
#[test]
fn shutting_down_the_runtime_with_a_lease_held_frees_the_lock() {
    let outer = tokio::runtime::Runtime::new().unwrap();
    let server = outer.block_on(Server::start(false));
    for flavor in ["multi_thread", "current_thread"] {
        let opts = options(Mode::Advisory);
        let inner = match flavor {
            "multi_thread" => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .unwrap();
        let (backend, lease) = inner.block_on(async {
            let backend = server.backend(opts.clone()).await;
            // One session kept for reuse, one pinned to a held lease.
            let kept = backend
                .try_acquire(&key("shutdown:kept"), TTL)
                .await
                .unwrap();
            backend.release(&kept).await.unwrap();
            let lease = backend
                .try_acquire(&key("shutdown:held"), TTL)
                .await
                .unwrap();
            (backend, lease)
        });
        drop(inner);
        drop((backend, lease));
        outer.block_on(a_fresh_client_takes(
            &server,
            &opts,
            "shutdown:held",
            &format!("a {flavor} runtime shut down with the lease held"),
        ));
    }
    // The container is removed from within a runtime.
    outer.block_on(async move { drop(server) });
}
