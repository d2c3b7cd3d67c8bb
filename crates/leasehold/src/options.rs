//! Options from a typed builder or URL query parameters with the same names.

use std::time::Duration;

use leasehold_core::config::{self, SharedConfig, duration, positive};
use leasehold_core::{Drift, LockError, TtlPolicy, WaitPolicy};

/// Options for [`connect_with`](crate::connect_with). Every option has a URL
/// query parameter of the same name; a parameter in the URL overrides the
/// builder's value.
///
/// | parameter | meaning | example |
/// |---|---|---|
/// | `ttl` | fixed TTL, or `adaptive` | `ttl=30s` |
/// | `wait` | how long `lock` waits (`forever` for no limit) | `wait=10s` |
/// | `retry_min`, `retry_max` | backoff delay bounds | `retry_min=10ms` |
/// | `auto_extend` | guards extend themselves | `auto_extend=false` |
/// | `namespace` | key prefix separating applications | `namespace=billing` |
/// | `timeout` | bound on each store call | `timeout=2s` |
/// | `poll` | how often a waiter re-checks without a notification | `poll=250ms` |
/// | `holder` | who holds a lease, stored with it | `holder=billing-worker-3` |
/// | `drift_factor`, `drift_fixed` | validity drift allowance | `drift_factor=0.01` |
///
/// The first four are the [`Locker`](crate::Locker)'s; the rest are every
/// backend's ([`SharedConfig`]), parsed by the backend's own configuration
/// so that a URL means the same through [`connect`](crate::connect) and
/// through a backend crate's `connect(url)`. Durations take `ms`, `s`, `m`
/// or `h` (`250ms`, `1.5s`) and are at most one year; a bare number is an
/// error (stores disagreed on the unit, so none is guessed).
///
/// ```
/// use leasehold::Options;
/// use std::time::Duration;
/// let options = Options::new().namespace("billing").timeout(Duration::from_secs(1));
/// assert_eq!(options.namespace_value(), Some("billing"));
/// assert_eq!(options.timeout_value(), Some(Duration::from_secs(1)));
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    ttl: TtlPolicy,
    wait: WaitPolicy,
    auto_extend: bool,
    shared: SharedConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: TtlPolicy::default(),
            wait: WaitPolicy::default(),
            auto_extend: true,
            shared: SharedConfig::default(),
        }
    }
}

impl Options {
    /// The defaults: fixed 30 s TTL, 60 s wait (outlasting a crashed holder's TTL), each backend's own namespace,
    /// timeout, poll interval, holder label and drift.
    pub fn new() -> Self {
        Self::default()
    }
    /// The TTL policy.
    pub fn ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }
    /// How `lock` waits: its deadline and the backoff between attempts.
    pub fn wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }
    /// Whether guards extend themselves (default true).
    pub fn auto_extend(mut self, enabled: bool) -> Self {
        self.auto_extend = enabled;
        self
    }
    /// The key namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.shared.namespace = Some(namespace.into());
        self
    }
    /// The bound on each store call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = Some(timeout);
        self
    }
    /// How often a waiter re-checks without a notification.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.shared.poll = Some(poll);
        self
    }
    /// The holder label stored with each lease.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.shared.holder = Some(holder.into());
        self
    }
    /// The drift allowance.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.shared.drift = Some(drift);
        self
    }

    /// The TTL policy set.
    pub fn ttl_value(&self) -> &TtlPolicy {
        &self.ttl
    }
    /// The wait policy set (its deadline is how long `lock` waits).
    pub fn wait_value(&self) -> &WaitPolicy {
        &self.wait
    }
    /// Whether guards extend themselves.
    pub fn auto_extend_value(&self) -> bool {
        self.auto_extend
    }
    /// The namespace set, if any.
    pub fn namespace_value(&self) -> Option<&str> {
        self.shared.namespace.as_deref()
    }
    /// The per-call store timeout set, if any (else the backend's default).
    pub fn timeout_value(&self) -> Option<Duration> {
        self.shared.timeout
    }
    /// The drift allowance set, if any (else the backend's default).
    pub fn drift_value(&self) -> Option<Drift> {
        self.shared.drift
    }
    /// The shared store settings set here (a URL's query overrides them).
    pub fn shared_value(&self) -> &SharedConfig {
        &self.shared
    }

    /// Applies one query parameter if it is a locker option; store options
    /// are left to the backend's configuration.
    pub(crate) fn apply_locker(&mut self, name: &str, value: &str) -> Result<(), LockError> {
        match name {
            "ttl" if value == "adaptive" => self.ttl = TtlPolicy::adaptive(),
            "ttl" => self.ttl = TtlPolicy::Fixed(positive(name, value)?),
            "wait" if value == "forever" => self.wait.deadline = Duration::MAX,
            "wait" => self.wait.deadline = duration(name, value)?,
            "retry_min" => {
                self.wait = self
                    .wait
                    .clone()
                    .with_delays(duration(name, value)?, self.wait.max_delay)
            }
            "retry_max" => {
                self.wait = self
                    .wait
                    .clone()
                    .with_delays(self.wait.min_delay, duration(name, value)?)
            }
            "auto_extend" => self.auto_extend = config::boolean(name, value)?,
            _ => {}
        }
        Ok(())
    }

    /// Fills the shared settings a URL left unset with the builder's.
    pub(crate) fn fill_shared(&self, shared: &mut SharedConfig) {
        let ours = &self.shared;
        shared.namespace = shared.namespace.take().or_else(|| ours.namespace.clone());
        shared.timeout = shared.timeout.or(ours.timeout);
        shared.poll = shared.poll.or(ours.poll);
        shared.holder = shared.holder.take().or_else(|| ours.holder.clone());
        shared.drift = shared.drift.or(ours.drift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locker_options_apply_and_store_options_are_left_to_the_backend() {
        let mut options = Options::new();
        options.apply_locker("ttl", "5s").unwrap();
        options.apply_locker("wait", "1s").unwrap();
        options.apply_locker("namespace", "app").unwrap();
        options.apply_locker("mode", "table").unwrap();
        assert!(matches!(options.ttl, TtlPolicy::Fixed(d) if d == Duration::from_secs(5)));
        assert_eq!(options.wait.deadline, Duration::from_secs(1));
        assert_eq!(options.namespace_value(), None);
        assert!(options.apply_locker("ttl", "0s").is_err());
        assert!(options.apply_locker("ttl", "5").is_err());
        assert!(options.apply_locker("auto_extend", "maybe").is_err());
    }

    #[test]
    fn a_urls_shared_settings_win_over_the_builders() {
        let options = Options::new()
            .namespace("builder")
            .timeout(Duration::from_secs(9));
        let mut from_url = SharedConfig::default();
        from_url.apply("namespace", "url").unwrap();
        options.fill_shared(&mut from_url);
        assert_eq!(from_url.namespace.as_deref(), Some("url"));
        assert_eq!(from_url.timeout, Some(Duration::from_secs(9)));
    }
}
