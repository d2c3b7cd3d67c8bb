//! Waiting in a lock's queue until our entry heads it: a watch on the
//! predecessor's deletion, polls, keep-alives of the session, and a re-read
//! of the queue (confirming the lease) at every wake-up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{GetOptions, Txn, TxnOp};
use leasehold_core::{Attempts, Key, LockError, instant_after};
use tokio::time::Instant;

use crate::error::map;
use crate::keys::LockKeys;
use crate::queue::{Queued, first_kv, pause, revision, timed_out};
use crate::reaper::Reaper;
use crate::session::{Renewal, Session};
use crate::store::{Store, has_delete};

/// The result of reading the queue around our own entry.
struct Position {
    /// Our entry exists (attached to our session).
    present: bool,
    /// The entry just before ours, if any.
    predecessor: Option<Vec<u8>>,
    /// The revision the read was served at.
    revision: i64,
}

/// Waiting for a turn in the queue, run against the store.
impl Store {
    /// Waits until `queued` heads the queue. `Some(renewed_at)`: it does and
    /// its lease is confirmed alive; `None`: its entry or session is gone,
    /// start over.
    pub(super) async fn wait_turn(
        &self,
        key: &Key,
        keys: &LockKeys,
        queued: &mut Queued,
        attempts: &mut Attempts,
    ) -> Result<Option<Instant>, LockError> {
        let deadline = attempts.deadline();
        let session = queued.session.clone();
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut watching: Option<Vec<u8>> = None;
        loop {
            if attempts.remaining().is_zero() {
                let reaper = std::mem::replace(
                    &mut queued.reaper,
                    Reaper::none(&self.client, &self.markers),
                );
                reaper.delete_now().await;
                return Err(timed_out(key, attempts));
            }
            let cause = match queued.predecessor.clone() {
                // Confirm again (an unknown predecessor, or a failed read).
                None => {
                    pause(attempts).await;
                    Wake::Recheck
                }
                Some(pred) if pred.is_empty() => Wake::Recheck,
                Some(pred) => {
                    let mut created_late = false;
                    if watch.is_none() || watching.as_ref() != Some(&pred) {
                        watch = None;
                        watching = None;
                        match self.watch_deletion(&pred, queued.read_at).await {
                            Ok(Some((stream, late))) => {
                                watch = Some(stream);
                                watching = Some(pred.clone());
                                created_late = late;
                            }
                            Ok(None) => {}
                            Err(error) if error.is_retryable() => {
                                tracing::debug!(%error, "creating the predecessor watch failed");
                                pause(attempts).await;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    match watch.as_mut() {
                        Some(stream) if !created_late => {
                            let keep_alive_at = instant_after(
                                Instant::now(),
                                instant_after(session.renewed_at(), session.ttl / 3)
                                    .saturating_duration_since(self.now()),
                            );
                            tokio::select! {
                                message = stream.message() => match message {
                                    Ok(Some(response)) if has_delete(&response) => Wake::Watch,
                                    Ok(Some(response)) if !response.canceled() => Wake::Nothing,
                                    _ => {
                                        watch = None; // Cancelled (compaction) or broken.
                                        Wake::Recheck
                                    }
                                },
                                () = tokio::time::sleep(jitter(self.poll)) => Wake::Poll,
                                () = tokio::time::sleep_until(keep_alive_at) => Wake::KeepAlive,
                                () = tokio::time::sleep_until(deadline) => continue,
                                () = session.ended.cancelled() => return Ok(None),
                            }
                        }
                        _ => Wake::Recheck,
                    }
                }
            };
            let counter = match cause {
                Wake::Nothing => continue,
                Wake::KeepAlive => {
                    match self.renew_if(&session, true).await {
                        Ok(Renewal::Gone) => return Ok(None),
                        Ok(Renewal::Alive(_)) => {}
                        Err(error) => {
                            tracing::debug!(%error, "keep-alive while queued failed");
                            pause(attempts).await;
                        }
                    }
                    continue;
                }
                Wake::Watch => &self.wakes.watch,
                Wake::Poll => &self.wakes.poll,
                Wake::Recheck => &self.wakes.recheck,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Re-read our entry and predecessor, and confirm the lease lives
            // (etcd#9921, etcd#11456: never report a lock whose lease expired
            // while its owner waited).
            let (position, renewal) = tokio::join!(
                self.position(keys, &queued.entry, &session, queued.my_revision),
                self.renew_if(&session, true)
            );
            let position = match position {
                Ok(position) => position,
                Err(error) if error.is_retryable() => {
                    tracing::debug!(%error, "re-reading the queue failed");
                    watch = None;
                    queued.predecessor = None;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if matches!(renewal, Ok(Renewal::Gone)) || !position.present {
                return Ok(None);
            }
            queued.read_at = position.revision;
            match (position.predecessor, renewal) {
                (Some(pred), _) => queued.predecessor = Some(pred),
                (None, Ok(Renewal::Alive(renewed_at))) => return Ok(Some(renewed_at)),
                (None, Ok(Renewal::Gone)) => return Ok(None),
                (None, Err(error)) => {
                    tracing::debug!(%error, "confirming the session at the queue head failed");
                    queued.predecessor = None;
                }
            }
        }
    }

    /// Reads our entry and its predecessor in one round trip.
    async fn position(
        &self,
        keys: &LockKeys,
        entry: &[u8],
        session: &Session,
        my_revision: i64,
    ) -> Result<Position, LockError> {
        let response = self
            .txn(Txn::new().and_then([
                TxnOp::get(entry.to_vec(), Some(GetOptions::new().with_keys_only())),
                TxnOp::get(
                    keys.prefix.clone(),
                    Some(keys.newest(Some(my_revision - 1))),
                ),
            ]))
            .await
            .map_err(map)?;
        let responses = response.op_responses();
        let own = first_kv(responses.first());
        Ok(Position {
            present: own
                .is_some_and(|kv| kv.create_revision() == my_revision && kv.lease() == session.id),
            predecessor: first_kv(responses.get(1)).map(|kv| kv.key().to_vec()),
            revision: revision(&response),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Watch,
    Poll,
    Recheck,
    KeepAlive,
    Nothing,
}

/// `interval` ± 20 %.
fn jitter(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    interval.mul_f64(0.8 + f64::from(nanos % 1000) / 2500.0)
}
