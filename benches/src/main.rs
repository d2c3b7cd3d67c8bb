//! `cargo run --release -p leasehold-benches -- full|smoke|kinds [--out DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

use leasehold_benches::{Config, run, run_kinds};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("full");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if mode == "kinds" {
        let mut config = Config::full(out);
        config.command = "cargo run --release -p leasehold-benches -- kinds".into();
        return match Box::pin(run_kinds(config)).await {
            Ok(rows) => {
                eprintln!("{} stores measured", rows.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match mode {
        "full" => Config::full(out),
        "smoke" => Config::smoke(out),
        other => {
            eprintln!("usage: leasehold-benches full|smoke|kinds [--out DIR] (got {other:?})");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(results) => {
            for (name, why) in &results.failures {
                eprintln!("not measured: {name}: {why}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
