//! The helpers the cases are written with, public so that a backend's own
//! tests (and a third party's) use them instead of writing them again: forged
//! leases, waiting for a key or a condition, the contention check, awkward
//! and near-identical keys, a backend wrapper that answers too late, and the
//! fenced register.
//!
//! The checks return `Err(`[`Failed`]`)` with a message that says what was
//! expected and what came instead; [`eventually`] panics instead, for plain
//! `#[test]`s.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    Capabilities, Key, Lease, ListPage, ListQuery, LockBackend, LockError, LockInfo, LockKind,
    OwnerToken, ReleaseListener, WaitPolicy, async_trait, wait_for_lock,
};
use tokio::time::Instant;

use crate::case::Failed;
pub use crate::register::FencedRegister;

/// A copy of `lease` with another owner token: what a client that does not
/// hold the key would present. Release and extend with it must be refused.
pub fn forged(lease: &Lease) -> Lease {
    Lease::new(
        lease.backend(),
        lease.key().clone(),
        OwnerToken::generate(),
        lease.fencing_token(),
        Instant::now(),
        lease.ttl(),
        Default::default(),
    )
}

/// Checks that `try_acquire` of `key` on `backend` is `Contended` (someone
/// holds it); a lease granted by mistake is released before failing. `why`
/// says what makes the key held, for the message.
pub async fn expect_contended(
    backend: &dyn LockBackend,
    key: &Key,
    ttl: Duration,
    why: &str,
) -> Result<(), Failed> {
    crate::expect_err!(
        backend.try_acquire(key, ttl).await,
        LockError::Contended { .. },
        format!("{why}: try_acquire of {key:?}"),
        lease => backend.release(&lease).await
    );
    Ok(())
}

/// Tries `try_acquire` of `key` every 50 ms until it succeeds or `within`
/// passes (for a key that an expiry, a killed holder or a restart frees).
/// Gives up at once on an error that is not retryable.
pub async fn acquire_eventually(
    backend: &dyn LockBackend,
    key: &Key,
    ttl: Duration,
    within: Duration,
) -> Result<Lease, Failed> {
    let deadline = Instant::now() + within;
    loop {
        match backend.try_acquire(key, ttl).await {
            Ok(lease) => return Ok(lease),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Failed(format!(
                    "{key:?} was not acquired within {within:?}: last error {e}"
                )));
            }
        }
    }
}

/// Polls `check` (a store read, not a sleep) every 20 ms until it is true;
/// panics naming `what` if it is still false after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` (a store read, not a sleep) every 20 ms until it is
/// `Ok(true)`; a failed check or `within` passing is `Err` naming `what`.
/// The case-side twin of [`eventually`].
pub async fn eventually_ok<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<(), Failed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Failed>>,
{
    let deadline = Instant::now() + within;
    while !check().await? {
        if Instant::now() >= deadline {
            return Err(Failed(format!("{what}: not true within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Key names that break naive key encodings: separators and their URL
/// escapes, SQL and Lua injection, glob and regex metacharacters, Redis hash
/// tags, whitespace, combining characters and emoji. All valid, all
/// different locks.
pub const AWKWARD_KEY_NAMES: &[&str] = &[
    "a/b",
    "a%2Fb",
    "a_b",
    "a%b",
    "A/B",
    "a/b/",
    "/",
    "..",
    ".",
    " ",
    "  ",
    "x ",
    "x",
    "'; DROP TABLE locks; --",
    "\"quoted\"",
    "back\\slash",
    "{tag}",
    "{tag}x",
    "*",
    "?",
    "[abc]",
    "redis.call('del', KEYS[1])",
    "$1",
    "🔒émoji",
    "e\u{301}",
    "é",
    "%00",
    "\\0",
    "a:b:c",
];

/// Pairs of key names that differ only in letter case, in whitespace, or in
/// `/` against its URL escape: a key encoding that folds case, trims, or
/// unescapes makes each pair one lock.
pub const NEAR_IDENTICAL_KEY_PAIRS: &[(&str, &str)] = &[
    ("key", "Key"),
    ("key", "KEY"),
    ("é", "É"),
    ("k", "k "),
    ("k ", "k  "),
    ("k", " k"),
    ("k", "k\u{a0}"),
    ("a/b", "a%2Fb"),
    ("a/b", "a%2fb"),
    ("a%2Fb", "a%2fb"),
    ("a b", "a%20b"),
    ("a b", "a+b"),
];

/// `prefix` padded with `L` to exactly [`leasehold_core::MAX_KEY_BYTES`]:
/// the longest valid key.
pub fn longest_key(prefix: &str) -> Result<Key, Failed> {
    let fill = leasehold_core::MAX_KEY_BYTES.saturating_sub(prefix.len());
    Key::new(format!("{prefix}{}", "L".repeat(fill))).map_err(|e| Failed(e.to_string()))
}

/// Pairs of keys under `prefix`, of 1,000 bytes and of the 1,024-byte limit,
/// that differ only in their last byte, or only in their first byte after
/// `prefix` with a long common tail (and a pair of two-byte characters whose
/// encodings differ in the last byte): a key encoding that keeps only a
/// prefix or a suffix of long keys makes each pair one lock.
pub fn long_key_pairs(prefix: &str) -> Result<Vec<(Key, Key)>, Failed> {
    let key = |name: String| Key::new(format!("{prefix}{name}")).map_err(|e| Failed(e.to_string()));
    let fill = |total: usize, other_bytes: usize| {
        total
            .checked_sub(prefix.len() + other_bytes)
            .map(|n| "L".repeat(n))
            .ok_or_else(|| Failed(format!("a prefix of {} bytes leaves no room", prefix.len())))
    };
    let mut pairs = Vec::new();
    for total in [1000, leasehold_core::MAX_KEY_BYTES] {
        let body = fill(total, 1)?;
        pairs.push((key(format!("{body}a"))?, key(format!("{body}b"))?));
        pairs.push((key(format!("a{body}"))?, key(format!("b{body}"))?));
    }
    let body = fill(leasehold_core::MAX_KEY_BYTES, 2)?;
    pairs.push((key(format!("{body}é"))?, key(format!("{body}è"))?));
    Ok(pairs)
}

/// Checks that the two keys of each pair are two locks: `holder` takes both
/// at once, `other` (another client) finds both `Contended`, and releasing
/// one leaves the other held. Each pair is released before the next. `why`
/// names the pairs, for the message.
pub async fn pairs_stay_distinct(
    holder: &dyn LockBackend,
    other: &dyn LockBackend,
    pairs: &[(Key, Key)],
    ttl: Duration,
    why: &str,
) -> Result<(), Failed> {
    for (a, b) in pairs {
        let first = holder.try_acquire(a, ttl).await.map_err(|e| {
            Failed(format!(
                "{why}: {a:?} could not be locked (is it free?): {e}"
            ))
        })?;
        let second = match holder.try_acquire(b, ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                let _ = holder.release(&first).await;
                return Err(Failed(format!(
                    "{why}: while {a:?} ({} bytes) was held, {b:?} ({} bytes) could not be \
                     locked ({e}): the two keys share a lock",
                    a.as_str().len(),
                    b.as_str().len()
                )));
            }
        };
        expect_contended(other, a, ttl, why).await?;
        expect_contended(other, b, ttl, why).await?;
        holder.release(&first).await?;
        expect_contended(
            other,
            b,
            ttl,
            "releasing one key of a pair must leave the other",
        )
        .await?;
        holder.release(&second).await?;
    }
    Ok(())
}

/// The backend it wraps, with every granted lease handed over only after
/// its validity ended: a client that stalls between sending the request and
/// reading the reply (a GC or VM pause, a slow link). A SIGSTOP cannot be
/// aimed at that moment; a delay can. (The delay runs to the lease's own end
/// of validity, not the TTL from the call: session backends count validity
/// from the session's last renewal, which can come later.) A `Locker` over it
/// must answer `Lost`, never hand out a guard.
#[derive(Debug)]
pub struct LateAnswer {
    inner: Arc<dyn LockBackend>,
}

impl LateAnswer {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockBackend>) -> Self {
        LateAnswer { inner }
    }
}

#[async_trait]
impl LockBackend for LateAnswer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    /// The inner backend's, without reader–writer locks or semaphores
    /// (this wrapper delays only the mutex).
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities().rw_locks(false).semaphores(false)
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        let answer = self.inner.try_acquire(key, ttl).await;
        if let Ok(lease) = &answer {
            tokio::time::sleep_until(lease.valid_until() + Duration::from_millis(100)).await;
        }
        answer
    }
    /// Waits through this wrapper's own late `try_acquire`, so a waited-for
    /// grant is late too.
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        wait_for_lock(self, key, ttl, wait).await
    }
    /// Only the mutex (no reader–writer locks or semaphores on this store
    /// yet: [`Capabilities`] says so, and other kinds are
    /// [`LockError::Unsupported`]).
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.try_acquire(key, ttl).await
    }

    /// Only the mutex, as `try_acquire_kind`.
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.capabilities().check_kind(self.name(), kind)?;
        self.acquire(key, ttl, wait).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.inner.extend(lease, ttl).await
    }
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        self.inner.extend_many(renewals).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.inner.inspect(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.inner.list(query).await
    }
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.inner.force_release(key, reason).await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.inner.release_listener(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_key_pairs_differ_in_one_byte_and_fit_the_limit() {
        let pairs = long_key_pairs("prefix/").unwrap();
        assert_eq!(pairs.len(), 5);
        for (a, b) in &pairs {
            let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
            assert_eq!(a.len(), b.len());
            assert!(a.len() >= 1000 && a.len() <= leasehold_core::MAX_KEY_BYTES);
            assert_eq!(a.iter().zip(b).filter(|(x, y)| x != y).count(), 1);
        }
        assert!(long_key_pairs(&"p".repeat(1000)).is_err());
        assert_eq!(
            longest_key("prefix/").unwrap().as_str().len(),
            leasehold_core::MAX_KEY_BYTES
        );
    }

    #[test]
    fn key_sets_are_valid_and_without_repeats() {
        let mut seen = std::collections::HashSet::new();
        for name in AWKWARD_KEY_NAMES {
            assert!(Key::new(*name).is_ok(), "{name:?}");
            assert!(seen.insert(*name), "{name:?} twice");
        }
        for (a, b) in NEAR_IDENTICAL_KEY_PAIRS {
            assert!(Key::new(*a).is_ok() && Key::new(*b).is_ok() && a != b);
        }
    }
}
