//! Removing queue entries nobody will own.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use leasehold_core::with_timeout;

use crate::NAME;
use crate::backend::store_error;
use crate::session::Session;

/// Deletes a queue entry that no caller will ever own (a cancelled waiter, a
/// reply lost to a timeout, a failed release) from a background task, retrying
/// until the store answers or the entry's session ends. The entry name
/// carries an owner token drawn for that one acquisition, so deleting it
/// unconditionally can never remove anyone else's entry.
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

    /// Deletes now (awaited, one try); on failure leaves it to the background.
    pub(crate) async fn delete_now(mut self) {
        if let Some((entry, session)) = self.entry.take() {
            let mut kv = self.client.kv_client();
            let key = entry.clone();
            let deleted = with_timeout(NAME, self.timeout, async move {
                kv.delete(key, None).await.map_err(store_error)
            })
            .await;
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
                let mut kv = client.kv_client();
                let key = entry.clone();
                let deleted = tokio::select! {
                    () = session.ended.cancelled() => return,
                    deleted = with_timeout(NAME, timeout, async move {
                        kv.delete(key, None).await.map_err(store_error)
                    }) => deleted,
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
