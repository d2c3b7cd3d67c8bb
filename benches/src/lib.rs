//! Benchmarks for leasehold (DESIGN.md §6): every backend against the raw
//! store operations the same lock needs at the least, measured in the same
//! run, against stand-in containers; peers (`rslock`) on the same Redis.
//!
//! `cargo run --release -p leasehold-benches -- full` runs everything and
//! writes `benches/RESULTS.md` and `benches/results.svg`; `smoke` runs a
//! tiny version (memory + one Redis) for CI. `--only STORE[,STORE]` (e.g.
//! `full --only mysql`) measures those stores' rows alone ([`STORES`]), each
//! still beside its raw baseline of the same run.

#![warn(missing_docs)]

pub mod bare;
pub mod extend;
pub mod harness;
pub mod kinds;
pub mod report;
mod setup;
pub mod steps;
pub mod stores;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leasehold_conformance::fixtures;
use leasehold_core::config::BackendConfig;
use leasehold_core::{LockBackend, MemoryBackend};

use crate::harness::{Op, Percentiles, lock_unlock};
use crate::setup::other_stores;
use crate::stores::Subject;

/// The value after `name` on the command line (`--samples 500`), parsed;
/// `None` when absent or not a `T`.
///
/// ```
/// assert_eq!(leasehold_benches::flag::<usize>("--no-such-flag"), None);
/// ```
pub fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// Ends a bench binary named `tool`: removes the containers its run
/// started, prints its error if any, and gives the exit code.
pub fn finish(tool: &str, result: Result<(), String>) -> std::process::ExitCode {
    fixtures::remove_run_containers();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every backend (else memory and one Redis).
    pub all_stores: bool,
    /// Latency samples per op.
    pub samples: usize,
    /// Warm-up ops before sampling.
    pub warmup: usize,
    /// Counted time per throughput figure. Table 2 splits it into
    /// `rounds - 1` rounds interleaved with the baseline and peer (see
    /// [`harness::throughput_rounds`]); the hot-key and kinds figures run it
    /// as one window.
    pub window: Duration,
    /// Throughput rounds of table 2, the first a warm-up (at least 2).
    pub rounds: usize,
    /// Concurrencies.
    pub concurrency: Vec<usize>,
    /// Contending tasks in the handoff test.
    pub handoff_tasks: usize,
    /// Handoffs sampled.
    pub handoffs: usize,
    /// How long the holder keeps the key in the one-waiter handoff.
    pub waiter_hold: Duration,
    /// Task counts of the hot-key throughput.
    pub hot_key_tasks: Vec<usize>,
    /// Guards in the auto-extend run.
    pub guards: usize,
    /// Their TTL.
    pub guard_ttl: Duration,
    /// How long they are held.
    pub hold: Duration,
    /// The stores to measure ([`STORES`]); empty: every store the mode
    /// runs. Sections whose subjects are all left out (fan-out, Redis
    /// auto-extend) are skipped.
    pub only: Vec<String>,
    /// The command line that produced the results (for the table).
    pub command: String,
    /// Where RESULTS.md and results.svg go.
    pub out_dir: PathBuf,
}

impl Config {
    /// The full run (under 15 minutes on 2 cores).
    pub fn full(out_dir: PathBuf) -> Self {
        Config {
            all_stores: true,
            samples: 300,
            warmup: 30,
            window: Duration::from_millis(2500),
            rounds: 6,
            concurrency: vec![1, 16, 64],
            handoff_tasks: 4,
            handoffs: 100,
            waiter_hold: Duration::from_millis(20),
            hot_key_tasks: vec![16, 64],
            guards: 10_000,
            guard_ttl: Duration::from_secs(6),
            hold: Duration::from_secs(60),
            only: Vec::new(),
            command: "cargo run --release -p leasehold-benches -- full".into(),
            out_dir,
        }
    }

    /// Seconds, tiny samples; asserts nothing about speed.
    pub fn smoke(out_dir: PathBuf) -> Self {
        Config {
            all_stores: false,
            samples: 5,
            warmup: 1,
            window: Duration::from_millis(100),
            rounds: 2,
            concurrency: vec![1, 4],
            handoff_tasks: 2,
            handoffs: 3,
            waiter_hold: Duration::from_millis(5),
            hot_key_tasks: vec![4],
            guards: 50,
            guard_ttl: Duration::from_millis(600),
            hold: Duration::from_millis(700),
            only: Vec::new(),
            command: "cargo run --release -p leasehold-benches -- smoke".into(),
            out_dir,
        }
    }
}

/// The store names `--only` takes: `redis` covers Redis, Redlock and the
/// `rslock` peers on the same servers; `postgres` and `mysql` both modes.
pub const STORES: &[&str] = &[
    "memory",
    "redis",
    "etcd",
    "zookeeper",
    "postgres",
    "dynamodb",
    "mysql",
];

impl Config {
    /// Table 2's counted throughput rounds (the warm-up round aside).
    pub fn counted_rounds(&self) -> usize {
        self.rounds.max(2) - 1
    }

    /// Each of table 2's throughput rounds: [`Config::window`] split over
    /// the counted rounds.
    pub fn round_window(&self) -> Duration {
        self.window / self.counted_rounds() as u32
    }

    /// Whether `store` (one of [`STORES`]) is measured.
    pub fn includes(&self, store: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == store)
    }
}

/// One latency row.
#[derive(Clone, Debug)]
pub struct LatencyRow {
    /// Subject.
    pub name: String,
    /// Library lock+unlock.
    pub lib: Percentiles,
    /// Raw baseline (if any).
    pub raw: Option<Percentiles>,
    /// What raw sends.
    pub raw_desc: String,
}

/// One throughput row.
#[derive(Clone, Debug)]
pub struct ThroughputRow {
    /// Subject.
    pub name: String,
    /// Tasks.
    pub tasks: usize,
    /// Library ops/s.
    pub lib: f64,
    /// Raw ops/s.
    pub raw: Option<f64>,
}

/// One handoff row.
#[derive(Clone, Debug)]
pub struct HandoffRow {
    /// Subject.
    pub name: String,
    /// How waiters learn of a release.
    pub waiting: String,
    /// Release → next holder.
    pub handoff: Percentiles,
    /// One raw round trip.
    pub rtt: Option<Percentiles>,
    /// What the round trip sends.
    pub rtt_desc: String,
    /// The same handoff through the store's own blocking primitive (raw,
    /// measured right after): the floor, where the store has one.
    pub floor: Option<(Percentiles, String)>,
}

/// Everything measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Uncontended lock+unlock.
    pub latency: Vec<LatencyRow>,
    /// Throughput.
    pub throughput: Vec<ThroughputRow>,
    /// Handoff among `handoff_tasks` tasks that all keep contending.
    pub handoff: Vec<HandoffRow>,
    /// Handoff to one lone waiter (what a user's waiter usually meets).
    pub one_waiter: Vec<HandoffRow>,
    /// Hot key: lock+unlock per second with every task on one key
    /// (handoffs per second): (subject, tasks, ops/s).
    pub hot_key: Vec<(String, usize, f64)>,
    /// Acquisition-only latency (fan-out table): name → percentiles.
    pub fanout: Vec<(String, Percentiles)>,
    /// Auto-extend on Redis.
    pub extend: Option<extend::ExtendResult>,
    /// Subjects that could not be measured, and why.
    pub failures: Vec<(String, String)>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[bench {:>7.1}s] {}",
        started().elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

fn started() -> &'static std::time::Instant {
    static T: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    T.get_or_init(std::time::Instant::now)
}

/// Runs the benchmark, writes the report, removes the containers.
pub async fn run(config: Config) -> Result<Results, String> {
    started();
    // Every loop runs in a spawned task, where application code runs. A
    // `#[tokio::main]` body is polled on the main thread, outside the
    // runtime's workers, so there each wake-up from a worker crosses
    // threads: that charged a library that hands work to a task (a pinned
    // Postgres session's, a Redis connection's driver) more than a raw op
    // on a connection its caller polls itself, and no service meets it.
    let inner = config.clone();
    let result = tokio::spawn(async move { Box::pin(run_inner(&inner)).await })
        .await
        .unwrap_or_else(|e| Err(format!("the benchmark task failed: {e}")));
    fixtures::remove_run_containers();
    let results = result?;
    report::write(&config, &results)?;
    Ok(results)
}

async fn start_container(spec: fixtures::ContainerSpec) -> Result<fixtures::Container, String> {
    let store = spec.store;
    let c = fixtures::start(&spec).await?;
    log(format!("{store} container on 127.0.0.1:{}", c.port));
    Ok(c)
}

/// Everything a run measures, with the containers kept alive while it does.
struct Fleet {
    subjects: Vec<Subject>,
    /// The Redis backend and URL the auto-extend section uses (`None` when
    /// Redis is left out).
    redis: Option<(Arc<dyn LockBackend>, String)>,
    _redis_containers: Vec<fixtures::Container>,
    _others: Vec<setup::Started>,
}

/// Starts the containers and sets up every subject the config includes:
/// memory, Redis (with and without notifications), Redlock 3 and 5 and the
/// peers when `all_stores`, then the other stores.
async fn fleet(config: &Config, results: &mut Results) -> Result<Fleet, String> {
    let mut subjects: Vec<Subject> = Vec::new();

    // memory
    if config.includes("memory") {
        subjects.push(stores::library(
            "memory",
            Arc::new(MemoryBackend::new()),
            "notified (in-process)",
        ));
    }

    let (redis, redis_containers) = if config.includes("redis") {
        let (redis, url, containers) = redis_subjects(config, &mut subjects).await?;
        (Some((redis, url)), containers)
    } else {
        (None, Vec::new())
    };

    let mut others = Vec::new();
    if config.all_stores {
        others = other_stores(config, results).await;
    }
    for (s, _) in others
        .iter_mut()
        .filter_map(|(s, c)| s.take().map(|s| (s, c)))
    {
        subjects.push(s);
    }
    Ok(Fleet {
        subjects,
        redis,
        _redis_containers: redis_containers,
        _others: others,
    })
}

/// Redis, notifications on and off; Redlock 3 and 5 when `all_stores`; the
/// `rslock` peers on the same servers. Returns the Redis backend, its URL
/// and the containers.
async fn redis_subjects(
    config: &Config,
    subjects: &mut Vec<Subject>,
) -> Result<(Arc<dyn LockBackend>, String, Vec<fixtures::Container>), String> {
    let redis_count = if config.all_stores { 5 } else { 1 };
    let redis_containers = futures_util::future::join_all(
        (0..redis_count).map(|_| start_container(fixtures::redis_spec(false))),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let redis_urls: Vec<String> = redis_containers
        .iter()
        .map(|c| format!("redis://127.0.0.1:{}", c.port))
        .collect();

    // Redis, notifications on and off.
    let url0 = redis_urls[0].clone();
    let redis = stores::retry_connect("redis", Duration::from_secs(60), || async {
        leasehold_redis::RedisBackend::connect(&url0)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let redis: Arc<dyn LockBackend> = Arc::new(redis);
    let raw_conn = stores::redis_conn(&url0).await?;
    let mut s = stores::library("redis", redis.clone(), "notified (pub/sub)");
    s.raw = Some(stores::redis_raw(vec![raw_conn.clone()]));
    s.raw_desc = "EVALSHA acquire + EVALSHA release";
    s.raw_wait = Some(stores::redis_raw_wait(
        vec![redis::Client::open(url0.as_str()).map_err(stores::err)?],
        vec![raw_conn.clone()],
    ));
    s.raw_wait_desc = "leasehold's scripts from bare redis-rs, retried at each PUBLISH of the key";
    s.rtt = Some(stores::redis_ping(raw_conn.clone()));
    s.rtt_desc = "PING";
    subjects.push(s);
    let polled = leasehold_redis::RedisConfig::from_url(&url0)
        .map_err(|e| e.to_string())?
        .notifications(false);
    let polled = leasehold_redis::RedisBackend::connect_with(polled)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = stores::library("redis (notifications off)", Arc::new(polled), "polled");
    s.rtt = Some(stores::redis_ping(raw_conn.clone()));
    s.rtt_desc = "PING";
    subjects.push(s);

    // Redlock 3 and 5.
    if config.all_stores {
        for n in [3usize, 5] {
            let urls = redis_urls[..n].to_vec();
            let config = leasehold_redlock::RedlockConfig::from_node_urls(&urls)
                .map_err(|e| e.to_string())?;
            let backend = leasehold_redlock::RedlockBackend::connect_with(config)
                .await
                .map_err(|e| e.to_string())?;
            let mut conns = Vec::new();
            for u in &urls {
                conns.push(stores::redis_conn(u).await?);
            }
            let mut s = stores::library(
                &format!("redlock-{n}"),
                Arc::new(backend),
                "notified (pub/sub on every server)",
            );
            let clients = urls
                .iter()
                .map(|u| redis::Client::open(u.as_str()).map_err(stores::err))
                .collect::<Result<Vec<_>, _>>()?;
            s.raw = Some(stores::redis_raw(conns.clone()));
            s.raw_desc = "both scripts to N servers concurrently";
            s.raw_wait = Some(stores::redis_raw_wait(clients, conns));
            s.raw_wait_desc = "leasehold's scripts from bare redis-rs to N servers, a majority needed, retried at each PUBLISH of the key on any server";
            s.rtt = Some(stores::redis_ping(raw_conn.clone()));
            s.rtt_desc = "PING (one server)";
            subjects.push(s);
            if n == 3 {
                // Polled beside notified, in the same run: which hands a
                // contended key over sooner.
                let polled = leasehold_redlock::RedlockConfig::from_node_urls(&urls)
                    .map_err(|e| e.to_string())?
                    .notifications(false);
                let polled = leasehold_redlock::RedlockBackend::connect_with(polled)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut s =
                    stores::library("redlock-3 (notifications off)", Arc::new(polled), "polled");
                s.rtt = Some(stores::redis_ping(raw_conn.clone()));
                s.rtt_desc = "PING (one server)";
                subjects.push(s);
            }
        }
    }

    // Peers.
    let mut s = stores::rslock_subject("rslock (1 server)", vec![redis_urls[0].clone()]);
    s.rtt = Some(stores::redis_ping(raw_conn.clone()));
    s.rtt_desc = "PING";
    subjects.push(s);
    if config.all_stores {
        for n in [3usize, 5] {
            let mut s =
                stores::rslock_subject(&format!("rslock ({n} servers)"), redis_urls[..n].to_vec());
            s.rtt = Some(stores::redis_ping(raw_conn.clone()));
            s.rtt_desc = "PING (one server)";
            subjects.push(s);
        }
    }

    Ok((redis, url0, redis_containers))
}

/// What an interleaved loop runs for a subject, in order: the library's
/// lock+unlock, its raw baseline if it has one, its rslock peer's last.
struct Lineup<'a> {
    ops: Vec<Op>,
    has_raw: bool,
    peer: Option<&'a Subject>,
}

impl<'a> Lineup<'a> {
    fn of(subject: &Subject, peer: Option<&'a Subject>) -> Self {
        let mut ops = vec![lock_unlock(subject.try_lock.clone())];
        ops.extend(subject.raw.clone());
        let has_raw = ops.len() > 1;
        ops.extend(peer.map(|p| lock_unlock(p.try_lock.clone())));
        Lineup { ops, has_raw, peer }
    }

    /// The loop's figures (one per op, in order) as the library's, the raw
    /// baseline's and the peer's.
    fn split<T: Copy>(&self, figures: &[T]) -> (T, Option<T>, Option<(&'a Subject, T)>) {
        (
            figures[0],
            self.has_raw.then(|| figures[1]),
            self.peer.map(|p| (p, figures[figures.len() - 1])),
        )
    }
}

async fn run_inner(config: &Config) -> Result<Results, String> {
    let mut results = Results::default();
    let fleet = fleet(config, &mut results).await?;
    let subjects = &fleet.subjects;

    // 1. Uncontended latency. A Redis or Redlock subject's rslock peer is
    // measured in the same loop, interleaved with it and its raw baseline,
    // so the pairs of table 6 meet the same moments of a noisy machine.
    let peer_of = |s: &Subject| -> Option<&Subject> {
        let servers = match s.name.as_str() {
            "redis" => "1 server".to_owned(),
            name => format!("{} servers", name.strip_prefix("redlock-")?),
        };
        let peer = format!("rslock ({servers})");
        subjects.iter().find(|p| p.name == peer)
    };
    let paired: Vec<&str> = subjects
        .iter()
        .filter_map(|s| peer_of(s).map(|p| p.name.as_str()))
        .collect();
    for s in subjects
        .iter()
        .filter(|s| !paired.contains(&s.name.as_str()))
    {
        log(format!("latency: {}", s.name));
        let lineup = Lineup::of(s, peer_of(s));
        match harness::latency(&s.name, &lineup.ops, config.samples, config.warmup).await {
            Ok(p) => {
                let (lib, raw, peer) = lineup.split(&p);
                results.latency.push(LatencyRow {
                    name: s.name.clone(),
                    lib,
                    raw,
                    raw_desc: s.raw_desc.into(),
                });
                if let Some((peer, lib)) = peer {
                    results.latency.push(LatencyRow {
                        name: peer.name.clone(),
                        lib,
                        raw: None,
                        raw_desc: peer.raw_desc.into(),
                    });
                }
            }
            Err(e) => results
                .failures
                .push((s.name.clone(), format!("latency: {e}"))),
        }
    }

    // 4. Fan-out: acquisition alone, Redis vs Redlock 3/5, interleaved.
    if config.includes("redis") {
        let fan: Vec<&Subject> = subjects
            .iter()
            .filter(|s| {
                s.name == "redis" || s.name.starts_with("redlock-") || s.name.starts_with("rslock")
            })
            .collect();
        log("fan-out");
        let acquires: Vec<_> = fan.iter().map(|s| s.try_lock.clone()).collect();
        match harness::acquire_latency("fanout", &acquires, config.samples, config.warmup).await {
            Ok(p) => {
                for (s, p) in fan.iter().zip(p) {
                    results.fanout.push((s.name.clone(), p));
                }
            }
            Err(e) => results.failures.push(("fan-out".into(), e)),
        }
    }

    // 2. Throughput: a subject, its raw baseline and its rslock peer in
    // interleaved rounds, like the latency loop.
    for s in subjects
        .iter()
        .filter(|s| s.name != "redis (notifications off)" && !paired.contains(&s.name.as_str()))
    {
        let lineup = Lineup::of(s, peer_of(s));
        let round = config.round_window();
        for &tasks in &config.concurrency {
            log(format!("throughput: {} x{tasks}", s.name));
            match harness::throughput_rounds(&s.name, &lineup.ops, tasks, round, config.rounds)
                .await
            {
                Ok(rates) => {
                    let (lib, raw, peer) = lineup.split(&rates);
                    results.throughput.push(ThroughputRow {
                        name: s.name.clone(),
                        tasks,
                        lib,
                        raw,
                    });
                    if let Some((peer, lib)) = peer {
                        results.throughput.push(ThroughputRow {
                            name: peer.name.clone(),
                            tasks,
                            lib,
                            raw: None,
                        });
                    }
                }
                Err(e) => results
                    .failures
                    .push((s.name.clone(), format!("throughput x{tasks}: {e}"))),
            }
        }
    }

    // 3. Contended handoff.
    for s in subjects {
        log(format!("handoff: {}", s.name));
        let rtt = match &s.rtt {
            Some(rtt) => match harness::latency(
                &format!("{}-rtt", s.name),
                std::slice::from_ref(rtt),
                config.samples,
                config.warmup,
            )
            .await
            {
                Ok(p) => Some(p[0]),
                Err(e) => {
                    results.failures.push((s.name.clone(), format!("rtt: {e}")));
                    None
                }
            },
            None => None,
        };
        match harness::handoff(&s.name, &s.lock, config.handoff_tasks, config.handoffs).await {
            Ok(p) => {
                let floor = raw_floor(s, config, Some(config.handoff_tasks)).await;
                let row = handoff_row(&mut results, s, "handoff", p, rtt, floor);
                results.handoff.push(row);
            }
            Err(e) => results
                .failures
                .push((s.name.clone(), format!("handoff: {e}"))),
        }
    }

    // 3b. One waiter, and 3c. a hot key.
    for s in subjects {
        log(format!("one waiter: {}", s.name));
        let rtt = results
            .handoff
            .iter()
            .find(|row| row.name == s.name)
            .and_then(|row| row.rtt);
        match harness::handoff_one_waiter(&s.name, &s.lock, config.handoffs, config.waiter_hold)
            .await
        {
            Ok(p) => {
                let floor = raw_floor(s, config, None).await;
                let row = handoff_row(&mut results, s, "one waiter", p, rtt, floor);
                results.one_waiter.push(row);
            }
            Err(e) => results
                .failures
                .push((s.name.clone(), format!("one waiter: {e}"))),
        }
        for &tasks in &config.hot_key_tasks {
            log(format!("hot key: {} x{tasks}", s.name));
            let op = lock_unlock(s.lock.clone());
            match harness::throughput_on(
                &format!("{}-hot", s.name),
                &op,
                tasks,
                config.window,
                true,
            )
            .await
            {
                Ok(ops) => results.hot_key.push((s.name.clone(), tasks, ops)),
                Err(e) => results
                    .failures
                    .push((s.name.clone(), format!("hot key x{tasks}: {e}"))),
            }
        }
    }

    // 5. Auto-extend at scale on Redis.
    if let Some((redis, url0)) = &fleet.redis {
        log(format!(
            "auto-extend: {} guards for {:?}",
            config.guards, config.hold
        ));
        let stats = stores::redis_conn(url0).await?;
        match extend::run(
            redis.clone(),
            stats,
            config.guards,
            config.guard_ttl,
            config.hold,
        )
        .await
        {
            Ok(r) => results.extend = Some(r),
            Err(e) => results.failures.push(("auto-extend".into(), e)),
        }
    }
    log("done");
    drop(fleet);
    Ok(results)
}

/// The reader–writer and semaphore rows: runs [`kinds::measure`] on every
/// backend that has them, writes `KINDS.md`, removes the containers.
pub async fn run_kinds(config: Config) -> Result<Vec<kinds::KindsRow>, String> {
    started();
    let result = async {
        let mut results = Results::default();
        let fleet = Box::pin(fleet(&config, &mut results)).await?;
        let rows = kinds::measure(&config, &fleet.subjects).await;
        for (name, why) in &results.failures {
            eprintln!("not measured: {name}: {why}");
        }
        drop(fleet);
        rows
    }
    .await;
    fixtures::remove_run_containers();
    let rows = result?;
    report::write_kinds(&config, &rows)?;
    Ok(rows)
}

/// A handoff's floor ([`Subject::raw_wait`], where the subject has one):
/// the same handoff through the store's own queue, or the bare client
/// waiting as the library does; among `tasks` contending tasks, or with
/// `None` to one lone waiter.
async fn raw_floor(
    s: &Subject,
    config: &Config,
    tasks: Option<usize>,
) -> Result<Option<(Percentiles, String)>, String> {
    let Some(raw) = &s.raw_wait else {
        return Ok(None);
    };
    let label = format!("{}-raw", s.name);
    let floor = match tasks {
        Some(tasks) => harness::handoff(&label, raw, tasks, config.handoffs).await?,
        None => {
            harness::handoff_one_waiter(&label, raw, config.handoffs, config.waiter_hold).await?
        }
    };
    Ok(Some((floor, s.raw_wait_desc.to_owned())))
}

/// Subject `s`'s row of a handoff table (`what`); a floor that could not be
/// measured is recorded as a failure and left out.
fn handoff_row(
    results: &mut Results,
    s: &Subject,
    what: &str,
    handoff: Percentiles,
    rtt: Option<Percentiles>,
    floor: Result<Option<(Percentiles, String)>, String>,
) -> HandoffRow {
    let floor = floor.unwrap_or_else(|e| {
        results
            .failures
            .push((s.name.clone(), format!("{what}, raw: {e}")));
        None
    });
    HandoffRow {
        name: s.name.clone(),
        waiting: s.waiting.into(),
        handoff,
        rtt,
        rtt_desc: s.rtt_desc.into(),
        floor,
    }
}
