//! A circuit breaker in front of a lock store: after a run of failures it
//! fails new acquisitions fast with `Unavailable` instead of letting every
//! caller wait out its timeout against a store that is down, and lets one
//! probe through after a cool-down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{LockBackend, ReleaseListener};
use crate::capabilities::Capabilities;
use crate::clock::instant_after;
use crate::error::LockError;
use crate::key::Key;
use crate::kind::LockKind;
use crate::layer::Layer;
use crate::lease::{Lease, LockInfo};
use crate::listing::{ListPage, ListQuery};
use crate::metrics;
use crate::wait::WaitPolicy;

/// Opens after `failures` `Unavailable` answers in a row, the first of them
/// no longer than `window` ago; while open, new acquisitions and
/// inspections fail at once with [`LockError::Unavailable`]; after
/// `cool_down` one call goes through as a probe (half-open): a probe that
/// reaches the store closes the circuit, a probe that fails opens it again.
///
/// Held locks are never cut off: renewals (`extend`, `extend_many`) and
/// releases always go to the store, open or not, so the breaker can never
/// make a guard lose a lease earlier than the store would. Their failures
/// still count towards opening. `leasehold_circuit_open{backend}` is 1
/// while the circuit is open or half-open.
///
/// ```
/// use leasehold_core::{CircuitBreakerLayer, Layer, LockBackend, Locker, MemoryBackend};
/// use std::{sync::Arc, time::Duration};
/// let backend: Arc<dyn LockBackend> = Arc::new(MemoryBackend::new());
/// let guarded = CircuitBreakerLayer::new()
///     .failures(5)
///     .window(Duration::from_secs(10))
///     .cool_down(Duration::from_secs(5))
///     .layer(backend);
/// let locker = Locker::from_arc(guarded);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitBreakerLayer {
    failures: u32,
    window: Duration,
    cool_down: Duration,
}

impl Default for CircuitBreakerLayer {
    /// 5 failures within 10 s open it; a probe after 5 s.
    fn default() -> Self {
        CircuitBreakerLayer {
            failures: 5,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        }
    }
}

impl CircuitBreakerLayer {
    /// The defaults: 5 failures within 10 s, a probe after 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many `Unavailable` answers in a row open the circuit (at least 1).
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures.max(1);
        self
    }

    /// How recent the first failure of the run must be.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long the circuit stays open before a probe.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

impl Layer for CircuitBreakerLayer {
    fn layer(&self, inner: Arc<dyn LockBackend>) -> Arc<dyn LockBackend> {
        metrics::describe();
        Arc::new(CircuitBreaker {
            inner,
            config: *self,
            state: Mutex::new(State::Closed {
                failures: 0,
                since: None,
            }),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row so far, the first at `since`.
    Closed {
        failures: u32,
        since: Option<Instant>,
    },
    /// Calls fail fast until `until`.
    Open { until: Instant },
    /// One probe is out; the rest fail fast until it answers.
    HalfOpen,
}

/// The backend made by [`CircuitBreakerLayer`].
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Arc<dyn LockBackend>,
    config: CircuitBreakerLayer,
    state: Mutex<State>,
}

impl CircuitBreaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the circuit lets a new call through (open: fail fast).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    /// Lets a gated call through (`true` when it is the half-open probe),
    /// or fails it fast.
    fn admit(&self) -> Result<bool, LockError> {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(false),
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                Ok(true)
            }
            State::Open { until } => Err(LockError::unavailable(
                self.inner.name(),
                format!(
                    "circuit open after {} store failures in a row; next probe in {:?}",
                    self.config.failures,
                    until.saturating_duration_since(Instant::now())
                ),
            )),
            State::HalfOpen => Err(LockError::unavailable(
                self.inner.name(),
                "circuit half-open: a probe of the store is in flight",
            )),
        }
    }

    /// Counts an answer: `Unavailable` is a failure, anything else (even a
    /// refusal) shows the store answering.
    fn record<T>(&self, result: &Result<T, LockError>, gated: bool) {
        let failed = matches!(result, Err(LockError::Unavailable { .. }));
        let now = Instant::now();
        let mut state = self.state();
        let next = match (*state, failed) {
            (State::HalfOpen, true) => State::Open {
                until: instant_after(now, self.config.cool_down),
            },
            (State::HalfOpen, false) if gated => State::Closed {
                failures: 0,
                since: None,
            },
            (State::Closed { failures, since }, true) => {
                let (failures, since) = match since {
                    Some(first) if now.duration_since(first) <= self.config.window => {
                        (failures + 1, first)
                    }
                    _ => (1, now),
                };
                if failures >= self.config.failures {
                    State::Open {
                        until: instant_after(now, self.config.cool_down),
                    }
                } else {
                    State::Closed {
                        failures,
                        since: Some(since),
                    }
                }
            }
            (State::Closed { .. }, false) => State::Closed {
                failures: 0,
                since: None,
            },
            (unchanged, _) => unchanged,
        };
        let was_open = !matches!(*state, State::Closed { .. });
        let is_open = !matches!(next, State::Closed { .. });
        *state = next;
        if was_open != is_open {
            if is_open {
                tracing::warn!(
                    backend = self.inner.name(),
                    "circuit opened: failing lock calls fast"
                );
            } else {
                tracing::info!(
                    backend = self.inner.name(),
                    "circuit closed: the store answers again"
                );
            }
            metrics::circuit(self.inner.name(), is_open);
        }
    }

    /// A call the circuit may refuse.
    async fn gated<T>(
        &self,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let mut probe = Probe {
            breaker: self,
            pending: self.admit()?,
        };
        let result = call.await;
        probe.pending = false;
        self.record(&result, true);
        result
    }

    /// A call for a held lock: always goes through.
    async fn passed<T>(
        &self,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let result = call.await;
        self.record(&result, false);
        result
    }
}

/// The half-open probe in flight: a probe dropped before its answer (its
/// caller was cancelled) lets the next call probe instead of leaving the
/// circuit half-open for good.
struct Probe<'a> {
    breaker: &'a CircuitBreaker,
    pending: bool,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.pending {
            let mut state = self.breaker.state();
            if *state == State::HalfOpen {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl LockBackend for CircuitBreaker {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Lease, LockError> {
        self.gated(self.inner.try_acquire(key, ttl)).await
    }
    async fn acquire(
        &self,
        key: &Key,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.gated(self.inner.acquire(key, ttl, wait)).await
    }
    async fn try_acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.gated(self.inner.try_acquire_kind(key, kind, ttl))
            .await
    }
    async fn acquire_kind(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        wait: &WaitPolicy,
    ) -> Result<Lease, LockError> {
        self.gated(self.inner.acquire_kind(key, kind, ttl, wait))
            .await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.passed(self.inner.extend(lease, ttl)).await
    }
    async fn extend_many(
        &self,
        renewals: &[(Lease, Duration)],
    ) -> Result<Vec<Result<Lease, LockError>>, LockError> {
        self.passed(self.inner.extend_many(renewals)).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        self.passed(self.inner.release(lease)).await
    }
    async fn inspect(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        self.gated(self.inner.inspect(key)).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        self.gated(self.inner.list(query)).await
    }
    /// Always goes through: an operator evicting a stuck holder must reach
    /// the store even while new acquisitions fail fast.
    async fn force_release(&self, key: &Key, reason: &str) -> Result<Option<LockInfo>, LockError> {
        self.passed(self.inner.force_release(key, reason)).await
    }
    fn release_listener(&self, key: &Key) -> Option<ReleaseListener> {
        self.inner.release_listener(key)
    }
}
