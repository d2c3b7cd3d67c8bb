//! Leader election: three candidates, each with its own client of the
//! store, take turns leading; the leader does its work with the fencing
//! token in hand, inside a scope that is cancelled before its leadership can
//! lapse; an observer prints every change of leader.
//!
//! Run: `cargo run --example election` (or set `LEASEHOLD_URL`).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use leasehold::{Election, FencingToken, LockError};

const CANDIDATES: usize = 3;
const TERMS: usize = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("LEASEHOLD_URL").unwrap_or_else(|_| "memory://election".to_owned());
    match run(&url).await {
        Ok(true) => {
            println!("OK: one leader at a time, tokens increasing");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("FAILED");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("election on {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<bool, LockError> {
    let observer = Election::new(leasehold::connect(url).await?, "leader:report-builder")?;
    let watching = tokio::spawn({
        let changes = observer.observe(Duration::from_millis(20));
        async move {
            let mut changes = std::pin::pin!(changes);
            while let Some(change) = changes.next().await {
                match change {
                    Ok(Some(leader)) => println!(
                        "observer: leader is now token {} ({})",
                        leader.token.map_or("-".into(), |t| t.to_string()),
                        leader.holder.as_deref().unwrap_or("unknown holder")
                    ),
                    Ok(None) => println!("observer: nobody leads"),
                    Err(error) => println!("observer: {error}"),
                }
            }
        }
    });
    // Terms in the order they started: (candidate, token).
    let terms: Arc<Mutex<Vec<(usize, FencingToken)>>> = Arc::default();
    let mut candidates = Vec::new();
    for candidate in 0..CANDIDATES {
        let election = Election::new(leasehold::connect(url).await?, "leader:report-builder")?;
        let terms = terms.clone();
        candidates.push(tokio::spawn(async move {
            for _ in 0..TERMS {
                election
                    .lead(|token, cancelled| {
                        let terms = terms.clone();
                        async move {
                            terms.lock().unwrap().push((candidate, token));
                            println!("candidate {candidate} leads with token {token}");
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                                () = cancelled.cancelled() => {
                                    println!("candidate {candidate} told to stop before its lease lapses");
                                }
                            }
                        }
                    })
                    .await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, LockError>(())
        }));
    }
    for candidate in candidates {
        candidate.await.expect("candidate task")?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    watching.abort();
    let terms = terms.lock().unwrap().clone();
    let increasing = terms.windows(2).all(|pair| pair[0].1 < pair[1].1);
    println!("{} terms led: {terms:?}", terms.len());
    Ok(terms.len() == CANDIDATES * TERMS && increasing)
}
