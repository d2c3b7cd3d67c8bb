//! The waiters registry: while a [`Locker`](crate::Locker) waits for a held
//! key, it records who waits, for which key, since when, and which keys the
//! waiting task already holds, *as a lease in the same store*, so that tools
//! in other processes (`leasehold top`, `leasehold deadlocks`) see every
//! waiter of every process with the store's ordinary admin operations
//! ([`LockBackend::list`] and [`LockBackend::inspect`]) and no backend knows
//! about it.
//!
//! # The entry
//!
//! One key under [`WAITS_PREFIX`] per waiting call, everything in its name
//! (a lease carries no per-call data: its holder label is the backend's, and
//! it says which process waits):
//!
//! ```text
//! leasehold.waits/<id>/<since>/<wanted>/<held>=<token>,<held>=<token>
//! ```
//!
//! `<id>` is 16 random hex digits; `<since>` the wall-clock start of the wait
//! in Unix milliseconds; `<wanted>` and each `<held>` a key with `%`, `/`,
//! `,`, `=`, `#` and `+` written `%xx`, or, when it does not fit in the
//! 1,024 bytes of a key, `#` and the 16 hex digits of its 64-bit FNV-1a
//! digest ([`WaitRef::Digest`]); held keys that fit in neither form are
//! counted in a final `+<n>`. The token of a held key lets a tool check that
//! the key is still held by that very lease before it draws an edge.
//!
//! # Cost and lifetime
//!
//! Nothing for a wait shorter than [`RECORD_AFTER`], so nothing when the
//! key is free or soon released: most waits on a busy key are one
//! handoff long, and the tools look for waits that last (a stuck holder, a
//! deadlock). A wait that lasts costs one acquisition of the entry (sent
//! alongside the wait, not before it), one renewal per third of the TTL
//! while it lasts, and one release when it ends (spawned: the caller does
//! not wait for it). The entry's `<since>` is when the wait began, not when
//! it was recorded. The entry's TTL is the wanted lock's, so a crashed
//! waiter's entry goes within a TTL; success, timeout, error and
//! cancellation (the future dropped) all release it.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::LockBackend;
use crate::error::LockError;
use crate::key::{Key, MAX_KEY_BYTES};
use crate::lease::Lease;
use crate::token::{FencingToken, OwnerToken};
use crate::wait::WaitPolicy;

/// The reserved key prefix of waiter entries. Applications must not lock
/// keys under it.
pub const WAITS_PREFIX: &str = "leasehold.waits/";

/// How long a wait goes on before it is recorded. A wait that ends sooner
/// asks the store nothing more than the wait itself: recording every wait
/// cost a contended key's handoff an entry's grant and release (Postgres
/// advisory mode, 4 tasks on one key: 3.4 ms per handoff recorded, 1.2 ms
/// not, `cargo run --release -p leasehold-benches --bin pg_handoff_cost --
/// --tasks 4`), and in session-backed stores a session per waiting call.
/// `leasehold top` and `leasehold deadlocks` look for waits that last far
/// longer: a deadlock's waits last until their deadlines.
pub const RECORD_AFTER: Duration = Duration::from_millis(100);

/// Bytes that separate an entry's fields and are escaped inside keys.
const ESCAPED: &[u8] = b"%/,=#+";

/// The longest encoded wanted key written as it is; a longer one is written
/// as its digest, so that held keys keep room.
const MAX_WANTED: usize = 512;

/// A key named by a waiter entry: the key itself, or the digest of a key too
/// long to record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WaitRef {
    /// The key.
    Key(String),
    /// The 64-bit FNV-1a digest of a key too long to record
    /// ([`digest`]).
    Digest(u64),
}

impl WaitRef {
    /// The key's digest, whichever form it was recorded in.
    pub fn digest(&self) -> u64 {
        match self {
            WaitRef::Key(key) => digest(key),
            WaitRef::Digest(digest) => *digest,
        }
    }

    /// Whether both name the same key (digests compared when either is one).
    pub fn same_key(&self, other: &WaitRef) -> bool {
        match (self, other) {
            (WaitRef::Key(a), WaitRef::Key(b)) => a == b,
            _ => self.digest() == other.digest(),
        }
    }

    /// The key, when it was recorded whole.
    pub fn key(&self) -> Option<&str> {
        match self {
            WaitRef::Key(key) => Some(key),
            WaitRef::Digest(_) => None,
        }
    }

    fn encode(&self) -> String {
        match self {
            WaitRef::Key(key) => escape(key),
            WaitRef::Digest(digest) => format!("#{digest:016x}"),
        }
    }

    fn decode(field: &str) -> Option<WaitRef> {
        match field.strip_prefix('#') {
            Some(hex) if hex.len() == 16 => u64::from_str_radix(hex, 16).ok().map(WaitRef::Digest),
            Some(_) => None,
            None => unescape(field).map(WaitRef::Key),
        }
    }
}

impl fmt::Display for WaitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitRef::Key(key) => f.write_str(key),
            WaitRef::Digest(digest) => write!(f, "<a long key, digest {digest:016x}>"),
        }
    }
}

/// The 64-bit FNV-1a digest of `key`: how a key too long for a waiter entry
/// is recorded. Stable across versions (it is read by other processes).
pub fn digest(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c.is_ascii() && ESCAPED.contains(&(c as u8)) {
            out.push_str(&format!("%{:02x}", c as u8));
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(field: &str) -> Option<String> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

/// One waiting call, as its entry records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiter {
    /// The entry's random id (16 hex digits).
    pub id: String,
    /// When the wait started, by the waiter's wall clock.
    pub since: SystemTime,
    /// The key it waits for.
    pub wants: WaitRef,
    /// The keys the waiting task held when its wait was recorded, with
    /// their fencing tokens.
    pub holds: Vec<(WaitRef, FencingToken)>,
    /// How many more keys it held that did not fit in the entry.
    pub more_holds: usize,
}

impl Waiter {
    /// A new waiter for `wants` holding `holds`, starting now.
    pub fn new(wants: &Key, holds: &[(Key, FencingToken)]) -> Waiter {
        let wants = wants.as_str();
        let wants = if escape(wants).len() <= MAX_WANTED {
            WaitRef::Key(wants.to_owned())
        } else {
            WaitRef::Digest(digest(wants))
        };
        let mut waiter = Waiter {
            id: OwnerToken::generate().to_hex()[..16].to_owned(),
            since: SystemTime::now(),
            wants,
            holds: Vec::new(),
            more_holds: 0,
        };
        // Keep room for the `,+<n>` of what does not fit.
        let mut room = MAX_KEY_BYTES - waiter.entry_name().len() - 8;
        for (key, token) in holds {
            let whole = WaitRef::Key(key.as_str().to_owned());
            let short = WaitRef::Digest(digest(key.as_str()));
            let cost = |r: &WaitRef| r.encode().len() + token.get().to_string().len() + 2;
            match [whole, short].into_iter().find(|r| cost(r) <= room) {
                Some(found) => {
                    room -= cost(&found);
                    waiter.holds.push((found, *token));
                }
                None => waiter.more_holds += 1,
            }
        }
        waiter
    }

    /// The entry's key: [`WAITS_PREFIX`] and the fields (see the module
    /// docs). Always a valid key.
    pub fn entry_key(&self) -> Key {
        Key::new(self.entry_name()).expect("a waiter entry is built within the key rules")
    }

    fn entry_name(&self) -> String {
        let since = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut holds: Vec<String> = self
            .holds
            .iter()
            .map(|(key, token)| format!("{}={}", key.encode(), token.get()))
            .collect();
        if self.more_holds > 0 {
            holds.push(format!("+{}", self.more_holds));
        }
        format!(
            "{WAITS_PREFIX}{}/{since}/{}/{}",
            self.id,
            self.wants.encode(),
            holds.join(",")
        )
    }

    /// The waiter an entry's key records, or `None` for a key that is not a
    /// well-formed entry.
    pub fn parse(entry: &str) -> Option<Waiter> {
        let mut fields = entry.strip_prefix(WAITS_PREFIX)?.split('/');
        let (id, since, wants, holds) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if fields.next().is_some() || id.is_empty() {
            return None;
        }
        let since = UNIX_EPOCH + Duration::from_millis(since.parse().ok()?);
        let mut waiter = Waiter {
            id: id.to_owned(),
            since,
            wants: WaitRef::decode(wants)?,
            holds: Vec::new(),
            more_holds: 0,
        };
        for held in holds.split(',').filter(|h| !h.is_empty()) {
            if let Some(more) = held.strip_prefix('+') {
                waiter.more_holds = more.parse().ok()?;
                continue;
            }
            let (key, token) = held.split_once('=')?;
            waiter
                .holds
                .push((WaitRef::decode(key)?, FencingToken(token.parse().ok()?)));
        }
        Some(waiter)
    }
}

/// `backend.acquire(key, ttl, wait)`, recording a waiter entry once the
/// wait has lasted [`RECORD_AFTER`] (see the module docs). `holds` is asked
/// only then.
pub(crate) async fn acquire_recorded(
    backend: &Arc<dyn LockBackend>,
    key: &Key,
    ttl: Duration,
    wait: &WaitPolicy,
    holds: impl FnOnce() -> Vec<(Key, FencingToken)>,
) -> Result<Lease, LockError> {
    if wait.deadline.is_zero() {
        return backend.acquire(key, ttl, wait).await;
    }
    // No `try_acquire` of our own first: `acquire` starts with an attempt,
    // and a second refused one cost every contended wait a round trip (in
    // ZooKeeper a node created and deleted) before it queued.
    let since = SystemTime::now();
    tokio::select! {
        biased;
        result = backend.acquire(key, ttl, wait) => result,
        never = keep_entry(backend, key, since, holds, ttl) => match never {},
    }
}

/// Holds a waiter entry for the wait on `key` that began at `since` until
/// dropped: after [`RECORD_AFTER`] acquires it, renews it every third of
/// `ttl`, and releases it (in the background) when dropped. A store error
/// only loses the entry (logged at debug), never the wait.
async fn keep_entry(
    backend: &Arc<dyn LockBackend>,
    key: &Key,
    since: SystemTime,
    holds: impl FnOnce() -> Vec<(Key, FencingToken)>,
    ttl: Duration,
) -> Infallible {
    tokio::time::sleep(RECORD_AFTER).await;
    let entry = Waiter {
        since,
        ..Waiter::new(key, &holds())
    }
    .entry_key();
    let lease = match backend.try_acquire(&entry, ttl).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::debug!(%error, "could not record a waiter entry; waiting unrecorded");
            return std::future::pending().await;
        }
    };
    let mut kept = Kept(Some(lease), backend.clone());
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(lease) = &kept.0 else { break };
        match backend.extend(lease, ttl).await {
            Ok(renewed) => kept.0 = Some(renewed),
            Err(error) if error.is_retryable() => {
                tracing::debug!(%error, "could not renew a waiter entry; trying again");
            }
            Err(error) => {
                tracing::debug!(%error, "lost a waiter entry; waiting unrecorded");
                kept.0 = None;
            }
        }
    }
    std::future::pending().await
}

/// A waiter entry's lease, released in the background when dropped.
struct Kept(Option<Lease>, Arc<dyn LockBackend>);

impl Drop for Kept {
    fn drop(&mut self) {
        let (Some(lease), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let backend = self.1.clone();
        runtime.spawn(async move {
            if let Err(error) = backend.release(&lease).await {
                tracing::debug!(%error, "could not release a waiter entry; it expires with its TTL");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn an_entry_round_trips_with_awkward_keys() {
        let holds = [
            (key("partner:ravi"), FencingToken(7)),
            (key("a/b,c=d#e+f%g 🔒"), FencingToken(12)),
        ];
        let waiter = Waiter::new(&key("restaurant:1/x"), &holds);
        let entry = waiter.entry_key();
        assert!(entry.as_str().starts_with(WAITS_PREFIX));
        let parsed = Waiter::parse(entry.as_str()).expect("an entry parses");
        assert_eq!(parsed.id, waiter.id);
        assert_eq!(parsed.wants, WaitRef::Key("restaurant:1/x".into()));
        assert_eq!(
            parsed.holds,
            [
                (WaitRef::Key("partner:ravi".into()), FencingToken(7)),
                (WaitRef::Key("a/b,c=d#e+f%g 🔒".into()), FencingToken(12)),
            ]
        );
        assert_eq!(parsed.more_holds, 0);
        let drift = waiter.since.duration_since(parsed.since).unwrap();
        assert!(
            drift < Duration::from_millis(1),
            "since kept to the millisecond"
        );
    }

    #[test]
    fn long_keys_become_digests_and_the_rest_is_counted() {
        let long = "x".repeat(MAX_KEY_BYTES);
        let holds: Vec<_> = (0..80)
            .map(|i| (key(&format!("{i:03}{}", "y".repeat(300))), FencingToken(i)))
            .collect();
        let waiter = Waiter::new(&key(&long), &holds);
        assert!(waiter.entry_key().as_str().len() <= MAX_KEY_BYTES);
        let parsed = Waiter::parse(waiter.entry_key().as_str()).unwrap();
        assert_eq!(parsed.wants, WaitRef::Digest(digest(&long)));
        assert!(parsed.wants.same_key(&WaitRef::Key(long)));
        assert!(parsed.holds.len() >= 2, "{parsed:?}");
        assert_eq!(parsed.holds.len() + parsed.more_holds, 80);
        assert!(parsed.more_holds > 0);
    }

    #[test]
    fn foreign_keys_are_not_entries() {
        for name in [
            "partner:ravi",
            "leasehold.waits/",
            "leasehold.waits/id/notanumber/k/",
            "leasehold.waits/id/1/k/a=1/extra",
            "leasehold.waits/id/1/#123/",
        ] {
            assert_eq!(Waiter::parse(name), None, "{name:?}");
        }
    }

    async fn entries(backend: &Arc<dyn LockBackend>) -> Vec<Waiter> {
        let page = backend
            .list(&crate::ListQuery::new(WAITS_PREFIX))
            .await
            .unwrap();
        page.locks
            .iter()
            .filter_map(|held| Waiter::parse(&held.key))
            .collect()
    }

    /// A task waiting up to 20 s for `k` (TTL 3 s) while holding `holds`.
    fn spawn_wait(
        backend: &Arc<dyn LockBackend>,
        holds: Vec<(Key, FencingToken)>,
    ) -> tokio::task::JoinHandle<Result<Lease, LockError>> {
        let backend = backend.clone();
        tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(20));
            acquire_recorded(&backend, &key("k"), TTL, &wait, || holds).await
        })
    }

    const TTL: Duration = Duration::from_secs(3);

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_recorded_once_it_has_lasted_record_after() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let held = backend
            .try_acquire(&key("k"), Duration::from_secs(60))
            .await
            .unwrap();
        let waiting = spawn_wait(&backend, Vec::new());
        tokio::time::sleep(RECORD_AFTER / 2).await;
        assert!(
            entries(&backend).await.is_empty(),
            "a wait was recorded before it had lasted RECORD_AFTER"
        );
        tokio::time::sleep(RECORD_AFTER).await;
        let seen = entries(&backend).await;
        assert_eq!(seen.len(), 1, "a lasting wait is recorded, got {seen:?}");
        backend.release(&held).await.unwrap();
        let lease = waiting.await.unwrap().unwrap();
        backend.release(&lease).await.unwrap();
    }

    /// Counts the attempts made on `k` from outside the backend's own
    /// `acquire`.
    #[derive(Debug, Default)]
    struct OwnAttempts(std::sync::atomic::AtomicUsize);

    #[crate::async_trait]
    impl crate::testing::Hooks for OwnAttempts {
        async fn try_acquire(
            &self,
            inner: &dyn LockBackend,
            key: &Key,
            ttl: Duration,
        ) -> Result<Lease, LockError> {
            if key.as_str() == "k" {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            inner.try_acquire(key, ttl).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_asks_the_store_through_acquire_alone() {
        let memory: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let spy = Arc::new(crate::testing::Spy::new(
            memory.clone(),
            OwnAttempts::default(),
        ));
        let backend: Arc<dyn LockBackend> = spy.clone();
        let held = memory
            .try_acquire(&key("k"), Duration::from_secs(60))
            .await
            .unwrap();
        let waiting = spawn_wait(&backend, Vec::new());
        tokio::time::sleep(RECORD_AFTER * 2).await;
        memory.release(&held).await.unwrap();
        let lease = waiting.await.unwrap().unwrap();
        assert_eq!(
            spy.hooks().0.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a contended wait made an attempt of its own before `acquire`"
        );
        backend.release(&lease).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_lives_while_the_wait_lasts_and_goes_with_it() {
        let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
        let held = backend
            .try_acquire(&key("k"), Duration::from_secs(60))
            .await
            .unwrap();
        let waiting = spawn_wait(&backend, vec![(key("mine"), FencingToken(3))]);
        // Past several entry TTLs: renewals keep it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let seen = entries(&backend).await;
        assert_eq!(seen.len(), 1, "one waiter recorded, got {seen:?}");
        assert_eq!(seen[0].wants, WaitRef::Key("k".into()));
        assert_eq!(
            seen[0].holds,
            [(WaitRef::Key("mine".into()), FencingToken(3))]
        );
        // Timeout: gone.
        let result = waiting.await.unwrap();
        assert!(
            matches!(result, Err(LockError::WaitTimedOut { .. })),
            "{result:?}"
        );
        tokio::task::yield_now().await;
        assert!(
            entries(&backend).await.is_empty(),
            "the entry outlived a timed-out wait"
        );
        // Cancellation: gone.
        let waiting = spawn_wait(&backend, Vec::new());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(entries(&backend).await.len(), 1);
        waiting.abort();
        let _ = waiting.await;
        tokio::task::yield_now().await;
        assert!(
            entries(&backend).await.is_empty(),
            "the entry outlived a cancelled wait"
        );
        // Success: gone, and an uncontended lock never records one.
        let waiting = spawn_wait(&backend, Vec::new());
        tokio::time::sleep(Duration::from_secs(1)).await;
        backend.release(&held).await.unwrap();
        let lease = waiting.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert!(
            entries(&backend).await.is_empty(),
            "the entry outlived a successful wait"
        );
        backend.release(&lease).await.unwrap();
        let asked = std::sync::atomic::AtomicBool::new(false);
        let lease = acquire_recorded(
            &backend,
            &key("k"),
            TTL,
            &WaitPolicy::new(Duration::from_secs(20)),
            || {
                asked.store(true, std::sync::atomic::Ordering::Relaxed);
                Vec::new()
            },
        )
        .await
        .unwrap();
        assert!(!asked.into_inner(), "a free key recorded a waiter");
        backend.release(&lease).await.unwrap();
    }
}
