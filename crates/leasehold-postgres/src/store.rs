//! The backend's plumbing: the state every call shares ([`Shared`]: pool,
//! settings, statements, release feed), and advisory mode's sessions.
//!
//! Advisory mode's sessions: one task per held lease owns the lease's
//! connection, serves its renewals and its release, and in between waits on
//! the connection's socket, so the end of the session (terminated backend,
//! server restart or failover, a reset or closed TCP connection) fires the
//! lease's loss signal at once instead of at the next renewal.
//!
//! # Why a `PgListener`, and why a private pool
//! sqlx 0.8 reads a plain connection's socket only while a query runs; the
//! one public way to wait on an idle connection is [`PgListener::try_recv`],
//! which is cancel-safe (sqlx keeps partial reads in the connection's buffer)
//! and returns `Ok(None)` or an error as soon as the socket reports
//! end-of-stream or a reset. So each pinned connection is a `PgListener` that
//! LISTENs on nothing: the task `select!`s between its request channel and
//! `try_recv`, and a request simply drops the pending read.
//!
//! A `PgListener` hands its connection back to the pool it came from when it
//! is dropped. A connection that may still hold a lock must never be reused,
//! so these connections come from a private pool built from the same connect
//! options whose `after_release` hook closes *every* connection handed back
//! to it. Clean sessions (unlocked, or never locked) are kept for reuse here,
//! in [`Sessions`], instead of in a pool: nothing but a confirmed
//! `pg_advisory_unlock` (or a lock attempt that was refused) puts a session
//! back on that list.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use leasehold_core::known::KnownKeys;
use leasehold_core::relay::{Lent, Relay};
use leasehold_core::{LockError, ReleaseFeed};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ADVISORY, PostgresConfig, Settings};
use crate::error::{map, session_ended};
use crate::keys::{halves, signal_name};
use crate::marks::{Marks, mark_id};

/// The statements of one mode, built once per backend.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub(crate) acquire: String,
    /// Advisory mode: the grant on a session that remembers the store
    /// epoch ([`crate::epoch`]).
    pub(crate) acquire_in_epoch: String,
    /// Advisory mode: [`Sql::acquire_in_epoch`] for a key whose row is
    /// known to be there ([`Sessions::known_rows`]).
    pub(crate) acquire_known_row: String,
    /// Advisory mode: the grant that waits in the server's lock queue.
    pub(crate) queue: String,
    /// Advisory mode: [`Sql::queue`] on a session that remembers the store
    /// epoch.
    pub(crate) queue_in_epoch: String,
    /// Advisory mode: [`Sql::queue_in_epoch`] for a key whose row is known
    /// to be there.
    pub(crate) queue_known_row: String,
    /// Advisory mode: adds a key's row after its first grant.
    pub(crate) key_row: String,
    pub(crate) extend: String,
    pub(crate) extend_many: String,
    pub(crate) release: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) force_release: String,
    /// Advisory mode: starts a new epoch ([`crate::epoch::bump_sql`]).
    pub(crate) epoch_bump: String,
    /// Reader–writer locks' and semaphores' statements.
    pub(crate) kinds: crate::kinds::KindSql,
}

/// What every call of one backend shares: the pool, the settings, the
/// statements, the release feed and (advisory mode) the pinned sessions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    /// The same pool, relaying connections between table mode's calls
    /// unpinged ([`Relay`]).
    pub(crate) relay: Relay<Postgres>,
    pub(crate) options: Settings,
    pub(crate) sql: Sql,
    pub(crate) config: PostgresConfig,
    pub(crate) feed: ReleaseFeed,
    /// Advisory mode's pinned sessions (`None` in table mode).
    pub(crate) sessions: Option<Arc<Sessions>>,
}

impl Shared {
    /// A connection for one table-mode call's statements, run with
    /// [`Lent::run`]: a call that ends in an answer gives it back, so a
    /// call waiting for one takes it unpinged; a failed one drops it.
    pub(crate) async fn connection(
        &self,
        backend: &'static str,
    ) -> Result<Lent<'_, Postgres>, LockError> {
        self.relay.take().await.map_err(|e| map(backend, e))
    }

    pub(crate) fn sessions(&self) -> Result<&Arc<Sessions>, LockError> {
        self.sessions.as_ref().ok_or_else(|| {
            LockError::Config("advisory sessions used by a table-mode backend".into())
        })
    }
}

/// A clean session unused for this long is closed instead of reused (it
/// holds a server backend; sqlx's own idle timeout does not see it).
const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Still held by this very session? And restart the idle clock at the new TTL.
const HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
     AND pid = pg_backend_pid() AND classid::int8 = $1 AND objid::int8 = $2 \
     AND objsubid = 1 AND granted), set_config('idle_session_timeout', $3, false)";

/// The release statement around `unlock`, the function that gives the
/// lock back (exclusive or shared): one text for both.
macro_rules! release_sql {
    ($unlock:literal) => {
        concat!(
            "SELECT s.u, \
             CASE WHEN NOT (s.u AND $6) THEN NULL \
                  WHEN $7::int8 IS NOT NULL AND pg_try_advisory_xact_lock($7::int8) THEN NULL \
                  ELSE pg_notify($2, $3)::text END, \
             set_config('idle_session_timeout', $4, false), \
             set_config('application_name', $5, false), \
             set_config('synchronous_commit', 'off', true) \
             FROM (SELECT ",
            $unlock,
            "($1) AS u OFFSET 0) s"
        )
    };
}

/// Unlock, signal, and restore the session's idle timeout (`$4`) and
/// `application_name` (`$5`, which a grant set to its label), the values a
/// fresh session of this backend has ([`SessionDefaults`]), before it is
/// kept for reuse, in one round trip. Not read from `pg_settings` here:
/// that view builds every setting's row, and measured with pgbench it cut a
/// lock+unlock pair from about 2,000 to about 200 per second. The unlock
/// runs first (a subquery kept apart, `OFFSET 0`); the NOTIFY is delivered
/// at commit. NOTIFY makes the statement a transaction that commits; it
/// need not be durable (a lost signal after a crash costs nothing), so it
/// skips the WAL flush: measured, a flush per release doubled the
/// lock+unlock time.
///
/// `$6` says whether a signal may be needed: a mutex release skips it when
/// a waiter of this backend is queued for the lock in the server
/// ([`Sessions::waiter_queued`]). `$7` is the id the lock's waiters hold
/// while they wait ([`Held::waiters_hold`]: a mutex's or semaphore's
/// waiter mark, a reader's writer gate), and the signal is sent only while
/// one holds it; `NULL` (a writer's release) always signals.
pub(crate) const RELEASE_SQL: &str = release_sql!("pg_advisory_unlock");

/// [`RELEASE_SQL`] for a shared advisory lock (a reader's).
const RELEASE_SHARED_SQL: &str = release_sql!("pg_advisory_unlock_shared");

/// The TTL as `idle_session_timeout` (whole milliseconds, rounded up; at
/// least 1, since 0 would disable it).
pub(crate) fn idle_timeout(ttl: Duration) -> String {
    ttl.as_micros()
        .div_ceil(1000)
        .clamp(1, i32::MAX as u128)
        .to_string()
}

/// The backend's sessions for advisory locks: a private pool (every
/// connection handed back to it is closed) and the clean sessions kept for
/// reuse.
pub(crate) struct Sessions {
    pool: PgPool,
    idle: Mutex<Vec<Kept>>,
    /// Wakes checkouts waiting on a full pool when a session is kept: kept
    /// sessions hold their pool slot, so such a checkout must take one.
    kept: tokio::sync::Notify,
    channel: String,
    timeout: Duration,
    /// The settings a lease or a queued waiter changes, as a fresh session
    /// of this backend has them (the same for all: one role, database and
    /// set of connect options), read on the first session opened.
    defaults: OnceLock<SessionDefaults>,
    /// Places in the server's lock queue (each pins a session): half the
    /// sessions ([`Sessions::queue_slot`]).
    queue_slots: Arc<tokio::sync::Semaphore>,
    /// Per advisory lock id, whose turn it is among this backend's waiters
    /// to queue in the server ([`Sessions::turn`]).
    turns: Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Semaphore>>>,
    /// Marks the keys this backend's unqueued waiters wait for
    /// ([`crate::marks`]), on a session of its own.
    pub(crate) marks: Marks,
    /// The advisory ids of the keys whose row (advisory mode's key row,
    /// which names a held key in listings) this backend saw in the table,
    /// so that their grants skip the row's lookup. Measured with pgbench
    /// inside the container (64 clients, the grant and release on a session
    /// that remembers the store epoch): 0.48 of the bare pair's rate with
    /// the lookup, 0.58 without it (2026-12-02). leasehold never deletes a
    /// key row; one an operator deletes comes back at a grant of its key
    /// once every backend that saw it has forgotten it ([`KnownKeys`]).
    pub(crate) known_rows: KnownKeys<i64>,
}

/// A clean session kept for reuse: its server pid and the store epoch when
/// known (learned from a statement run on it), and since when it is kept.
struct Kept {
    session: PgListener,
    pid: Option<i32>,
    epoch: Option<i64>,
    since: Instant,
}

/// A session holding no lock, from [`Sessions::checkout`].
pub(crate) struct Checkout {
    pub(crate) session: PgListener,
    /// Kept from an earlier use: it may have died while idle (the caller
    /// retries once it fails with a session error).
    pub(crate) reused: bool,
    /// Its server pid, when a statement run on it told (`None` for a
    /// session new to this call, and for one opened for a caller that left).
    pub(crate) pid: Option<i32>,
    /// The store epoch a grant on it read, when one did: its next grant
    /// may take it from here, since a crash would have ended the session
    /// ([`crate::epoch`]).
    pub(crate) epoch: Option<i64>,
}

/// The answer of a connection attempt started for a checkout
/// ([`Sessions::open_for_caller`]). Dropped unread (the checkout's caller
/// left), it keeps a session that had already arrived: a fresh session
/// holds no lock, and would otherwise be closed unused.
struct Opening {
    answer: tokio::sync::oneshot::Receiver<Result<PgListener, sqlx::Error>>,
    sessions: Arc<Sessions>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        // Closed first: a session sent from now on fails to arrive and its
        // task keeps it; one sent before is read here.
        self.answer.close();
        if let Ok(Ok(session)) = self.answer.try_recv() {
            self.sessions.checkin(session, None, None);
        }
    }
}

/// Session settings as a fresh session has them, restored before a session
/// is kept for reuse.
#[derive(Debug, Clone)]
pub(crate) struct SessionDefaults {
    /// `idle_session_timeout`: a lease sets it to its TTL.
    pub(crate) idle: String,
    /// `lock_timeout`: a queued waiter sets it to its wait.
    pub(crate) lock_timeout: String,
    /// `client_connection_check_interval`: a queued waiter sets it so a
    /// waiter that went away leaves the server's queue
    /// ([`crate::advisory`]'s `queue`).
    pub(crate) check_interval: String,
    /// `application_name`: a mutex grant labels its session with it
    /// ([`crate::advisory`]'s `label_sql`).
    pub(crate) application_name: String,
}

/// A backend's turn to queue for one key ([`Sessions::turn`]), passed to
/// the key's next waiter when dropped.
pub(crate) struct Turn {
    sessions: Arc<Sessions>,
    id: i64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut turns = self
            .sessions
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Forgotten once no waiter holds or awaits it (the map's is the only
        // reference left).
        if turns
            .get(&self.id)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Sessions {
    // The pool's connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(idle);
        } else {
            // sqlx closes a dropped listener's connection on a spawned task and
            // panics without a runtime; at that point the process is ending
            // and the operating system closes the sockets.
            std::mem::forget(idle);
        }
    }
}

impl Sessions {
    /// Sessions to `connect`, at most `max` at once (held leases plus clean
    /// sessions kept for reuse); `timeout` bounds waiting for a slot.
    pub(crate) fn new(
        connect: PgConnectOptions,
        max: u32,
        timeout: Duration,
        channel: String,
    ) -> Self {
        let marks = Marks::new(connect.clone(), timeout);
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            // Whatever comes back to this pool may hold a lock: close it.
            .after_release(|_, _| Box::pin(async { Ok(false) }))
            .connect_lazy_with(connect);
        Sessions {
            pool,
            idle: Mutex::new(Vec::new()),
            kept: tokio::sync::Notify::new(),
            channel,
            timeout,
            defaults: OnceLock::new(),
            queue_slots: Arc::new(tokio::sync::Semaphore::new((max / 2) as usize)),
            turns: Mutex::new(std::collections::HashMap::new()),
            marks,
            known_rows: KnownKeys::default(),
        }
    }

    /// This backend's turn to queue for advisory lock `id` in the server,
    /// waiting at most `within` for it. A key's waiters of one backend queue
    /// there one at a time, in the order they asked (Tokio's semaphore is
    /// first come, first served; the server serves its queue in order too):
    /// with every waiter free to queue, a task that released and asked again
    /// took the place its own grant had just freed, and on a hot key a
    /// waiter could lose every round (64 tasks: one waited past 30 s).
    pub(crate) async fn turn(self: &Arc<Self>, id: i64, within: Duration) -> Option<Turn> {
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let permit = tokio::time::timeout(within, turn.acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Turn {
            sessions: self.clone(),
            id,
            permit: Some(permit),
        })
    }

    /// Whether one of this backend's waiters holds the turn to queue for
    /// advisory lock `id` in the server ([`turn`](Self::turn)). The
    /// server grants the lock to its queued waiter at the unlock itself, so
    /// a release signal would only wake waiters to be refused: a mutex
    /// release then sends none. (Should that waiter not be in the server's
    /// queue yet, or leave it unanswered, the lock is free and waiters
    /// elsewhere find it at their next poll: latency, never a hang; the
    /// queued waiter's own release signals them.)
    pub(crate) fn waiter_queued(&self, id: i64) -> bool {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|turn| turn.available_permits() == 0)
    }

    /// The pool's size (for error messages).
    pub(crate) fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// A session holding no lock: the most recently used clean one, else a
    /// new connection. A checkout that waits for a pool slot also takes a
    /// session kept in the meantime.
    ///
    /// A new connection is opened on its own task: if the caller is dropped
    /// while it connects (a cancelled acquisition), the finished session
    /// holds no lock and is kept for the next checkout instead of being
    /// thrown away half-open. Under cancellations a connect storm (one new
    /// server process per cancelled attempt) is what ended in refused or
    /// reset connections.
    ///
    /// A checkout starts at most one such task, however often a kept
    /// session wakes it and another checkout takes that session first: on a
    /// full pool every wake used to start one more, each parked on the pool
    /// until the timeout (thousands per second with 64 callers on 50
    /// sessions).
    pub(crate) async fn checkout(self: &Arc<Self>) -> Result<Checkout, sqlx::Error> {
        let mut opening = None;
        loop {
            if let Some(kept) = self.pop_alive().await {
                return Ok(kept);
            }
            // Listen for a kept session before looking once more, so one
            // kept in between is not missed.
            let kept = self.kept.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(kept) = self.pop_alive().await {
                return Ok(kept);
            }
            let opened = opening.get_or_insert_with(|| self.open_for_caller());
            tokio::select! {
                opened = &mut opened.answer => match opened {
                    Ok(opened) => {
                        return opened.map(|session| Checkout {
                            session,
                            reused: false,
                            pid: None,
                            epoch: None,
                        });
                    }
                    // The connecting task panicked or its runtime is ending.
                    Err(_) => return Err(sqlx::Error::PoolClosed),
                },
                () = &mut kept => {}
            }
        }
    }

    /// Opens a session on a task of its own, answering through the returned
    /// [`Opening`]; a session whose caller left holds no lock and is kept.
    fn open_for_caller(self: &Arc<Self>) -> Opening {
        let (answer, opened) = tokio::sync::oneshot::channel();
        let sessions = self.clone();
        tokio::spawn(async move {
            let session = sessions.open().await;
            if let Err(Ok(session)) = answer.send(session) {
                sessions.checkin(session, None, None);
            }
        });
        Opening {
            answer: opened,
            sessions: self.clone(),
        }
    }

    /// Whether a waiter entry (core's [`waits`](leasehold_core::waits)
    /// registry: bookkeeping, one pinned session per waiting call) may take
    /// a session: only while fewer than half the sessions are in use
    /// (pinned to leases, queued or mid-call; kept clean ones do not
    /// count). Entries pin sessions like locks, and with many waiters they
    /// took the sessions the waits themselves needed (64 waiters on one key
    /// and the default 50 sessions: one call waited past 30 s).
    pub(crate) fn room_for_bookkeeping(&self) -> bool {
        let kept = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len() as u32;
        self.pool.size().saturating_sub(kept) < self.max_connections() / 2
    }

    /// A place in the server's lock queue, given back when dropped; `None`
    /// when half the sessions already wait there, so waiters never take
    /// every session from callers that would be granted at once (the rest
    /// wait with core's notified loop).
    pub(crate) fn queue_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.queue_slots.clone().try_acquire_owned().ok()
    }

    /// The settings a fresh session has, once a session has been opened.
    pub(crate) fn defaults(&self) -> Option<&SessionDefaults> {
        self.defaults.get()
    }

    /// A new session; the first one also reads [`SessionDefaults`].
    async fn open(&self) -> Result<PgListener, sqlx::Error> {
        let mut session = PgListener::connect_with(&self.pool).await?;
        session.eager_reconnect(false);
        session.ignore_pool_close_event(true);
        if self.defaults.get().is_none() {
            let (idle, lock_timeout, check_interval, application_name): (
                String,
                String,
                String,
                String,
            ) = sqlx::query_as(
                "SELECT current_setting('idle_session_timeout'), \
                     current_setting('lock_timeout'), \
                     current_setting('client_connection_check_interval'), \
                     current_setting('application_name')",
            )
            .fetch_one(&mut session)
            .await?;
            let _ = self.defaults.set(SessionDefaults {
                idle,
                lock_timeout,
                check_interval,
                application_name,
            });
        }
        Ok(session)
    }

    /// The most recently kept session that still looks alive.
    async fn pop_alive(&self) -> Option<Checkout> {
        loop {
            let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Kept {
                mut session,
                pid,
                epoch,
                since,
            } = popped?;
            if since.elapsed() > IDLE_LIMIT {
                continue;
            }
            // A free liveness check: one poll of a read. A socket that
            // already reported end-of-stream answers at once; a live one is
            // left unread (the read is cancel-safe). Not a zero-length
            // `timeout`: Tokio's timer rounds it up to its next millisecond.
            let probe = {
                let mut read = std::pin::pin!(session.try_recv());
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            };
            match probe {
                Poll::Pending | Poll::Ready(Ok(Some(_))) => {
                    return Some(Checkout {
                        session,
                        reused: true,
                        pid,
                        epoch,
                    });
                }
                Poll::Ready(Ok(None) | Err(_)) => continue,
            }
        }
    }

    /// Keeps a session that holds no lock for reuse, with its server pid
    /// and the store epoch a grant on it read, when known, and closes kept
    /// ones idle for longer than [`IDLE_LIMIT`] (the oldest are at the
    /// bottom).
    pub(crate) fn checkin(&self, session: PgListener, pid: Option<i32>, epoch: Option<i64>) {
        let stale: Vec<_> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let fresh_from = idle
                .iter()
                .position(|kept| kept.since.elapsed() <= IDLE_LIMIT)
                .unwrap_or(idle.len());
            let stale = idle.drain(..fresh_from).collect();
            idle.push(Kept {
                session,
                pid,
                epoch,
                since: Instant::now(),
            });
            stale
        };
        // One session kept, one waiting checkout woken (a woken one that
        // leaves without it passes the wake on).
        self.kept.notify_one();
        // Dropped outside the lock: each drop spawns the connection's close.
        drop(stale);
    }
}

/// Why a lease's session is over, for calls that come after.
#[derive(Clone, Debug)]
enum Ended {
    Released,
    Lost(String),
}

/// A lease's handle: the channel to the task that owns its session. Dropping
/// the last copy of the lease drops the channel, and the task closes the
/// session (never reused), which frees the lock.
pub(crate) struct Pinned {
    requests: mpsc::UnboundedSender<Request>,
    ended: Arc<Mutex<Option<Ended>>>,
    pub(crate) id: i64,
    pub(crate) pid: i32,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

enum Request {
    Extend {
        ttl: Duration,
        reply: oneshot::Sender<Result<(), LockError>>,
    },
    Release {
        reply: oneshot::Sender<Result<(), LockError>>,
    },
}

/// Where a renewal or release asked of a lease's task stands.
pub(crate) struct Asked {
    reply: oneshot::Receiver<Result<(), LockError>>,
    ended: Arc<Mutex<Option<Ended>>>,
    release: bool,
    key: String,
}

impl Asked {
    /// The task's answer; if the task is gone, why the session ended.
    pub(crate) async fn answer(self) -> Result<(), LockError> {
        match self.reply.await {
            Ok(answer) => answer,
            Err(_) => Err(gone(&self.ended, self.release, &self.key)),
        }
    }
}

/// The error for a call on a lease whose session is over.
fn gone(ended: &Mutex<Option<Ended>>, release: bool, key: &str) -> LockError {
    let ended = ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match (ended, release) {
        (Some(Ended::Lost(reason)), _) => LockError::lost(ADVISORY, key, reason),
        (_, true) => LockError::not_held(ADVISORY, key),
        (Some(Ended::Released), false) => LockError::lost(ADVISORY, key, "the lease was released"),
        (None, false) => LockError::lost(ADVISORY, key, "the lease's session is closed"),
    }
}

impl Pinned {
    /// Starts the task that owns `session` (server pid `pid`, whose grant
    /// read store epoch `epoch`), which holds the advisory lock `held`
    /// (which id, in which mode, and whose release signal its release
    /// sends), and fires `lost` when the session ends.
    pub(crate) fn start(
        sessions: Arc<Sessions>,
        session: PgListener,
        key: String,
        held: Held,
        (pid, epoch): (i32, Option<i64>),
        lost: CancellationToken,
    ) -> Pinned {
        let (requests, inbox) = mpsc::unbounded_channel();
        let ended = Arc::new(Mutex::new(None));
        let id = held.id;
        let task = Task {
            sessions,
            key,
            id,
            shared: held.shared,
            signal: held.signal,
            waiters_hold: held.waiters_hold,
            pid,
            epoch,
            lost,
            ended: ended.clone(),
        };
        tokio::spawn(task.serve(session, inbox));
        Pinned {
            requests,
            ended,
            id,
            pid,
        }
    }

    /// Asks the task to check the lock is still held and restart the idle
    /// clock at `ttl`. Sending never waits; the answer comes from
    /// [`Asked::answer`], so several leases renew concurrently.
    pub(crate) fn extend(&self, key: &str, ttl: Duration) -> Asked {
        let (reply, answer) = oneshot::channel();
        let _ = self.requests.send(Request::Extend { ttl, reply });
        self.asked(answer, false, key)
    }

    /// Asks the task to unlock and end the lease.
    pub(crate) fn release(&self, key: &str) -> Asked {
        let (reply, answer) = oneshot::channel();
        let _ = self.requests.send(Request::Release { reply });
        self.asked(answer, true, key)
    }

    fn asked(
        &self,
        reply: oneshot::Receiver<Result<(), LockError>>,
        release: bool,
        key: &str,
    ) -> Asked {
        Asked {
            reply,
            ended: self.ended.clone(),
            release,
            key: key.to_owned(),
        }
    }
}

/// The advisory lock a pinned session holds: its id, whether it is held
/// shared (a reader's), and the id whose release signal
/// ([`signal_name`]) its release sends (the key's mutex id, which every
/// waiter of the key listens to).
pub(crate) struct Held {
    pub(crate) id: i64,
    pub(crate) shared: bool,
    pub(crate) signal: i64,
    /// The advisory id that every waiter for this lock's release holds
    /// shared while it waits: a mutex's or a semaphore's mark
    /// ([`crate::marks`]), a reader–writer lock's writer gate for a reader.
    /// Its release signals only while someone holds that id (it tries the
    /// id exclusively, for the statement). `None`: it always signals (a
    /// writer's release wakes waiting readers, which hold nothing).
    pub(crate) waiters_hold: Option<i64>,
}

impl Held {
    /// The key's mutex, advisory lock `id`, which signals its own release
    /// to the waiters that marked it.
    pub(crate) fn mutex(id: i64) -> Held {
        Held {
            id,
            shared: false,
            signal: id,
            waiters_hold: Some(mark_id(id)),
        }
    }
}

struct Task {
    sessions: Arc<Sessions>,
    key: String,
    id: i64,
    shared: bool,
    signal: i64,
    waiters_hold: Option<i64>,
    pid: i32,
    epoch: Option<i64>,
    lost: CancellationToken,
    ended: Arc<Mutex<Option<Ended>>>,
}

impl Task {
    fn end(&self, ended: Ended) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended);
    }

    /// The lock is gone: record why, fire the loss signal, and close the
    /// session by dropping it (the private pool never reuses it).
    fn lose(&self, reason: String) -> LockError {
        tracing::debug!(key = %self.key, pid = self.pid, %reason, "advisory lease lost");
        self.end(Ended::Lost(reason.clone()));
        self.lost.cancel();
        LockError::lost(ADVISORY, &self.key, reason)
    }

    async fn serve(self, mut session: PgListener, mut inbox: mpsc::UnboundedReceiver<Request>) {
        let timeout = self.sessions.timeout;
        loop {
            tokio::select! {
                // Requests first: a waiting renewal is never starved by reads.
                biased;
                request = inbox.recv() => match request {
                    None => {
                        tracing::debug!(key = %self.key, pid = self.pid, "lease dropped unreleased; closing its session");
                        self.end(Ended::Released);
                        return;
                    }
                    Some(Request::Extend { ttl, reply }) => {
                        let (hi, lo) = halves(self.id);
                        let held = sqlx::query_as::<_, (bool, String)>(HELD_SQL)
                            .bind(hi)
                            .bind(lo)
                            .bind(idle_timeout(ttl))
                            .fetch_one(&mut session);
                        let answer = match tokio::time::timeout(timeout, held).await {
                            Ok(Ok((true, _))) => Ok(()),
                            Ok(Ok((false, _))) => {
                                let _ = reply.send(Err(self.lose(
                                    "the session no longer holds the advisory lock".into(),
                                )));
                                return;
                            }
                            Ok(Err(error)) if session_ended(&error) => {
                                let _ = reply.send(Err(self.lose(format!("the session ended: {error}"))));
                                return;
                            }
                            Ok(Err(error)) => Err(map(ADVISORY, error)),
                            // The session may still be fine (a slow or paused
                            // server): keep it; its reply is read and skipped.
                            Err(_) => Err(timed_out(timeout)),
                        };
                        let _ = reply.send(answer);
                    }
                    Some(Request::Release { reply }) => {
                        let _ = reply.send(self.release(session, timeout).await);
                        return;
                    }
                },
                read = session.try_recv() => match read {
                    // We LISTEN on nothing; ignore whatever arrives.
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.lose("the session ended: the server closed the connection".into());
                        return;
                    }
                    Err(error) => {
                        self.lose(format!("the session ended: {error}"));
                        return;
                    }
                }
            }
        }
    }

    /// Unlocks. Only a confirmed unlock keeps the session for reuse; after
    /// anything else the session is closed, which frees the lock if it was
    /// still held. Either way the lease is over.
    async fn release(&self, mut session: PgListener, timeout: Duration) -> Result<(), LockError> {
        let (sql, signal) = if self.shared {
            (RELEASE_SHARED_SQL, true)
        } else {
            (RELEASE_SQL, !self.sessions.waiter_queued(self.id))
        };
        let unlock = sqlx::query_as::<
            _,
            (
                bool,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ),
        >(sql)
        .bind(self.id)
        .bind(&self.sessions.channel)
        .bind(signal_name(self.signal))
        .bind(self.sessions.defaults().map_or("0", |d| d.idle.as_str()))
        .bind(
            self.sessions
                .defaults()
                .map_or("", |d| d.application_name.as_str()),
        )
        .bind(signal)
        .bind(self.waiters_hold)
        .fetch_one(&mut session);
        match tokio::time::timeout(timeout, unlock).await {
            Ok(Ok((true, ..))) => {
                self.end(Ended::Released);
                self.sessions.checkin(session, Some(self.pid), self.epoch);
                Ok(())
            }
            Ok(Ok((false, ..))) => {
                self.lose("the session no longer held the advisory lock at release".into());
                Err(LockError::not_held(ADVISORY, &self.key))
            }
            Ok(Err(error)) if session_ended(&error) => {
                Err(self.lose(format!("the session ended before release: {error}")))
            }
            Ok(Err(error)) => {
                self.lose(format!("release failed: {error}"));
                Err(map(ADVISORY, error))
            }
            Err(_) => {
                self.lose("release got no answer; the session was closed".into());
                Err(timed_out(timeout))
            }
        }
    }
}

/// The error of a call on a session that got no answer within `timeout`.
pub(crate) fn timed_out(timeout: Duration) -> LockError {
    LockError::unavailable(
        ADVISORY,
        format!("no answer within the operation timeout of {timeout:?}"),
    )
}
