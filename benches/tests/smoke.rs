//! The benchmark in smoke mode (memory + one Redis container, tiny sample
//! counts), so the harness cannot rot. Asserts that every section produced
//! figures and the report was written, nothing about speed.

use leasehold_benches::{Config, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_measures_every_section_and_writes_the_report() {
    if !leasehold_conformance::fixtures::docker_available() {
        eprintln!("skipped: no docker");
        return;
    }
    let out = std::env::temp_dir().join(format!("leasehold-bench-smoke-{}", std::process::id()));
    let results = run(Config::smoke(out.clone()))
        .await
        .expect("the smoke run");
    assert!(
        results.failures.is_empty(),
        "failures: {:?}",
        results.failures
    );
    for name in ["memory", "redis", "rslock (1 server)"] {
        assert!(
            results.latency.iter().any(|r| r.name == name),
            "no latency row for {name}"
        );
        assert!(
            results.handoff.iter().any(|r| r.name == name),
            "no handoff row for {name}"
        );
        // rslock's rows come from Redis's interleaved rounds, not a loop
        // of their own.
        assert!(
            results.throughput.iter().any(|r| r.name == name),
            "no throughput row for {name}"
        );
    }
    assert!(
        results
            .throughput
            .iter()
            .any(|r| r.name == "redis" && r.raw.is_some()),
        "no raw throughput beside Redis's"
    );
    assert!(
        results.latency.iter().any(|r| r.raw.is_some()),
        "no raw baseline measured"
    );
    assert!(results.fanout.iter().any(|(n, _)| n == "redis"));
    let extend = results.extend.expect("auto-extend measured");
    assert!(extend.renewals > 0, "no renewal happened: {extend:?}");
    let md = std::fs::read_to_string(out.join("RESULTS.md")).expect("RESULTS.md written");
    assert!(md.contains("leasehold-benches -- smoke"));
    let svg = std::fs::read_to_string(out.join("results.svg")).expect("results.svg written");
    assert!(svg.starts_with("<svg"));
    let _ = std::fs::remove_dir_all(out);
}
