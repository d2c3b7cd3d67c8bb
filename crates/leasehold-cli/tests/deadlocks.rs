//! The classic three-party circular wait, from three real processes, found
//! by `leasehold deadlocks` while they are stuck: partner A holds
//! `partner:ravi` and wants `restaurant:1`; B holds `restaurant:1` and wants
//! `restaurant:2`; C holds `restaurant:2` and wants `partner:ravi`. On the
//! file store (no container) and on Redis, etcd and Postgres in containers.
//!
//! The parties are this test binary started again with [`PARTY`] set: each
//! connects with `LEASEHOLD_URL` (its holder label in the URL), locks its
//! first key, says `holding <token>`, and on `go` waits for its second key
//! (for ten minutes: stuck until killed). Killed, their locks and waiter
//! entries run out with their 3 s TTL, and the cycle is gone.

mod common;

use std::collections::HashMap;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use common::leasehold;
use leasehold_conformance::fixtures;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Set (to `<hold> <want>`) in a party process.
const PARTY: &str = "LEASEHOLD_TEST_PARTY";

/// The parties: name, the key it holds, the key it then waits for.
const PARTIES: [(&str, &str, &str); 3] = [
    ("A", "partner:ravi", "restaurant:1"),
    ("B", "restaurant:1", "restaurant:2"),
    ("C", "restaurant:2", "partner:ravi"),
];

/// A party process: hold, report, wait for `go`, then wait for the other key.
async fn party(spec: &str) -> Result<(), String> {
    let (hold, want) = spec.split_once(' ').ok_or("bad party spec")?;
    let locker = leasehold::connect_from_env()
        .await
        .map_err(|e| e.to_string())?;
    let guard = locker.lock(hold).await.map_err(|e| e.to_string())?;
    println!("holding {}", guard.fencing_token().get());
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await
        .map_err(|e| e.to_string())?;
    let stuck = locker.lock(want).await;
    println!("done {:?}", stuck.map(|g| g.fencing_token()));
    drop(guard);
    Ok(())
}

/// Starts the three parties on `url` (which has a `?`), each holding its
/// first key; returns them with the token of the key each holds.
async fn start_parties(url: &str) -> Vec<(Child, u64)> {
    let mut parties = Vec::new();
    for (name, hold, want) in PARTIES {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(PARTY, format!("{hold} {want}"))
            .env(
                "LEASEHOLD_URL",
                format!("{url}&holder=partner-{name}&ttl=3s&wait=10m"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a party");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .unwrap_or_else(|_| panic!("party {name} did not take {hold} within 60 s"))
        .unwrap();
        let token = line
            .trim()
            .strip_prefix("holding ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("party {name} said {line:?}"));
        parties.push((child, token));
    }
    for (child, _) in &mut parties {
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    parties
}

async fn three_party_deadlock(url: &str) {
    let parties = start_parties(url).await;
    let token_of: HashMap<&str, u64> = PARTIES
        .iter()
        .zip(&parties)
        .map(|((_, hold, _), (_, token))| (*hold, *token))
        .collect();

    // While they are stuck, the command names the cycle (exit 5).
    let cycle = std::sync::Mutex::new(Vec::new());
    fixtures::eventually(Duration::from_secs(30), "deadlocks finds the cycle", || {
        let cycle = &cycle;
        async move {
            let run = leasehold(Some(url), &["deadlocks", "--json"]).await;
            if run.code != Some(5) {
                assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
                return false;
            }
            let line: Value = serde_json::from_str(run.stdout.trim()).unwrap();
            *cycle.lock().unwrap() = line["cycle"].as_array().cloned().unwrap_or_default();
            true
        }
    })
    .await;
    let cycle = cycle.into_inner().unwrap();
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    for (name, _, want) in PARTIES {
        let step = cycle
            .iter()
            // Postgres puts its backend pid before the label.
            .find(|s| {
                s["holder"]
                    .as_str()
                    .is_some_and(|h| h.ends_with(&format!("partner-{name}")))
            })
            .unwrap_or_else(|| panic!("partner-{name} is not in the cycle {cycle:?}"));
        assert_eq!(step["waits_for"], want, "{step}");
        assert_eq!(step["token"], token_of[want], "the token of {want}: {step}");
    }
    let run = leasehold(Some(url), &["deadlocks"]).await;
    assert_eq!(run.code, Some(5), "{}{}", run.stdout, run.stderr);
    for (name, _, want) in PARTIES {
        let step = format!(
            "partner-{name}) waits for {want} (token {}) held by",
            token_of[want]
        );
        assert!(
            run.stdout.contains(&step),
            "{step:?} not in\n{}",
            run.stdout
        );
    }
    println!("$ leasehold deadlocks\n{}", run.stdout);

    // top: two waiters on restaurant: keys, one on partner: keys.
    let run = leasehold(Some(url), &["top", "--once", "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["class"], "restaurant:", "{rows:?}");
    assert_eq!(rows[0]["waiters"], 2);
    assert_eq!(rows[1]["class"], "partner:");
    assert_eq!(rows[1]["waiters"], 1);
    let run = leasehold(Some(url), &["top", "--once"]).await;
    println!("$ leasehold top --once\n{}", run.stdout);
    // The registry's entries are not shown by list.
    let run = leasehold(Some(url), &["list"]).await;
    assert!(!run.stdout.contains("leasehold.waits/"), "{}", run.stdout);

    // Killed, the parties' locks and entries run out: no cycle is left.
    drop(parties);
    fixtures::eventually(
        Duration::from_secs(30),
        "the cycle goes with the parties",
        || async { leasehold(Some(url), &["deadlocks"]).await.code == Some(0) },
    )
    .await;
}

fn on_the_file_store() -> Result<(), Failed> {
    runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-deadlocks-{}",
            leasehold::OwnerToken::generate().short()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        three_party_deadlock(&format!("file://{}?timeout=2s", dir.display())).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
    Ok(())
}

fn on_redis() -> Result<(), Failed> {
    runtime().block_on(async {
        let store = fixtures::start(&fixtures::redis_spec(false)).await?;
        three_party_deadlock(&format!("redis://127.0.0.1:{}/?timeout=2s", store.port)).await;
        Ok::<_, Failed>(())
    })
}

fn on_etcd() -> Result<(), Failed> {
    runtime().block_on(async {
        let store = fixtures::start(&fixtures::etcd_spec()).await?;
        three_party_deadlock(&format!("etcd://127.0.0.1:{}?timeout=2s", store.port)).await;
        Ok::<_, Failed>(())
    })
}

fn on_postgres() -> Result<(), Failed> {
    runtime().block_on(async {
        let store = fixtures::start(&fixtures::postgres_spec()).await?;
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?timeout=2s",
            fixtures::POSTGRES_PASSWORD,
            store.port
        );
        // The server accepts connections a moment after the port opens.
        fixtures::eventually(Duration::from_secs(60), "postgres answers", || async {
            leasehold(Some(&url), &["health"]).await.code == Some(0)
        })
        .await;
        three_party_deadlock(&url).await;
        Ok::<_, Failed>(())
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(PARTY) {
        return match runtime().block_on(party(&spec)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("party: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let trials = vec![
        Trial::test(
            "three_party_deadlock_is_named_on_the_file_store",
            on_the_file_store,
        ),
        Trial::test("three_party_deadlock_is_named_on_redis", on_redis),
        Trial::test("three_party_deadlock_is_named_on_etcd", on_etcd),
        Trial::test("three_party_deadlock_is_named_on_postgres", on_postgres),
    ];
    let code = libtest_mimic::run(&Arguments::from_args(), trials).exit_code();
    fixtures::remove_run_containers();
    code
}
