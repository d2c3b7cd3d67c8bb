//! Reader–writer locks and counting semaphores, in both modes: what the
//! modes share (the store names of the two families, the shared-grant
//! table, the waiting loop with its writer registration), the dispatch from
//! [`PostgresBackend`](crate::PostgresBackend), and each mode's algorithm
//! (`kinds/table.rs`, `kinds/advisory.rs`).
//!
//! The mutex, the reader–writer lock and the semaphore of one key are
//! independent: each family has its own rows and a counter row of its own
//! in the shared-grant table (table mode) or its own advisory ids (advisory
//! mode, whose tokens come from the store's sequence), so `inspect`, `list`
//! and `force_release` keep seeing mutexes only.

mod advisory;
mod table;

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, Lease, LockError, LockKind, OwnerToken, WaitPolicy, cancel_safe};
use sha2::{Digest, Sha256};

use crate::config::{Mode, Settings};
use crate::store::Shared;

/// The reader–writer and semaphore statements, built once per backend
/// ([`crate::store::Sql`]); only the backend's own mode's are filled in.
#[derive(Debug, Default)]
pub(crate) struct KindSql {
    advisory: advisory::Attempts,
    table: table::Statements,
}

impl KindSql {
    /// Advisory mode's attempt statements.
    pub(crate) fn advisory(settings: &Settings) -> Self {
        KindSql {
            advisory: advisory::Attempts::new(settings),
            ..KindSql::default()
        }
    }

    /// Table mode's statements on the shared-grant table.
    pub(crate) fn table(settings: &Settings) -> Self {
        KindSql {
            table: table::Statements::new(settings),
            ..KindSql::default()
        }
    }
}

/// The family a grant of `kind` belongs to, as stored: `r` for the
/// reader–writer lock, `s` for the semaphore.
fn family(kind: LockKind) -> &'static str {
    if kind.is_rw() { "r" } else { "s" }
}

/// A grant's kind as stored in table mode: `r` reader, `w` writer, `p`
/// permit (`q` is a waiting writer's registration, `c` the counter row).
fn kind_code(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Read => "r",
        LockKind::Write => "w",
        _ => "p",
    }
}

/// The advisory lock id of one part of a reader–writer lock or semaphore:
/// the first 8 bytes of `SHA-256("leasehold\0" || u32_be(len(namespace)) ||
/// namespace || key || "\0" || part || u32_be(slot))`. Never a mutex's id
/// ([`advisory_lock_id`](crate::advisory_lock_id) hashes no NUL after the
/// namespace, and keys hold none), and distinct per part and slot.
pub(crate) fn part_lock_id(namespace: &str, key: &str, part: &str, slot: u32) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"leasehold\0");
    hash.update((namespace.len() as u32).to_be_bytes());
    hash.update(namespace.as_bytes());
    hash.update(key.as_bytes());
    hash.update(b"\0");
    hash.update(part.as_bytes());
    hash.update(slot.to_be_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// One attempt at a reader, writer or permit grant in the backend's mode,
/// leaving nothing behind when refused. Runs through [`guarded`].
pub(crate) async fn attempt(
    shared: Arc<Shared>,
    key: Key,
    kind: LockKind,
    ttl: Duration,
    left: CallerLeft,
) -> Result<Lease, LockError> {
    match shared.options.mode {
        Mode::Advisory => advisory::try_acquire(&shared, &key, kind, ttl).await,
        Mode::Table => table::try_acquire(&shared, &key, kind, ttl, None, left).await,
    }
}

/// Waits for a grant of `kind` (a writer registers while it waits; see each
/// mode). `wait` has the backend's `poll` cap applied already.
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    key: &Key,
    kind: LockKind,
    ttl: Duration,
    wait: &WaitPolicy,
    backend: &crate::PostgresBackend,
) -> Result<Lease, LockError> {
    // A waiting writer's registration expires with the TTL unless an
    // attempt renews it: attempt at least twice per TTL.
    let wait = wait.polling_at(Some(ttl / 2));
    match (shared.options.mode, kind) {
        (Mode::Advisory, LockKind::Write) => {
            advisory::acquire_writer(shared, key, ttl, &wait, backend).await
        }
        (Mode::Advisory, LockKind::Permit { .. }) => {
            advisory::acquire_permit(shared, key, kind, ttl, &wait, backend).await
        }
        (Mode::Table, LockKind::Write) => {
            table::acquire_writer(shared, key, ttl, &wait, backend).await
        }
        _ => {
            leasehold_core::wait_for_grant(backend, key, &wait, || {
                guarded(shared, |left| {
                    attempt(shared.clone(), key.clone(), kind, ttl, left)
                })
            })
            .await
        }
    }
}

/// Releases a lease of any kind in the backend's mode.
pub(crate) async fn release_any(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    match (shared.options.mode, lease.kind()) {
        (Mode::Advisory, _) => crate::advisory::release(shared, lease).await,
        (Mode::Table, LockKind::Exclusive) => crate::table::release(shared, lease).await,
        (Mode::Table, _) => release(shared, lease).await,
    }
}

/// Runs one attempt so that a caller who leaves strands nothing.
///
/// Table mode: through core's [`cancel_safe`], on a task of its own; a
/// grant won after the caller left is released at once, and the attempt
/// learns when its caller left ([`CallerLeft`]).
///
/// Advisory mode: in the caller's own future. Whatever an attempt holds it
/// holds on a session the attempt owns until the lease does, and a dropped
/// session is closed, never reused (the private pool's `after_release`):
/// the server frees what it granted as that session ends, so there is
/// nothing to hand back. A task of its own cost each lock+unlock a spawn,
/// two channels and the moves of a large future: from a spawned task, the
/// backend's pair took 169 µs of client CPU and 1.73x the raw pair's p50,
/// against 83 µs for its statements sent from bare sqlx; inline, 67 µs and
/// 1.24x (`cargo run --release -p leasehold-benches --bin pg_lock_cost --
/// --samples 300`, its table from a spawned task, before and after,
/// 2026-12-02, 2 cores).
pub(crate) async fn guarded<A>(
    shared: &Arc<Shared>,
    attempt: impl FnOnce(CallerLeft) -> A,
) -> Result<Lease, LockError>
where
    A: std::future::Future<Output = Result<Lease, LockError>> + Send + 'static,
{
    if shared.options.mode == Mode::Advisory {
        return attempt(CallerLeft::inline()).await;
    }
    let (_caller_here, left) = tokio::sync::oneshot::channel();
    let back = shared.clone();
    cancel_safe(
        shared.options.mode.backend_name(),
        attempt(CallerLeft { caller: Some(left) }),
        move |lease| async move { release_any(&back, &lease).await },
    )
    .await
}

/// Tells an attempt that its caller left (dropped the call). A table-mode
/// attempt [`guarded`] runs to its end on a task of its own; one that has not asked
/// the store anything yet (still waiting for a session or a pooled
/// connection) stops instead: nothing was granted to give back, and
/// abandoned attempts no longer take connections ahead of the callers still
/// waiting (kept sessions, and sqlx's pooled connections, go to waiting
/// callers in arrival order).
pub(crate) struct CallerLeft {
    /// Ends (the sender is dropped, never used) when the caller leaves;
    /// `None` for an attempt run in its caller's own future.
    caller: Option<tokio::sync::oneshot::Receiver<std::convert::Infallible>>,
}

impl CallerLeft {
    /// For an attempt run in its caller's own future, which a caller that
    /// leaves drops: never resolves.
    pub(crate) fn inline() -> Self {
        CallerLeft { caller: None }
    }

    /// `connection` (a wait for a session or a pooled connection), unless
    /// the caller leaves first: then `Unavailable`, nothing having been asked.
    pub(crate) async fn unless_gone<T>(
        &mut self,
        backend: &'static str,
        connection: impl std::future::Future<Output = T>,
    ) -> Result<T, LockError> {
        tokio::select! {
            biased;
            connected = connection => Ok(connected),
            () = self.wait() => Err(LockError::unavailable(
                backend,
                "the caller left while the attempt waited for a connection; nothing was asked",
            )),
        }
    }

    /// Resolves once the caller has left.
    async fn wait(&mut self) {
        match &mut self.caller {
            // A receiver that has answered must not be polled again.
            Some(caller) if caller.is_terminated() => {}
            Some(caller) => {
                let _ = caller.await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Renews a reader, writer or permit lease (table mode; advisory leases
/// renew through their pinned session like the mutex).
pub(crate) async fn extend(
    shared: &Shared,
    lease: &Lease,
    ttl: Duration,
) -> Result<Lease, LockError> {
    table::extend(shared, lease, ttl).await
}

/// Releases a reader, writer or permit lease (table mode).
pub(crate) async fn release(shared: &Shared, lease: &Lease) -> Result<(), LockError> {
    table::release(shared, lease).await
}

/// The release signal of `key` (its mutex id's, which every waiter of the
/// key listens to, whatever the kind).
fn key_signal(settings: &Settings, key: &Key) -> String {
    crate::keys::signal_name(crate::advisory_lock_id(&settings.namespace, key.as_str()))
}

/// A fresh token naming a waiting writer's registration.
fn waiter_token() -> OwnerToken {
    OwnerToken::generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_never_meet_the_mutex_id_or_each_other() {
        let mutex = crate::advisory_lock_id("ns", "k");
        let rw = part_lock_id("ns", "k", "rw", 0);
        let gate = part_lock_id("ns", "k", "gate", 0);
        let slots: Vec<i64> = (0..4).map(|s| part_lock_id("ns", "k", "sem", s)).collect();
        let mut all = vec![mutex, rw, gate];
        all.extend(&slots);
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        assert_ne!(
            part_lock_id("ns", "k", "rw", 0),
            part_lock_id("nsk", "", "rw", 0)
        );
    }
}
