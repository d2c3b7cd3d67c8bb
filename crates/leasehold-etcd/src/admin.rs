//! The operations tooling relies on: listing held locks page by page (one
//! range read of queue entries, then the head and the length of each queue
//! on the page) and force releases (deleting the head entry, retired).

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use leasehold_core::{HeldLock, Key, ListPage, ListQuery, LockError, LockInfo, with_timeout};

use crate::NAME;
use crate::error::{lease_not_found, map};
use crate::keys::{LockKeys, encode, prefix_end};
use crate::queue::{describe, first_kv};
use crate::reaper::marker_put;
use crate::store::Store;

/// Locks per head-reading txn: two reads each, within etcd's default
/// `--max-txn-ops` of 128.
const LOCKS_PER_TXN: usize = 64;

/// A lock's head entry and what it tells of its holder.
pub(crate) struct Head {
    pub kv: KeyValue,
    pub info: LockInfo,
}

impl Store {
    /// The head of each lock's queue (`None`: the lock is free) with its
    /// holder's info and the number of waiters behind it: one txn per 64
    /// locks, all sent at once, and one remaining-TTL read per session
    /// lease (the holders of a page share a few sessions).
    pub(crate) async fn heads(&self, locks: &[LockKeys]) -> Result<Vec<Option<Head>>, LockError> {
        let reads = locks.chunks(LOCKS_PER_TXN).map(|chunk| async move {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .flat_map(|keys| {
                    [
                        TxnOp::get(keys.prefix.clone(), Some(keys.holder())),
                        TxnOp::get(keys.prefix.clone(), Some(keys.count())),
                    ]
                })
                .collect();
            let response = self.txn(Txn::new().and_then(ops)).await.map_err(map)?;
            let responses = response.op_responses();
            if responses.len() != 2 * chunk.len() {
                return Err(LockError::backend(NAME, "a head read went missing"));
            }
            Ok(responses
                .chunks(2)
                .map(|pair| {
                    let head = first_kv(pair.first())?;
                    let entries = match pair.get(1) {
                        Some(TxnOpResponse::Get(count)) => count.count(),
                        _ => 1,
                    };
                    let waiters = entries.saturating_sub(1).max(0);
                    Some((head, u32::try_from(waiters).unwrap_or(u32::MAX)))
                })
                .collect::<Vec<_>>())
        });
        let heads: Vec<Option<(KeyValue, u32)>> = futures_util::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut leases: Vec<i64> = heads.iter().flatten().map(|(kv, _)| kv.lease()).collect();
        leases.sort_unstable();
        leases.dedup();
        let remaining: HashMap<i64, Option<Duration>> = futures_util::future::join_all(
            leases
                .into_iter()
                .map(|id| async move { (id, self.remaining(id).await) }),
        )
        .await
        .into_iter()
        .collect();
        Ok(locks
            .iter()
            .zip(heads)
            .map(|(keys, head)| {
                let (kv, waiters) = head?;
                let left = remaining.get(&kv.lease()).copied().flatten();
                let info = describe(keys, &kv, left).with_waiters(Some(waiters));
                Some(Head { kv, info })
            })
            .collect())
    }

    /// One page: a keys-only range read of at most `query.limit` entries
    /// from the cursor (or the start of the prefix's range), grouped by lock
    /// (a lock's entries are contiguous), then the head of each lock read on
    /// its own, so a lock split by the page's end is still shown whole and
    /// the next page starts past its queue. Retirement markers and session
    /// keys in the range are skipped (a page may come back short, or empty).
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let namespace = self.namespace.as_bytes();
        let mut from = namespace.to_vec();
        encode(&mut from, query.prefix.as_bytes());
        let end = prefix_end(&from);
        if let Some(cursor) = &query.cursor {
            let after = from_hex(cursor).ok_or_else(|| {
                LockError::Config(format!("{cursor:?} is not a cursor of the etcd backend"))
            })?;
            from = from.max([namespace, &after].concat());
        }
        let to_the_end = end == [0];
        if !to_the_end && from >= end {
            return Ok(ListPage::default());
        }
        if from.is_empty() {
            from.push(0); // An empty namespace and prefix: every key.
        }
        let limit = i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX);
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_keys_only();
        let mut kv = self.client.kv_client();
        let response = with_timeout(NAME, self.timeout, async move {
            kv.get(from, Some(options)).await.map_err(map)
        })
        .await?;
        let mut locks: Vec<(Key, LockKeys)> = Vec::new();
        for entry in response.kvs() {
            if let Some((key, keys)) = LockKeys::of_entry(&self.namespace, entry.key())
                && locks.last().is_none_or(|(_, last)| *last != keys)
            {
                locks.push((key, keys));
            }
        }
        let next = match response.kvs().last() {
            Some(last) if response.more() => {
                let mut after = [last.key(), &[0]].concat();
                if let Some((_, keys)) = locks.last() {
                    after = after.max(keys.range_end());
                }
                (to_the_end || after < end)
                    .then(|| to_hex(after.strip_prefix(namespace).unwrap_or(&after)))
            }
            _ => None,
        };
        let queues: Vec<LockKeys> = locks.iter().map(|(_, keys)| keys.clone()).collect();
        let heads = self.heads(&queues).await?;
        let locks = locks
            .into_iter()
            .zip(heads)
            .filter_map(|((key, _), head)| {
                head.map(|head| HeldLock {
                    key: key.as_str().to_owned(),
                    info: head.info,
                })
            })
            .collect();
        Ok(ListPage { locks, next })
    }

    /// Deletes the head entry of `key`'s queue in a txn that checks it is
    /// still the head (its create revision unchanged: entries only join at
    /// the tail, so an entry that still exists is still first), and writes
    /// its retirement marker in the same txn, so a late copy of the txn that
    /// queued it cannot bring it back. The next entry's owner then holds the
    /// lock with its own, higher create revision as token (an empty queue:
    /// the next acquisition writes a newer entry), and the evicted holder's
    /// next extend finds its entry gone: `Lost`. `None` when the queue was
    /// empty, or when the holder read left on its own before the delete.
    pub(crate) async fn force_release(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let keys = LockKeys::new(&self.namespace, key);
        let Some(Head { kv, info }) = self.heads(&[keys]).await?.pop().flatten() else {
            return Ok(None);
        };
        let entry = kv.key().to_vec();
        // One retry: the marker lease may expire between its grant and use.
        for _ in 0..2 {
            let marker_lease = self.markers.get(&self.client, self.timeout).await?;
            let evict = Txn::new()
                .when([Compare::create_revision(
                    entry.clone(),
                    CompareOp::Equal,
                    kv.create_revision(),
                )])
                .and_then([
                    TxnOp::delete(entry.clone(), None),
                    marker_put(&entry, marker_lease),
                ]);
            match self.txn(evict).await {
                Ok(response) if response.succeeded() => return Ok(Some(info)),
                Ok(_) => return Ok(None),
                Err(error) if lease_not_found(&error) => self.markers.forget(marker_lease),
                Err(error) => return Err(map(error)),
            }
        }
        Err(LockError::unavailable(
            NAME,
            "etcd kept refusing the retirement marker's lease",
        ))
    }
}

/// `bytes` as lower-case hex: the cursor is an etcd key, and etcd keys need
/// not be UTF-8.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes [`to_hex`] made `hex` from.
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let key = b"a%2Fb/\0\xff".to_vec();
        assert_eq!(from_hex(&to_hex(&key)), Some(key));
        for bad in ["abc", "zz", "0g", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }
}
