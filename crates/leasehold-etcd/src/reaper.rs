//! Removing queue entries nobody will own, and retirement markers for the
//! entries whose txn may still be on its way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use leasehold_core::{LockError, with_timeout};
use tokio::time::Instant;

use crate::NAME;
use crate::error::{lease_not_found, map};
use crate::keys::retirement_marker;
use crate::session::Session;

/// The least time a retirement marker lives: its lease is granted for twice
/// this and used for markers only during its first half.
pub(crate) fn marker_life(operation_timeout: Duration) -> Duration {
    operation_timeout
        .saturating_mul(10)
        .max(Duration::from_secs(60))
}

/// The lease retirement markers are written on: short, of their own, shared
/// by the markers of one backend while it has at least [`marker_life`] left.
///
/// A marker only has to outlive a txn that was sent but not answered (a
/// request that sat in a paused or partitioned server, or in its socket):
/// once the marker is written, such a txn arrives within etcd's own request
/// timeout of the store running again (7 s by default), which
/// `marker_life` (at least 60 s, and 10 operation timeouts) covers with room
/// to spare. On the session lease, markers lived as long as the session and
/// piled up on long-lived processes, one per timed-out waiter. The limit: a
/// txn applied more than `marker_life` after its marker was written could
/// still revive its entry.
#[derive(Debug)]
pub(crate) struct MarkerLease {
    life: Duration,
    current: Mutex<Option<(i64, Instant)>>,
}

impl MarkerLease {
    pub(crate) fn new(operation_timeout: Duration) -> Self {
        MarkerLease {
            life: marker_life(operation_timeout),
            current: Mutex::new(None),
        }
    }

    /// A lease with at least `life` left, granting one if needed.
    pub(crate) async fn get(&self, client: &Client, timeout: Duration) -> Result<i64, LockError> {
        if let Some((id, granted_at)) = *self.current.lock().unwrap_or_else(|e| e.into_inner())
            && granted_at.elapsed() < self.life
        {
            return Ok(id);
        }
        let sent_at = Instant::now();
        let mut lease = client.lease_client();
        let secs = (self.life.as_secs() * 2) as i64;
        let granted = with_timeout(NAME, timeout, async move {
            lease.grant(secs, None).await.map_err(map)
        })
        .await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((granted.id(), sent_at));
        Ok(granted.id())
    }

    /// Drops `id` (etcd no longer knows it).
    pub(crate) fn forget(&self, id: i64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_some_and(|(current, _)| current == id) {
            *current = None;
        }
    }
}

/// Retires a queue entry that no caller will ever own (a cancelled waiter, a
/// reply lost to a timeout, a failed release) from a background task, retrying
/// until the store answers or the entry's session ends. The entry name
/// carries an owner token drawn for that one acquisition, so deleting it
/// unconditionally can never remove anyone else's entry.
///
/// When every txn that could put the entry was answered, a delete is enough.
/// When one's answer never came ([`Reaper::answer_lost`], or the reaper is
/// dropped while a txn is in flight), that txn may still be on its way:
/// applied after the delete, it would leave an entry that the shared session
/// lease keeps alive, a lock nobody holds and nobody releases. So then one
/// txn writes the entry's retirement marker (on the short [`MarkerLease`])
/// and deletes the entry; every acquisition txn requires the marker absent.
pub(crate) struct Reaper {
    client: Client,
    timeout: Duration,
    markers: Arc<MarkerLease>,
    entry: Option<(Vec<u8>, Arc<Session>)>,
    /// A txn putting the entry is in flight, or its answer never came.
    unknown: bool,
    /// Some txn's answer never came: a later answer does not make the
    /// outcome of that first copy known.
    lost: bool,
}

impl Reaper {
    /// Armed for `entry`, with a txn putting it about to be sent (outcome
    /// unknown until [`Reaper::answered`]).
    pub(crate) fn arm(
        client: &Client,
        timeout: Duration,
        markers: &Arc<MarkerLease>,
        entry: Vec<u8>,
        session: Arc<Session>,
    ) -> Self {
        Reaper {
            client: client.clone(),
            timeout,
            markers: markers.clone(),
            entry: Some((entry, session)),
            unknown: true,
            lost: false,
        }
    }

    /// A reaper with nothing to do.
    pub(crate) fn none(client: &Client, markers: &Arc<MarkerLease>) -> Self {
        Reaper {
            client: client.clone(),
            timeout: Duration::ZERO,
            markers: markers.clone(),
            entry: None,
            unknown: false,
            lost: false,
        }
    }

    /// The store answered the txn just sent.
    pub(crate) fn answered(&mut self) {
        self.unknown = self.lost;
    }

    /// The answer to the txn just sent never came.
    pub(crate) fn answer_lost(&mut self) {
        self.lost = true;
        self.unknown = true;
    }

    /// Whether some txn putting the entry went unanswered (a lease made from
    /// it needs a marker when released, too).
    pub(crate) fn uncertain(&self) -> bool {
        self.lost
    }

    pub(crate) fn disarm(&mut self) {
        self.entry = None;
    }

    /// Retires now (awaited, one try); on failure leaves it to the background.
    pub(crate) async fn delete_now(mut self) {
        if let Some((entry, session)) = self.entry.take() {
            let markers = self.unknown.then_some(&*self.markers);
            let deleted = retire(&self.client, self.timeout, &entry, markers).await;
            if deleted.is_err() {
                self.entry = Some((entry, session));
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Some((entry, session)) = self.entry.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the entry goes when its session expires.
        };
        let client = self.client.clone();
        let timeout = self.timeout;
        let markers = self.unknown.then(|| self.markers.clone());
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                let deleted = tokio::select! {
                    () = session.ended.cancelled() => return,
                    deleted = retire(&client, timeout, &entry, markers.as_deref()) => deleted,
                };
                match deleted {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::debug!(%error, "deleting an abandoned etcd queue entry failed; retrying");
                    }
                }
                tokio::select! {
                    () = session.ended.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }
}

/// Deletes the entry; with `markers`, writes its retirement marker in the
/// same txn.
async fn retire(
    client: &Client,
    timeout: Duration,
    entry: &[u8],
    markers: Option<&MarkerLease>,
) -> Result<(), LockError> {
    let delete = TxnOp::delete(entry.to_vec(), None);
    let Some(markers) = markers else {
        let mut kv = client.kv_client();
        return with_timeout(NAME, timeout, async move {
            kv.txn(Txn::new().and_then([delete]))
                .await
                .map(drop)
                .map_err(map)
        })
        .await;
    };
    let id = markers.get(client, timeout).await?;
    let retire = Txn::new().and_then([marker_put(entry, id), delete]);
    let mut kv = client.kv_client();
    match tokio::time::timeout(timeout, kv.txn(retire)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            if lease_not_found(&error) {
                markers.forget(id); // expired meanwhile: the next try grants one
            }
            Err(map(error))
        }
        Err(_) => Err(LockError::unavailable(
            NAME,
            format!("no answer within the operation timeout of {timeout:?}"),
        )),
    }
}

/// The put of `entry`'s retirement marker on the marker lease `id`.
pub(crate) fn marker_put(entry: &[u8], id: i64) -> TxnOp {
    TxnOp::put(
        retirement_marker(entry),
        "",
        Some(PutOptions::new().with_lease(id)),
    )
}
