//! `cargo run --release -p leasehold-benches -- full|smoke|kinds [--only STORE[,STORE]] [--out DIR]`
//!
//! `--only` measures those stores alone (see [`leasehold_benches::STORES`]);
//! such a partial run writes its report to a directory of its own (default
//! `$TMPDIR/leasehold-bench-only-<stores>`), never over the full run's
//! `RESULTS.md` and `KINDS.md`.

// The run's future nests every store's setup; release builds need more
// than the default query depth to lay it out.
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::ExitCode;

use leasehold_benches::{Config, STORES, run, run_kinds};

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "usage: leasehold-benches full|smoke|kinds [--only STORE[,STORE]] [--out DIR] ({problem}); \
         stores: {}",
        STORES.join(", ")
    );
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("full");
    let only: Vec<String> = leasehold_benches::flag::<String>("--only")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    if let Some(unknown) = only.iter().find(|s| !STORES.contains(&s.as_str())) {
        return usage(&format!("unknown store {unknown:?}"));
    }
    let out = match leasehold_benches::flag::<PathBuf>("--out") {
        Some(dir) => dir,
        None if only.is_empty() => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        None => std::env::temp_dir().join(format!("leasehold-bench-only-{}", only.join("-"))),
    };
    let mut config = match mode {
        "full" | "kinds" => Config::full(out.clone()),
        "smoke" => Config::smoke(out.clone()),
        other => return usage(&format!("got {other:?}")),
    };
    config.command = format!("cargo run --release -p leasehold-benches -- {mode}");
    if !only.is_empty() {
        config
            .command
            .push_str(&format!(" --only {}", only.join(",")));
        config.only = only;
    }
    if mode == "kinds" {
        return match Box::pin(run_kinds(config)).await {
            Ok(rows) => {
                eprintln!(
                    "{} stores measured; report in {}",
                    rows.len(),
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match Box::pin(run(config)).await {
        Ok(results) => {
            for (name, why) in &results.failures {
                eprintln!("not measured: {name}: {why}");
            }
            eprintln!("report in {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
