//! The backend's plumbing: the state every call shares ([`Shared`]: pool,
//! settings, statements, in-process release hub), and named mode's pinned
//! sessions and their watchers.
//!
//! # Named mode's sessions
//! One task per held lease owns the lease's connection (its *session*),
//! serves its renewals and its release. sqlx cannot wait on an idle MySQL
//! connection's socket, so the session is watched from a second connection:
//! at acquire the session also takes a per-lease *alive lock*
//! (`leasehold-alive:<owner token>`, nobody else's name, never reused: a
//! session reused for the next lease must not meet the last lease's watcher
//! on it), and a watcher
//! connection blocks in `GET_LOCK` on that name. The server grants it the
//! moment the session ends (killed, idle past `wait_timeout`, connection
//! closed or reset) or releases it (only our own release does), so the
//! watcher's answer fires the lease's loss signal at once, with no polling.
//! A watcher whose own connection fails makes the task probe the session
//! (still holding the lock? then a new watcher); a server restart ends both,
//! and the probe's failure fires the signal.
//!
//! A lease's watcher starts only once the lease has lived [`WATCH_AFTER`]:
//! a watcher costs a connection and two statements (`GET_LOCK`, then
//! `RELEASE_LOCK` once granted), and most leases of a busy service end
//! sooner. A session that ends inside that time is found when the watcher
//! starts (its `GET_LOCK` is granted at once), so the loss signal fires at
//! most [`WATCH_AFTER`] later than it would have. A watcher still waiting
//! for a connection when its lease ends gives up and takes none. (Started
//! at once, every lease's watcher ran its course after the lease was
//! gone: with more leases than watcher connections, watchers of released
//! leases queued for connections, the live leases' watchers timed out
//! waiting behind them, and each timeout held up its lease's task, so at
//! 64 tasks on the default 50 sessions calls failed `Unavailable`.)
//!
//! # Never a locked connection back in a pool
//! Sessions come from a private pool whose `after_release` hook closes
//! *every* connection handed back to it. Clean sessions (unlocked, or whose
//! lock attempt was refused) are kept for reuse in [`Sessions`] instead:
//! nothing but a confirmed `RELEASE_LOCK` (or a refused attempt) puts a
//! session back on that list. Watchers come from a second private pool with
//! the same rule; one whose alive lock was given back is kept for reuse.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold_core::known::KnownKeys;
use leasehold_core::relay::{Lent, Relay};
use leasehold_core::{LockError, OwnerToken, ReleaseHub};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlPool};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{MysqlConfig, NAMED, Settings};
use crate::error::{map, session_ended};

/// The statements of one mode, built once per backend.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub(crate) acquire: String,
    pub(crate) insert: String,
    pub(crate) holder: String,
    pub(crate) extend: String,
    pub(crate) release: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) evict: String,
    pub(crate) bump: String,
    /// Named mode: the key's row in the keys' table, at its first grant.
    pub(crate) register: String,
    /// Named mode: the fencing epoch's statements.
    pub(crate) epoch: crate::epoch::EpochSql,
}

/// What every call of one backend shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: MySqlPool,
    /// The same pool, relaying connections between table mode's calls
    /// unpinged ([`Relay`]).
    pub(crate) relay: Relay<MySql>,
    pub(crate) options: Settings,
    pub(crate) sql: Sql,
    pub(crate) config: MysqlConfig,
    /// Wakes this backend's waiters when it releases a key (MySQL has no
    /// release notifications; other processes' waiters poll).
    pub(crate) hub: ReleaseHub,
    /// Named mode's pinned sessions (`None` in table mode).
    pub(crate) sessions: Option<Arc<Sessions>>,
    /// Table mode's reader–writer and semaphore statements (`None` in
    /// named mode).
    pub(crate) kinds: Option<crate::kinds::KindsSql>,
}

impl Shared {
    /// A connection for one table-mode call's statements, run with
    /// [`Lent::run`]: a call that ends in an answer gives it back, so a
    /// call waiting for one takes it unpinged; a failed one drops it.
    pub(crate) async fn connection(
        &self,
        backend: &'static str,
    ) -> Result<Lent<'_, MySql>, LockError> {
        self.relay.take().await.map_err(|e| map(backend, e))
    }

    pub(crate) fn sessions(&self) -> Result<&Arc<Sessions>, LockError> {
        self.sessions
            .as_ref()
            .ok_or_else(|| LockError::Config("named sessions used by a table-mode backend".into()))
    }
}

/// A clean session unused for this long is closed instead of reused.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// How long a watcher's `GET_LOCK` waits before asking again (seconds).
const WATCH_CHUNK_SECS: i64 = 3600;

/// How long a lease lives before its watcher starts (see the module docs):
/// the most its loss signal can come late.
const WATCH_AFTER: Duration = Duration::from_millis(100);

/// The pause before a new watcher after one failed while the session still
/// held the lock (e.g. no free connection for one), so failing watchers
/// are no busy loop.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The alive lock of the lease owned by `owner` (48 characters).
pub(crate) fn alive_lock(owner: &OwnerToken) -> String {
    format!("leasehold-alive:{}", owner.to_hex())
}

/// The TTL as `wait_timeout`: whole seconds, rounded up, at least 1 (the
/// server counts in seconds; it never ends the session inside the TTL).
pub(crate) fn wait_timeout(ttl: Duration) -> u64 {
    ttl.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

/// A connection of the private pool with what we know of its server
/// session: its connection id and its `wait_timeout`.
pub(crate) struct Session {
    pub(crate) conn: PoolConnection<MySql>,
    pub(crate) id: u64,
    wait_timeout: u64,
}

impl Session {
    /// Sets the session's `wait_timeout` for `ttl` (a round trip only when
    /// it changes).
    pub(crate) async fn set_wait_timeout(&mut self, ttl: Duration) -> Result<(), sqlx::Error> {
        let secs = wait_timeout(ttl);
        if self.wait_timeout != secs {
            sqlx::query("SET SESSION wait_timeout = ?")
                .bind(secs)
                .execute(&mut *self.conn)
                .await?;
            self.wait_timeout = secs;
        }
        Ok(())
    }
}

fn private_pool(connect: MySqlConnectOptions, max: u32, timeout: Duration) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(timeout)
        .test_before_acquire(false)
        // Whatever comes back to this pool may hold a lock: close it.
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_lazy_with(connect)
}

/// Named mode's sessions: a private pool for the sessions that hold locks,
/// one for their watchers, and the clean ones of each kept for reuse.
pub(crate) struct Sessions {
    pool: MySqlPool,
    idle: Mutex<Vec<(Session, Instant)>>,
    /// Wakes checkouts waiting on a full pool when a session is kept.
    kept: Notify,
    watchers: MySqlPool,
    idle_watchers: Mutex<Vec<PoolConnection<MySql>>>,
    /// Wakes watchers waiting on a full pool when a watcher is kept.
    kept_watchers: Notify,
    pub(crate) timeout: Duration,
    /// The lock names of the keys this backend saw named in the keys'
    /// table, which `list` reads: a grant of any other key names it there.
    pub(crate) registered: KnownKeys<String>,
}

/// A connection kept by `pop`, else a new one from `pool`. A kept
/// connection holds its pool slot and never goes back to the pool, so a
/// checkout waiting on a full pool would not see one being kept (with more
/// tasks than connections, attempts failed `Unavailable` while sessions sat
/// idle): it also wakes on `kept` and looks again.
///
/// The wait asks the pool once and keeps asking through every wake-up: an
/// ask dropped while the pool was opening its connection throws that
/// connection away and frees its slot for the next waiter's ask. (Asked
/// anew at each wake-up, with 64 tasks on 50 sessions, every kept session
/// woke the waiters and each dropped the connection it was opening: about
/// 10,000 connections opened in a 6 s benchmark window.)
async fn kept_or_new<T>(
    pool: &MySqlPool,
    kept: &Notify,
    pop: impl Fn() -> Option<T>,
) -> Result<Result<T, PoolConnection<MySql>>, sqlx::Error> {
    if let Some(item) = pop() {
        return Ok(Ok(item));
    }
    let acquire = pool.acquire();
    tokio::pin!(acquire);
    loop {
        // Listen before looking once more, so one kept in between is not
        // missed.
        let notified = kept.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(item) = pop() {
            return Ok(Ok(item));
        }
        tokio::select! {
            conn = &mut acquire => return conn.map(Err),
            () = &mut notified => {}
        }
    }
}

impl std::fmt::Debug for Sessions {
    // The pools' connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        let watchers = std::mem::take(
            self.idle_watchers
                .get_mut()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            drop((idle, watchers));
        } else {
            // sqlx closes a dropped connection on a spawned task and panics
            // without a runtime; the process is ending and the operating
            // system closes the sockets.
            std::mem::forget((idle, watchers));
        }
    }
}

impl Sessions {
    /// Sessions to `connect`, at most `max` at once (held leases plus clean
    /// sessions kept for reuse), and as many watchers; `timeout` bounds
    /// waiting for a slot.
    pub(crate) fn new(connect: MySqlConnectOptions, max: u32, timeout: Duration) -> Self {
        Sessions {
            pool: private_pool(connect.clone(), max, timeout),
            idle: Mutex::new(Vec::new()),
            kept: Notify::new(),
            watchers: private_pool(connect, max, timeout),
            idle_watchers: Mutex::new(Vec::new()),
            kept_watchers: Notify::new(),
            timeout,
            registered: KnownKeys::default(),
        }
    }

    /// The pool's size (for error messages).
    pub(crate) fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// A session holding no lock: the most recently kept clean one, else a
    /// new connection (its id read once). `true` when reused (it may have
    /// died while idle: the caller retries once it fails with a session
    /// error).
    pub(crate) async fn checkout(&self) -> Result<(Session, bool), sqlx::Error> {
        let pop = || loop {
            let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match popped {
                Some((_, since)) if since.elapsed() > IDLE_LIMIT => continue,
                Some((session, _)) => return Some(session),
                None => return None,
            }
        };
        let mut conn = match kept_or_new(&self.pool, &self.kept, pop).await? {
            Ok(session) => return Ok((session, true)),
            Err(conn) => conn,
        };
        let id: u64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS UNSIGNED)")
            .fetch_one(&mut *conn)
            .await?;
        let wait_timeout: u64 =
            sqlx::query_scalar("SELECT CAST(@@SESSION.wait_timeout AS UNSIGNED)")
                .fetch_one(&mut *conn)
                .await?;
        Ok((
            Session {
                conn,
                id,
                wait_timeout,
            },
            false,
        ))
    }

    /// Keeps a session that holds no lock for reuse, and closes kept ones
    /// idle for longer than [`IDLE_LIMIT`] (the oldest are at the bottom).
    pub(crate) fn checkin(&self, session: Session) {
        let stale: Vec<_> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let fresh_from = idle
                .iter()
                .position(|(_, since)| since.elapsed() <= IDLE_LIMIT)
                .unwrap_or(idle.len());
            let stale = idle.drain(..fresh_from).collect();
            idle.push((session, Instant::now()));
            stale
        };
        self.kept.notify_waiters();
        drop(stale);
    }

    async fn watcher(&self) -> Result<PoolConnection<MySql>, sqlx::Error> {
        let pop = || {
            self.idle_watchers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
        };
        kept_or_new(&self.watchers, &self.kept_watchers, pop)
            .await
            .map(|conn| conn.unwrap_or_else(|new| new))
    }

    /// Blocks in `GET_LOCK(alive)` until the server grants it, which it
    /// does once the session holding it ends or releases it. `Ok(true)`
    /// means granted (the watcher gave it back and is kept); `Ok(false)`
    /// that the lease ended (`ended`) before a connection was free for the
    /// watcher, which then takes none; `Err` that the watcher itself failed
    /// (its connection is closed).
    async fn watch(
        self: Arc<Self>,
        alive: String,
        ended: CancellationToken,
    ) -> Result<bool, sqlx::Error> {
        let mut conn = tokio::select! {
            conn = self.watcher() => conn?,
            () = ended.cancelled() => return Ok(false),
        };
        loop {
            let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, ?) AS SIGNED)")
                .bind(&alive)
                .bind(WATCH_CHUNK_SECS)
                .fetch_one(&mut *conn)
                .await?;
            match got {
                Some(1) => break,
                Some(0) => continue,
                _ => return Err(sqlx::Error::Protocol("GET_LOCK answered NULL".into())),
            }
        }
        let back: Option<i64> = sqlx::query_scalar("SELECT CAST(RELEASE_LOCK(?) AS SIGNED)")
            .bind(&alive)
            .fetch_one(&mut *conn)
            .await?;
        if back == Some(1) {
            self.idle_watchers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            self.kept_watchers.notify_waiters();
        }
        Ok(true)
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
    /// The session's connection id (`CONNECTION_ID()`).
    pub(crate) id: u64,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("id", &self.id)
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
        (Some(Ended::Lost(reason)), _) => LockError::lost(NAMED, key, reason),
        (_, true) => LockError::not_held(NAMED, key),
        (Some(Ended::Released), false) => LockError::lost(NAMED, key, "the lease was released"),
        (None, false) => LockError::lost(NAMED, key, "the lease's session is closed"),
    }
}

impl Pinned {
    /// Starts the task that owns `session` (which holds the lock `name` and
    /// its alive lock) and fires `lost` when the session ends.
    pub(crate) fn start(
        sessions: Arc<Sessions>,
        session: Session,
        key: String,
        name: String,
        alive: String,
        lost: CancellationToken,
    ) -> Pinned {
        let (requests, inbox) = mpsc::unbounded_channel();
        let ended = Arc::new(Mutex::new(None));
        let id = session.id;
        let task = Task {
            sessions,
            key,
            name,
            alive,
            lost,
            ended: ended.clone(),
        };
        tokio::spawn(task.serve(session, inbox));
        Pinned {
            requests,
            ended,
            id,
        }
    }

    /// Asks the task to check the lock is still held and set the session's
    /// `wait_timeout` for `ttl`. Sending never waits; the answer comes from
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

/// Still held by this very session?
const HELD_SQL: &str = "SELECT CAST(COALESCE(IS_USED_LOCK(?) = CONNECTION_ID(), 0) AS SIGNED)";

/// Unlocks the key's lock and the session's alive lock (which wakes the
/// watcher), in one round trip.
const RELEASE_SQL: &str = "SELECT CAST(RELEASE_LOCK(?) AS SIGNED), CAST(RELEASE_LOCK(?) AS SIGNED)";

struct Task {
    sessions: Arc<Sessions>,
    key: String,
    name: String,
    alive: String,
    lost: CancellationToken,
    ended: Arc<Mutex<Option<Ended>>>,
}

/// What a lease's watcher reports ([`Sessions::watch`]), or `Err` if its
/// task is gone.
type Watched = Result<Result<bool, sqlx::Error>, oneshot::error::RecvError>;

impl Task {
    fn end(&self, ended: Ended) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended);
    }

    /// The lock is gone: record why, fire the loss signal, and close the
    /// session by dropping it (the private pool never reuses it).
    fn lose(&self, reason: String) -> LockError {
        tracing::debug!(key = %self.key, %reason, "named lease lost");
        self.end(Ended::Lost(reason.clone()));
        self.lost.cancel();
        LockError::lost(NAMED, &self.key, reason)
    }

    /// A watcher on the lease's alive lock, started after `delay`, on a
    /// task of its own (its blocking `GET_LOCK` must never be dropped
    /// mid-call, so dropping this future drops only the wait for its
    /// answer); it takes no connection once `ended` fires.
    async fn watch(&self, delay: Duration, ended: &CancellationToken) -> Watched {
        tokio::time::sleep(delay).await;
        let (done, watch) = oneshot::channel();
        let sessions = self.sessions.clone();
        let alive = self.alive.clone();
        let ended = ended.clone();
        tokio::spawn(async move {
            let _ = done.send(sessions.watch(alive, ended).await);
        });
        watch.await
    }

    async fn serve(self, mut session: Session, mut inbox: mpsc::UnboundedReceiver<Request>) {
        let timeout = self.sessions.timeout;
        // Fires when this task ends, however it ends: a watcher still
        // waiting for a connection then takes none.
        let ended = CancellationToken::new();
        let _ended = ended.clone().drop_guard();
        let watch = self.watch(WATCH_AFTER, &ended);
        tokio::pin!(watch);
        loop {
            tokio::select! {
                // Requests first: a waiting renewal is never starved.
                biased;
                request = inbox.recv() => match request {
                    None => {
                        tracing::debug!(key = %self.key, "lease dropped unreleased; closing its session");
                        self.end(Ended::Released);
                        return;
                    }
                    Some(Request::Extend { ttl, reply }) => {
                        match self.check(&mut session, Some(ttl), timeout).await {
                            Ok(()) => { let _ = reply.send(Ok(())); }
                            Err(Check::Lost(error)) => { let _ = reply.send(Err(error)); return; }
                            Err(Check::Failed(error)) => { let _ = reply.send(Err(error)); }
                        }
                    }
                    Some(Request::Release { reply }) => {
                        let _ = reply.send(self.release(session, timeout).await);
                        return;
                    }
                },
                watched = &mut watch => match watched {
                    // The server granted the alive lock: the session is over.
                    Ok(Ok(true)) => {
                        self.lose("the session ended (the server freed its locks)".into());
                        return;
                    }
                    // The watcher failed, not necessarily the session: ask it.
                    // (`Ok(false)` comes only once `ended` fired, after this
                    // task is gone.)
                    Ok(Ok(false) | Err(_)) | Err(_) => {
                        let pause = match self.check(&mut session, None, timeout).await {
                            Ok(()) => WATCH_RETRY_PAUSE,
                            Err(Check::Lost(_)) => return,
                            Err(Check::Failed(_)) => Duration::ZERO,
                        };
                        // The pause is the next watcher's delay, so requests
                        // are served during it.
                        watch.set(self.watch(pause, &ended));
                    }
                }
            }
        }
    }

    /// Checks the session still holds the lock (and sets its `wait_timeout`
    /// for `ttl`, if given).
    async fn check(
        &self,
        session: &mut Session,
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), Check> {
        match tokio::time::timeout(timeout, held(session, &self.name, ttl)).await {
            Ok(Ok(1)) => Ok(()),
            Ok(Ok(_)) => Err(Check::Lost(
                self.lose("the session no longer holds the lock".into()),
            )),
            Ok(Err(error)) if session_ended(&error) => Err(Check::Lost(
                self.lose(format!("the session ended: {error}")),
            )),
            Ok(Err(error)) => Err(Check::Failed(map(NAMED, error))),
            // The session may still be fine (a slow or paused server).
            Err(_) => Err(Check::Failed(timed_out(timeout))),
        }
    }

    /// Unlocks. Only a confirmed unlock keeps the session for reuse; after
    /// anything else the session is closed, which frees the lock if it was
    /// still held. Either way the lease is over.
    async fn release(&self, mut session: Session, timeout: Duration) -> Result<(), LockError> {
        match tokio::time::timeout(timeout, unlock(&mut session, &self.name, &self.alive)).await {
            Ok(Ok((Some(1), Some(1)))) => {
                self.end(Ended::Released);
                self.sessions.checkin(session);
                Ok(())
            }
            Ok(Ok((Some(1), _))) => {
                // Unlocked, but the alive lock was not ours: close it.
                self.end(Ended::Released);
                Ok(())
            }
            Ok(Ok(_)) => {
                self.lose("the session no longer held the lock at release".into());
                Err(LockError::not_held(NAMED, &self.key))
            }
            Ok(Err(error)) if session_ended(&error) => {
                Err(self.lose(format!("the session ended before release: {error}")))
            }
            Ok(Err(error)) => {
                self.lose(format!("release failed: {error}"));
                Err(map(NAMED, error))
            }
            Err(_) => {
                self.lose("release got no answer; the session was closed".into());
                Err(timed_out(timeout))
            }
        }
    }
}

/// Releases the lock `name` and the lease's alive lock.
async fn unlock(
    session: &mut Session,
    name: &str,
    alive: &str,
) -> Result<(Option<i64>, Option<i64>), sqlx::Error> {
    sqlx::query_as(RELEASE_SQL)
        .bind(name)
        .bind(alive)
        .fetch_one(&mut *session.conn)
        .await
}

/// Whether `session` still holds the lock `name`, after setting its
/// `wait_timeout` for `ttl` (if given).
async fn held(
    session: &mut Session,
    name: &str,
    ttl: Option<Duration>,
) -> Result<i64, sqlx::Error> {
    if let Some(ttl) = ttl {
        session.set_wait_timeout(ttl).await?;
    }
    sqlx::query_scalar::<_, i64>(HELD_SQL)
        .bind(name)
        .fetch_one(&mut *session.conn)
        .await
}

/// Why a session check failed: the lock is gone (the loss signal fired), or
/// the check itself failed and the lease may still be fine.
enum Check {
    Lost(LockError),
    Failed(LockError),
}

fn timed_out(timeout: Duration) -> LockError {
    LockError::unavailable(
        NAMED,
        format!("no answer within the operation timeout of {timeout:?}"),
    )
}
