//! Leader election (`Election`) on the store.
//!
//! - `candidates_lead_one_at_a_time_with_increasing_tokens`: five
//!   candidates, each with its own client, campaign and resign in turn; the
//!   history checker finds no two leaders at once, and tokens increase.
//! - `observers_see_each_leader_in_order`: an observer sees every one of
//!   three successive leaders, in order, and then no leader.
//! - `a_killed_leaders_successor_leads_within_the_ttl`: the leader, in
//!   another process, is SIGKILLed; the waiting candidate leads within the
//!   TTL and the slack of the killed-holder case, with a higher token.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use leasehold_core::{Election, Fencing, FencingToken};
use tokio::time::Instant;

use crate::case::{Case, Ctx, Failed, Outcome, case, ensure, select};
use crate::history::{History, Holding};

/// This family's cases, in the order listed above.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(
            candidates_lead_one_at_a_time_with_increasing_tokens,
            select::always
        ),
        case!(observers_see_each_leader_in_order, select::always),
        case!(
            a_killed_leaders_successor_leads_within_the_ttl,
            select::child_holders
        ),
    ]
}

/// Five candidates on their own clients campaign, lead briefly and resign,
/// three times each: never two leaders at once, tokens in leadership order.
pub async fn candidates_lead_one_at_a_time_with_increasing_tokens(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.key("leader");
    let ttl = ctx.ttl(Duration::from_secs(3));
    let history = Arc::new(History::new());
    let mut candidates = Vec::new();
    for candidate in 0..5u64 {
        let locker = ctx.locker(ctx.client().await?, ttl, Duration::from_secs(60));
        let election = Election::new(locker, &name)?;
        let history = history.clone();
        candidates.push(tokio::spawn(async move {
            for _ in 0..3 {
                let leadership = election.campaign(Duration::from_secs(60)).await?;
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(30)).await;
                let end = Instant::now().min(leadership.valid_until());
                history.record(Holding {
                    holder: candidate,
                    token: leadership.fencing_token().get(),
                    start,
                    end,
                });
                leadership.resign().await?;
            }
            Ok::<_, leasehold_core::LockError>(())
        }));
    }
    for candidate in candidates {
        candidate
            .await
            .map_err(|e| Failed(format!("a candidate's task failed: {e}")))??;
    }
    ensure!(
        history.len() == 15,
        "expected 15 leaderships, got {}",
        history.len()
    );
    let violations = history.violations(ctx.caps.fencing == Fencing::Strict);
    ensure!(
        violations.is_empty(),
        "two leaders at once, or tokens out of order: {violations:?}"
    );
    Ok(())
}

/// An observer watching every 10 ms sees three successive leaders (each
/// leading 300 ms) in order, then that nobody leads.
pub async fn observers_see_each_leader_in_order(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.key("observed");
    let ttl = ctx.ttl(Duration::from_secs(3));
    let observer = Election::new(ctx.locker(ctx.backend.clone(), ttl, Duration::ZERO), &name)?;
    let seen = tokio::spawn({
        let changes = observer.observe(Duration::from_millis(10));
        async move {
            let mut changes = std::pin::pin!(changes);
            let mut tokens: Vec<Option<FencingToken>> = Vec::new();
            // Nobody, then three leaders (with or without a "nobody" seen
            // between two of them), then nobody again.
            while tokens.iter().flatten().count() < 3 || tokens.last() != Some(&None) {
                match changes.next().await {
                    Some(Ok(leader)) => tokens.push(leader.and_then(|l| l.token)),
                    Some(Err(error)) if error.is_retryable() => {}
                    Some(Err(error)) => return Err(error.to_string()),
                    None => break,
                }
            }
            Ok(tokens)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut led = Vec::new();
    for _ in 0..3 {
        let election = Election::new(
            ctx.locker(ctx.client().await?, ttl, Duration::from_secs(10)),
            &name,
        )?;
        let leadership = election.campaign(Duration::from_secs(10)).await?;
        led.push(leadership.fencing_token());
        tokio::time::sleep(Duration::from_millis(300)).await;
        leadership.resign().await?;
    }
    let tokens = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .map_err(|_| Failed("the observer did not report every change".into()))?
        .map_err(|e| Failed(format!("the observer's task failed: {e}")))?
        .map_err(Failed)?;
    let leaders: Vec<FencingToken> = tokens.iter().flatten().copied().collect();
    if ctx.caps.fencing != Fencing::None {
        ensure!(
            leaders == led,
            "the observer saw leaders {leaders:?}, expected {led:?} in order (all reports: {tokens:?})"
        );
    } else {
        ensure!(leaders.len() == 3, "the observer saw {tokens:?}");
    }
    ensure!(
        tokens.first() == Some(&None) && tokens.last() == Some(&None),
        "the observer should report nobody before and after: {tokens:?}"
    );
    Ok(())
}

/// The leader runs in another process (a child holder of the election's
/// key) and is SIGKILLed while a candidate campaigns: the candidate leads
/// within the TTL + the killed-holder slack, with a higher token.
pub async fn a_killed_leaders_successor_leads_within_the_ttl(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.key("killed-leader");
    let ttl = ctx.ttl(Duration::from_millis(800));
    let bound = ttl + crate::cases::faults::KILLED_HOLDER_SLACK;
    let mut leader = ctx.child()?;
    let killed_token = leader.acquire(&name, ttl).await?;
    let election = Election::new(
        ctx.locker(ctx.backend.clone(), ttl, Duration::from_secs(60)),
        &name,
    )?;
    let candidate = tokio::spawn(async move {
        let leadership = election.campaign(Duration::from_secs(60)).await?;
        Ok::<_, leasehold_core::LockError>((Instant::now(), leadership))
    });
    let killed_at = Instant::now();
    leader.kill().await?;
    let (led_at, leadership) = tokio::time::timeout(bound + Duration::from_secs(5), candidate)
        .await
        .map_err(|_| Failed(format!("no successor led within {bound:?} of the kill")))?
        .map_err(|e| Failed(format!("the candidate's task failed: {e}")))??;
    let after = led_at.duration_since(killed_at);
    ensure!(
        after <= bound,
        "the successor led only {after:?} after the leader was killed (bound {bound:?})"
    );
    if ctx.caps.fencing == Fencing::Strict {
        ensure!(
            leadership.fencing_token().get() > killed_token,
            "the successor's token {} is not above the killed leader's {killed_token}",
            leadership.fencing_token()
        );
    }
    leadership.resign().await?;
    Ok(())
}
