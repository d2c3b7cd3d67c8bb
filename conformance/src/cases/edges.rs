//! Cases at the edges of the contract (issue 11): each one fails on a kind of
//! broken backend that passed the rest of the suite: an `extend` that revives
//! a key someone else took and released, a key encoding that keeps only a
//! prefix or folds case, validity counted from the answer instead of the
//! request, a zero wait that never tries, a dropped acquisition that strands
//! a grant, a session end the guard never hears about, and absurd TTLs.
//!
//! `conformance/tests/broken.rs` proves each of them against a backend with
//! that one bug.

use std::time::Duration;

use leasehold_core::instant_after;

use super::*;

/// How much later than the case's own clock read before a call a backend's
/// validity may start: a correct backend reads the clock inside the call, a
/// few microseconds after the case did, and a backend without a drift
/// allowance (the memory backend) ends up that much past `start + TTL`. 5 ms
/// is far below any delayed reply the check is there to catch, and far above
/// the gap between two clock reads around a call, even on a loaded machine;
/// the check also keeps the best of [`VALIDITY_TRIES`] tries so that one
/// descheduled thread cannot fail it.
const VALIDITY_ANCHOR_SLACK: Duration = Duration::from_millis(5);

/// How many times a validity check is tried before it fails; see
/// [`VALIDITY_ANCHOR_SLACK`].
const VALIDITY_TRIES: usize = 5;

/// How long past its TTL a killed holder's key may stay held: the time for
/// the store to notice (a TTL check, a closed connection, a session timeout
/// that follows the TTL asked for) on a loaded 2-core machine.
pub(super) const KILLED_HOLDER_SLACK: Duration = Duration::from_secs(5);

/// How soon a key must be free again after an acquisition of it was dropped:
/// the longest default per-call timeout of leasehold's backends (5 s: a call
/// already on the wire is bounded by it) plus 5 s of slack. The TTL is a
/// minute, so a grant stranded until its TTL is plainly visible.
const DROPPED_ACQUISITION_BOUND: Duration = Duration::from_secs(10);

/// How soon a guard must report loss after its store session was ended, and
/// how soon another client must then be able to take the key. The guard's TTL
/// is a minute, so its first renewal (at a third of it) comes after this
/// bound: the loss must be noticed from the session's end, not from a failed
/// renewal.
const SESSION_END_BOUND: Duration = Duration::from_secs(10);

/// The TTL a validity check compares against: what the case asked for on a
/// TTL backend; on a session backend, the TTL the lease says it was granted
/// (the session's, which the asked TTL maps onto).
fn granted_ttl(ctx: &Ctx, asked: Duration, lease: &Lease) -> Duration {
    if ctx.caps.expiry == Expiry::Ttl {
        asked
    } else {
        lease.ttl()
    }
}

/// How far `valid_until` lies past `start + ttl` (zero when it does not).
fn overshoot(start: Instant, valid_until: Instant, ttl: Duration) -> Duration {
    valid_until.saturating_duration_since(instant_after(start, ttl))
}

/// Runs `$attempt` (an expression that awaits one call and yields its
/// overshoot) up to [`VALIDITY_TRIES`] times until one overshoot is within
/// [`VALIDITY_ANCHOR_SLACK`]; fails naming `$what` otherwise.
macro_rules! anchored {
    ($what:expr, $attempt:expr) => {{
        let mut least = Duration::MAX;
        for _ in 0..VALIDITY_TRIES {
            let overshoot: Duration = $attempt;
            least = least.min(overshoot);
            if least <= VALIDITY_ANCHOR_SLACK {
                break;
            }
        }
        ensure!(
            least <= VALIDITY_ANCHOR_SLACK,
            "{}: valid_until was at least {least:?} later than the call's start + TTL in \
             each of {VALIDITY_TRIES} tries (allowed: {VALIDITY_ANCHOR_SLACK:?}); validity must \
             count from when the request was sent, not from when the answer arrived",
            $what
        );
    }};
}

/// A zero wait on a free key still makes its one attempt and succeeds:
/// backend `acquire` with [`RetryPolicy::no_wait`] and
/// `Locker::lock_within(key, Duration::ZERO)`; on a held key it gives
/// `Timeout` (or `Contended`) promptly.
pub async fn zero_wait_acquisition_of_a_free_key_succeeds(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("free");
    let ttl = ctx.ttl(Duration::from_secs(30));
    let lease = ctx
        .backend
        .acquire(&key, ttl, &RetryPolicy::no_wait())
        .await
        .map_err(|e| {
            Failed(format!(
                "acquire with RetryPolicy::no_wait() on a free key should make its one attempt \
                 and succeed, got {e}"
            ))
        })?;
    ctx.backend.release(&lease).await?;
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(30));
    let guard = locker
        .lock_within(&key, Duration::ZERO)
        .await
        .map_err(|e| {
            Failed(format!(
                "Locker::lock_within(key, Duration::ZERO) on a free key should succeed, got {e}"
            ))
        })?;
    let other = ctx.client().await?;
    let started = Instant::now();
    let held = tokio::time::timeout(
        Duration::from_secs(20),
        other.acquire(&key, ttl, &RetryPolicy::no_wait()),
    )
    .await
    .map_err(|_| Failed("a zero-wait acquire of a held key still waited after 20 s".into()))?;
    match held {
        Err(LockError::Timeout { .. } | LockError::Contended { .. }) => {}
        Ok(lease) => {
            let _ = other.release(&lease).await;
            return Err(Failed(
                "a zero-wait acquire took a key the guard holds".into(),
            ));
        }
        Err(e) => {
            return Err(Failed(format!(
                "a zero-wait acquire of a held key should be Timeout, got {e}"
            )));
        }
    }
    eprintln!(
        "leasehold-conformance: a zero-wait acquire of a held key answered in {:?}",
        started.elapsed()
    );
    guard.release().await?;
    Ok(())
}

/// `valid_until` is never later than the call's start + TTL: validity counts
/// from when the request was sent, so a slow answer shortens it instead of
/// moving it past the store's expiry. Checked on `try_acquire`, `acquire`,
/// `extend`, `Locker` guards when taken and after their watchdog renewed them
/// (a session backend's leases are held to the TTL they say they got). A
/// backend without a drift allowance reads its clock a little after the case
/// does: 5 ms of slack, best of 5 tries.
pub async fn valid_until_is_never_later_than_call_start_plus_ttl(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("validity");
    let ttl = ctx.ttl(Duration::from_secs(10));
    anchored!("try_acquire", {
        let start = Instant::now();
        let lease = ctx.backend.try_acquire(&key, ttl).await?;
        ctx.backend.release(&lease).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    let wait = RetryPolicy::new(Duration::from_secs(5));
    anchored!("acquire", {
        let start = Instant::now();
        let lease = ctx.backend.acquire(&key, ttl, &wait).await?;
        ctx.backend.release(&lease).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    let mut lease = ctx.backend.try_acquire(&key, ttl).await?;
    anchored!("extend", {
        let start = Instant::now();
        lease = ctx.backend.extend(&lease, ttl).await?;
        overshoot(start, lease.valid_until(), granted_ttl(&ctx, ttl, &lease))
    });
    ctx.backend.release(&lease).await?;
    let locker = ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(5));
    anchored!("Locker::try_lock", {
        let start = Instant::now();
        let guard = locker.try_lock(&key).await?;
        let valid_until = guard.valid_until();
        let granted = granted_ttl(&ctx, ttl, &guard.lease());
        guard.release().await?;
        overshoot(start, valid_until, granted)
    });
    anchored!("Locker::lock", {
        let start = Instant::now();
        let guard = locker.lock(&key).await?;
        let valid_until = guard.valid_until();
        let granted = granted_ttl(&ctx, ttl, &guard.lease());
        guard.release().await?;
        overshoot(start, valid_until, granted)
    });
    // A guard renewed by its watchdog: every renewal started before now, so
    // its validity never lies more than one TTL ahead of now.
    let short = ctx.ttl(Duration::from_millis(600));
    let renewing = ctx.locker(ctx.backend.clone(), short, Duration::from_secs(5));
    let guard = renewing.try_lock(&key).await?;
    let first = guard.valid_until();
    let until = Instant::now() + short * 2;
    while Instant::now() < until {
        tokio::time::sleep(short / 5).await;
        // Validity first: a renewal that ends after this read started before it.
        let (valid_until, granted) = (guard.valid_until(), guard.lease().ttl());
        let granted = if ctx.caps.expiry == Expiry::Ttl {
            short
        } else {
            granted
        };
        let over = overshoot(Instant::now(), valid_until, granted);
        ensure!(
            over.is_zero(),
            "a guard's validity after a watchdog renewal lies {over:?} past now + TTL"
        );
    }
    ensure!(
        guard.valid_until() > first,
        "the guard's watchdog never renewed it in two TTLs"
    );
    guard.release().await?;
    Ok(())
}

/// A holder that let its lease expire, after another holder took the key
/// *and released it*, gets `Lost` (or `NotHeld`) from `extend`, never a
/// renewal: a renewal would let it believe it held the key throughout while
/// someone else held it in between. The refused extend leaves the key free.
pub async fn extend_after_take_and_release_is_lost(ctx: Arc<Ctx>) -> Outcome {
    let key = ctx.key("revived");
    let ttl = ctx.ttl(Duration::from_millis(300));
    let lease = ctx.backend.try_acquire(&key, ttl).await?;
    let other = ctx.client().await?;
    let theirs = acquire_eventually(&other, &key, ttl, ctx.expiry_bound(ttl)).await?;
    let their_token = theirs.fencing_token();
    other.release(&theirs).await?;
    match ctx.backend.extend(&lease, ttl).await {
        Err(LockError::Lost { .. } | LockError::NotHeld { .. }) => {}
        Ok(renewed) => {
            let _ = ctx.backend.release(&renewed).await;
            return Err(Failed(format!(
                "extend succeeded after the lease expired and another holder (token \
                 {their_token}) took and released the key: the old holder (token {}) would \
                 believe it held the key throughout",
                lease.fencing_token()
            )));
        }
        Err(e) => {
            return Err(Failed(format!(
                "extend after another holder took and released the key should be Lost, got {e}"
            )));
        }
    }
    let again = other.try_acquire(&key, ttl).await.map_err(|e| {
        Failed(format!(
            "after the refused extend the key should be free, but try_acquire gave {e}"
        ))
    })?;
    other.release(&again).await?;
    Ok(())
}

/// Holds both keys of each pair at once, then checks that another client
/// sees both held and that releasing one leaves the other held.
async fn pairs_stay_distinct(ctx: &Ctx, pairs: &[(Key, Key)], why: &str) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(30));
    let other = ctx.client().await?;
    for (a, b) in pairs {
        let first = ctx.backend.try_acquire(a, ttl).await.map_err(|e| {
            Failed(format!(
                "{why}: {a:?} could not be locked (is it free?): {e}"
            ))
        })?;
        let second = match ctx.backend.try_acquire(b, ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                let _ = ctx.backend.release(&first).await;
                return Err(Failed(format!(
                    "{why}: while {a:?} ({} bytes) was held, {b:?} ({} bytes) could not be \
                     locked ({e}): the two keys share a lock",
                    a.as_str().len(),
                    b.as_str().len()
                )));
            }
        };
        expect_contended(&other, a, ttl, why).await?;
        expect_contended(&other, b, ttl, why).await?;
        ctx.backend.release(&first).await?;
        expect_contended(
            &other,
            b,
            ttl,
            "releasing one key of a pair must leave the other",
        )
        .await?;
        ctx.backend.release(&second).await?;
    }
    Ok(())
}

/// Two keys of 1,000 bytes or more (up to the 1,024-byte limit, case prefix
/// included) that differ only in their last byte, or only in their first byte
/// after a long common tail, can both be held at once: a key encoding that
/// keeps only a prefix (or a suffix) of long keys is caught here.
pub async fn long_keys_differing_in_the_last_byte_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let prefix = ctx.key("").as_str().len();
    let mut pairs = Vec::new();
    for total in [1000, leasehold_core::MAX_KEY_BYTES] {
        let body = "L".repeat(total - prefix - 1);
        pairs.push((ctx.key(&format!("{body}a")), ctx.key(&format!("{body}b"))));
        pairs.push((ctx.key(&format!("a{body}")), ctx.key(&format!("b{body}"))));
    }
    // Two-byte characters whose encodings differ only in the last byte.
    let body = "L".repeat(leasehold_core::MAX_KEY_BYTES - prefix - 2);
    pairs.push((ctx.key(&format!("{body}é")), ctx.key(&format!("{body}è"))));
    for (a, b) in &pairs {
        ensure!(
            a.as_str().len() >= 1000 && b.as_str().len() <= leasehold_core::MAX_KEY_BYTES,
            "the case built a key of {} bytes",
            a.as_str().len()
        );
    }
    pairs_stay_distinct(&ctx, &pairs, "long keys differing in one byte").await
}

/// Keys that differ only in letter case, in trailing whitespace, or in `/`
/// against its URL escape `%2F` are different locks: a key encoding that
/// folds case, trims, or unescapes is caught here.
pub async fn keys_differing_in_case_whitespace_or_escaping_stay_distinct(ctx: Arc<Ctx>) -> Outcome {
    let pairs = [
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
    ]
    .map(|(a, b)| (ctx.key(a), ctx.key(b)));
    pairs_stay_distinct(&ctx, &pairs, "near-identical keys").await
}

/// A caller that stops waiting in `acquire` or `Locker::lock` (drops the
/// future: a `select!`, a timeout) never strands a grant: while the key is
/// held, and at several moments right after the holder releases it (so that
/// some drops land while a store call is in flight), the acquisition is
/// dropped, and the key is free again within the per-call timeout + slack
/// (10 s in all, see [`DROPPED_ACQUISITION_BOUND`]), not after the TTL of a
/// minute.
pub async fn dropped_acquisition_leaves_the_key_free(ctx: Arc<Ctx>) -> Outcome {
    let ttl = ctx.ttl(Duration::from_secs(60));
    let waiter = ctx.client().await?;
    let checker = ctx.client().await?;
    let wait = RetryPolicy::new(Duration::from_secs(30))
        .with_delays(Duration::from_millis(1), Duration::from_millis(5));
    let locker = ctx.locker(waiter.clone(), ttl, Duration::from_secs(30));
    // Microseconds after the release at which the acquisition is dropped
    // (a round trip to a local store takes a fraction of a millisecond);
    // `None`: dropped while the key is still held.
    let drops: [Option<u64>; 12] = [
        None,
        Some(0),
        Some(100),
        Some(200),
        Some(300),
        Some(500),
        Some(750),
        Some(1_000),
        Some(2_000),
        Some(5_000),
        Some(13_000),
        Some(34_000),
    ];
    let (mut dropped, mut slowest) = (0, Duration::ZERO);
    for (round, drop_after) in drops.iter().chain(drops.iter()).enumerate() {
        let with_locker = round >= drops.len();
        let key = ctx.key(&format!("dropped-{round}"));
        let held = ctx.backend.try_acquire(&key, ttl).await?;
        let mut attempt: BoxFuture<Result<Won, LockError>> = if with_locker {
            let (locker, key) = (locker.clone(), key.clone());
            Box::pin(async move { Ok(Won::Guard(locker.lock(&key).await?)) })
        } else {
            let (waiter, key, wait) = (waiter.clone(), key.clone(), wait.clone());
            Box::pin(async move { Ok(Won::Lease(waiter.acquire(&key, ttl, &wait).await?)) })
        };
        // Let it make its first attempt and start waiting.
        tokio::select! {
            answer = &mut attempt => {
                return Err(Failed(format!(
                    "an acquisition of a held key answered while the key was held: {}",
                    match answer {
                        Ok(_) => "it got the key".to_owned(),
                        Err(e) => e.to_string(),
                    }
                )));
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let completed = match drop_after {
            None => {
                drop(attempt);
                ctx.backend.release(&held).await?;
                None
            }
            Some(micros) => {
                ctx.backend.release(&held).await?;
                let answer = tokio::select! {
                    answer = &mut attempt => Some(answer),
                    () = fine_sleep(Duration::from_micros(*micros)) => None,
                };
                // Dropped here, not at the end of the round: an abandoned
                // future that is never polled again is not yet a dropped one.
                drop(attempt);
                answer
            }
        };
        match completed {
            // Not dropped: the caller got the lease, and gives it back.
            Some(Ok(Won::Lease(lease))) => waiter.release(&lease).await?,
            Some(Ok(Won::Guard(guard))) => guard.release().await?,
            Some(Err(e)) => {
                return Err(Failed(format!(
                    "an acquisition of a released key failed: {e}"
                )));
            }
            None => dropped += 1,
        }
        let started = Instant::now();
        let lease = acquire_eventually(&checker, &key, ttl, DROPPED_ACQUISITION_BOUND)
            .await
            .map_err(|Failed(m)| {
                Failed(format!(
                    "after an acquisition was dropped {}, the key was not free within \
                     {DROPPED_ACQUISITION_BOUND:?} (TTL {ttl:?}: a stranded grant?): {m}",
                    match drop_after {
                        None => "while the key was held".to_owned(),
                        Some(micros) => format!("{micros} µs after the release"),
                    }
                ))
            })?;
        slowest = slowest.max(started.elapsed());
        checker.release(&lease).await?;
    }
    eprintln!(
        "leasehold-conformance: {dropped} of {} acquisitions dropped before they answered; the key was free again within {slowest:?} each time",
        drops.len() * 2
    );
    Ok(())
}

/// Sleeps `by` with microsecond precision (Tokio's timer counts whole
/// milliseconds), on a thread of its own.
async fn fine_sleep(by: Duration) {
    if by.is_zero() {
        return;
    }
    let (done, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(by);
        let _ = done.send(());
    });
    let _ = wait.await;
}

/// What a dropped-acquisition round's attempt won when it was not dropped.
enum Won {
    Lease(Lease),
    Guard(leasehold_core::LockGuard),
}

/// Ending a holder's store session (the suite's session ender: a terminated
/// connection, a revoked etcd lease, an expired ZooKeeper session) fires the
/// guard's `lost()` within 10 s ([`SESSION_END_BOUND`]), well before its
/// first renewal (TTL one minute) would notice; `is_lost()` is true then, and
/// another client takes the key within the same bound.
pub async fn ending_the_holders_session_fires_lost(ctx: Arc<Ctx>) -> Outcome {
    let end = ctx
        .session_ender
        .clone()
        .ok_or_else(|| Failed("no session ender".into()))?;
    let key = ctx.key("session-ended");
    let ttl = ctx.ttl(Duration::from_secs(60));
    let holder = ctx.client().await?;
    let locker = ctx.locker(holder, ttl, Duration::from_secs(10));
    let guard = locker.try_lock(&key).await?;
    let ended_at = Instant::now();
    end(guard.lease())
        .await
        .map_err(|e| Failed(format!("the session ender failed: {e}")))?;
    tokio::time::timeout(SESSION_END_BOUND, guard.lost())
        .await
        .map_err(|_| {
            Failed(format!(
                "lost() did not fire within {SESSION_END_BOUND:?} after the holder's session was ended"
            ))
        })?;
    let noticed = ended_at.elapsed();
    ensure!(guard.is_lost(), "lost() fired but is_lost() is false");
    let other = ctx.client().await?;
    let taken = acquire_eventually(&other, &key, ttl, SESSION_END_BOUND)
        .await
        .map_err(|Failed(m)| {
            Failed(format!(
                "after the holder's session ended, another client could not take the key: {m}"
            ))
        })?;
    let freed = ended_at.elapsed();
    eprintln!(
        "leasehold-conformance: session ended; lost() fired after {noticed:?}, key taken by another client after {freed:?}"
    );
    ensure!(
        guard.release().await.is_err(),
        "releasing the guard of an ended session succeeded while another client held the key"
    );
    other.release(&taken).await?;
    Ok(())
}
