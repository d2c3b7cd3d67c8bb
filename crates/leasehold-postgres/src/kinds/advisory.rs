//! Advisory mode's reader–writer locks and semaphores: session advisory
//! locks on a pinned session, like the mutex (the grant dies with the
//! session, whose end fires the loss signal).
//!
//! - Reader–writer lock `key`: one advisory id (`rw`), taken shared by
//!   readers (`pg_try_advisory_lock_shared`) and exclusively by a writer.
//! - Writer preference: a writer that *waits* holds a second id (`gate`)
//!   shared, on the session it waits on, from before its first attempt until
//!   its wait ends (its grant statement unlocks it; an abandoned wait closes
//!   the session, which frees it). A reader's attempt is refused while
//!   anyone holds the gate shared: it tries the gate exclusively for its
//!   statement (`pg_try_advisory_xact_lock`), and reads `pg_locks` only
//!   when that fails (another reader's statement may hold it so); that
//!   check and its lock are one statement. A writer registers by waiting
//!   for the gate, not trying it, so such an instant never leaves it
//!   unregistered. A reader's release signals only while someone holds the
//!   gate (it tries the gate the same way, as a mutex release tries its
//!   waiter mark: [`crate::marks`]): a waiting writer is the only one to
//!   wake, and most reader releases have none.
//! - Semaphore of N: N advisory ids (`sem` slots 0..N); an attempt takes the
//!   first free one in one statement (at most [`MAX_ADVISORY_PERMITS`]). A
//!   permit's waiters mark the semaphore and its release signals only while
//!   one does, as for the mutex ([`crate::marks`]).
//! - Fencing: once a grant holds its lock it draws its token from the
//!   store's sequence in the same statement, as the mutex does (durable
//!   through the store epoch: [`crate::epoch`]). The grant writes no row:
//!   the readers of one key used to bump one counter row each, one after
//!   another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{Key, Lease, LockError, LockKind, WaitPolicy, wait_for_grant, with_timeout};
use sqlx::postgres::PgListener;

use super::{key_signal, part_lock_id};
use crate::advisory::{Granted, checkout, pinned_lease, start_epoch};
use crate::config::{ADVISORY, Settings};
use crate::epoch;
use crate::error::{map, session_ended};
use crate::keys::{advisory_lock_id, halves};
use crate::marks::mark_id;
use crate::store::{Checkout, Held, Shared, idle_timeout};

/// The most permits an advisory-mode semaphore may have: an attempt tries
/// every slot's advisory id in one statement.
pub(crate) const MAX_ADVISORY_PERMITS: u32 = 1024;

/// How an attempt takes its advisory lock.
#[derive(Clone, Copy)]
enum Take {
    /// Shared on the `rw` id unless a writer waits (binds `$3`, `$4`: the
    /// gate id's halves; `$5`: the gate id).
    Reader,
    /// Exclusive on the `rw` id.
    Writer,
    /// Exclusive on the `rw` id, by a waiting writer whose session holds the
    /// gate shared (`$3`), which a grant unlocks.
    WaitingWriter,
    /// Exclusive on the first free slot of `$2`.
    Permit,
}

/// One attempt's statement. Binds: the session's idle timeout, the id(s) to
/// try (an `int8[]`), then per [`Take`]. Returns the id taken (NULL when
/// refused), its token, how many settings were applied, how many gates
/// were unlocked, the session's pid and the store epoch.
///
/// As the mutex's grant (`crate::advisory`'s `acquire_sql`, and
/// [`crate::epoch`]): the lock first, then (only if taken) the token from
/// the store's sequence, so a lock's tokens increase with its holders; the
/// statement writes nothing and commits without waiting for a flush. With
/// no epoch in force nothing is tried and the epoch is `NULL`; a token at
/// the epoch's ceiling gives its lock back in the statement and reports no
/// epoch either (the caller starts the next one and asks again).
fn attempt_sql(take: Take, settings: &Settings) -> String {
    let epoch = epoch::current_sql(settings);
    let next = epoch::next_token_sql(settings);
    let ceiling = epoch::ceiling_sql("d.e");
    let take_sql = match take {
        // Waiting writers hold the gate shared. Taking it exclusively for
        // the statement shows that none does, without reading `pg_locks`
        // (which copies the server's whole lock table: measured with
        // pgbench, 16 readers on one key ran at 0.70 of the bare shared
        // lock+unlock rate with that read and 0.95 with the try). The try
        // also fails while another reader (or a reader's release) holds it
        // so for its own statement: only then does `pg_locks` tell whether
        // anyone holds it shared (a CASE, which evaluates in order).
        Take::Reader => {
            "CASE WHEN (CASE WHEN pg_try_advisory_xact_lock($5::int8) THEN false \
                 ELSE EXISTS (SELECT 1 FROM pg_locks g WHERE g.locktype = 'advisory' \
                 AND g.granted AND g.mode = 'ShareLock' AND g.objsubid = 1 \
                 AND g.classid::int8 = $3::int8 \
                 AND g.objid::int8 = $4::int8 \
                 AND g.database = (SELECT oid FROM pg_database WHERE datname = current_database())) END) \
             THEN NULL WHEN pg_try_advisory_lock_shared(($2::int8[])[1]) THEN ($2::int8[])[1] END"
        }
        Take::Writer | Take::WaitingWriter => {
            "CASE WHEN pg_try_advisory_lock(($2::int8[])[1]) THEN ($2::int8[])[1] END"
        }
        // The limit stops the scan at the first slot locked: no slot after
        // it is tried (the filter runs row by row as the limit pulls).
        Take::Permit => {
            "(SELECT u.id FROM unnest($2::int8[]) AS u(id) \
             WHERE pg_try_advisory_lock(u.id) LIMIT 1)"
        }
    };
    let give_back = match take {
        Take::Reader => "pg_advisory_unlock_shared(d.id)",
        _ => "pg_advisory_unlock(d.id)",
    };
    let gate = match take {
        Take::WaitingWriter => "pg_advisory_unlock_shared($3::int8)::int",
        _ => "0",
    };
    // Each subquery kept apart (`OFFSET 0`) orders one step: the epoch,
    // the lock, the draw; the outer CASEs act on the draw (as the mutex's).
    format!(
        "SELECT CASE WHEN d.t < {ceiling} THEN d.id END, \
                CASE WHEN d.t < {ceiling} THEN d.t END, \
                CASE WHEN d.t IS NULL THEN 0 \
                     WHEN d.t >= {ceiling} THEN {give_back}::int \
                     ELSE length(set_config('idle_session_timeout', $1::text, false)) \
                        + length(set_config('synchronous_commit', 'off', true)) END, \
                CASE WHEN d.t < {ceiling} THEN {gate} ELSE 0 END, \
                pg_backend_pid(), \
                CASE WHEN d.t IS NULL OR d.t < {ceiling} THEN d.e END \
         FROM (SELECT l.e, l.id, CASE WHEN l.id IS NOT NULL THEN {next} END AS t \
               FROM (SELECT a.e, CASE WHEN a.e IS NOT NULL THEN {take_sql} END AS id \
                     FROM (SELECT {epoch} AS e) a OFFSET 0) l OFFSET 0) d"
    )
}

/// Each [`Take`]'s attempt statement ([`attempt_sql`]), built once per
/// backend ([`super::KindSql`]).
#[derive(Debug, Default)]
pub(super) struct Attempts {
    reader: String,
    writer: String,
    waiting_writer: String,
    permit: String,
}

impl Attempts {
    pub(super) fn new(settings: &Settings) -> Self {
        Attempts {
            reader: attempt_sql(Take::Reader, settings),
            writer: attempt_sql(Take::Writer, settings),
            waiting_writer: attempt_sql(Take::WaitingWriter, settings),
            permit: attempt_sql(Take::Permit, settings),
        }
    }

    fn of(&self, take: Take) -> &str {
        match take {
            Take::Reader => &self.reader,
            Take::Writer => &self.writer,
            Take::WaitingWriter => &self.waiting_writer,
            Take::Permit => &self.permit,
        }
    }
}

/// What an attempt returns: see [`attempt_sql`].
type AttemptRow = (Option<i64>, Option<i64>, i32, i32, i32, Option<i64>);

/// The ids an attempt at `kind` tries.
fn ids(namespace: &str, key: &str, kind: LockKind) -> Result<Vec<i64>, LockError> {
    match kind {
        LockKind::Permit { permits } if permits > MAX_ADVISORY_PERMITS => {
            Err(LockError::Config(format!(
                "advisory mode's semaphores have at most {MAX_ADVISORY_PERMITS} permits \
                 (one advisory id each, all tried by each attempt), not {permits}"
            )))
        }
        LockKind::Permit { permits } => Ok((0..permits)
            .map(|slot| part_lock_id(namespace, key, "sem", slot))
            .collect()),
        _ => Ok(vec![part_lock_id(namespace, key, "rw", 0)]),
    }
}

/// The id whose mark ([`crate::marks`]) says that someone waits for a
/// permit of semaphore `key`: its first slot's.
fn semaphore_id(namespace: &str, key: &str) -> i64 {
    part_lock_id(namespace, key, "sem", 0)
}

/// Runs one attempt on `session`. `Ok(Ok(lease))` when granted (the session
/// then belongs to the lease's task), `Ok(Err((session, pid, epoch)))` when
/// refused (the session holds nothing new; its pid and the store epoch it
/// read), `Err` when the statement failed (the session is dropped, so
/// closed: whatever it held is freed).
async fn attempt_on(
    shared: &Shared,
    mut session: PgListener,
    key: &Key,
    kind: LockKind,
    take: Take,
    ttl: Duration,
) -> Result<Result<Lease, (PgListener, i32, i64)>, (LockError, bool)> {
    let options = &shared.options;
    let ids = ids(&options.namespace, key.as_str(), kind).map_err(|e| (e, false))?;
    let gate = part_lock_id(&options.namespace, key.as_str(), "gate", 0);
    let sent_at = options.clock.now();
    let sql = shared.sql.kinds.advisory.of(take);
    let (id, token, pid, epoch) = loop {
        let mut query = sqlx::query_as::<_, AttemptRow>(sql)
            .bind(idle_timeout(ttl))
            .bind(&ids);
        query = match take {
            Take::Reader => {
                let (hi, lo) = halves(gate);
                query.bind(hi).bind(lo).bind(gate)
            }
            Take::WaitingWriter => query.bind(gate),
            Take::Writer | Take::Permit => query,
        };
        match query.fetch_one(&mut session).await {
            // No epoch in force (nothing was tried), or the token reached
            // the epoch's ceiling (the lock was given back): start one, ask
            // again.
            Ok((_, _, _, _, _, None)) => start_epoch(shared).await.map_err(|e| (e, false))?,
            Ok((id, token, _, _, pid, Some(epoch))) => break (id, token, pid, epoch),
            Err(error) => {
                let ended = session_ended(&error);
                return Err((map(ADVISORY, error), ended));
            }
        }
    };
    let (Some(id), Some(token)) = (id, token) else {
        return Ok(Err((session, pid, epoch)));
    };
    let held = Held {
        id,
        shared: take_is_shared(take),
        signal: advisory_lock_id(&options.namespace, key.as_str()),
        // Only a waiting writer waits for a reader's release (readers never
        // wait for readers), and it holds the gate while it waits; a permit's
        // waiters mark the semaphore ([`acquire_permit`]). The waiters for
        // a writer's release (readers among them) hold nothing.
        waiters_hold: match take {
            Take::Reader => Some(gate),
            Take::Permit => Some(mark_id(semaphore_id(&options.namespace, key.as_str()))),
            Take::Writer | Take::WaitingWriter => None,
        },
    };
    let sessions = shared.sessions().map_err(|e| (e, false))?;
    let granted = Granted {
        token,
        epoch: Some(epoch),
        sent_at,
        ttl,
    };
    Ok(Ok(pinned_lease(
        shared, sessions, session, key, held, pid, granted,
    )
    .with_kind(kind)))
}

fn take_is_shared(take: Take) -> bool {
    matches!(take, Take::Reader)
}

/// One attempt on a clean session: refused, the session is kept for reuse.
pub(super) async fn try_acquire(
    shared: &Shared,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    let take = match kind {
        LockKind::Read => Take::Reader,
        LockKind::Write => Take::Writer,
        _ => Take::Permit,
    };
    with_timeout(ADVISORY, options.timeout, async {
        loop {
            let Checkout {
                session, reused, ..
            } = checkout(sessions, options.timeout).await?;
            match attempt_on(shared, session, key, kind, take, ttl).await {
                Ok(Ok(lease)) => return Ok(lease),
                Ok(Err((session, pid, epoch))) => {
                    sessions.checkin(session, Some(pid), Some(epoch));
                    return Err(LockError::contended(ADVISORY, key.as_str(), None));
                }
                // A kept session that died while idle: try the next one.
                Err((_, true)) if reused => continue,
                Err((error, _)) => return Err(error),
            }
        }
    })
    .await
}

/// A wait for a permit: as the mutex's notified wait (`backend.rs`), once
/// refused it marks the semaphore as waited for ([`crate::marks`]) and asks
/// once more, so a release between its refusal and the mark is not missed.
/// A permit's release signals only while the semaphore is marked: with
/// nobody waiting, as with most releases, it sends no `NOTIFY`. The mark is
/// given back when the call returns (or is dropped).
pub(super) async fn acquire_permit(
    shared: &Arc<Shared>,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    wait: &WaitPolicy,
    backend: &crate::PostgresBackend,
) -> Result<Lease, LockError> {
    let sessions = shared.sessions()?;
    let mark = tokio::sync::OnceCell::new();
    wait_for_grant(backend, key, wait, || {
        let mark = &mark;
        async move {
            let refused = match try_acquire(shared, key, kind, ttl).await {
                Err(refused @ LockError::Contended { .. }) => refused,
                other => return other,
            };
            let id = semaphore_id(&shared.options.namespace, key.as_str());
            let again = try_acquire(shared, key, kind, ttl);
            sessions.marks.after_refusal(mark, id, refused, again).await
        }
    })
    .await
}

/// A writer's wait, on one session of its own that holds the gate shared
/// from before the first attempt (so new readers are refused) until the wait
/// ends. Every attempt runs on that session (restarting its idle clock, set
/// to the TTL, so a paused or dead waiter's session, and its registration,
/// end within the TTL). Dropped, the call drops the session, which closes it.
pub(super) async fn acquire_writer(
    shared: &Arc<Shared>,
    key: &Key,
    ttl: Duration,
    wait: &WaitPolicy,
    backend: &crate::PostgresBackend,
) -> Result<Lease, LockError> {
    let waiting: Mutex<Option<PgListener>> = Mutex::new(None);
    let result = wait_for_grant(backend, key, wait, || {
        attempt_waiting(shared, &waiting, key, ttl)
    })
    .await;
    let session = waiting.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(session) = session {
        // Closing the session frees the gate; wake the readers it held back.
        drop(session);
        let options = &shared.options;
        let woken = with_timeout(ADVISORY, options.timeout, async {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&options.channel)
                .bind(key_signal(options, key))
                .execute(&shared.pool)
                .await
                .map_err(|e| map(ADVISORY, e))
        })
        .await;
        if let Err(error) = woken {
            tracing::debug!(key = key.as_str(), %error, "could not wake readers after a writer's wait ended");
        }
    }
    result
}

/// One attempt of a waiting writer: registers first if its session does not
/// hold the gate yet. The session is out of `waiting` while a statement
/// runs on it, so a dropped or failed attempt drops (closes) it.
async fn attempt_waiting(
    shared: &Shared,
    waiting: &Mutex<Option<PgListener>>,
    key: &Key,
    ttl: Duration,
) -> Result<Lease, LockError> {
    let options = &shared.options;
    let sessions = shared.sessions()?;
    with_timeout(ADVISORY, options.timeout, async {
        let kept = waiting.lock().unwrap_or_else(|p| p.into_inner()).take();
        let session = match kept {
            Some(session) => session,
            None => {
                let Checkout { mut session, .. } = checkout(sessions, options.timeout).await?;
                let gate = part_lock_id(&options.namespace, key.as_str(), "gate", 0);
                // Waits, rather than tries: a reader's release holds the
                // gate exclusively for the instant it looks for a waiting
                // writer, and a registration that failed in that instant
                // would leave this writer unseen by readers.
                sqlx::query(
                    "SELECT pg_advisory_lock_shared($1)::text, \
                     set_config('idle_session_timeout', $2, false)",
                )
                .bind(gate)
                .bind(idle_timeout(ttl))
                .execute(&mut session)
                .await
                .map_err(|e| map(ADVISORY, e))?;
                session
            }
        };
        match attempt_on(
            shared,
            session,
            key,
            LockKind::Write,
            Take::WaitingWriter,
            ttl,
        )
        .await
        {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err((session, ..))) => {
                *waiting.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
                Err(LockError::contended(ADVISORY, key.as_str(), None))
            }
            Err((error, _)) => Err(error),
        }
    })
    .await
}
