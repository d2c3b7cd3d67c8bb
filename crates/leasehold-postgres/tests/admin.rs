//! Listing and force release in both modes against a real `postgres:15`:
//! prefixes taken byte for byte, paging, the advisory table's `lock_id`
//! migration, and the permission a forced advisory release needs.

mod common;

use std::time::Duration;

use common::{Server, key, options, rand_suffix};
use leasehold_core::config::default_holder;
use leasehold_core::{HeldLock, ListQuery, LockBackend, LockError};
use leasehold_postgres::sqlx::{self, Connection};
use leasehold_postgres::{Mode, PostgresBackend, PostgresConfig, advisory_lock_id};

const TTL: Duration = Duration::from_secs(30);

/// Every page of `prefix`, `limit` at a time.
async fn all_pages(backend: &PostgresBackend, prefix: &str, limit: usize) -> Vec<HeldLock> {
    let mut query = ListQuery::new(prefix).limit(limit);
    let mut all = Vec::new();
    loop {
        let page = backend.list(&query).await.expect("a listing page");
        assert!(page.locks.len() <= limit, "a page over its limit");
        all.extend(page.locks);
        match page.next {
            Some(cursor) => query = query.after(Some(cursor)),
            None => return all,
        }
    }
}

fn names(held: &[HeldLock]) -> Vec<&str> {
    held.iter().map(|h| h.key.as_str()).collect()
}

async fn prefixes_match_byte_for_byte_and_pages_follow_key_order(mode: Mode) {
    let server = Server::start(false).await;
    let backend = server.backend(options(mode).max_connections(12)).await;
    let mut leases = Vec::new();
    // In byte order, as the listing shows them.
    for name in ["a%", "a%b", "a_c", "ab", "abc", "b", "gone"] {
        leases.push(backend.try_acquire(&key(name), TTL).await.unwrap());
    }
    backend.release(&leases.pop().unwrap()).await.unwrap();

    let everything = all_pages(&backend, "", 1).await;
    assert_eq!(
        names(&everything),
        ["a%", "a%b", "a_c", "ab", "abc", "b"],
        "{mode:?}"
    );
    assert_eq!(names(&all_pages(&backend, "a%", 10).await), ["a%", "a%b"]);
    assert_eq!(names(&all_pages(&backend, "a_", 10).await), ["a_c"]);
    assert!(all_pages(&backend, "z", 10).await.is_empty());
    for (held, lease) in everything.iter().zip(&leases) {
        let info = &held.info;
        assert_eq!(info.fencing_token, Some(lease.fencing_token()), "{mode:?}");
        assert!(info.acquired_at.is_some(), "{mode:?}: {info:?}");
        let label = info.metadata.as_deref().unwrap_or_default();
        assert!(label.contains(&default_holder()), "{mode:?}: {label:?}");
        // The same holder as inspect tells (the time left moves on).
        let mut inspected = backend.inspect(lease.key()).await.unwrap().unwrap();
        inspected.remaining = info.remaining;
        assert_eq!(&inspected, info, "{mode:?}: inspect and list disagree");
    }
    for lease in &leases {
        backend.release(lease).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_listing_prefixes_and_pages() {
    prefixes_match_byte_for_byte_and_pages_follow_key_order(Mode::Advisory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_listing_prefixes_and_pages() {
    prefixes_match_byte_for_byte_and_pages_follow_key_order(Mode::Table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_table_release_keeps_the_row_and_skips_a_token() {
    let server = Server::start(false).await;
    let backend = server.backend(options(Mode::Table)).await;
    let k = key("stuck");
    let lease = backend.try_acquire(&k, TTL).await.unwrap();
    let evicted = backend
        .force_release(&k, "test")
        .await
        .unwrap()
        .expect("the holder is evicted");
    assert_eq!(evicted.fencing_token, Some(lease.fencing_token()));
    assert!(evicted.owner_hint.is_some() && evicted.remaining.is_some());
    assert!(matches!(
        backend.extend(&lease, TTL).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(
        backend.release(&lease).await,
        Err(LockError::NotHeld { .. })
    ));
    assert_eq!(backend.force_release(&k, "test").await.unwrap(), None);
    let next = backend.try_acquire(&k, TTL).await.unwrap();
    assert_eq!(next.fencing_token().get(), lease.fencing_token().get() + 2);
    backend.release(&next).await.unwrap();
}

/// A fencing table made before `lock_id` existed, with a lock held the old
/// way: the migration fills every row's id with the Rust hash, so the held
/// key is listed and can be forced free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_fencing_table_gets_lock_ids_and_its_locks_are_listed() {
    let server = Server::start(false).await;
    let observer = server.observer().await;
    let (schema, table) = (format!("old o'ne {}", rand_suffix()), "fen\"cing");
    let qualified = format!(r#""{schema}"."fen""cing""#);
    sqlx::raw_sql(&format!(
        r#"CREATE SCHEMA "{schema}";
           CREATE TABLE {qualified} (namespace text COLLATE "C" NOT NULL,
               key text COLLATE "C" NOT NULL, counter bigint NOT NULL, holder text,
               acquired_at timestamptz, PRIMARY KEY (namespace, key));"#
    ))
    .execute(&observer)
    .await
    .unwrap();
    let rows = [
        ("", "a"),
        ("n", "🔒émoji/ключ"),
        ("ns x", "x'y"),
        ("old", "held"),
    ];
    for (namespace, name) in rows {
        sqlx::query(&format!(
            "INSERT INTO {qualified} VALUES ($1, $2, 7, 'old version', now())"
        ))
        .bind(namespace)
        .bind(name)
        .execute(&observer)
        .await
        .unwrap();
    }
    let mut old_holder = sqlx::PgConnection::connect(&server.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(advisory_lock_id("old", "held"))
        .execute(&mut old_holder)
        .await
        .unwrap();

    let config = PostgresConfig::new(Mode::Advisory)
        .url(&server.url)
        .schema(&schema)
        .table(table)
        .namespace("old")
        .timeout(Duration::from_secs(2));
    let backend = PostgresBackend::connect_with(config.clone()).await.unwrap();
    PostgresBackend::connect_with(config)
        .await
        .expect("migrates again");
    for (namespace, name) in rows {
        let id: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT lock_id FROM {qualified} WHERE namespace = $1 AND key = $2"
        ))
        .bind(namespace)
        .bind(name)
        .fetch_one(&observer)
        .await
        .unwrap();
        assert_eq!(id, Some(advisory_lock_id(namespace, name)), "{name:?}");
    }

    // The old holder's session carries no grant label: listed and evicted
    // by its pid, without a token.
    let held = all_pages(&backend, "", 10).await;
    assert_eq!(names(&held), ["held"]);
    assert_eq!(held[0].info.fencing_token, None);
    let evicted = backend
        .force_release(&key("held"), "test")
        .await
        .unwrap()
        .expect("the old holder is evicted");
    assert!(
        evicted
            .metadata
            .as_deref()
            .is_some_and(|m| m.starts_with("backend pid ")),
        "{evicted:?}"
    );
    assert!(
        sqlx::query("SELECT 1")
            .execute(&mut old_holder)
            .await
            .is_err(),
        "the old holder's session was ended"
    );
    // The first epoch lifts the token sequence above every counter the
    // older release left.
    let next = backend.try_acquire(&key("held"), TTL).await.unwrap();
    assert!(
        next.fencing_token().get() > 7,
        "token {} is not above the old counter 7",
        next.fencing_token()
    );
    backend.release(&next).await.unwrap();
}

/// A role that may not end the holder's session gets an error that says
/// which permission it lacks, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_advisory_release_without_permission_says_what_is_missing() {
    let server = Server::start(false).await;
    let opts = options(Mode::Advisory);
    let holder = server.backend(opts.clone()).await;
    let k = key("guarded");
    let lease = holder.try_acquire(&k, TTL).await.unwrap();

    let role = format!("lister{}", rand_suffix());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'; \
         GRANT SELECT, UPDATE ON public.leasehold_fencing TO {role};"
    ))
    .execute(&server.observer().await)
    .await
    .unwrap();
    let mut url = url::Url::parse(&server.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("pw")).unwrap();
    let operator = PostgresBackend::connect_with(opts.url(url.as_str()).migrate(false))
        .await
        .unwrap();

    let listed = all_pages(&operator, "", 10).await;
    assert_eq!(names(&listed), ["guarded"]);
    match operator.force_release(&k, "test").await {
        Err(error @ LockError::Backend { .. }) => {
            assert!(error.to_string().contains("pg_signal_backend"), "{error}");
            assert!(!error.is_retryable(), "{error}");
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    let lease = holder.extend(&lease, TTL).await.expect("still held");
    holder.release(&lease).await.unwrap();
    let next = holder.try_acquire(&k, TTL).await.unwrap();
    assert!(next.fencing_token() > lease.fencing_token());
    holder.release(&next).await.unwrap();
}
