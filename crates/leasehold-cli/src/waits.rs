//! `leasehold top` and `leasehold deadlocks`: read the waiters registry
//! (entries under [`WAITS_PREFIX`], written by every waiting `Locker`; see
//! `leasehold::waits`) with the store's admin listing, and show contention
//! by key class, or the wait-for graph's cycles.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use leasehold::waits::{WAITS_PREFIX, WaitRef, Waiter};
use leasehold::{Admin, Key, ListQuery, LockBackend, LockInfo};
use serde_json::json;

use crate::render::{Out, human};
use crate::{Failure, commands};

/// One waiting call, as found in the store.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub(crate) waiter: Waiter,
    /// The holder label of the waiting process (the entry's lease's).
    pub(crate) holder: Option<String>,
}

impl Found {
    fn short_id(&self) -> &str {
        &self.waiter.id[..self.waiter.id.len().min(8)]
    }

    fn waited(&self, now: SystemTime) -> Duration {
        now.duration_since(self.waiter.since).unwrap_or_default()
    }

    /// `1a2b3c4d (holder partner-A)`.
    fn named(&self) -> String {
        format!(
            "{} (holder {})",
            self.short_id(),
            self.holder.as_deref().unwrap_or("unknown")
        )
    }
}

/// Every waiter recorded in the store.
pub(crate) async fn waiters(backend: &Arc<dyn LockBackend>) -> Result<Vec<Found>, Failure> {
    let admin = Admin::new(backend.clone());
    let entries: Vec<_> = admin
        .list(ListQuery::new(WAITS_PREFIX))
        .try_collect()
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|held| {
            Some(Found {
                waiter: Waiter::parse(&held.key)?,
                holder: held.info.metadata,
            })
        })
        .collect())
}

/// Contention of one key class.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Contention {
    pub(crate) waiters: usize,
    pub(crate) keys: usize,
    pub(crate) total_wait: Duration,
    pub(crate) longest_wait: Duration,
}

/// Key classes (`pattern_of` the wanted key) by waiters, then total wait,
/// most contended first.
pub(crate) fn contention(found: &[Found], now: SystemTime) -> Vec<(String, Contention)> {
    let mut classes: BTreeMap<String, (Contention, Vec<&WaitRef>)> = BTreeMap::new();
    for waiter in found {
        let class = match &waiter.waiter.wants {
            WaitRef::Key(key) => commands::pattern_of(key).to_owned(),
            WaitRef::Digest(_) => "(long keys)".to_owned(),
        };
        let (row, keys) = classes.entry(class).or_default();
        let waited = waiter.waited(now);
        row.waiters += 1;
        row.total_wait += waited;
        row.longest_wait = row.longest_wait.max(waited);
        if !keys.contains(&&waiter.waiter.wants) {
            keys.push(&waiter.waiter.wants);
        }
    }
    let mut rows: Vec<(String, Contention)> = classes
        .into_iter()
        .map(|(class, (mut row, keys))| {
            row.keys = keys.len();
            (class, row)
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.1.waiters, b.1.total_wait)
            .cmp(&(a.1.waiters, a.1.total_wait))
            .then_with(|| a.0.cmp(&b.0))
    });
    rows
}

/// `leasehold top`: key classes ranked by waiters and wait time, printed
/// every `every` (the screen cleared between) or once.
pub(crate) async fn top(
    url: &str,
    timeout: Duration,
    every: Duration,
    once: bool,
    limit: usize,
    out: &Out,
) -> Result<(), Failure> {
    let backend = commands::connect(url, timeout).await?;
    loop {
        let found = waiters(&backend).await?;
        let now = SystemTime::now();
        let rows = contention(&found, now);
        if out.json() {
            let at = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            for (class, row) in rows.iter().take(limit) {
                println!(
                    "{}",
                    json!({
                        "at_unix": at.as_secs_f64(),
                        "class": class,
                        "waiters": row.waiters,
                        "keys": row.keys,
                        "total_wait_seconds": row.total_wait.as_secs_f64(),
                        "longest_wait_seconds": row.longest_wait.as_secs_f64(),
                    })
                );
            }
        } else {
            if !once {
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "{} waiting on {} key classes (every {})",
                found.len(),
                rows.len(),
                human(every)
            );
            println!(
                "{:>7}  {:>5}  {:>10}  {:>9}  CLASS",
                "WAITERS", "KEYS", "TOTAL WAIT", "LONGEST"
            );
            for (class, row) in rows.iter().take(limit) {
                println!(
                    "{:>7}  {:>5}  {:>10}  {:>9}  {class}",
                    row.waiters,
                    row.keys,
                    human(row.total_wait),
                    human(row.longest_wait)
                );
            }
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

/// One edge of the wait-for graph: `from` waits for `key`, held (with
/// `token`) by the waiter at index `to`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Edge {
    pub(crate) to: usize,
    pub(crate) key: WaitRef,
    pub(crate) token: u64,
}

/// The wait-for graph: for each waiter, the waiter holding the key it waits
/// for, if a recorded waiter holds it. `holder_of` says who the store says
/// holds a key (`None`: free or unknown; then the recorded token is
/// trusted). A waiter whose recorded token is not the store's current one
/// released the key since (or lost it): no edge.
pub(crate) fn graph(
    found: &[Found],
    holder_of: &HashMap<String, Option<LockInfo>>,
) -> Vec<Option<Edge>> {
    // Who records holding what, by key digest: one pass, not one per waiter.
    let mut holders: HashMap<u64, Vec<(usize, &WaitRef, u64)>> = HashMap::new();
    for (at, holding) in found.iter().enumerate() {
        for (held, token) in &holding.waiter.holds {
            holders
                .entry(held.digest())
                .or_default()
                .push((at, held, token.get()));
        }
    }
    found
        .iter()
        .map(|waiting| {
            let wants = &waiting.waiter.wants;
            // None: not looked up (a digest); Some(None): free.
            let current = wants.key().and_then(|key| holder_of.get(key));
            let candidates = holders.get(&wants.digest())?;
            candidates.iter().find_map(|&(to, held, token)| {
                if found[to].waiter.id == waiting.waiter.id || !held.same_key(wants) {
                    return None;
                }
                let store_token = current.map(|info| info.as_ref().map(|i| i.fencing_token));
                match store_token {
                    Some(None) => None,
                    Some(Some(Some(now))) if now.get() != token => None,
                    _ => Some(Edge {
                        to,
                        key: wants.clone(),
                        token,
                    }),
                }
            })
        })
        .collect()
}

/// Every cycle of a graph where each node has at most one outgoing edge,
/// each as the indexes of its nodes, starting at its lowest index.
pub(crate) fn cycles(edges: &[Option<Edge>]) -> Vec<Vec<usize>> {
    // 0: not seen, 1: on the current path, 2: done.
    let mut state = vec![0u8; edges.len()];
    let mut found = Vec::new();
    for start in 0..edges.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(node) = at {
            match state[node] {
                0 => {
                    state[node] = 1;
                    path.push(node);
                    at = edges[node].as_ref().map(|e| e.to);
                }
                1 => {
                    let from = path.iter().position(|&n| n == node).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    let lowest = cycle.iter().enumerate().min_by_key(|(_, n)| **n);
                    let lowest = lowest.map_or(0, |(i, _)| i);
                    cycle.rotate_left(lowest);
                    found.push(cycle);
                    break;
                }
                _ => break,
            }
        }
        for node in path {
            state[node] = 2;
        }
    }
    found
}

/// `leasehold deadlocks`: the wait-for graph across every process that
/// records waits in this store; prints each cycle, or that there is none.
/// A cycle found is [`Failure::Deadlocked`] (exit 5).
pub(crate) async fn deadlocks(url: &str, timeout: Duration, out: &Out) -> Result<(), Failure> {
    let backend = commands::connect(url, timeout).await?;
    let found = waiters(&backend).await?;
    let mut holder_of = HashMap::new();
    for waiter in &found {
        if let Some(key) = waiter.waiter.wants.key()
            && !holder_of.contains_key(key)
            && let Ok(valid) = Key::new(key)
        {
            holder_of.insert(key.to_owned(), backend.inspect(&valid).await?);
        }
    }
    let edges = graph(&found, &holder_of);
    let cycles = cycles(&edges);
    let now = SystemTime::now();
    for cycle in &cycles {
        print_cycle(out, &found, &edges, cycle, now);
    }
    if cycles.is_empty() {
        if out.json() {
            println!("{}", json!({"cycles": 0, "waiters": found.len()}));
        } else {
            println!("no deadlock among {} waiters", found.len());
        }
        return Ok(());
    }
    Err(Failure::Deadlocked)
}

fn print_cycle(
    out: &Out,
    found: &[Found],
    edges: &[Option<Edge>],
    cycle: &[usize],
    now: SystemTime,
) {
    let steps: Vec<(&Found, &Edge)> = cycle
        .iter()
        .filter_map(|&n| Some((&found[n], edges[n].as_ref()?)))
        .collect();
    if out.json() {
        let steps: Vec<_> = steps
            .iter()
            .map(|(waiter, edge)| {
                json!({
                    "waiter": waiter.waiter.id,
                    "holder": waiter.holder,
                    "waiting_seconds": waiter.waited(now).as_secs_f64(),
                    "waits_for": edge.key.to_string(),
                    "token": edge.token,
                    "held_by": found[edge.to].waiter.id,
                })
            })
            .collect();
        println!("{}", json!({ "cycle": steps }));
        return;
    }
    let longest = steps
        .iter()
        .map(|(w, _)| w.waited(now))
        .max()
        .unwrap_or_default();
    println!(
        "deadlock: {} tasks, stuck for {}:",
        steps.len(),
        human(longest)
    );
    let mut line = String::new();
    for (i, (waiter, edge)) in steps.iter().enumerate() {
        if i == 0 {
            line.push_str(&waiter.named());
        }
        let next = &found[edge.to];
        let next = if edge.to == cycle[0] {
            next.short_id().to_owned()
        } else {
            next.named()
        };
        line.push_str(&format!(
            " waits for {} (token {}) held by {next}",
            edge.key, edge.token
        ));
    }
    println!("  {line}");
    if let Some((_, edge)) = steps.first() {
        println!(
            "  to break it, free one of these keys, e.g.: leasehold release --force {:?} --reason \"deadlock\"",
            edge.key.to_string()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::FencingToken;

    fn waiter(id: &str, wants: &str, holds: &[(&str, u64)]) -> Found {
        let holds: Vec<(Key, FencingToken)> = holds
            .iter()
            .map(|(k, t)| (Key::new(*k).unwrap(), FencingToken(*t)))
            .collect();
        let mut waiter = Waiter::new(&Key::new(wants).unwrap(), &holds);
        waiter.id = id.to_owned();
        Found {
            waiter,
            holder: Some(format!("holder-{id}")),
        }
    }

    fn held(token: u64) -> Option<LockInfo> {
        Some(LockInfo::new(Some(FencingToken(token)), None))
    }

    #[test]
    fn a_three_party_cycle_is_found_once_and_a_bystander_is_not_in_it() {
        let found = [
            waiter("c", "partner:ravi", &[("restaurant:2", 3)]),
            waiter("a", "restaurant:1", &[("partner:ravi", 1)]),
            waiter("b", "restaurant:2", &[("restaurant:1", 2)]),
            waiter("d", "partner:ravi", &[]),
        ];
        let holder_of: HashMap<_, _> = [
            ("partner:ravi".to_owned(), held(1)),
            ("restaurant:1".to_owned(), held(2)),
            ("restaurant:2".to_owned(), held(3)),
        ]
        .into();
        let edges = graph(&found, &holder_of);
        assert_eq!(edges[3].as_ref().map(|e| e.to), Some(1), "d waits for a");
        assert_eq!(cycles(&edges), [vec![0, 1, 2]]);
    }

    #[test]
    fn a_released_or_retaken_key_breaks_the_edge() {
        let found = [
            waiter("a", "k2", &[("k1", 1)]),
            waiter("b", "k1", &[("k2", 2)]),
        ];
        let stale: HashMap<_, _> = [("k1".to_owned(), held(9)), ("k2".to_owned(), held(2))].into();
        assert!(cycles(&graph(&found, &stale)).is_empty(), "k1 was re-taken");
        let freed: HashMap<_, _> = [("k1".to_owned(), None), ("k2".to_owned(), held(2))].into();
        assert!(cycles(&graph(&found, &freed)).is_empty(), "k1 is free");
        let stuck: HashMap<_, _> = [("k1".to_owned(), held(1)), ("k2".to_owned(), held(2))].into();
        assert_eq!(cycles(&graph(&found, &stuck)), [vec![0, 1]]);
    }

    #[test]
    fn top_ranks_classes_by_waiters_then_wait() {
        let now = SystemTime::now();
        let mut found = vec![
            waiter("a", "restaurant:1", &[]),
            waiter("b", "restaurant:2", &[]),
            waiter("c", "partner:ravi", &[]),
        ];
        found[2].waiter.since = now - Duration::from_secs(60);
        for w in &mut found[..2] {
            w.waiter.since = now - Duration::from_secs(5);
        }
        let rows = contention(&found, now);
        assert_eq!(rows[0].0, "restaurant:");
        assert_eq!(
            rows[0].1,
            Contention {
                waiters: 2,
                keys: 2,
                total_wait: Duration::from_secs(10),
                longest_wait: Duration::from_secs(5)
            }
        );
        assert_eq!(rows[1].0, "partner:");
    }
}
