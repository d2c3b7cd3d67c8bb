//! Cancel-safe acquisitions: [`leasehold_core::cancel_safe`] with the
//! hand-over race closed.
//!
//! `leasehold_core::cancel_safe` (as of this commit) releases a late grant
//! only when its caller was gone *before* the attempt finished. When the
//! attempt finishes first and the caller is dropped after the answer was put
//! in the channel but before it read it (a `select!` whose other branch won
//! the same poll), the lease is dropped with the channel and the key stays
//! held until its TTL: the conformance case
//! `dropped_acquisition_leaves_the_key_free` hits that window. Here the
//! caller's side of the channel gives an unread lease back to the attempt's
//! task when it is dropped, and that task releases it. Same signature as the
//! core function, so switching back is a one-line change once core has the
//! fix.

use std::future::Future;

use leasehold_core::{Lease, LockError};
use tokio::sync::oneshot;

/// Runs `attempt` on its own task; a lease it wins that the caller never
/// receives (the caller dropped the future before the attempt finished, or
/// after it finished but before reading its answer) is handed to `release`
/// on that task at once.
pub(crate) async fn cancel_safe<A, R, RF>(
    backend: &'static str,
    attempt: A,
    release: R,
) -> Result<Lease, LockError>
where
    A: Future<Output = Result<Lease, LockError>> + Send + 'static,
    R: FnOnce(Lease) -> RF + Send + 'static,
    RF: Future<Output = Result<(), LockError>> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let (give_back, given_back) = oneshot::channel::<Lease>();
    tokio::spawn(async move {
        let unwanted = match reply.send(attempt.await) {
            // The caller was gone before the answer was ready.
            Err(Ok(lease)) => Some(lease),
            Err(Err(_)) => None,
            // Sent: the caller reads it (and drops `give_back`), or drops it
            // unread and hands the lease back here.
            Ok(()) => given_back.await.ok(),
        };
        if let Some(lease) = unwanted {
            let key = lease.key().clone();
            match release(lease).await {
                Ok(()) => {
                    tracing::debug!(backend, %key, "released a lease granted after its caller gave up")
                }
                Err(error) => {
                    tracing::warn!(backend, %key, %error, "could not release a lease granted after its caller gave up; it expires with its TTL")
                }
            }
        }
    });
    let mut pending = Pending {
        answer,
        give_back: Some(give_back),
    };
    (&mut pending.answer)
        .await
        .unwrap_or_else(|_| Err(LockError::backend(backend, "the acquisition task panicked")))
}

/// The caller's end: when dropped with an answer it has not read, it gives
/// the lease back to the attempt's task.
struct Pending {
    answer: oneshot::Receiver<Result<Lease, LockError>>,
    give_back: Option<oneshot::Sender<Lease>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // After `close`, the task can no longer send: an answer is either
        // here now or will never come (the task then releases it itself).
        self.answer.close();
        if let Ok(Ok(lease)) = self.answer.try_recv()
            && let Some(give_back) = self.give_back.take()
        {
            let _ = give_back.send(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use leasehold_core::{Key, LockBackend, MemoryBackend};

    use super::*;

    /// The window `leasehold_core::cancel_safe` leaves open: the attempt has
    /// answered, and the caller is dropped before it reads the answer.
    #[tokio::test]
    async fn a_grant_answered_but_never_read_is_released() {
        let backend = Arc::new(MemoryBackend::new());
        let key = Key::new("k").unwrap();
        let (b, k, r) = (backend.clone(), key.clone(), backend.clone());
        let mut call = Box::pin(cancel_safe(
            "memory",
            async move { b.try_acquire(&k, Duration::from_secs(60)).await },
            move |lease| async move { r.release(&lease).await },
        ));
        // Poll once (spawns the attempt), let the attempt finish and send its
        // answer, then drop the call without polling it again.
        std::future::poll_fn(|cx| {
            assert!(call.as_mut().poll(cx).is_pending(), "answered at once");
            std::task::Poll::Ready(())
        })
        .await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        drop(call);
        for _ in 0..100 {
            if backend.inspect(&key).await.unwrap().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the answered but unread grant was never released: the key is still held");
    }
}
