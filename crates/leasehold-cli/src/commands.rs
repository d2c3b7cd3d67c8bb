//! The commands. Each opens the store with [`connect`], does one job through
//! the backend's admin operations ([`Admin`]) and prints with
//! [`Out`].

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use leasehold::waits::WAITS_PREFIX;
use leasehold::{Admin, HeldLock, Key, ListQuery, LockBackend, LockError, LockInfo, Options};
use serde_json::json;
use tokio::time::Instant;

use crate::render::{Out, held_for, human};
use crate::{Failure, ListArgs};

/// The backend named by `url`, connected within `timeout`.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Arc<dyn LockBackend>, Failure> {
    match tokio::time::timeout(timeout, leasehold::open(url, Options::new())).await {
        Ok(opened) => Ok(opened?.0),
        Err(_) => Err(Failure::Store(LockError::unavailable(
            "leasehold",
            format!("no connection within {timeout:?}"),
        ))),
    }
}

fn key_of(name: &str) -> Result<Key, Failure> {
    Key::new(name).map_err(|rule| Failure::Usage(format!("invalid key {name:?}: {rule}")))
}

/// `leasehold list`: streams the listing page by page, filtering as it goes,
/// so a store with millions of locks costs one page of memory.
pub(crate) async fn list(
    url: &str,
    timeout: Duration,
    args: &ListArgs,
    out: &Out,
) -> Result<(), Failure> {
    let admin = Admin::new(connect(url, timeout).await?);
    let query = ListQuery::new(args.prefix.clone()).limit(args.page);
    let mut locks = std::pin::pin!(admin.list(query));
    let now = SystemTime::now();
    let progress = !out.json() && std::io::stderr().is_terminal();
    let rows = !args.count && !args.by_pattern;
    if rows {
        out.list_header();
    }
    let (mut read, mut matched) = (0u64, 0u64);
    let mut patterns: HashMap<String, u64> = HashMap::new();
    while let Some(held) = locks.try_next().await? {
        read += 1;
        if progress && read.is_multiple_of(1000) {
            eprint!("\r{read} locks read…");
        }
        if !wanted(args, &held, now) {
            continue;
        }
        matched += 1;
        if args.by_pattern {
            *patterns
                .entry(pattern_of(&held.key).to_owned())
                .or_default() += 1;
        } else if rows {
            out.held(&held, now);
        }
    }
    if progress && read >= 1000 {
        eprint!("\r\x1b[K");
    }
    if args.count {
        out.count(None, matched);
    }
    if args.by_pattern {
        let mut patterns: Vec<_> = patterns.into_iter().collect();
        patterns.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (pattern, count) in patterns {
            out.count(Some(&pattern), count);
        }
    }
    Ok(())
}

/// Whether `held` passes `list`'s filters. A lock whose store does not say
/// when it was taken never passes `--older-than`.
fn wanted(args: &ListArgs, held: &HeldLock, now: SystemTime) -> bool {
    // The waiters registry's entries are not locks anyone asked for: shown
    // only when the prefix asks for them (`top` and `deadlocks` read them).
    if held.key.starts_with(WAITS_PREFIX) && !args.prefix.starts_with(WAITS_PREFIX) {
        return false;
    }
    let old_enough = args
        .older_than
        .is_none_or(|age| held_for(&held.info, now).is_some_and(|held| held >= age));
    let by_holder = args.holder.as_deref().is_none_or(|wanted| {
        held.info
            .metadata
            .as_deref()
            .is_some_and(|holder| holder.contains(wanted))
    });
    old_enough && by_holder
}

/// The key's class: up to and including its first `:` (`payment:`), or the
/// whole key.
pub(crate) fn pattern_of(key: &str) -> &str {
    key.find(':').map_or(key, |at| &key[..=at])
}

/// `leasehold inspect KEY`.
pub(crate) async fn inspect(
    url: &str,
    timeout: Duration,
    key: &str,
    out: &Out,
) -> Result<(), Failure> {
    let key = key_of(key)?;
    let backend = connect(url, timeout).await?;
    let info = backend.inspect(&key).await?;
    out.inspected(key.as_str(), info.as_ref(), SystemTime::now());
    Ok(())
}

/// `leasehold release --force KEY --reason TEXT`: shows the holder, asks
/// (unless `yes`), then evicts through [`Admin::force_release`], which
/// audits it.
pub(crate) async fn force_release(
    url: &str,
    timeout: Duration,
    key: &str,
    reason: &str,
    yes: bool,
    out: &Out,
) -> Result<(), Failure> {
    let key = key_of(key)?;
    let backend = connect(url, timeout).await?;
    if !yes {
        let holder = backend.inspect(&key).await?;
        confirm(&key, holder.as_ref())?;
    }
    let evicted = Admin::new(backend).force_release(&key, reason).await?;
    out.evicted(&evicted.key, evicted.holder.as_ref(), SystemTime::now());
    Ok(())
}

/// Asks on the terminal; without one, refuses (scripts pass `--yes`).
fn confirm(key: &Key, holder: Option<&LockInfo>) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        eprintln!("leasehold: stdin is not a terminal: pass --yes to force-release without asking");
        return Err(Failure::NotConfirmed);
    }
    let who = holder.map_or("nobody (it is free)".to_owned(), |info| {
        format!(
            "token {} held by {}",
            info.fencing_token.map_or("-".into(), |t| t.to_string()),
            info.metadata.as_deref().unwrap_or("an unknown holder")
        )
    });
    eprint!("force-release {key} ({who})? Its holder loses the lock. Type 'yes': ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::NotConfirmed)
    }
}

/// `leasehold health`: connects, times one read, reports capabilities and
/// safety findings. Unhealthy (exit 3) when the store cannot be reached or
/// read within `timeout`, or a finding says it can lose locks.
pub(crate) async fn health(url: &str, timeout: Duration, out: &Out) -> Result<(), Failure> {
    let started = Instant::now();
    let backend = match connect(url, timeout).await {
        Ok(backend) => backend,
        Err(Failure::Store(error)) => return unhealthy(out, &error.to_string()),
        Err(other) => return Err(other),
    };
    let connected = started.elapsed();
    let probe = key_of("leasehold-health-probe")?;
    let read = Instant::now();
    match tokio::time::timeout(timeout, backend.inspect(&probe)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return unhealthy(out, &error.to_string()),
        Err(_) => return unhealthy(out, &format!("no answer within {timeout:?}")),
    }
    let round_trip = read.elapsed();
    let caps = backend.capabilities();
    let warnings = safety_warnings(url).await;
    let status = if warnings.is_empty() {
        "healthy"
    } else {
        "unhealthy"
    };
    out.health(&json!({
        "status": status,
        "backend": backend.name(),
        "connect": human(connected),
        "round_trip": human(round_trip),
        "fencing": format!("{:?}", caps.fencing),
        "durable_fencing": caps.durable_fencing.to_string(),
        "expiry": format!("{:?}", caps.expiry),
        "waiting": format!("{:?}", caps.waiting),
        "fairness": format!("{:?}", caps.fairness),
        "warnings": warnings,
    }));
    if warnings.is_empty() {
        Ok(())
    } else {
        Err(Failure::Unhealthy)
    }
}

fn unhealthy(out: &Out, why: &str) -> Result<(), Failure> {
    out.health(&json!({"status": "unhealthy", "error": why}));
    Err(Failure::Unhealthy)
}

/// What in the store's configuration can lose locks (Redis: an eviction
/// policy other than `noeviction`). Other stores have no such check here.
async fn safety_warnings(url: &str) -> Vec<String> {
    #[cfg(feature = "redis")]
    {
        use leasehold::config::BackendConfig;
        let scheme = url
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if leasehold::redis::RedisConfig::SCHEMES.contains(&scheme.as_str()) {
            return match leasehold::redis::RedisBackend::connect(url).await {
                Ok(redis) => redis
                    .check_safety()
                    .await
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                Err(error) => vec![format!("could not read the configuration: {error}")],
            };
        }
    }
    let _ = url;
    Vec::new()
}

/// `leasehold watch KEY`: looks every `every` and prints each change of
/// holder until interrupted. A store that fails meanwhile is reported once
/// per outage and watched again.
pub(crate) async fn watch(
    url: &str,
    timeout: Duration,
    key: &str,
    every: Duration,
    out: &Out,
) -> Result<(), Failure> {
    let key = key_of(key)?;
    let backend = connect(url, timeout).await?;
    let started = Instant::now();
    // (token, holder) last printed; None before the first look.
    let mut shown: Option<Option<(Option<u64>, Option<String>)>> = None;
    let mut failing = false;
    loop {
        match backend.inspect(&key).await {
            Ok(info) => {
                failing = false;
                let now = info
                    .as_ref()
                    .map(|i| (i.fencing_token.map(|t| t.get()), i.metadata.clone()));
                if shown.as_ref() != Some(&now) {
                    out.changed(key.as_str(), info.as_ref(), started.elapsed());
                    shown = Some(now);
                }
            }
            Err(error) if error.is_retryable() => {
                if !failing {
                    eprintln!("leasehold: {error} (still watching)");
                    failing = true;
                }
            }
            Err(error) => return Err(error.into()),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_the_key_up_to_its_first_colon() {
        assert_eq!(pattern_of("payment:user:123"), "payment:");
        assert_eq!(pattern_of("nightly-report"), "nightly-report");
        assert_eq!(pattern_of(":odd"), ":");
    }
}
