//! RESULTS.md (markdown tables, each row with its command) and a small SVG
//! bar chart of the ratios.

use std::fmt::Write as _;

use crate::{Config, HandoffRow, Results};

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The three floor columns of a handoff table.
const FLOOR_HEADER: &str = "raw floor p50 (the store's own queue, or a bare client waiting the same way) | floor / round trip | lib / floor";

/// `v` in round trips of `row`'s store, to one decimal.
fn per_rtt(row: &HandoffRow, v: f64) -> String {
    row.rtt
        .map_or("-".into(), |rtt| format!("{:.1}", v / rtt.p50))
}

/// A handoff row's floor, the floor in round trips, and the library over
/// the floor ("-" each where the row has no floor).
struct FloorCells {
    floor: String,
    floor_rtt: String,
    over_floor: String,
}

impl FloorCells {
    fn of(row: &HandoffRow) -> Self {
        match &row.floor {
            Some((floor, how)) => FloorCells {
                floor: format!("{} ({how})", us(floor.p50)),
                floor_rtt: per_rtt(row, floor.p50),
                over_floor: format!("{:.2}x", row.handoff.p50 / floor.p50),
            },
            None => FloorCells {
                floor: "-".into(),
                floor_rtt: "-".into(),
                over_floor: "-".into(),
            },
        }
    }
}

/// Renders the markdown report.
pub fn markdown(config: &Config, r: &Results) -> String {
    let cmd = format!("`{}`", config.command);
    let mut md = String::new();
    let _ = writeln!(md, "# leasehold benchmark results\n");
    let _ = writeln!(
        md,
        "Produced by {cmd} (one run, stand-in containers on 127.0.0.1, 2-core shared machine). \
         Every ratio compares figures measured in this same run, interleaved or back to back. \
         Every loop runs in one spawned task on the runtime's worker threads, as application code does \
         (not on the main thread, outside the workers, where each wake-up from a worker crosses threads). \
         Library figures go through `Locker` (`try_lock` + `guard.release()`, default policies); \
         raw figures send the least store operations the same lock needs with the same client crate \
         (sqlx's on connections taken and kept by hand: its pool pings every connection handed back, \
         a round trip the lock does not need). \
         Samples: {} per latency figure; a throughput figure of table 2 is the median of {} rounds of {:?}, \
         each round running the library, its raw baseline and its peer in turn, after a warm-up round \
         (the hot-key figures run one {:?} window); {} handoffs among {} tasks.\n",
        config.samples,
        config.counted_rounds(),
        config.round_window(),
        config.window,
        config.handoffs,
        config.handoff_tasks
    );

    let _ = writeln!(
        md,
        "## 1. Uncontended lock+unlock latency (target: p50 within 1.25x raw)\n"
    );
    let _ = writeln!(
        md,
        "| backend | lib p50 | lib p99 | raw p50 | raw p99 | lib/raw p50 | target | raw ops | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for row in &r.latency {
        let (rp50, rp99, ratio, target) = match row.raw {
            Some(raw) => {
                let ratio = row.lib.p50 / raw.p50;
                (
                    us(raw.p50),
                    us(raw.p99),
                    format!("{ratio:.2}x"),
                    verdict(ratio <= 1.25).to_owned(),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "n/a".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {rp50} | {rp99} | {ratio} | {target} | {} | {cmd} |",
            row.name,
            us(row.lib.p50),
            us(row.lib.p99),
            row.raw_desc
        );
    }

    let _ = writeln!(
        md,
        "\n## 2. Throughput, lock+unlock per second on distinct keys (target: at 64 tasks within 80% of raw)\n"
    );
    let _ = writeln!(
        md,
        "| backend | tasks | lib ops/s | raw ops/s | lib/raw | target | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for row in &r.throughput {
        let (raw, ratio, target) = match row.raw {
            Some(raw) => {
                let ratio = row.lib / raw;
                let target = if row.tasks == 64 {
                    verdict(ratio >= 0.8)
                } else {
                    "-"
                };
                (format!("{raw:.0}"), format!("{ratio:.2}"), target)
            }
            None => ("-".into(), "-".into(), "n/a"),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {raw} | {ratio} | {target} | {cmd} |",
            row.name, row.tasks, row.lib
        );
    }

    let _ = writeln!(
        md,
        "\n## 3. Contended handoff among {} tasks, release sent → next holder has it (target: notified p50 under 3 raw round trips)\n",
        config.handoff_tasks
    );
    let _ = writeln!(
        md,
        "| backend | waiting | handoff p50 | handoff p99 | round trip p50 | p50 / round trip | target | round trip | {FLOOR_HEADER} | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.handoff {
        let cells = FloorCells::of(row);
        let (rtt, ratio, target) = match row.rtt {
            Some(rtt) => {
                let ratio = row.handoff.p50 / rtt.p50;
                let floor_ratio = row.floor.as_ref().map(|(f, _)| f.p50 / rtt.p50);
                let target = match (row.waiting.starts_with("notified"), floor_ratio) {
                    (false, _) => "- (polled)",
                    (true, _) if ratio < 3.0 => "met",
                    (true, Some(f)) if f >= 3.0 => "**missed**: the raw floor is above it too",
                    (true, _) => "**missed**",
                };
                (us(rtt.p50), format!("{ratio:.1}"), target)
            }
            None => ("-".into(), "-".into(), "n/a"),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {rtt} | {ratio} | {target} | {} | {} | {} | {} | {cmd} |",
            row.name,
            row.waiting,
            us(row.handoff.p50),
            us(row.handoff.p99),
            row.rtt_desc,
            cells.floor,
            cells.floor_rtt,
            cells.over_floor,
        );
    }

    let _ = writeln!(
        md,
        "\n## 3b. Handoff to one lone waiter (the holder keeps the key {:?}, so the waiter is parked in its wait), release sent → the waiter has it\n",
        config.waiter_hold
    );
    let _ = writeln!(
        md,
        "| backend | waiting | handoff p50 | handoff p99 | p50 / round trip | p99 / round trip | {FLOOR_HEADER} | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.one_waiter {
        let cells = FloorCells::of(row);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {cmd} |",
            row.name,
            row.waiting,
            us(row.handoff.p50),
            us(row.handoff.p99),
            per_rtt(row, row.handoff.p50),
            per_rtt(row, row.handoff.p99),
            cells.floor,
            cells.floor_rtt,
            cells.over_floor,
        );
    }
    let _ = writeln!(
        md,
        "\n## 3c. Hot key: lock+unlock per second with every task on one key (each a handoff)\n"
    );
    let _ = writeln!(md, "| backend | tasks | handoffs/s | command |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (name, tasks, ops) in &r.hot_key {
        let _ = writeln!(md, "| {name} | {tasks} | {ops:.0} | {cmd} |");
    }

    let _ = writeln!(
        md,
        "\n## 4. Redlock fan-out: acquisition latency vs single Redis (target: Redlock 5 within 1.5x, or the raw fan-out's own ratio shows 1.5x is out of reach here)\n"
    );
    let _ = writeln!(
        md,
        "The floor column is the raw baselines' ratio from table 1 (both scripts sent to N servers concurrently vs to one, same client crate, same run): what the fan-out itself costs on this machine before any library code.\n"
    );
    let _ = writeln!(
        md,
        "| backend | acquire p50 | acquire p99 | p50 / redis p50 | floor: raw fan-out / raw redis | target | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let base = r
        .fanout
        .iter()
        .find(|(n, _)| n == "redis")
        .map(|(_, p)| p.p50);
    let raw_p50 = |n: &str| {
        r.latency
            .iter()
            .find(|x| x.name == n)
            .and_then(|x| x.raw.as_ref())
            .map(|p| p.p50)
    };
    for (name, p) in &r.fanout {
        let ratio = base.map(|b| p.p50 / b);
        let floor = match (raw_p50(name), raw_p50("redis")) {
            (Some(n), Some(one)) if name.starts_with("redlock-") => Some(n / one),
            _ => None,
        };
        let target = match (name.as_str(), ratio, floor) {
            ("redlock-5", Some(x), _) if x <= 1.5 => "met",
            ("redlock-5", Some(_), Some(f)) if f > 1.5 => {
                "**missed**: the raw fan-out alone is above 1.5x"
            }
            ("redlock-5", Some(_), _) => "**missed**",
            _ => "-",
        };
        let ratio = ratio
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_else(|| "-".into());
        let floor = floor
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {ratio} | {floor} | {target} | {cmd} |",
            us(p.p50),
            us(p.p99)
        );
    }

    if let Some(e) = &r.extend {
        let periods = e.periods();
        let per_guard_period = e.client_commands as f64 / (e.guards as f64 * periods);
        let _ = writeln!(
            md,
            "\n## 5. Auto-extend at scale on Redis (target: under 1 store command per guard per renewal period)\n"
        );
        let _ = writeln!(
            md,
            "| guards | TTL | held | renewal periods | renewals | extend_many calls | client CPU / renewal | client commands / renewal | client commands / guard / period | server calls (incl. in scripts) / renewal | lost | target | command |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let per = |x: f64| {
            if e.renewals == 0 {
                f64::NAN
            } else {
                x / e.renewals as f64
            }
        };
        let _ = writeln!(
            md,
            "| {} | {:?} | {:.1} s | {:.1} | {} | {} | {:.2} µs | {:.4} | {:.4} | {:.2} | {} | {} | {cmd} |",
            e.guards,
            e.ttl,
            e.held_for.as_secs_f64(),
            periods,
            e.renewals,
            e.batches,
            per(e.cpu.as_secs_f64() * 1e6),
            per(e.client_commands as f64),
            per_guard_period,
            per(e.server_calls as f64),
            e.lost,
            verdict(per_guard_period < 1.0),
        );
    }

    let _ = writeln!(
        md,
        "\n## 6. Peers on the same Redis servers (target: leasehold ahead of rslock on every figure)\n"
    );
    let _ = writeln!(
        md,
        "Why a row is missed is measured beside it: leasehold's own raw floor is the same figure for its two scripts sent straight from redis-rs (table 1 and 2: a fenced acquire that bumps a counter, a release that publishes to waiters; for a handoff, a bare waiter that retries the acquire at each release message, tables 3 and 3b), with no library code; when the floor is itself behind rslock (whose `SET NX` acquire keeps no counter and whose release publishes nothing), no client change can close the gap without giving up fencing or notified waiting.\n"
    );
    let _ = writeln!(
        md,
        "| leasehold | rslock | figure | leasehold | rslock | leasehold's raw floor | leasehold ahead | command |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (ours, theirs) in [
        ("redis", "rslock (1 server)"),
        ("redlock-3", "rslock (3 servers)"),
        ("redlock-5", "rslock (5 servers)"),
    ] {
        let row = |n: &str| r.latency.iter().find(|x| x.name == n);
        let lat = |n: &str| row(n).map(|x| x.lib.p50);
        let raw_lat = row(ours).and_then(|x| x.raw.as_ref()).map(|p| p.p50);
        let tput_row =
            |n: &str, t: usize| r.throughput.iter().find(|x| x.name == n && x.tasks == t);
        let tput = |n: &str, t: usize| tput_row(n, t).map(|x| x.lib);
        let hand =
            |rows: &[HandoffRow], n: &str| rows.iter().find(|x| x.name == n).map(|x| x.handoff.p50);
        let mut line = |figure: String,
                        a: Option<f64>,
                        b: Option<f64>,
                        floor: Option<f64>,
                        lower_better: bool,
                        fmt: &dyn Fn(f64) -> String| {
            if let (Some(a), Some(b)) = (a, b) {
                let better = |x: f64| if lower_better { x < b } else { x > b };
                let ahead = match (better(a), floor) {
                    (true, _) => "met",
                    (false, Some(f)) if !better(f) => "**missed**: the raw floor is behind too",
                    (false, _) => "**missed**",
                };
                let floor = floor.map_or_else(|| "-".into(), fmt);
                let _ = writeln!(
                    md,
                    "| {ours} | {theirs} | {figure} | {} | {} | {floor} | {ahead} | {cmd} |",
                    fmt(a),
                    fmt(b),
                );
            }
        };
        line(
            "lock+unlock p50".into(),
            lat(ours),
            lat(theirs),
            raw_lat,
            true,
            &us,
        );
        for &t in &config.concurrency {
            line(
                format!("ops/s at {t} tasks"),
                tput(ours, t),
                tput(theirs, t),
                tput_row(ours, t).and_then(|x| x.raw),
                false,
                &|v| format!("{v:.0}"),
            );
        }
        let hand_floor = |rows: &[HandoffRow], n: &str| {
            rows.iter()
                .find(|x| x.name == n)
                .and_then(|x| x.floor.as_ref())
                .map(|(f, _)| f.p50)
        };
        line(
            "handoff p50 (tasks all contending)".into(),
            hand(&r.handoff, ours),
            hand(&r.handoff, theirs),
            hand_floor(&r.handoff, ours),
            true,
            &us,
        );
        line(
            "handoff p50 (one lone waiter)".into(),
            hand(&r.one_waiter, ours),
            hand(&r.one_waiter, theirs),
            hand_floor(&r.one_waiter, ours),
            true,
            &us,
        );
    }

    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Not measured\n");
        for (name, why) in &r.failures {
            let _ = writeln!(md, "- {name}: {why}");
        }
    }
    let _ = writeln!(
        md,
        "\nPlot: [results.svg](results.svg) (lock+unlock p50 and 64-task throughput as ratios to raw)."
    );
    md
}

/// A grouped horizontal bar chart: per backend, latency lib/raw and
/// throughput-at-max-concurrency lib/raw, with the target lines.
pub fn svg(config: &Config, r: &Results) -> String {
    let max_tasks = config.concurrency.iter().copied().max().unwrap_or(1);
    let rows: Vec<(String, f64, Option<f64>)> = r
        .latency
        .iter()
        .filter_map(|l| {
            let lat = l.lib.p50 / l.raw?.p50;
            let tput = r
                .throughput
                .iter()
                .find(|t| t.name == l.name && t.tasks == max_tasks)
                .and_then(|t| Some(t.lib / t.raw?));
            Some((l.name.clone(), lat, tput))
        })
        .collect();
    let scale_max = rows
        .iter()
        .flat_map(|(_, a, b)| [Some(*a), *b])
        .flatten()
        .fold(1.5f64, f64::max)
        .min(6.0);
    let (left, width, bar, gap) = (190.0, 480.0, 12.0, 14.0);
    let height = 60.0 + rows.len() as f64 * (2.0 * bar + gap) + 40.0;
    let x = |v: f64| left + width * (v.min(scale_max) / scale_max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 80.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="13">leasehold / raw store ops (same run): lock+unlock p50 (blue, lower is better), throughput at {max_tasks} tasks (orange, higher is better)</text>"#
    );
    let top = 40.0;
    for (v, label, color) in [
        (1.0, "1x", "#444"),
        (1.25, "1.25x", "#1f77b4"),
        (0.8, "0.8", "#ff7f0e"),
    ] {
        let _ = writeln!(
            s,
            r#"<line x1="{0}" x2="{0}" y1="{top}" y2="{1}" stroke="{color}" stroke-dasharray="3,3"/><text x="{0}" y="{2}" fill="{color}" text-anchor="middle">{label}</text>"#,
            x(v),
            height - 30.0,
            height - 16.0
        );
    }
    for (i, (name, lat, tput)) in rows.iter().enumerate() {
        let y = top + 8.0 + i as f64 * (2.0 * bar + gap);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{name}</text>"#,
            left - 6.0,
            y + bar + 3.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{y}" width="{:.1}" height="{bar}" fill="#1f77b4"/><text x="{:.1}" y="{}">{lat:.2}x</text>"##,
            x(*lat) - left,
            x(*lat) + 3.0,
            y + bar - 2.0
        );
        if let Some(t) = tput {
            let _ = writeln!(
                s,
                r##"<rect x="{left}" y="{}" width="{:.1}" height="{bar}" fill="#ff7f0e"/><text x="{:.1}" y="{}">{t:.2}</text>"##,
                y + bar,
                x(*t) - left,
                x(*t) + 3.0,
                y + 2.0 * bar - 2.0
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Writes RESULTS.md and results.svg into `config.out_dir`.
pub fn write(config: &Config, r: &Results) -> Result<(), String> {
    std::fs::create_dir_all(&config.out_dir).map_err(|e| e.to_string())?;
    std::fs::write(config.out_dir.join("RESULTS.md"), markdown(config, r))
        .map_err(|e| e.to_string())?;
    std::fs::write(config.out_dir.join("results.svg"), svg(config, r))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Renders `KINDS.md`: reader–writer locks and semaphores against the mutex
/// and the raw store operations.
pub fn kinds_markdown(config: &Config, rows: &[crate::kinds::KindsRow]) -> String {
    let ops = |v: f64| format!("{v:.0}");
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "-".into(),
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Reader–writer locks and semaphores\n");
    let _ = writeln!(
        md,
        "Produced by `{}` (one run, stand-in containers on 127.0.0.1, 2-core shared machine). \
         {} tasks each for {:?}: **raw** is the store's raw mutex lock+unlock (each task on its \
         own key); **mutex** is `Locker::try_lock` + release (each task on its own key); \
         **read** is `RwLock::read` + release with every task on one key (readers share); \
         **permit** is `Semaphore::acquire` + release with every task on one semaphore of {} \
         permits. Ratios are to figures of this same run.\n",
        config.command,
        crate::kinds::TASKS,
        config.window,
        crate::kinds::TASKS
    );
    let _ = writeln!(
        md,
        "| store | raw ops/s | mutex ops/s | read ops/s (one key) | read / mutex | read / raw | permit ops/s (one semaphore) | permit / raw |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.raw.map_or("-".into(), ops),
            ops(r.mutex),
            r.read.map_or("-".into(), ops),
            ratio(r.read, Some(r.mutex)),
            ratio(r.read, r.raw),
            r.permit.map_or("-".into(), ops),
            ratio(r.permit, r.raw),
        );
    }
    for r in rows.iter().filter(|r| r.failure.is_some()) {
        let _ = writeln!(
            md,
            "\n- {}: a figure is missing: {}",
            r.name,
            r.failure.as_deref().unwrap_or_default()
        );
    }
    md
}

/// Writes `KINDS.md` into the output directory.
pub fn write_kinds(config: &Config, rows: &[crate::kinds::KindsRow]) -> Result<(), String> {
    std::fs::create_dir_all(&config.out_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        config.out_dir.join("KINDS.md"),
        kinds_markdown(config, rows),
    )
    .map_err(|e| e.to_string())
}
