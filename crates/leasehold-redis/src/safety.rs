//! What a server's configuration means for the locks on it: persistence
//! (are fencing counters durable?) and eviction (can a held lock key be
//! evicted?), read with `CONFIG GET` at connect.

use std::collections::HashMap;

use leasehold_core::LockError;

use crate::store::RedisNode;

/// What `CONFIG GET` said about the server's persistence and eviction
/// (`None`: refused or unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly`.
    pub appendonly: Option<bool>,
    /// `appendfsync` (`always`, `everysec`, `no`).
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`. Only `noeviction` is safe for locks: see
    /// [`Persistence::safety_findings`].
    pub maxmemory_policy: Option<String>,
    /// `maxmemory` in bytes (`0`: no limit, so nothing is evicted until one
    /// is set).
    pub maxmemory: Option<u64>,
}

/// A server setting that breaks one of the backend's guarantees, found by
/// `CONFIG GET` at connect (see [`Persistence::safety_findings`]). Each one
/// is logged with `tracing::warn!` (an unreadable configuration with
/// `tracing::info!`, as managed services routinely refuse `CONFIG`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SafetyFinding {
    /// `maxmemory-policy` is not `noeviction`. A lock key carries a TTL, so
    /// every `volatile-*` policy may evict it *while it is held* (another
    /// client then acquires the same lock: mutual exclusion is gone), and
    /// every `allkeys-*` policy may evict lock keys and fencing counters
    /// (tokens go backwards). With `maxmemory` 0 nothing is evicted yet, but
    /// the policy takes effect as soon as a limit is set.
    EvictionPolicy {
        /// The policy the server reported.
        policy: String,
        /// `maxmemory` in bytes, if reported (0: no limit yet).
        maxmemory: Option<u64>,
    },
    /// `CONFIG GET` was refused (a managed service, a renamed command): the
    /// eviction policy could not be checked. Make sure it is `noeviction`.
    Unverified,
}

impl std::fmt::Display for SafetyFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SafetyFinding::EvictionPolicy { policy, maxmemory } => {
                let what = if policy.starts_with("allkeys") {
                    "may evict held lock keys (two clients then hold one lock) and fencing counters (tokens go backwards)"
                } else {
                    "may evict held lock keys, which carry a TTL (two clients then hold one lock)"
                };
                write!(
                    f,
                    "maxmemory-policy {policy} {what}; set maxmemory-policy noeviction"
                )?;
                if *maxmemory == Some(0) {
                    write!(
                        f,
                        " (maxmemory is 0, so nothing is evicted until a limit is set)"
                    )?;
                }
                Ok(())
            }
            SafetyFinding::Unverified => write!(
                f,
                "CONFIG GET was refused, so the eviction policy could not be checked; \
                 locks are safe only under maxmemory-policy noeviction"
            ),
        }
    }
}

impl Persistence {
    /// Fencing counters survive a server restart only with AOF fsynced on
    /// every write (`appendonly yes`, `appendfsync always`); anything else,
    /// or a server that refuses `CONFIG`, counts as not durable.
    pub fn durable_fencing(&self) -> bool {
        self.appendonly == Some(true) && self.appendfsync.as_deref() == Some("always")
    }

    /// Whether the eviction policy may evict keys without a TTL (the fencing
    /// counters), which would let tokens go backwards.
    pub fn may_evict_counters(&self) -> bool {
        self.maxmemory_policy
            .as_deref()
            .is_some_and(|policy| policy.starts_with("allkeys"))
    }

    /// Whether the eviction policy is `noeviction`, the only one under which
    /// a held lock key is never evicted (`None`: unknown).
    pub fn eviction_safe(&self) -> Option<bool> {
        self.maxmemory_policy
            .as_deref()
            .map(|policy| policy == "noeviction")
    }

    /// What in this configuration breaks a guarantee: an eviction policy
    /// other than `noeviction` (whatever `maxmemory` is), or a configuration
    /// that could not be read. Empty: nothing found.
    pub fn safety_findings(&self) -> Vec<SafetyFinding> {
        match self.maxmemory_policy.as_deref() {
            Some("noeviction") => Vec::new(),
            Some(policy) => vec![SafetyFinding::EvictionPolicy {
                policy: policy.to_owned(),
                maxmemory: self.maxmemory,
            }],
            None => vec![SafetyFinding::Unverified],
        }
    }

    /// Logs each finding for `server`: `warn!` for a setting that breaks a
    /// guarantee, `info!` for one that could not be checked (managed
    /// services routinely refuse `CONFIG`).
    pub fn log_findings(&self, server: &str) {
        for finding in self.safety_findings() {
            match finding {
                SafetyFinding::Unverified => tracing::info!(%server, "{finding}"),
                _ => tracing::warn!(%server, "{finding}"),
            }
        }
    }
}

impl RedisNode {
    /// Asks the server about persistence and eviction with `CONFIG GET`. A
    /// refused or failed `CONFIG` yields unknown fields (so: not durable, and
    /// [`SafetyFinding::Unverified`](crate::SafetyFinding::Unverified)), never an error. Read-only; cancel safe.
    pub async fn persistence(&self) -> Persistence {
        let config: Result<HashMap<String, String>, LockError> = self
            .call(|mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendonly")
                    .arg("appendfsync")
                    .arg("maxmemory-policy")
                    .arg("maxmemory")
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match config {
            Ok(config) => Persistence {
                appendonly: config.get("appendonly").map(|v| v == "yes"),
                appendfsync: config.get("appendfsync").cloned(),
                maxmemory_policy: config.get("maxmemory-policy").cloned(),
                maxmemory: config.get("maxmemory").and_then(|v| v.parse().ok()),
            },
            Err(error) => {
                tracing::debug!(%error, "CONFIG GET refused; fencing counted as not durable");
                Persistence::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aof_with_fsync_always_is_durable() {
        let mut p = Persistence {
            appendonly: Some(true),
            appendfsync: Some("always".into()),
            maxmemory_policy: Some("noeviction".into()),
            maxmemory: Some(0),
        };
        assert!(p.safety_findings().is_empty());
        assert_eq!(p.eviction_safe(), Some(true));
        assert!(p.durable_fencing());
        assert!(!p.may_evict_counters());
        p.appendfsync = Some("everysec".into());
        assert!(!p.durable_fencing());
        assert!(!Persistence::default().durable_fencing());
    }

    #[test]
    fn every_policy_but_noeviction_is_a_finding() {
        for policy in [
            "volatile-ttl",
            "volatile-lru",
            "allkeys-lru",
            "allkeys-random",
        ] {
            let p = Persistence {
                maxmemory_policy: Some(policy.into()),
                maxmemory: Some(0),
                ..Persistence::default()
            };
            let findings = p.safety_findings();
            assert!(
                matches!(&findings[..], [SafetyFinding::EvictionPolicy { policy: found, .. }] if found == policy),
                "{policy}: {findings:?}"
            );
            let text = findings[0].to_string();
            assert!(
                text.contains("noeviction") && text.contains("maxmemory is 0"),
                "{text}"
            );
        }
        assert_eq!(
            Persistence::default().safety_findings(),
            [SafetyFinding::Unverified]
        );
    }
}
