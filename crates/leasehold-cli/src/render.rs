//! How results are printed: a text table for people, JSON lines for
//! scripts. One function per thing printed, so both forms stay in step.

use std::time::{Duration, SystemTime};

use leasehold::{HeldLock, LockInfo};
use serde_json::{Value, json};

/// Where and how to print.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    json: bool,
}

impl Out {
    pub(crate) fn new(json: bool) -> Self {
        Out { json }
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// The header of a listing (text only).
    pub(crate) fn list_header(&self) {
        if !self.json {
            println!(
                "{:>12}  {:>9}  {:>10}  {:>7}  {:<32}  KEY",
                "TOKEN", "HELD FOR", "EXPIRES IN", "WAITERS", "HOLDER"
            );
        }
    }

    /// One held lock.
    pub(crate) fn held(&self, held: &HeldLock, now: SystemTime) {
        if self.json {
            println!("{}", lock_json(&held.key, Some(&held.info), now));
        } else {
            let info = &held.info;
            println!(
                "{:>12}  {:>9}  {:>10}  {:>7}  {:<32}  {}",
                info.fencing_token.map_or("-".into(), |t| t.to_string()),
                held_for(info, now).map_or("-".into(), human),
                info.remaining.map_or("session".into(), human),
                info.waiters.map_or("-".into(), |w| w.to_string()),
                info.metadata.as_deref().unwrap_or("-"),
                held.key
            );
        }
    }

    /// What `inspect` found for `key`.
    pub(crate) fn inspected(&self, key: &str, info: Option<&LockInfo>, now: SystemTime) {
        if self.json {
            println!("{}", lock_json(key, info, now));
            return;
        }
        let Some(info) = info else {
            println!("{key}: free");
            return;
        };
        println!("{key}: held");
        let rows = [
            ("fencing token", info.fencing_token.map(|t| t.to_string())),
            ("holder", info.metadata.clone()),
            ("owner", info.owner_hint.clone()),
            ("held for", held_for(info, now).map(human)),
            (
                "expires in",
                Some(info.remaining.map_or("when its session ends".into(), human)),
            ),
            ("waiters", info.waiters.map(|w| w.to_string())),
        ];
        for (name, value) in rows {
            if let Some(value) = value {
                println!("  {name:<14} {value}");
            }
        }
    }

    /// A count, overall or for one pattern.
    pub(crate) fn count(&self, pattern: Option<&str>, count: u64) {
        match (self.json, pattern) {
            (true, Some(pattern)) => println!("{}", json!({"pattern": pattern, "count": count})),
            (true, None) => println!("{}", json!({ "count": count })),
            (false, Some(pattern)) => println!("{count:>10}  {pattern}"),
            (false, None) => println!("{count}"),
        }
    }

    /// The outcome of a force release.
    pub(crate) fn evicted(&self, key: &str, holder: Option<&LockInfo>, now: SystemTime) {
        if self.json {
            println!(
                "{}",
                json!({"key": key, "evicted": holder.map(|h| info_json(h, now))})
            );
        } else {
            match holder {
                Some(info) => println!(
                    "{key}: force-released; evicted token {} held by {}",
                    info.fencing_token.map_or("-".into(), |t| t.to_string()),
                    info.metadata.as_deref().unwrap_or("an unknown holder")
                ),
                None => println!("{key}: was free; nothing evicted"),
            }
        }
    }

    /// A line of `health`.
    pub(crate) fn health(&self, report: &Value) {
        if self.json {
            println!("{report}");
        } else if let Some(fields) = report.as_object() {
            // The verdict first, then the details in name order.
            let status = fields.get_key_value("status");
            let rest = fields.iter().filter(|(name, _)| *name != "status");
            for (name, value) in status.into_iter().chain(rest) {
                match value {
                    Value::String(text) => println!("{name:<16} {text}"),
                    Value::Array(items) if items.is_empty() => println!("{name:<16} none"),
                    Value::Array(items) => {
                        for item in items {
                            println!("{name:<16} {}", item.as_str().unwrap_or_default());
                        }
                    }
                    other => println!("{name:<16} {other}"),
                }
            }
        }
    }

    /// A change seen by `watch`, `since` the watch started.
    pub(crate) fn changed(&self, key: &str, info: Option<&LockInfo>, since: Duration) {
        if self.json {
            let now = SystemTime::now();
            let mut line = lock_json(key, info, now);
            line["at_seconds"] = json!(since.as_secs_f64());
            println!("{line}");
        } else {
            match info {
                Some(info) => println!(
                    "+{:<9} held: token {} by {}",
                    human(since),
                    info.fencing_token.map_or("-".into(), |t| t.to_string()),
                    info.metadata.as_deref().unwrap_or("an unknown holder")
                ),
                None => println!("+{:<9} free", human(since)),
            }
        }
    }
}

/// How long the holder has held the lock, where the store told when it
/// took it.
pub(crate) fn held_for(info: &LockInfo, now: SystemTime) -> Option<Duration> {
    info.acquired_at
        .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO))
}

fn lock_json(key: &str, info: Option<&LockInfo>, now: SystemTime) -> Value {
    match info {
        Some(info) => {
            let mut value = info_json(info, now);
            value["key"] = json!(key);
            value["held"] = json!(true);
            value
        }
        None => json!({"key": key, "held": false}),
    }
}

fn info_json(info: &LockInfo, now: SystemTime) -> Value {
    let unix = |at: SystemTime| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64())
    };
    json!({
        "fencing_token": info.fencing_token.map(|t| t.get()),
        "holder": info.metadata,
        "owner_hint": info.owner_hint,
        "acquired_at_unix": info.acquired_at.and_then(unix),
        "held_for_seconds": held_for(info, now).map(|d| d.as_secs_f64()),
        "expires_in_seconds": info.remaining.map(|d| d.as_secs_f64()),
        "waiters": info.waiters,
    })
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub(crate) fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(7_380)), "2h03m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
    }
}
