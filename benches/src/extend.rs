//! Auto-extend at scale: many guards held by one `Locker` with auto-extend,
//! renewing for a while; client CPU and store commands per renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use leasehold_core::testing::{Hooks, Spy};
use leasehold_core::{Lease, LockBackend, LockError, Locker, TtlPolicy, async_trait};
use redis::aio::ConnectionManager;

/// Counts the leases the watchdog renews and the store calls it makes for
/// them.
#[derive(Debug, Default)]
struct Counting {
    renewals: AtomicU64,
    batches: AtomicU64,
}

#[async_trait]
impl Hooks for Counting {
    async fn extend(
        &self,
        inner: &dyn LockBackend,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        inner.extend(lease, ttl).await
    }
    async fn extend_many(
        &self,
        inner: &dyn LockBackend,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        self.renewals
            .fetch_add(renewals.len() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        inner.extend_many(renewals).await
    }
}

/// This process's user+system CPU time (from `/proc/self/stat`, in clock
/// ticks of 10 ms).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// What this process's live threads have used so far, from the sum of
/// `/proc/self/task/*/schedstat`: finer than [`process_cpu`] for short
/// spans, but a thread that exits takes its share with it, so only for
/// spans in which no thread ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadTimes {
    /// CPU time, to the nanosecond.
    pub cpu: Duration,
    /// How many times a thread was put on a CPU: every wake-up of a parked
    /// worker counts, so per lock+unlock this counts thread hand-offs.
    pub runs: u64,
}

impl ThreadTimes {
    /// The live threads' totals now.
    pub fn now() -> Self {
        std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|thread| std::fs::read_to_string(thread.path().join("schedstat")).ok())
            .fold(ThreadTimes::default(), |total, stat| {
                let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
                let cpu = fields.next().flatten().unwrap_or(0);
                let runs = fields.nth(1).flatten().unwrap_or(0);
                ThreadTimes {
                    cpu: total.cpu + Duration::from_nanos(cpu),
                    runs: total.runs + runs,
                }
            })
    }

    /// What was used since `earlier`.
    pub fn since(self, earlier: ThreadTimes) -> ThreadTimes {
        ThreadTimes {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// Server-side command counts from `INFO commandstats`: (commands sent by
/// clients excluding `INFO`, scripts run, all calls including those made
/// inside scripts).
pub async fn commandstats(conn: &mut ConnectionManager) -> Result<(u64, u64, u64), String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let (mut client, mut scripts, mut all) = (0, 0, 0);
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if name == "info" {
            continue;
        }
        all += calls;
        match name {
            "evalsha" | "eval" | "evalsha_ro" | "eval_ro" | "fcall" => {
                scripts += calls;
                client += calls;
            }
            // Commands a script runs are counted too; the scripts use only
            // these, the client never sends them directly during the run.
            "get" | "pexpire" | "set" | "incr" | "del" | "publish" | "pttl" => {}
            _ => client += calls,
        }
    }
    Ok((client, scripts, all))
}

/// What the auto-extend run measured.
#[derive(Clone, Debug, Default)]
pub struct ExtendResult {
    /// Guards held.
    pub guards: usize,
    /// TTL of each.
    pub ttl: Duration,
    /// How long they were held after all were taken.
    pub held_for: Duration,
    /// Leases renewed (sum over `extend_many` calls).
    pub renewals: u64,
    /// `extend_many` calls.
    pub batches: u64,
    /// Client CPU over the hold.
    pub cpu: Duration,
    /// Commands clients sent (scripts count one).
    pub client_commands: u64,
    /// All server command calls, including those inside scripts.
    pub server_calls: u64,
    /// Guards lost during the hold.
    pub lost: usize,
}

impl ExtendResult {
    /// Renewal periods in the hold (a guard renews at a third of its TTL).
    pub fn periods(&self) -> f64 {
        self.held_for.as_secs_f64() / (self.ttl.as_secs_f64() / 3.0)
    }
}

/// Takes `guards` guards on Redis with auto-extend and holds them `hold`.
pub async fn run(
    backend: Arc<dyn LockBackend>,
    mut stats: ConnectionManager,
    guards: usize,
    ttl: Duration,
    hold: Duration,
) -> Result<ExtendResult, String> {
    let counting = Arc::new(Spy::new(backend, Counting::default()));
    let locker = Locker::builder_from_arc(counting.clone())
        .ttl(TtlPolicy::Fixed(ttl))
        .auto_extend(true)
        .build();
    let held: Vec<_> = futures_util::stream::iter(0..guards)
        .map(|i| {
            let locker = locker.clone();
            async move { locker.try_lock(format!("bench/extend/{i}")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let held = held
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let before = (
        counting.hooks().renewals.load(Ordering::Relaxed),
        counting.hooks().batches.load(Ordering::Relaxed),
        process_cpu(),
        commandstats(&mut stats).await?,
    );
    let start = tokio::time::Instant::now();
    tokio::time::sleep(hold).await;
    let held_for = start.elapsed();
    let after = (
        counting.hooks().renewals.load(Ordering::Relaxed),
        counting.hooks().batches.load(Ordering::Relaxed),
        process_cpu(),
        commandstats(&mut stats).await?,
    );
    let lost = held.iter().filter(|g| g.is_lost()).count();
    let releases = futures_util::stream::iter(held)
        .map(|g| g.release())
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    drop(releases);
    Ok(ExtendResult {
        guards,
        ttl,
        held_for,
        renewals: after.0 - before.0,
        batches: after.1 - before.1,
        cpu: after.2.saturating_sub(before.2),
        client_commands: after.3.0 - before.3.0,
        server_calls: after.3.2 - before.3.2,
        lost,
    })
}
