//! Waiter marks: how an advisory mutex release (or a semaphore permit's)
//! knows whether a waiter needs its signal.
//!
//! A `NOTIFY` is not free: it gives the release a transaction id, a commit
//! record and an entry in the server's notification queue, and notifying
//! commits take one lock in turn across the whole server. Most releases
//! have nobody to wake: the key was not contended, or its waiter is queued
//! in the server's own lock queue and is handed the lock at the unlock.
//! So a waiter that waits for the signal (core's notified loop: it could
//! not queue in the server) first *marks* the key, and a mutex release sends
//! its `NOTIFY` only while the key is marked.
//!
//! - The mark is the key's mark id ([`mark_id`], another advisory id) held
//!   shared on the backend's mark session, one connection of its own for
//!   all its waiters' marks (a waiter holds no session while it waits),
//!   from before the attempt whose refusal the waiter waits out until its
//!   wait ends.
//! - The release, in its one statement, unlocks first and then tries the
//!   mark id exclusively (`pg_try_advisory_xact_lock`, given back at the
//!   statement's commit): taken means nobody marked the key, so no
//!   `NOTIFY`.
//!
//! No signal is lost: the server's lock table is not versioned, so every
//! step sees the others at once. A mark taken before the release's check
//! makes it signal. A mark taken after the check follows the unlock, and so
//! does the waiter's next attempt, which finds the key free (or held by a
//! newer holder, whose release will see the mark).
//!
//! Should the mark session fail, its marks are gone until it reconnects
//! (the next mark opens it again and takes every live mark back): a waiter
//! that could not mark, or whose mark was gone at a release, finds the key
//! at its next poll. Latency, never a hang; the same holds for a waiter of
//! an older release of this crate, which does not mark.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use leasehold_core::{Lease, LockError};
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{OnceCell, mpsc, oneshot};

/// The advisory id that marks mutex `id` as waited for: the first 8 bytes of
/// `SHA-256("leasehold\0mark\0" || i64_be(id))`. Not a mutex's id nor a
/// part's of [`crate::kinds`]: theirs hash a namespace length of a few
/// bytes where this hashes `mark`.
pub(crate) fn mark_id(id: i64) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"leasehold\0mark\0");
    hash.update(id.to_be_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// A backend's waiter marks: the task that owns the mark session, started
/// by the first mark (and again if its runtime is gone).
pub(crate) struct Marks {
    connect: PgConnectOptions,
    timeout: Duration,
    task: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

impl std::fmt::Debug for Marks {
    // The connect options hold the password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

enum Command {
    Mark {
        id: i64,
        reply: oneshot::Sender<bool>,
    },
    Unmark {
        id: i64,
    },
}

/// A key marked as waited for, until dropped.
pub(crate) struct Mark {
    id: i64,
    task: mpsc::UnboundedSender<Command>,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let _ = self.task.send(Command::Unmark { id: self.id });
    }
}

impl Marks {
    /// Marks for sessions opened with `connect`, each statement bounded by
    /// `timeout`. Opens nothing until the first mark.
    pub(crate) fn new(connect: PgConnectOptions, timeout: Duration) -> Self {
        Marks {
            connect,
            timeout,
            task: Mutex::new(None),
        }
    }

    /// Marks mutex `id` (or a semaphore's first slot) as waited for
    /// ([`mark_id`]), once the server holds the mark; `None` when it could
    /// not be taken within the timeout (the session failed, the server is
    /// slow, or other marks queued ahead of this one): the waiter then
    /// relies on its polls.
    ///
    /// Cancel safety: a mark taken for a caller that left (or stopped
    /// waiting for it) is given back; one not yet taken is skipped.
    pub(crate) async fn mark(&self, id: i64) -> Option<Mark> {
        let id = mark_id(id);
        let (reply, answer) = oneshot::channel();
        let task = self.send(Command::Mark { id, reply })?;
        // Marks are taken one after another on one session: bounded here,
        // so a paused server costs a waiter the timeout, not the timeouts of
        // every mark queued ahead of it.
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(true)) => Some(Mark { id, task }),
            _ => None,
        }
    }

    /// What a notified waiter does with a refusal (`refused`): the first
    /// time, it marks `id` (kept in `mark` until the wait ends) and asks
    /// `again`, so a release between the refusal and the mark is not
    /// missed; after that, the refusal stands and the waiter waits for the
    /// signal its mark now brings.
    pub(crate) async fn after_refusal<F: Future<Output = Result<Lease, LockError>>>(
        &self,
        mark: &OnceCell<Option<Mark>>,
        id: i64,
        refused: LockError,
        again: F,
    ) -> Result<Lease, LockError> {
        if mark.initialized() {
            return Err(refused);
        }
        let _ = mark.set(self.mark(id).await);
        again.await
    }

    /// Sends `command` to the task, starting one if there is none or the
    /// last one's runtime is gone.
    fn send(&self, command: Command) -> Option<mpsc::UnboundedSender<Command>> {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        let command = match task.as_ref() {
            Some(sender) => match sender.send(command) {
                Ok(()) => return task.clone(),
                Err(mpsc::error::SendError(command)) => command,
            },
            None => command,
        };
        let (sender, commands) = mpsc::unbounded_channel();
        tokio::spawn(serve(self.connect.clone(), self.timeout, commands));
        sender.send(command).ok()?;
        *task = Some(sender.clone());
        Some(sender)
    }
}

/// The mark session's task: takes and gives back marks in the order asked,
/// and keeps count of the live ones to take them back after a reconnect.
/// Ends when the backend and every mark are gone, closing the session.
async fn serve(
    connect: PgConnectOptions,
    timeout: Duration,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut session = Session {
        connect,
        timeout,
        connection: None,
        live: HashMap::new(),
    };
    while let Some(command) = commands.recv().await {
        match command {
            Command::Mark { id, reply } => {
                // Its caller left or stopped waiting: nothing to take.
                if reply.is_closed() {
                    continue;
                }
                if !session.lock(id).await {
                    let _ = reply.send(false);
                    continue;
                }
                *session.live.entry(id).or_default() += 1;
                if reply.send(true).is_err() {
                    // The caller left: give the mark back.
                    session.unmark(id).await;
                }
            }
            Command::Unmark { id } => session.unmark(id).await,
        }
    }
}

/// The mark session and the marks it should hold (per mark id, how many).
struct Session {
    connect: PgConnectOptions,
    timeout: Duration,
    connection: Option<PgConnection>,
    live: HashMap<i64, u32>,
}

impl Session {
    /// Takes `id` shared once more, opening the session first if needed.
    /// `false` (and the session closed) on any failure.
    async fn lock(&mut self, id: i64) -> bool {
        self.run("SELECT pg_advisory_lock_shared($1)::text", id)
            .await
    }

    /// Gives one mark of `id` back.
    async fn unmark(&mut self, id: i64) {
        match self.live.get_mut(&id) {
            Some(1) => {
                self.live.remove(&id);
            }
            Some(n) => *n -= 1,
            None => return,
        }
        if self.connection.is_some() {
            self.run("SELECT pg_advisory_unlock_shared($1)::text", id)
                .await;
        }
    }

    /// Runs `sql` bound to `id` within the timeout; a session opened for it
    /// first takes back every live mark. `false`, and the session closed
    /// (its marks are gone with it), on failure.
    async fn run(&mut self, sql: &'static str, id: i64) -> bool {
        let done = tokio::time::timeout(self.timeout, async {
            if self.connection.is_none() {
                let mut connection = self.connect.connect().await?;
                let ids: Vec<i64> = self
                    .live
                    .iter()
                    .flat_map(|(&id, &n)| std::iter::repeat_n(id, n as usize))
                    .collect();
                if !ids.is_empty() {
                    sqlx::query(
                        "SELECT count(pg_advisory_lock_shared(i)) FROM unnest($1::int8[]) i",
                    )
                    .bind(ids)
                    .execute(&mut connection)
                    .await?;
                }
                self.connection = Some(connection);
            }
            let connection = self.connection.as_mut().expect("opened above");
            sqlx::query(sql).bind(id).execute(connection).await
        })
        .await;
        match done {
            Ok(Ok(_)) => true,
            failed => {
                tracing::debug!(
                    ?failed,
                    "the waiter mark session failed; its marks are gone"
                );
                // Dropped, not closed politely: it may be mid-statement.
                self.connection = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_ids_are_stable_and_apart_from_lock_ids() {
        // Pinned: releases and waiters of different versions must agree.
        assert_eq!(mark_id(42), -7_202_909_429_429_211_366);
        assert_ne!(mark_id(1), mark_id(2));
        let id = crate::advisory_lock_id("ns", "k");
        assert_ne!(mark_id(id), id);
    }
}
