//! Table mode's reader–writer locks and semaphores: a row per holder and per
//! waiting writer in the shared-grant table, expiring by the database clock,
//! and a counter row per lock that every attempt locks first.
//!
//! One attempt is one transaction: lock the counter row (so attempts on one
//! lock run one at a time, and the next statement's snapshot sees every
//! grant committed before), then one statement that locks the holder rows
//! (`FOR UPDATE`: a renewal racing with it is either seen or finds its row
//! gone), drops expired ones, decides, and on a grant bumps the counter and
//! inserts the holder row. A refused attempt changes nothing but expired
//! rows, except a waiting writer's, which (re)writes its registration.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken, WaitPolicy,
    wait_for_grant, with_timeout,
};

use super::{CallerLeft, family, guarded, key_signal, kind_code, waiter_token};
use crate::config::{Settings, TABLE};
use crate::error::map;
use crate::store::Shared;
use crate::table::{check_lease, micros};

/// Locks (creating it if need be) the lock's counter row.
fn lock_counter_sql(s: &str) -> String {
    format!(
        "INSERT INTO {s} AS f (namespace, family, key, owner, kind, counter) \
         VALUES ($1::text, $2::text, $3::text, '', 'c', 0) \
         ON CONFLICT (namespace, family, key, owner) DO UPDATE SET counter = f.counter \
         RETURNING f.counter"
    )
}

/// The decision, under the counter row's lock. Binds: namespace, family,
/// key, owner, kind code, TTL in µs, permits, the waiting writer's
/// registration token (or NULL). Returns the new token (granted), the
/// microseconds until the first blocking holder expires (refused), and the
/// empty result of the commit setting.
fn decide_sql(s: &str) -> String {
    let us = "$6::int8 * interval '1 microsecond'";
    format!(
        "WITH now_ AS MATERIALIZED (SELECT clock_timestamp() AS t), \
         held AS MATERIALIZED (SELECT owner, kind, expires_at FROM {s} \
             WHERE namespace = $1::text AND family = $2::text AND key = $3::text AND owner <> '' \
             FOR UPDATE), \
         live AS MATERIALIZED (SELECT h.owner, h.kind, h.expires_at FROM held h, now_ \
             WHERE h.expires_at > now_.t), \
         gone AS (DELETE FROM {s} AS f USING held h, now_ \
             WHERE f.namespace = $1::text AND f.family = $2::text AND f.key = $3::text \
               AND f.owner = h.owner AND h.expires_at <= now_.t \
               AND h.owner IS DISTINCT FROM $8::text), \
         blocking AS MATERIALIZED (SELECT expires_at FROM live WHERE CASE $5::text \
             WHEN 'r' THEN kind IN ('w', 'q') \
             WHEN 'w' THEN kind IN ('r', 'w') \
             ELSE kind = 'p' END), \
         ok AS MATERIALIZED (SELECT CASE WHEN $5::text = 'p' \
             THEN (SELECT count(*) FROM blocking) < $7::int8 \
             ELSE NOT EXISTS (SELECT 1 FROM blocking) END AS ok), \
         bump AS (UPDATE {s} AS f SET counter = f.counter + 1 FROM ok \
             WHERE ok.ok AND f.namespace = $1::text AND f.family = $2::text AND f.key = $3::text \
               AND f.owner = '' RETURNING f.counter), \
         granted AS (INSERT INTO {s} (namespace, family, key, owner, kind, counter, expires_at) \
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, bump.counter, now_.t + {us} \
             FROM bump, now_), \
         queued AS (INSERT INTO {s} AS f (namespace, family, key, owner, kind, counter, expires_at) \
             SELECT $1::text, $2::text, $3::text, $8::text, 'q', 0, now_.t + {us} FROM ok, now_ \
             WHERE NOT ok.ok AND $8::text IS NOT NULL \
             ON CONFLICT (namespace, family, key, owner) DO UPDATE SET expires_at = EXCLUDED.expires_at), \
         unqueued AS (DELETE FROM {s} WHERE $8::text IS NOT NULL AND namespace = $1::text \
             AND family = $2::text AND key = $3::text AND owner = $8::text \
             AND EXISTS (SELECT 1 FROM bump)) \
         SELECT (SELECT counter FROM bump), \
             (extract(epoch FROM (SELECT min(expires_at) FROM blocking) - (SELECT t FROM now_)) \
                 * 1000000)::int8, \
             CASE WHEN EXISTS (SELECT 1 FROM bump) THEN '' \
                 ELSE set_config('synchronous_commit', 'off', true) END"
    )
}

fn extend_sql(s: &str) -> String {
    format!(
        "UPDATE {s} SET expires_at = clock_timestamp() + $6::int8 * interval '1 microsecond' \
         WHERE namespace = $1::text AND family = $2::text AND key = $3::text AND owner = $4::text \
           AND kind = $5::text AND expires_at > clock_timestamp() \
         RETURNING counter"
    )
}

/// Deletes a live grant (or, with kind `q`, a registration) and wakes
/// waiters at commit; the commit skips the WAL flush, as the mutex's
/// release does (a release lost in a crash only keeps the grant until its
/// TTL).
fn release_sql(s: &str) -> String {
    format!(
        "DELETE FROM {s} \
         WHERE namespace = $1::text AND family = $2::text AND key = $3::text AND owner = $4::text \
           AND kind = $5::text AND (kind = 'q' OR expires_at > clock_timestamp()) \
         RETURNING pg_notify($6::text, $7::text)::text, \
             set_config('synchronous_commit', 'off', true)"
    )
}

/// The statements above for the backend's shared-grant table, built once
/// per backend ([`super::KindSql`]).
#[derive(Debug, Default)]
pub(super) struct Statements {
    lock_counter: String,
    decide: String,
    extend: String,
    release: String,
}

impl Statements {
    pub(super) fn new(settings: &Settings) -> Self {
        let s = settings.qualified_shared_table();
        Statements {
            lock_counter: lock_counter_sql(&s),
            decide: decide_sql(&s),
            extend: extend_sql(&s),
            release: release_sql(&s),
        }
    }
}

/// One attempt; `waiter` is a waiting writer's registration, written when
/// the attempt is refused and removed when it is granted.
pub(super) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    waiter: Option<OwnerToken>,
    mut left: CallerLeft,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let sql = &shared.sql.kinds.table;
    let owner = OwnerToken::generate();
    let permits = i64::from(kind.permits().unwrap_or(0));
    let sent_at = options.clock.now();
    let (token, blocking_us, _): (Option<i64>, Option<i64>, String) =
        with_timeout(TABLE, options.timeout, async {
            left.unless_gone(TABLE, shared.connection(TABLE))
                .await??
                .run(async |connection| {
                    let mut tx = sqlx::Connection::begin(&mut *connection)
                        .await
                        .map_err(|e| map(TABLE, e))?;
                    sqlx::query(&sql.lock_counter)
                        .bind(&options.namespace)
                        .bind(family(kind))
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map(TABLE, e))?;
                    let row = sqlx::query_as(&sql.decide)
                        .bind(&options.namespace)
                        .bind(family(kind))
                        .bind(key.as_str())
                        .bind(owner.to_hex())
                        .bind(kind_code(kind))
                        .bind(micros(ttl))
                        .bind(permits)
                        .bind(waiter.map(|w| w.to_hex()))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| map(TABLE, e))?;
                    tx.commit().await.map_err(|e| map(TABLE, e))?;
                    Ok(row)
                })
                .await
        })
        .await?;
    match token {
        Some(token) => Ok(Lease::new(
            TABLE,
            key.clone(),
            owner,
            FencingToken(token as u64),
            sent_at,
            ttl,
            options.drift,
        )
        .with_kind(kind)),
        None => {
            let remaining = blocking_us.map(|us| Duration::from_micros(us.max(0) as u64));
            Err(LockError::contended(
                TABLE,
                key.as_str(),
                Some(LockInfo::new(None, remaining)),
            ))
        }
    }
}

/// A writer's wait: registered (a `q` row, renewed by every attempt, so
/// new readers are refused) from its first attempt until the wait ends; a
/// wait that ends without a grant withdraws the registration, and a dropped
/// call has it withdrawn on a spawned task (else it expires within `ttl`).
pub(super) async fn acquire_writer(
    shared: &Arc<Shared>,
    key: &Key,
    ttl: Duration,
    wait: &WaitPolicy,
    backend: &crate::PostgresBackend,
) -> Result<Lease, LockError> {
    let mut registration = Registration {
        shared: shared.clone(),
        key: key.clone(),
        waiter: waiter_token(),
        active: true,
    };
    let waiter = registration.waiter;
    let result = wait_for_grant(backend, key, wait, || {
        let (attempt_shared, key) = (shared.clone(), key.clone());
        guarded(shared, move |left| async move {
            try_acquire(
                &attempt_shared,
                &key,
                LockKind::Write,
                ttl,
                Some(waiter),
                left,
            )
            .await
        })
    })
    .await;
    registration.active = false;
    if result.is_err() {
        // Best effort: a withdrawal that fails leaves a registration that
        // expires within the TTL.
        let _ = withdraw(&registration.shared, &registration.key, waiter).await;
    }
    result
}

/// Removes a waiting writer's registration and wakes the readers it held
/// back.
async fn withdraw(shared: &Shared, key: &Key, waiter: OwnerToken) -> Result<(), LockError> {
    let options = &shared.options;
    with_timeout(TABLE, options.timeout, async {
        sqlx::query(&shared.sql.kinds.table.release)
            .bind(&options.namespace)
            .bind(family(LockKind::Write))
            .bind(key.as_str())
            .bind(waiter.to_hex())
            .bind("q")
            .bind(&options.channel)
            .bind(key_signal(options, key))
            .execute(&shared.pool)
            .await
            .map(|_| ())
            .map_err(|e| map(TABLE, e))
    })
    .await
}

/// A waiting writer's registration; dropped while active (the call was
/// dropped), it is withdrawn on a spawned task.
struct Registration {
    shared: Arc<Shared>,
    key: Key,
    waiter: OwnerToken,
    active: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (shared, key, waiter) = (self.shared.clone(), self.key.clone(), self.waiter);
            runtime.spawn(async move {
                if let Err(error) = withdraw(&shared, &key, waiter).await {
                    tracing::debug!(key = key.as_str(), %error, "could not withdraw a dropped writer's wait; it expires with its TTL");
                }
            });
        }
    }
}

pub(super) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    check_lease(lease)?;
    let options = &shared.options;
    let kind = lease.kind();
    let sent_at = options.clock.now();
    let row: Option<i64> = with_timeout(TABLE, options.timeout, async {
        shared
            .connection(TABLE)
            .await?
            .run(async |connection| {
                sqlx::query_scalar(&shared.sql.kinds.table.extend)
                    .bind(&options.namespace)
                    .bind(family(kind))
                    .bind(lease.key().as_str())
                    .bind(lease.owner().to_hex())
                    .bind(kind_code(kind))
                    .bind(micros(ttl))
                    .fetch_optional(&mut *connection)
                    .await
                    .map_err(|e| map(TABLE, e))
            })
            .await
    })
    .await?;
    match row {
        Some(_) => Ok(lease.renewed(sent_at, ttl, options.drift)),
        None => Err(LockError::lost(
            TABLE,
            lease.key().as_str(),
            "the grant expired or was never held",
        )),
    }
}

pub(super) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    check_lease(lease)?;
    let options = &shared.options;
    let kind = lease.kind();
    let key = lease.key().as_str();
    let row: Option<(Option<String>, Option<String>)> =
        with_timeout(TABLE, options.timeout, async {
            shared
                .connection(TABLE)
                .await?
                .run(async |connection| {
                    sqlx::query_as(&shared.sql.kinds.table.release)
                        .bind(&options.namespace)
                        .bind(family(kind))
                        .bind(key)
                        .bind(lease.owner().to_hex())
                        .bind(kind_code(kind))
                        .bind(&options.channel)
                        .bind(key_signal(options, lease.key()))
                        .fetch_optional(&mut *connection)
                        .await
                        .map_err(|e| map(TABLE, e))
                })
                .await
        })
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(LockError::not_held(TABLE, key)),
    }
}
