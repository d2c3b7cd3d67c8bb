//! Options shared by every backend, from a typed builder or URL query
//! parameters with the same names.

use std::time::Duration;

use leasehold_core::config::{self, duration, invalid};
use leasehold_core::{Drift, LockError, RetryPolicy, TtlPolicy};

/// The shared option names, for the memory scheme's check and for hints.
pub(crate) const SHARED: &[&str] = &[
    "ttl",
    "wait",
    "retry_min",
    "retry_max",
    "namespace",
    "timeout",
    "drift_factor",
    "drift_fixed",
    "auto_extend",
];

/// Options for [`connect_with`](crate::connect_with). Every option has a URL
/// query parameter of the same name; a parameter in the URL overrides the
/// builder's value.
///
/// | parameter | meaning | example |
/// |---|---|---|
/// | `ttl` | fixed TTL, or `adaptive` | `ttl=30s` |
/// | `wait` | how long `lock` waits | `wait=10s` |
/// | `retry_min`, `retry_max` | backoff delay bounds | `retry_min=10ms` |
/// | `namespace` | key prefix separating applications | `namespace=billing` |
/// | `timeout` | per-call store timeout | `timeout=2s` |
/// | `drift_factor`, `drift_fixed` | validity drift allowance | `drift_factor=0.01` |
/// | `auto_extend` | guards extend themselves | `auto_extend=false` |
///
/// Durations take `ms`, `s`, `m` or `h` (`250ms`, `1.5s`) and are at most one
/// year; a bare number is an error (stores disagree on the unit, so none is
/// guessed). `wait` may also be `forever`.
///
/// ```
/// use leasehold::Options;
/// use std::time::Duration;
/// let options = Options::new().namespace("billing").timeout(Duration::from_secs(1));
/// assert_eq!(options.namespace_value(), Some("billing"));
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) ttl: TtlPolicy,
    pub(crate) retry: RetryPolicy,
    pub(crate) namespace: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) drift: Option<Drift>,
    pub(crate) auto_extend: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: TtlPolicy::default(),
            retry: RetryPolicy::default(),
            namespace: None,
            timeout: None,
            drift: None,
            auto_extend: true,
        }
    }
}

impl Options {
    /// The defaults: fixed 30 s TTL, 30 s wait, each backend's own namespace,
    /// timeout and drift.
    pub fn new() -> Self {
        Self::default()
    }
    /// The TTL policy.
    pub fn ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }
    /// The retry policy (its deadline is how long `lock` waits).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// The key namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
    /// The per-call store timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// The drift allowance.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = Some(drift);
        self
    }
    /// Whether guards extend themselves (default true).
    pub fn auto_extend(mut self, enabled: bool) -> Self {
        self.auto_extend = enabled;
        self
    }
    /// The namespace set, if any.
    pub fn namespace_value(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    /// The TTL policy set.
    pub fn ttl_value(&self) -> &TtlPolicy {
        &self.ttl
    }
    /// The retry policy set (its deadline is how long `lock` waits).
    pub fn retry_value(&self) -> &RetryPolicy {
        &self.retry
    }
    /// The per-call store timeout set, if any (else the backend's default).
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }
    /// The drift allowance set, if any (else the backend's default).
    pub fn drift_value(&self) -> Option<Drift> {
        self.drift
    }
    /// Whether guards extend themselves.
    pub fn auto_extend_value(&self) -> bool {
        self.auto_extend
    }

    /// Applies one query parameter if it is a shared option; returns false
    /// for a parameter that belongs to the backend.
    pub(crate) fn apply(&mut self, name: &str, value: &str) -> Result<bool, LockError> {
        match name {
            "ttl" if value == "adaptive" => self.ttl = TtlPolicy::adaptive(),
            "ttl" => self.ttl = TtlPolicy::Fixed(positive_duration(name, value)?),
            "wait" if value == "forever" => self.retry.deadline = Duration::MAX,
            "wait" => self.retry.deadline = duration(name, value)?,
            "retry_min" => {
                self.retry = self
                    .retry
                    .clone()
                    .with_delays(duration(name, value)?, self.retry.max_delay)
            }
            "retry_max" => {
                self.retry = self
                    .retry
                    .clone()
                    .with_delays(self.retry.min_delay, duration(name, value)?)
            }
            "namespace" if value.is_empty() => {
                return Err(invalid(name, value, "must not be empty"));
            }
            "namespace" => self.namespace = Some(value.to_owned()),
            "timeout" => self.timeout = Some(positive_duration(name, value)?),
            "drift_factor" => {
                let factor: f64 = value
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a number like 0.01"))?;
                if !(0.0..1.0).contains(&factor) {
                    return Err(invalid(name, value, "must be in [0, 1)"));
                }
                self.drift = Some(Drift {
                    factor,
                    ..self.drift.unwrap_or_default()
                });
            }
            "drift_fixed" => {
                self.drift = Some(Drift {
                    fixed: duration(name, value)?,
                    ..self.drift.unwrap_or_default()
                })
            }
            "auto_extend" => self.auto_extend = config::boolean(name, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn positive_duration(name: &str, value: &str) -> Result<Duration, LockError> {
    let parsed = duration(name, value)?;
    if parsed.is_zero() {
        return Err(invalid(name, value, "must be above zero"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_options_apply_and_backend_options_pass_through() {
        let mut options = Options::new();
        assert!(options.apply("ttl", "5s").unwrap());
        assert!(options.apply("wait", "1s").unwrap());
        assert!(options.apply("namespace", "app").unwrap());
        assert!(!options.apply("mode", "table").unwrap());
        assert!(matches!(options.ttl, TtlPolicy::Fixed(d) if d == Duration::from_secs(5)));
        assert_eq!(options.retry.deadline, Duration::from_secs(1));
        assert!(options.apply("ttl", "0s").is_err());
        assert!(options.apply("drift_factor", "2").is_err());
        assert!(options.apply("auto_extend", "maybe").is_err());
    }
}
