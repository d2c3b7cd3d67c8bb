//! Timing loops: interleaved latency samples, interleaved throughput rounds,
//! contended handoff. Every loop measures the library and its baseline in
//! the same run, alternating, so machine noise hits both alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

/// Releases what an [`Acquire`] took.
pub type Release = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>;
/// Takes the lock on a key and returns how to release it.
pub type Acquire = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Release, String>> + Send + Sync>;
/// One complete operation on a key (a raw lock+unlock, or a round trip).
pub type Op = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Bounds every measured call so a stuck store fails the run, not hangs it.
pub const CALL_BOUND: Duration = Duration::from_secs(30);

pub(crate) async fn bounded<T>(fut: BoxFuture<'static, Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_BOUND, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {CALL_BOUND:?}")),
    }
}

/// A lock+unlock through an [`Acquire`] as one [`Op`].
pub fn lock_unlock(acquire: Acquire) -> Op {
    Arc::new(move |key| {
        let acquire = acquire.clone();
        Box::pin(async move {
            let release = acquire(key).await?;
            release().await
        })
    })
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples.
    pub n: usize,
}

impl Percentiles {
    /// From samples (any order).
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1e6
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            n: samples.len(),
        }
    }
}

/// Interleaved latency: for each sample, every op in `ops` once, in turn,
/// each on its own fresh key. Returns one [`Percentiles`] per op.
pub async fn latency(
    label: &str,
    ops: &[Op],
    samples: usize,
    warmup: usize,
) -> Result<Vec<Percentiles>, String> {
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); ops.len()];
    for i in 0..warmup + samples {
        for (j, op) in ops.iter().enumerate() {
            let key = format!("bench/{label}/lat/{j}/{}", i % 64);
            let start = Instant::now();
            bounded(op(key)).await?;
            if i >= warmup {
                times[j].push(start.elapsed());
            }
        }
    }
    Ok(times.iter_mut().map(|t| Percentiles::of(t)).collect())
}

/// Operations per second with `tasks` tasks, each looping `op` on its own
/// key, for `duration`.
pub async fn throughput(
    label: &str,
    op: &Op,
    tasks: usize,
    duration: Duration,
) -> Result<f64, String> {
    throughput_on(label, op, tasks, duration, false).await
}

/// [`throughput`], with every task on one key when `one_key` (readers of
/// one reader–writer lock, holders of one semaphore).
pub async fn throughput_on(
    label: &str,
    op: &Op,
    tasks: usize,
    duration: Duration,
    one_key: bool,
) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    // Each task checks the deadline itself: an op that completes without
    // yielding (memory) would starve a timer-driven stop flag.
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, count) = (op.clone(), count.clone());
            let key = if one_key {
                format!("bench/{label}/tput/shared")
            } else {
                format!("bench/{label}/tput/{t}")
            };
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    bounded(op(key.clone())).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed();
    let at_stop = count.load(Ordering::Relaxed);
    Ok(at_stop as f64 / elapsed.as_secs_f64())
}

/// Each op's throughput with `tasks` tasks, interleaved so that drift in a
/// noisy machine's speed meets every op alike: `rounds` rounds, each
/// running every op for `window` in turn (round `r` starting at op
/// `r % ops.len()`, so no op always follows the same one). The first round
/// is a warm-up and not counted (a server's JIT and caches made a first
/// window's figure swing by a factor of two); each op's figure is the
/// median of the others. Each op has keys of its own (`label-i`): an op
/// may leave nodes or rows behind that another op's keys must not meet.
pub async fn throughput_rounds(
    label: &str,
    ops: &[Op],
    tasks: usize,
    window: Duration,
    rounds: usize,
) -> Result<Vec<f64>, String> {
    let mut rates = vec![Vec::with_capacity(rounds); ops.len()];
    for round in 0..rounds.max(2) {
        for turn in 0..ops.len() {
            let i = (round + turn) % ops.len();
            let rate = throughput(&format!("{label}-{i}"), &ops[i], tasks, window).await?;
            if round > 0 {
                rates[i].push(rate);
            }
        }
    }
    Ok(medians(&mut rates))
}

/// Each op's median of its rounds' rates (each op has at least one).
pub fn medians(rates: &mut [Vec<f64>]) -> Vec<f64> {
    rates
        .iter_mut()
        .map(|rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect()
}

/// The handoff a lone waiter meets: a holder takes the key, one waiter
/// starts waiting for it, the holder keeps it `hold` (long enough for the
/// waiter to be parked in its wait, past its first attempt), then releases.
/// Each sample is release sent → the waiter holds it; the waiter then
/// releases and the next sample starts afresh.
pub async fn handoff_one_waiter(
    label: &str,
    lock: &Acquire,
    samples: usize,
    hold: Duration,
) -> Result<Percentiles, String> {
    handoff_between(label, lock, lock, samples, hold).await
}

/// [`handoff_one_waiter`] with the holder taking and releasing the key
/// through `holder` and the waiter through `waiter` (both must name the
/// same lock for a key): splits a handoff's cost between the two sides.
pub async fn handoff_between(
    label: &str,
    holder: &Acquire,
    waiter: &Acquire,
    samples: usize,
    hold: Duration,
) -> Result<Percentiles, String> {
    let key = format!("bench/{label}/handoff1");
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let release = bounded(holder(key.clone())).await?;
        let (waiter_lock, waiter_key) = (waiter.clone(), key.clone());
        let waiter = tokio::spawn(async move {
            let release = bounded(waiter_lock(waiter_key)).await?;
            Ok::<_, String>((Instant::now(), release))
        });
        tokio::time::sleep(hold).await;
        let released_at = Instant::now();
        bounded(release()).await?;
        let (held_at, release) = waiter.await.map_err(|e| e.to_string())??;
        times.push(held_at.saturating_duration_since(released_at));
        bounded(release()).await?;
    }
    Ok(Percentiles::of(&mut times))
}

struct HandoffState {
    released_at: Option<Instant>,
    samples: Vec<Duration>,
}

/// `tasks` tasks contend for one key through `lock` (a waiting acquire).
/// Each sample is the time from the instant a holder sent its release to
/// the instant the next holder had the lock. A holder that released waits
/// until someone else took the lock before it contends again, so every
/// sample is a real handoff to a waiter.
pub async fn handoff(
    label: &str,
    lock: &Acquire,
    tasks: usize,
    handoffs: usize,
) -> Result<Percentiles, String> {
    let key = format!("bench/{label}/handoff");
    let state = Arc::new(Mutex::new(HandoffState {
        released_at: None,
        samples: Vec::with_capacity(handoffs),
    }));
    let done = Arc::new(AtomicBool::new(false));
    let (gen_tx, gen_rx) = watch::channel(0u64);
    let gen_tx = Arc::new(gen_tx);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (lock, key, state, done) = (lock.clone(), key.clone(), state.clone(), done.clone());
            let (gen_tx, mut gen_rx) = (gen_tx.clone(), gen_rx.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let release = bounded(lock(key.clone())).await?;
                    let now = Instant::now();
                    {
                        let mut st = state.lock().await;
                        if let Some(at) = st.released_at.take() {
                            st.samples.push(now - at);
                            if st.samples.len() >= handoffs {
                                done.store(true, Ordering::Relaxed);
                            }
                        }
                        st.released_at = Some(Instant::now());
                    }
                    let generation = {
                        let mut g = 0;
                        gen_tx.send_modify(|v| {
                            *v += 1;
                            g = *v;
                        });
                        g
                    };
                    bounded(release()).await?;
                    // Let a waiter take it before contending again.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        gen_rx.wait_for(|v| *v != generation || done.load(Ordering::Relaxed)),
                    )
                    .await;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    let mut st = state.lock().await;
    Ok(Percentiles::of(&mut st.samples))
}

/// Interleaved acquisition-only latency: each sample times the acquire of
/// every subject in turn; the release afterwards is not timed.
pub async fn acquire_latency(
    label: &str,
    acquires: &[Acquire],
    samples: usize,
    warmup: usize,
) -> Result<Vec<Percentiles>, String> {
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); acquires.len()];
    for i in 0..warmup + samples {
        for (j, acquire) in acquires.iter().enumerate() {
            let key = format!("bench/{label}/acq/{j}/{}", i % 64);
            let start = Instant::now();
            let release = bounded(acquire(key)).await?;
            let took = start.elapsed();
            bounded(release()).await?;
            if i >= warmup {
                times[j].push(took);
            }
        }
    }
    Ok(times.iter_mut().map(|t| Percentiles::of(t)).collect())
}
