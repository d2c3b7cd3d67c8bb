//! Every example runs and its output shows what it claims; `swap_backends`
//! runs unchanged against every store, chosen by `LEASEHOLD_URL` alone.

use std::path::PathBuf;
use std::process::Command;

use leasehold_conformance::fixtures::{self, ContainerSpec};

/// The path of a built example. `cargo test` builds a package's examples
/// along with its tests (with the same features); only when this test target
/// was built alone (`--test examples`) are they missing, and then they are
/// built here.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .expect("test exe")
        .parent()
        .expect("deps dir")
        .to_path_buf();
    let path = deps
        .parent()
        .expect("profile dir")
        .join("examples")
        .join(name);
    if !path.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-q", "-p", "leasehold-examples", "--examples"]);
        if cfg!(feature = "full") {
            build.args(["--features", "full"]);
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building the examples failed"
        );
    }
    path
}

/// Runs an example with `LEASEHOLD_URL` (if given) and returns its stdout,
/// failing the test if it exits non-zero.
fn run(name: &str, url: Option<&str>) -> String {
    let mut command = Command::new(example(name));
    if let Some(url) = url {
        command.env("LEASEHOLD_URL", url);
    }
    let output = command.output().expect("example runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} on {url:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn quickstart_auto_extends_and_fences() {
    let out = run("quickstart", None);
    assert!(out.contains("auto-extended"), "{out}");
    assert!(out.contains("AlreadyHeld (not re-entrant)"), "{out}");
    assert!(out.contains("a second try_lock is refused"), "{out}");
    assert!(
        out.contains("re-acquired with a higher fencing token"),
        "{out}"
    );
}

#[test]
fn inventory_never_oversells_with_the_lock_and_rejects_the_stale_write() {
    let out = run("inventory", None);
    assert!(
        out.contains("with the lock:  20 buyers sold 5 of 5 units"),
        "{out}"
    );
    assert!(out.contains("REJECTED by the fenced record"), "{out}");
    // The control: without the lock the race oversells.
    let unlocked: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("without a lock: 20 buyers sold "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the unlocked line");
    assert!(
        unlocked > 5,
        "the unlocked control did not oversell ({unlocked}): the demo shows nothing\n{out}"
    );
}

#[test]
fn transfer_finishes_without_deadlock_and_conserves_money() {
    let out = run("transfer", None);
    assert!(out.contains("OK: no deadlock, balances conserved"), "{out}");
}

#[test]
fn scheduler_runs_each_run_exactly_once() {
    let out = run("scheduler", None);
    assert!(out.contains("OK: every run executed exactly once"), "{out}");
}

#[test]
fn election_takes_turns_with_increasing_tokens() {
    let out = run("election", None);
    assert!(
        out.contains("OK: one leader at a time, tokens increasing"),
        "{out}"
    );
    assert!(out.contains("observer: leader is now token"), "{out}");
}

#[test]
fn adaptive_ttl_converges_near_p95_times_factor() {
    let out = run("adaptive_ttl", None);
    let line = out
        .lines()
        .find(|l| l.starts_with("observed p95"))
        .expect("summary line");
    assert!(
        line.contains("learned ttl = 2."),
        "expected a learned TTL of about 2.2 s: {line}"
    );
}

#[test]
fn rw_cache_shares_reads_excludes_writes_and_limits_exports() {
    let out = run("rw_cache", None);
    assert!(out.contains("torn reads 0"), "{out}");
    assert!(
        out.contains("at most 1 at once") || out.contains("at most 2 at once"),
        "{out}"
    );
    assert!(
        out.contains("OK: reader-writer lock and semaphore held"),
        "{out}"
    );
}

#[test]
fn swap_backends_runs_on_memory() {
    let out = run("swap_backends", Some("memory://"));
    assert!(out.contains("OK: memory works"), "{out}");
    readme_lists_these_capabilities(&out);
}

/// README.md's backend table must carry exactly the row the backend reports
/// (`capabilities-row:` in `swap_backends`' output): README and code agree.
fn readme_lists_these_capabilities(output: &str) {
    let row = output
        .lines()
        .find_map(|l| l.strip_prefix("capabilities-row: "))
        .expect("swap_backends prints its capabilities row");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    assert!(
        readme.lines().any(|line| line.trim() == row),
        "README.md's backend table disagrees with the backend; it needs this row:\n{row}"
    );
}

/// Starts `spec`'s store (or takes its `LEASEHOLD_TEST_<STORE>_URL`) and runs
/// `swap_backends` against the URL `make` builds from its port.
#[cfg(feature = "full")]
async fn swap_on(spec: ContainerSpec, make: impl Fn(u16) -> String, backend: &str) {
    let store = match fixtures::provision(&spec).await {
        Ok(store) => store,
        Err(skipped) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true but the store did not start: {}",
                skipped.0
            );
            eprintln!("SKIPPED: {}", skipped.0);
            return;
        }
    };
    run_swap(&store.url(&make), backend).await;
    drop(store);
}

/// Runs `swap_backends` on `url` until it succeeds (a store may need a moment
/// after its ready line; the example itself retries nothing) or 15 s pass.
#[cfg(feature = "full")]
async fn run_swap(url: &str, backend: &str) {
    let mut last = String::new();
    for _ in 0..30 {
        let output = Command::new(example("swap_backends"))
            .env("LEASEHOLD_URL", url)
            .output()
            .expect("runs");
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            assert!(last.contains(&format!("OK: {backend}")), "{last}");
            readme_lists_these_capabilities(&last);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("swap_backends never succeeded on {url}:\n{last}");
}

#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_backends_runs_unchanged_on_every_store() {
    swap_on(
        fixtures::redis_spec(false),
        |port| format!("redis://127.0.0.1:{port}"),
        "redis",
    )
    .await;
    swap_on(
        fixtures::etcd_spec(),
        |port| format!("etcd://127.0.0.1:{port}"),
        "etcd",
    )
    .await;
    for mode in ["advisory", "table"] {
        swap_on(
            fixtures::postgres_spec(),
            |port| {
                format!(
                    "postgres://postgres:{}@127.0.0.1:{port}/postgres?mode={mode}",
                    fixtures::POSTGRES_PASSWORD
                )
            },
            &format!("postgres-{mode}"),
        )
        .await;
    }
    for mode in ["named", "table"] {
        swap_on(
            fixtures::mariadb_spec(),
            |port| {
                format!(
                    "mysql://root:{}@127.0.0.1:{port}/leasehold?mode={mode}",
                    fixtures::MARIADB_PASSWORD
                )
            },
            &format!("mysql-{mode}"),
        )
        .await;
    }
    swap_redlock().await;
    let dir = std::env::temp_dir().join(format!("leasehold-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    run_swap(&format!("file://{}", dir.display()), "file").await;
    let _ = std::fs::remove_dir_all(&dir);
    swap_on(
        fixtures::zookeeper_spec(),
        |port| format!("zk://127.0.0.1:{port}/swap?session_timeout=3s"),
        "zookeeper",
    )
    .await;
    swap_on(
        fixtures::dynamodb_spec(),
        |port| {
            format!(
                "dynamodb://test:test@swap?region=us-east-1&endpoint=http://127.0.0.1:{port}&create_table=true&durable=false"
            )
        },
        "dynamodb",
    )
    .await;
}

/// Redlock needs three servers: three Redis containers, one URL.
#[cfg(feature = "full")]
async fn swap_redlock() {
    if !fixtures::docker_available() {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but no Docker engine answers"
        );
        return;
    }
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            fixtures::start(&fixtures::redis_spec(false))
                .await
                .expect("redis container"),
        );
    }
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    run_swap(&format!("redlock://{}", hosts.join(",")), "redlock").await;
}

/// The examples users start from run against real stores too, not only the
/// in-memory one: quickstart, the scheduler and the election on Redis and on
/// Postgres (both modes), and the fenced Postgres write.
#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_facing_examples_run_on_real_stores() {
    let redis = fixtures::start(&fixtures::redis_spec(false))
        .await
        .expect("a redis container");
    let postgres = fixtures::start(&fixtures::postgres_spec())
        .await
        .expect("a postgres container");
    let pg = |mode: &str| {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?mode={mode}",
            fixtures::POSTGRES_PASSWORD,
            postgres.port
        )
    };
    // Postgres accepts connections a moment after its port opens.
    run_swap(&pg("table"), "postgres").await;
    let urls = [
        format!("redis://127.0.0.1:{}", redis.port),
        pg("advisory"),
        pg("table"),
    ];
    for url in &urls {
        // A 1 s TTL: quickstart holds its lock for three TTLs.
        let short = format!("{url}{}ttl=1s", if url.contains('?') { '&' } else { '?' });
        let out = run("quickstart", Some(&short));
        assert!(out.contains("auto-extended"), "{url}: {out}");
        assert!(out.contains("a second try_lock is refused"), "{url}: {out}");
        let out = run("scheduler", Some(url));
        assert!(
            out.contains("OK: every run executed exactly once"),
            "{url}: {out}"
        );
        let out = run("election", Some(url));
        assert!(out.contains("OK: one leader at a time"), "{url}: {out}");
    }
    // Each mode guards its own account: a fenced row takes the tokens of
    // one lock store, and the two modes count apart (advisory mode's tokens
    // come from one sequence, table mode's from a counter per key).
    let admin = leasehold::postgres::sqlx::PgPool::connect(&pg("table").replace("?mode=table", ""))
        .await
        .expect("connect as the admin");
    for mode in ["advisory", "table"] {
        leasehold::postgres::sqlx::query(&format!("CREATE DATABASE fenced_{mode}"))
            .execute(&admin)
            .await
            .expect("a database of its own");
        let url = pg(mode).replace("/postgres?", &format!("/fenced_{mode}?"));
        let out = run("fenced_postgres", Some(&url));
        assert!(out.contains("REJECTED (stale token)"), "{mode}: {out}");
        assert!(
            out.contains("OK: the stale holder's write was rejected"),
            "{mode}: {out}"
        );
    }
}
