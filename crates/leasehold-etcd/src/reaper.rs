//! Removing queue entries nobody will own.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use leasehold_core::{LockError, with_timeout};

use crate::NAME;
use crate::backend::{lease_not_found, store_error};
use crate::keys::retirement_marker;
use crate::session::Session;

/// Retires a queue entry that no caller will ever own (a cancelled waiter, a
/// reply lost to a timeout, a failed release) from a background task, retrying
/// until the store answers or the entry's session ends. The entry name
/// carries an owner token drawn for that one acquisition, so deleting it
/// unconditionally can never remove anyone else's entry.
///
/// Deleting is not enough when the txn that puts the entry may still be on
/// its way (a store paused while it was sent): applied after the delete, it
/// would leave an entry that the shared session lease keeps alive, a lock
/// nobody holds and nobody releases. So one txn writes the entry's
/// retirement marker (on the same session lease, gone with it) and deletes
/// the entry; every acquisition txn requires the marker absent.
pub(crate) struct Reaper {
    client: Client,
    timeout: Duration,
    entry: Option<(Vec<u8>, Arc<Session>)>,
}

impl Reaper {
    pub(crate) fn arm(
        client: &Client,
        timeout: Duration,
        entry: Vec<u8>,
        session: Arc<Session>,
    ) -> Self {
        Reaper {
            client: client.clone(),
            timeout,
            entry: Some((entry, session)),
        }
    }

    pub(crate) fn none(client: &Client) -> Self {
        Reaper {
            client: client.clone(),
            timeout: Duration::ZERO,
            entry: None,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.entry = None;
    }

    /// Retires now (awaited, one try); on failure leaves it to the background.
    pub(crate) async fn delete_now(mut self) {
        if let Some((entry, session)) = self.entry.take() {
            let deleted = retire(&self.client, self.timeout, &entry, &session).await;
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
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                let deleted = tokio::select! {
                    () = session.ended.cancelled() => return,
                    deleted = retire(&client, timeout, &entry, &session) => deleted,
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

/// Writes the entry's retirement marker and deletes the entry, in one txn.
/// A session lease the store no longer has counts as done: the entry went
/// with it, and a late txn naming that lease fails too.
async fn retire(
    client: &Client,
    timeout: Duration,
    entry: &[u8],
    session: &Session,
) -> Result<(), LockError> {
    let retire = Txn::new().and_then([
        TxnOp::put(
            retirement_marker(entry),
            "",
            Some(PutOptions::new().with_lease(session.id)),
        ),
        TxnOp::delete(entry.to_vec(), None),
    ]);
    let mut kv = client.kv_client();
    with_timeout(NAME, timeout, async move {
        match kv.txn(retire).await {
            Ok(_) => Ok(()),
            Err(error) if lease_not_found(&error) => Ok(()),
            Err(error) => Err(store_error(error)),
        }
    })
    .await
}
