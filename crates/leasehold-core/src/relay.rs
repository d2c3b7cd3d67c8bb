//! [`Relay`]: a sqlx pool whose connections go straight from a finished
//! call to the next waiting one (this crate's `sqlx` feature; the SQL
//! backends' statements run on it).
//!
//! # Why
//! sqlx 0.8 pings every connection handed back to its pool, on a task of
//! its own, before the pool's next waiter gets it (`PoolConnection`'s drop
//! → `return_to_pool` → `ping`: a `Sync` on Postgres, `COM_PING` on
//! MySQL). Under load, when every connection is busy and calls queue for
//! one, that ping is a round trip between any two statements on a
//! connection: the server answers three messages per lock+unlock pair
//! instead of two, and the queued call waits for it. A [`Relay`] hands a
//! connection whose statement finished cleanly to a call already queued
//! for one, unpinged; with nobody queued it goes back to the pool as
//! before, so an idle backend's connections get the pool's checks.
//!
//! # What stays the pool's
//! - The connection limit: every connection is one of the pool's. Only a
//!   call that finds the pool full waits for a handoff; while the pool has
//!   room, a call waits for the pool alone, which opens a connection for it
//!   (a connect cut short by a handoff would cost the server a session
//!   start for nothing and keep the pool small).
//! - A connection that a call dropped mid-statement (cancelled, timed out,
//!   failed) goes back to the pool, whose ping drains or closes it: only
//!   [`Lent::give_back`] relays, after a statement's answer was read.
//! - Its hooks and lifetime checks: a connection returns to the pool after
//!   at most [`MAX_RELAYS`] handoffs in a row, so `max_lifetime`,
//!   `after_release` and the pool's other callers (say, an application
//!   sharing the pool) get it back while calls keep queueing.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::oneshot;

use crate::LockError;

/// Handoffs in a row after which a connection goes back to the pool.
pub const MAX_RELAYS: u32 = 32;

/// A connection in flight from one call to the next, with the handoffs it
/// has made in a row.
type Handed<DB> = (PoolConnection<DB>, u32);

/// A sqlx pool with a queue of calls waiting for a connection: see the
/// [module docs](self).
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use leasehold_core::relay::Relay;
/// let relay = Relay::new(pool);
/// let mut connection = relay.take().await?;
/// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *connection).await?;
/// // Read to the end: hand it to a waiting call, else back to the pool.
/// connection.give_back();
/// # let _ = one; Ok(()) }
/// ```
pub struct Relay<DB: Database> {
    pool: Pool<DB>,
    /// Calls waiting for a connection, oldest first; a call that left (or
    /// got one from the pool) leaves a closed sender behind, skipped.
    waiting: Mutex<VecDeque<oneshot::Sender<Handed<DB>>>>,
}

impl<DB: Database> std::fmt::Debug for Relay<DB> {
    // The pool's connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("size", &self.pool.size())
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Relay<DB> {
    /// Relays the connections of `pool`.
    pub fn new(pool: Pool<DB>) -> Self {
        Relay {
            pool,
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    /// The pool it relays.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// A connection: an idle one of the pool's; while the pool has room, one
    /// it opens; else the first of a connection handed on by a finished
    /// call and one the pool takes back (bounded by its acquire timeout).
    ///
    /// Cancel safety: dropping the future loses nothing; a connection
    /// handed to a call that left goes back to the pool.
    pub async fn take(&self) -> Result<Lent<'_, DB>, sqlx::Error> {
        if let Some(connection) = self.pool.try_acquire() {
            return Ok(self.lent(connection, 0));
        }
        if self.pool.size() < self.pool.options().get_max_connections() {
            // The pool may open a connection for us: wait for it alone.
            // Raced against handoffs, every such connect was cut short and
            // the pool stayed at a connection or two under load.
            return Ok(self.lent(self.pool.acquire().await?, 0));
        }
        let (sender, mut handed) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.retain(|call| !call.is_closed());
            waiting.push_back(sender);
        }
        let acquire = self.pool.acquire();
        tokio::pin!(acquire);
        let (connection, relays) = tokio::select! {
            biased;
            handed = &mut handed => match handed {
                Ok(handed) => handed,
                // The queue let go of us unanswered (never, while we
                // borrow the relay): wait for the pool alone.
                Err(_) => (acquire.await?, 0),
            },
            acquired = &mut acquire => (acquired?, 0),
        };
        Ok(self.lent(connection, relays))
    }

    fn lent(&self, connection: PoolConnection<DB>, relays: u32) -> Lent<'_, DB> {
        Lent {
            relay: self,
            connection,
            relays,
        }
    }

    /// Hands `handed` to the oldest call still waiting; `Some` back when
    /// none is.
    fn hand_on(&self, mut handed: Handed<DB>) -> Option<Handed<DB>> {
        loop {
            let call = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()?;
            match call.send(handed) {
                Ok(()) => return None,
                // That call left or got one from the pool: the next.
                Err(back) => handed = back,
            }
        }
    }
}

/// A connection taken from a [`Relay`]. Dropped, it goes back to the pool
/// (pinged there); [`give_back`](Lent::give_back) relays it.
pub struct Lent<'a, DB: Database> {
    relay: &'a Relay<DB>,
    connection: PoolConnection<DB>,
    relays: u32,
}

impl<DB: Database> Lent<'_, DB> {
    /// The call is done with the connection and read every statement's
    /// answer: hands it to the oldest waiting call, unpinged, else (or
    /// after [`MAX_RELAYS`] handoffs in a row) back to the pool. Never
    /// call it after a failed or interrupted statement: drop instead.
    pub fn give_back(self) {
        if self.relays < MAX_RELAYS {
            // Unless a waiting call takes it, it comes back and drops into
            // the pool.
            drop(self.relay.hand_on((self.connection, self.relays + 1)));
        }
    }

    /// Runs one call's statements (`work`) on this connection, then gives
    /// it back ([`give_back`](Lent::give_back)) if they ended in an answer,
    /// a grant or a refusal ([`LockError::Contended`]), which leaves every
    /// statement read; after any other error the connection is dropped, to
    /// the pool, which pings it before anyone reuses it.
    pub async fn run<T>(
        mut self,
        work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, LockError>,
    ) -> Result<T, LockError> {
        let outcome = work(&mut *self.connection).await;
        if matches!(outcome, Ok(_) | Err(LockError::Contended { .. })) {
            self.give_back();
        }
        outcome
    }
}

impl<DB: Database> Deref for Lent<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.connection
    }
}

impl<DB: Database> DerefMut for Lent<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.connection
    }
}

impl<DB: Database> std::fmt::Debug for Lent<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("relays", &self.relays)
            .finish_non_exhaustive()
    }
}
