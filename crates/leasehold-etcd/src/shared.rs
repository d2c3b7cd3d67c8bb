//! Reader–writer locks and counting semaphores: entries ranked by create
//! revision under a prefix of their own, on the session lease like the
//! mutex's queue entries (etcd's `experimental/recipes/rwmutex.go`, and a
//! semaphore no peer ships).
//!
//! - A reader may hold once no *writer* entry older than its own is left; a
//!   writer once no entry at all older than its own is left; a permit of `N`
//!   once fewer than `N` entries older than its own are left. An entry that
//!   may hold keeps that right: entries are only ever added behind it.
//! - A waiting writer's entry is its registration: readers that come later
//!   rank behind it and wait (writer preference), and it goes with the wait
//!   (deleted at the deadline, by the reaper when the call is dropped, with
//!   the session lease when nobody renews it).
//! - A single attempt writes nothing it does not keep: readers and writers
//!   put their entry in one txn only if no blocking entry exists; a permit
//!   counts the entries before its put and deletes its entry at once when
//!   the semaphore is full.
//! - Fencing: a reader's or writer's token is its entry's create revision (as
//!   the mutex's): a writer's entry is newer than every entry granted before
//!   it, and a reader's newer than every writer granted before it. A permit's
//!   token is the revision of the txn that granted it (its put, or for a
//!   waiter a compare-and-put of its entry once it may hold): permits can be
//!   noticed in another order than their entries were made, the revisions of
//!   their grants cannot.
//! - Waiters watch the deletions under the range that can block them (the
//!   writers of the lock for a reader, the whole lock otherwise) from the
//!   revision after their read, and re-read their rank at each one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use leasehold_core::{
    Attempts, FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken, WaitPolicy,
    instant_after,
};
use tokio::time::Instant;

use crate::NAME;
use crate::error::{lease_not_found, map};
use crate::keys::{LockKeys, encode, prefix_end};
use crate::queue::{Held, first_kv, pause, revision, timed_out, zero_wait};
use crate::reaper::Reaper;
use crate::session::{Renewal, Session};
use crate::store::{Store, has_delete};

/// The etcd keys of one reader–writer lock or semaphore.
///
/// Its prefix is `namespace + encode(key) + "\x01rw/"` (or `"\x01sem/"`):
/// keys hold no control characters and their encoding no `/`, so it lies
/// in no mutex's range (`namespace + encode(key) + "/"`), names no mutex
/// entry (listings and `inspect` never see it), and no other key's families
/// share it. Readers' entries are `prefix + "r" + owner`, writers' `prefix +
/// "w" + owner`, permits' `prefix + owner`. Their retirement markers turn
/// the prefix's last `/` into a NUL, outside every range as the mutex's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SharedKeys {
    prefix: Vec<u8>,
    kind: LockKind,
}

impl SharedKeys {
    pub fn new(namespace: &str, key: &Key, kind: LockKind) -> Self {
        let mut prefix = namespace.as_bytes().to_vec();
        encode(&mut prefix, key.as_bytes());
        prefix.extend_from_slice(match kind {
            LockKind::Permit { .. } => b"\x01sem/",
            _ => b"\x01rw/",
        });
        SharedKeys { prefix, kind }
    }

    /// This acquisition's entry.
    pub fn entry(&self, owner: &OwnerToken) -> Vec<u8> {
        let mut entry = self.prefix.clone();
        match self.kind {
            LockKind::Read => entry.push(b'r'),
            LockKind::Write => entry.push(b'w'),
            _ => {}
        }
        entry.extend_from_slice(owner.to_hex().as_bytes());
        entry
    }

    /// The range of the entries that can keep this kind waiting: the
    /// writers for a reader, every entry for a writer or a permit.
    pub fn blockers(&self) -> (Vec<u8>, Vec<u8>) {
        let mut start = self.prefix.clone();
        if self.kind == LockKind::Read {
            start.push(b'w');
        }
        let end = prefix_end(&start);
        (start, end)
    }

    /// How many older blocking entries still let an entry hold.
    fn admits(&self, older: i64) -> bool {
        match self.kind {
            LockKind::Permit { permits } => older < i64::from(permits),
            _ => older == 0,
        }
    }

    /// A count of all the blocking entries (in the txn that puts an entry,
    /// before its put).
    fn count_all(&self) -> TxnOp {
        let (start, end) = self.blockers();
        TxnOp::get(
            start,
            Some(GetOptions::new().with_range(end).with_count_only()),
        )
    }

    /// The blocking entries created before `revision`, as many as it takes
    /// to keep an entry of that revision waiting. Not a count-only read:
    /// etcd counts the whole range then, ignoring the revision filter.
    fn older_than(&self, revision: i64) -> TxnOp {
        let (start, end) = self.blockers();
        let enough = match self.kind {
            LockKind::Permit { permits } => i64::from(permits),
            _ => 1,
        };
        let options = GetOptions::new()
            .with_range(end)
            .with_keys_only()
            .with_max_create_revision(revision - 1)
            .with_limit(enough);
        TxnOp::get(start, Some(options))
    }

    /// The oldest blocking entry, with its value (the holder label).
    fn oldest_blocker(&self) -> TxnOp {
        let (start, end) = self.blockers();
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        TxnOp::get(start, Some(options))
    }
}

/// The count a count-only read answered (0 for anything else).
fn count_of(response: Option<&TxnOpResponse>) -> i64 {
    match response {
        Some(TxnOpResponse::Get(get)) => get.count(),
        _ => 0,
    }
}

/// How many entries a read returned (0 for anything else).
fn returned(response: Option<&TxnOpResponse>) -> i64 {
    match response {
        Some(TxnOpResponse::Get(get)) => get.kvs().len() as i64,
        _ => 0,
    }
}

/// An entry written, not yet granted.
struct Entry {
    session: Arc<Session>,
    owner: OwnerToken,
    entry: Vec<u8>,
    create_revision: i64,
    /// Older blocking entries at the last read, if known.
    older: Option<i64>,
    read_at: i64,
    reaper: Reaper,
}

/// Reader–writer locks and semaphores, run against the store.
impl Store {
    /// One attempt at `kind` (not the mutex). Cancel safe as `try_lock`.
    pub(crate) async fn try_share(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        let keys = SharedKeys::new(&self.namespace, key, kind);
        for _ in 0..2 {
            let attempt = match kind {
                LockKind::Permit { .. } => self.put_entry(&keys, secs, None).await?,
                _ => self.put_entry_if_free(key, &keys, secs).await?,
            };
            let Some(mut entry) = attempt else { continue };
            if entry.older.is_some_and(|older| keys.admits(older)) {
                let renewed_at = entry.session.renewed_at();
                let token = entry.create_revision;
                return Ok(self.grant(key, kind, entry, token, renewed_at));
            }
            let reaper =
                std::mem::replace(&mut entry.reaper, Reaper::none(&self.client, &self.markers));
            reaper.delete_now().await;
            return Err(LockError::contended(NAME, key.as_str(), None));
        }
        Err(LockError::unavailable(
            NAME,
            "etcd kept refusing freshly granted session leases",
        ))
    }

    /// Writes a reader's or writer's entry in one txn, only if no entry that
    /// would block it exists (no write under contention). `None`: the
    /// session died, try again.
    async fn put_entry_if_free(
        &self,
        key: &Key,
        keys: &SharedKeys,
        secs: u64,
    ) -> Result<Option<Entry>, LockError> {
        let session = self.session(secs).await?;
        let owner = OwnerToken::generate();
        let entry = keys.entry(&owner);
        let (start, end) = keys.blockers();
        let attempt = Txn::new()
            .when([
                Compare::create_revision(start, CompareOp::Equal, 0).with_range(end),
                LockKeys::not_retired(&entry),
            ])
            .and_then([self.put(&entry, &session)])
            .or_else([keys.oldest_blocker()]);
        let mut reaper = self.reaper(&entry, &session);
        let Some(response) = self.send(&attempt, &session, &mut reaper).await? else {
            return Ok(None);
        };
        if !response.succeeded() {
            reaper.disarm();
            let info = first_kv(response.op_responses().first()).map(|kv| {
                let label = (!kv.value().is_empty())
                    .then(|| String::from_utf8_lossy(kv.value()).into_owned());
                LockInfo::new(Some(FencingToken(kv.create_revision() as u64)), None)
                    .with_metadata(label)
            });
            return Err(LockError::contended(NAME, key.as_str(), info));
        }
        let read_at = revision(&response);
        Ok(Some(Entry {
            session,
            owner,
            entry,
            create_revision: read_at,
            older: Some(0),
            read_at,
            reaper,
        }))
    }

    /// Writes an entry in one txn that also counts the blocking entries
    /// before it; retried idempotently (a retry whose first answer was lost
    /// finds the entry) while `attempts` leaves time. `None`: the session
    /// died or the entry is gone, start over.
    async fn put_entry(
        &self,
        keys: &SharedKeys,
        secs: u64,
        mut attempts: Option<&mut Attempts>,
    ) -> Result<Option<Entry>, LockError> {
        let session = self.session(secs).await?;
        let owner = OwnerToken::generate();
        let entry = keys.entry(&owner);
        let enqueue = Txn::new()
            .when([
                Compare::create_revision(entry.clone(), CompareOp::Equal, 0),
                LockKeys::not_retired(&entry),
            ])
            .and_then([keys.count_all(), self.put(&entry, &session)])
            .or_else([TxnOp::get(
                entry.clone(),
                Some(GetOptions::new().with_keys_only()),
            )]);
        let mut reaper = self.reaper(&entry, &session);
        let response = loop {
            match self.send(&enqueue, &session, &mut reaper).await {
                Ok(Some(response)) => break response,
                Ok(None) => return Ok(None),
                Err(error) => match attempts.as_deref_mut() {
                    Some(attempts) if error.is_retryable() && !attempts.remaining().is_zero() => {
                        pause(attempts).await;
                    }
                    _ => return Err(error), // The reaper deletes whatever was written.
                },
            }
        };
        let read_at = revision(&response);
        let (create_revision, older) = if response.succeeded() {
            (read_at, Some(count_of(response.op_responses().first())))
        } else {
            match first_kv(response.op_responses().first()) {
                Some(own) if own.lease() == session.id => (own.create_revision(), None),
                _ => return Ok(None),
            }
        };
        Ok(Some(Entry {
            session,
            owner,
            entry,
            create_revision,
            older,
            read_at,
            reaper,
        }))
    }

    /// A reaper for `entry`, about to be put on `session`.
    fn reaper(&self, entry: &[u8], session: &Arc<Session>) -> Reaper {
        Reaper::arm(
            &self.client,
            self.timeout,
            &self.markers,
            entry.to_vec(),
            session.clone(),
        )
    }

    /// The put of `entry` on `session`, valued with the holder label.
    fn put(&self, entry: &[u8], session: &Session) -> TxnOp {
        TxnOp::put(
            entry.to_vec(),
            self.holder.as_str(),
            Some(PutOptions::new().with_lease(session.id)),
        )
    }

    /// Sends a txn that may put `reaper`'s entry, with a keep-alive of a
    /// stale session alongside. `None`: the session is gone.
    async fn send(
        &self,
        txn: &Txn,
        session: &Session,
        reaper: &mut Reaper,
    ) -> Result<Option<TxnResponse>, LockError> {
        let stale = session.older_than(session.ttl / 3, self.now());
        let (response, renewal) =
            tokio::join!(self.txn(txn.clone()), self.renew_if(session, stale));
        match response {
            Ok(response) => {
                reaper.answered();
                if matches!(renewal, Ok(Renewal::Gone)) {
                    return Ok(None);
                }
                Ok(Some(response))
            }
            Err(error) if lease_not_found(&error) => {
                reaper.disarm();
                session.end("etcd refused its lease");
                Ok(None)
            }
            Err(error) => {
                // The txn may still be applied: the reaper retires the entry.
                reaper.answer_lost();
                Err(map(error))
            }
        }
    }

    /// Waits for a grant of `kind` (not the mutex) until `wait.deadline`;
    /// one attempt always happens. The entry is removed on every way out but
    /// a grant; cancel safe (the reaper removes a dropped waiter's entry).
    pub(crate) async fn share(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        let secs = self.ttl_secs(ttl)?;
        if wait.deadline.is_zero() {
            return zero_wait(self.try_share(key, kind, ttl).await);
        }
        let keys = SharedKeys::new(&self.namespace, key, kind);
        let mut attempts = Attempts::new(wait);
        let mut first = true;
        loop {
            if !first && attempts.remaining().is_zero() {
                return Err(timed_out(key, &attempts));
            }
            first = false;
            let entry = match self.put_entry(&keys, secs, Some(&mut attempts)).await {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(error) if error.is_retryable() && !attempts.remaining().is_zero() => {
                    pause(&mut attempts).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if let Some(lease) = self.wait_for_rank(key, &keys, entry, &mut attempts).await? {
                return Ok(lease);
            }
        }
    }

    /// Waits until `entry` may hold, then grants it. `None`: its entry or
    /// session is gone, start over.
    async fn wait_for_rank(
        &self,
        key: &Key,
        keys: &SharedKeys,
        mut entry: Entry,
        attempts: &mut Attempts,
    ) -> Result<Option<Lease>, LockError> {
        if entry.older.is_some_and(|older| keys.admits(older)) {
            // Granted by the txn that put the entry: its revision is the token.
            let (renewed_at, token) = (entry.session.renewed_at(), entry.create_revision);
            return Ok(Some(self.grant(key, keys.kind, entry, token, renewed_at)));
        }
        let deadline = attempts.deadline();
        let session = entry.session.clone();
        let (start, end) = keys.blockers();
        let mut watch: Option<etcd_client::WatchStream> = None;
        let mut recheck = entry.older.is_none();
        loop {
            if attempts.remaining().is_zero() {
                let reaper =
                    std::mem::replace(&mut entry.reaper, Reaper::none(&self.client, &self.markers));
                reaper.delete_now().await;
                return Err(timed_out(key, attempts));
            }
            if !recheck && watch.is_none() {
                match self
                    .watch_deletions(&start, Some(&end), entry.read_at)
                    .await
                {
                    Ok(Some((stream, late))) => {
                        watch = Some(stream);
                        recheck = late;
                    }
                    Ok(None) => recheck = true,
                    Err(error) if error.is_retryable() => {
                        tracing::debug!(%error, "creating the etcd watch of a shared lock failed");
                        pause(attempts).await;
                        recheck = true;
                    }
                    Err(error) => return Err(error),
                }
            }
            if !recheck && let Some(stream) = watch.as_mut() {
                let keep_alive_at = instant_after(
                    Instant::now(),
                    instant_after(session.renewed_at(), session.ttl / 3)
                        .saturating_duration_since(self.now()),
                );
                let counter = tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(response)) if has_delete(&response) => &self.wakes.watch,
                        Ok(Some(response)) if !response.canceled() => continue,
                        _ => {
                            watch = None; // Cancelled (compaction) or broken.
                            &self.wakes.recheck
                        }
                    },
                    () = tokio::time::sleep(self.poll) => &self.wakes.poll,
                    () = tokio::time::sleep_until(keep_alive_at) => {
                        if let Ok(Renewal::Gone) = self.renew_if(&session, true).await {
                            return Ok(None);
                        }
                        continue;
                    }
                    () = tokio::time::sleep_until(deadline) => continue,
                    () = session.ended.cancelled() => return Ok(None),
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            recheck = false;
            // Re-read our entry and rank, and confirm the lease lives
            // (etcd#9921, etcd#11456).
            let read = Txn::new().and_then([
                TxnOp::get(
                    entry.entry.clone(),
                    Some(GetOptions::new().with_keys_only()),
                ),
                keys.older_than(entry.create_revision),
            ]);
            let (response, renewal) = tokio::join!(self.txn(read), self.renew_if(&session, true));
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    let error = map(error);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    tracing::debug!(%error, "re-reading a shared lock's entries failed");
                    watch = None;
                    pause(attempts).await;
                    recheck = true;
                    continue;
                }
            };
            let responses = response.op_responses();
            let present = first_kv(responses.first()).is_some_and(|kv| {
                kv.create_revision() == entry.create_revision && kv.lease() == session.id
            });
            if !present || matches!(renewal, Ok(Renewal::Gone)) {
                return Ok(None);
            }
            entry.read_at = revision(&response);
            if keys.admits(returned(responses.get(1))) {
                match renewal {
                    Ok(Renewal::Alive(renewed_at)) => {
                        return self.confirm(key, keys, entry, renewed_at).await;
                    }
                    _ => recheck = true,
                }
            }
        }
    }

    /// Grants `entry`, found allowed to hold after it waited: a reader or
    /// writer at once (token: its create revision), a permit by a
    /// compare-and-put of its entry (token: that txn's revision). `None`: the
    /// entry is gone.
    async fn confirm(
        &self,
        key: &Key,
        keys: &SharedKeys,
        entry: Entry,
        renewed_at: Instant,
    ) -> Result<Option<Lease>, LockError> {
        let LockKind::Permit { .. } = keys.kind else {
            let token = entry.create_revision;
            return Ok(Some(self.grant(key, keys.kind, entry, token, renewed_at)));
        };
        let claim = Txn::new()
            .when([Compare::create_revision(
                entry.entry.clone(),
                CompareOp::Equal,
                entry.create_revision,
            )])
            .and_then([self.put(&entry.entry, &entry.session)]);
        // A late copy of this txn revives nothing: it needs the entry.
        let response = self.txn(claim).await.map_err(map)?;
        if !response.succeeded() {
            return Ok(None);
        }
        let token = revision(&response);
        Ok(Some(self.grant(key, keys.kind, entry, token, renewed_at)))
    }

    /// The lease of a granted entry.
    fn grant(
        &self,
        key: &Key,
        kind: LockKind,
        mut entry: Entry,
        token: i64,
        renewed_at: Instant,
    ) -> Lease {
        let uncertain = entry.reaper.uncertain();
        entry.reaper.disarm();
        let held = Held {
            session: entry.session,
            entry: entry.entry,
            create_revision: entry.create_revision,
            uncertain,
        };
        self.lease_with(key, entry.owner, held, token, renewed_at)
            .with_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::retirement_marker;

    fn keys(name: &str, kind: LockKind) -> SharedKeys {
        SharedKeys::new("ns/", &Key::new(name).unwrap(), kind)
    }

    #[test]
    fn shared_entries_lie_outside_every_mutex_queue_and_are_no_mutex_entry() {
        let owner = OwnerToken::generate();
        let names = ["a", "a/b", "a%2Fb", "orders:42", "a%", "rw", "sem"];
        for name in names {
            for kind in [
                LockKind::Read,
                LockKind::Write,
                LockKind::Permit { permits: 2 },
            ] {
                let entry = keys(name, kind).entry(&owner);
                let marker = retirement_marker(&entry);
                assert_eq!(LockKeys::of_entry("ns/", &entry), None, "{name:?} {kind}");
                for other in names {
                    let mutex = LockKeys::new("ns/", &Key::new(other).unwrap());
                    for key in [&entry, &marker] {
                        assert!(
                            !(key.as_slice() >= mutex.prefix.as_slice()
                                && *key < mutex.range_end()),
                            "{name:?}'s {kind} key lies in {other:?}'s mutex queue"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn readers_are_blocked_by_writers_only_and_families_stay_apart() {
        let owner = OwnerToken::generate();
        let read = keys("a", LockKind::Read);
        let write = keys("a", LockKind::Write);
        let permit = keys("a", LockKind::Permit { permits: 3 });
        let in_range = |range: &(Vec<u8>, Vec<u8>), key: &[u8]| {
            key >= range.0.as_slice() && key < range.1.as_slice()
        };
        assert!(in_range(&read.blockers(), &write.entry(&owner)));
        assert!(!in_range(&read.blockers(), &read.entry(&owner)));
        assert!(in_range(&write.blockers(), &read.entry(&owner)));
        assert!(in_range(&write.blockers(), &write.entry(&owner)));
        assert!(!in_range(&write.blockers(), &permit.entry(&owner)));
        assert!(!in_range(&permit.blockers(), &write.entry(&owner)));
        assert!(!in_range(
            &keys("a", LockKind::Write).blockers(),
            &keys("a%", LockKind::Read).entry(&owner)
        ));
        assert!(permit.admits(2) && !permit.admits(3));
        assert!(read.admits(0) && !read.admits(1));
    }
}
