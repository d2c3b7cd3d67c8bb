//! What a case is: its name, the selector that decides whether it runs
//! against a backend (by [`Capabilities`] and the suite's hooks, never by the
//! backend's name), its body, and the context the body works in ([`Ctx`]).
//! Also the case's failure ([`Failed`]) and the two macros cases check with:
//! `ensure!` (crate-internal) and [`expect_err!`](crate::expect_err).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    Capabilities, Expiry, Fencing, Key, LockBackend, LockError, Locker, TtlPolicy, WaitPolicy,
};

use crate::child::ChildHolder;
use crate::hooks::{BoxFuture, Factory, SessionEnder, Store};

/// A case failed; the message says what was expected and what came instead.
#[derive(Debug)]
pub struct Failed(pub String);

impl From<LockError> for Failed {
    fn from(error: LockError) -> Self {
        Failed(format!("unexpected error: {error}"))
    }
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Failed(message)
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a case returns.
pub(crate) type Outcome = Result<(), Failed>;

/// Fails the case with a formatted message unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err($crate::Failed(format!($($message)+)));
        }
    };
}
pub(crate) use ensure;

/// Checks that `$result` (a `Result<T, LockError>`) is an error matching
/// `$expected`, and evaluates to that error; otherwise returns
/// `Err(`[`Failed`]`)` from the enclosing function, with a message that names
/// `$what`, the expected pattern and what came instead.
///
/// When the call unexpectedly succeeded, an optional last argument
/// `granted => cleanup` binds the success value and runs `cleanup` (an
/// expression, `.await` allowed) before failing, e.g. to give back a lease
/// that should not have been granted.
///
/// ```no_run
/// use std::time::Duration;
/// use leasehold_conformance::{Failed, expect_err};
/// use leasehold_core::{Key, LockBackend, LockError};
///
/// async fn held_key_is_contended(backend: &dyn LockBackend, key: &Key) -> Result<(), Failed> {
///     let ttl = Duration::from_secs(30);
///     expect_err!(
///         backend.try_acquire(key, ttl).await,
///         LockError::Contended { .. },
///         "try_acquire on a held key",
///         lease => backend.release(&lease).await
///     );
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! expect_err {
    ($result:expr, $expected:pat, $what:expr $(,)?) => {
        $crate::expect_err!($result, $expected, $what, _granted => ())
    };
    ($result:expr, $expected:pat, $what:expr, $granted:pat => $cleanup:expr $(,)?) => {
        match $result {
            Err(error @ $expected) => error,
            Ok($granted) => {
                let _ = $cleanup;
                return Err($crate::Failed(format!(
                    "{}: expected Err({}), but it succeeded",
                    $what,
                    stringify!($expected)
                )));
            }
            Err(error) => {
                return Err($crate::Failed(format!(
                    "{}: expected Err({}), got Err({error})",
                    $what,
                    stringify!($expected)
                )));
            }
        }
    };
}

/// What a case works with: the backend under test, a factory for more
/// clients, its capabilities, a random key prefix of its own, and the fault
/// hooks the suite has.
pub struct Ctx {
    /// A client shared by the case.
    pub backend: Arc<dyn LockBackend>,
    /// Makes more clients (their own connections).
    pub factory: Factory,
    /// The backend's capabilities.
    pub caps: Capabilities,
    pub(crate) prefix: String,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) child_env: Option<Vec<(String, String)>>,
    pub(crate) session_ender: Option<SessionEnder>,
}

impl Ctx {
    /// A key under this case's random prefix.
    pub fn key(&self, name: &str) -> Key {
        Key::new(format!("{}{name}", self.prefix)).expect("case keys are valid")
    }

    /// `wanted`, raised to the backend's minimum TTL and granularity.
    pub fn ttl(&self, wanted: Duration) -> Duration {
        let ttl = wanted.max(self.caps.min_ttl);
        let step = self
            .caps
            .ttl_granularity
            .max(Duration::from_millis(1))
            .as_nanos();
        Duration::from_nanos((ttl.as_nanos().div_ceil(step) * step) as u64)
    }

    /// A new client.
    pub async fn client(&self) -> Result<Arc<dyn LockBackend>, Failed> {
        (self.factory)()
            .await
            .map_err(|e| Failed(format!("could not make another client: {e}")))
    }

    /// A locker over `backend` with a fixed TTL and a wait deadline.
    pub fn locker(&self, backend: Arc<dyn LockBackend>, ttl: Duration, wait: Duration) -> Locker {
        Locker::builder_from_arc(backend)
            .ttl(TtlPolicy::Fixed(ttl))
            .wait(
                WaitPolicy::new(wait)
                    .with_delays(Duration::from_millis(5), Duration::from_millis(200)),
            )
            .build()
    }

    /// A holder in a child process of this test binary.
    pub(crate) fn child(&self) -> Result<ChildHolder, Failed> {
        let env = self
            .child_env
            .as_ref()
            .ok_or_else(|| Failed("no child environment".into()))?;
        Ok(ChildHolder::spawn(env)?)
    }

    /// The store's fault hooks.
    pub(crate) fn store(&self) -> Result<&Arc<dyn Store>, Failed> {
        self.store
            .as_ref()
            .ok_or_else(|| Failed("no store hooks".into()))
    }

    /// How long a dead holder may keep a key: its TTL for TTL backends; for
    /// session backends the session timeout, which the TTL maps onto.
    pub(crate) fn expiry_bound(&self, ttl: Duration) -> Duration {
        ttl * 3 + Duration::from_secs(10)
    }
}

/// Whether a case runs against a backend, or why not.
pub(crate) type Selector = fn(&Ctx) -> Result<(), &'static str>;

/// One case: its name, what it needs, and its body.
pub struct Case {
    /// The test name: the property it proves.
    pub name: &'static str,
    pub(crate) select: Selector,
    /// Whether the case needs the store to itself (it pauses or restarts it).
    pub(crate) exclusive: bool,
    pub(crate) body: fn(Arc<Ctx>) -> BoxFuture<Outcome>,
}

/// Lists a case: `case!(name, selector)`, or `case!(name, selector,
/// exclusive)` for one that takes the store to itself.
macro_rules! case {
    ($name:ident, $select:expr) => {
        $crate::case::Case {
            name: stringify!($name),
            select: $select,
            exclusive: false,
            body: |ctx| Box::pin($name(ctx)),
        }
    };
    ($name:ident, $select:expr, exclusive) => {
        $crate::case::Case {
            name: stringify!($name),
            select: $select,
            exclusive: true,
            body: |ctx| Box::pin($name(ctx)),
        }
    };
}
pub(crate) use case;

/// The selectors: which backends and suites a case needs.
pub(crate) mod select {
    use super::*;

    /// Every backend.
    pub(crate) fn always(_: &Ctx) -> Result<(), &'static str> {
        Ok(())
    }

    /// Backends whose leases end with a TTL.
    pub(crate) fn ttl_expiry(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.caps.expiry == Expiry::Ttl {
            Ok(())
        } else {
            Err("the backend's leases end with a session, not a TTL")
        }
    }

    /// Suites that can start holders in child processes.
    pub(crate) fn child_holders(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.child_env.is_some() {
            Ok(())
        } else {
            Err("the suite has no child-process environment")
        }
    }

    /// Suites with store fault hooks (pause, restart).
    pub(crate) fn store_hooks(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.store.is_some() {
            Ok(())
        } else {
            Err("the suite has no store fault hooks")
        }
    }

    /// Backends whose fencing tokens carry an order.
    pub(crate) fn ordered_tokens(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.caps.fencing == Fencing::None {
            Err("the backend's fencing tokens carry no order")
        } else {
            Ok(())
        }
    }

    /// Ordered tokens, and a holder that can be paused: a TTL holder that
    /// stops renewing, or a session holder in a child process.
    pub(crate) fn paused_holder(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.child_env.is_some() || ctx.caps.expiry == Expiry::Ttl {
            ordered_tokens(ctx)
        } else {
            Err(
                "a session backend's holder can only be paused in a child process, and the suite has none",
            )
        }
    }

    /// Backends with reader–writer locks.
    pub(crate) fn rw_locks(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.caps.rw_locks {
            Ok(())
        } else {
            Err("the backend has no reader-writer locks")
        }
    }

    /// Backends with semaphores.
    pub(crate) fn semaphores(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.caps.semaphores {
            Ok(())
        } else {
            Err("the backend has no semaphores")
        }
    }

    /// Reader–writer locks, and holders in child processes.
    pub(crate) fn rw_child(ctx: &Ctx) -> Result<(), &'static str> {
        rw_locks(ctx).and_then(|()| child_holders(ctx))
    }

    /// Semaphores, and holders in child processes.
    pub(crate) fn semaphore_child(ctx: &Ctx) -> Result<(), &'static str> {
        semaphores(ctx).and_then(|()| child_holders(ctx))
    }

    /// Suites that can end a holder's store session.
    pub(crate) fn session_ender(ctx: &Ctx) -> Result<(), &'static str> {
        if ctx.session_ender.is_some() {
            Ok(())
        } else {
            Err("the suite has no session ender (Suite::with_session_ender)")
        }
    }

    /// Suites that can end a holder's store session, of a backend whose
    /// waiters are notified.
    pub(crate) fn notified_session_ender(ctx: &Ctx) -> Result<(), &'static str> {
        session_ender(ctx)?;
        if ctx.caps.waiting == leasehold_core::Waiting::Notified {
            Ok(())
        } else {
            Err("the backend's waiters poll")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(answer: Result<u32, LockError>, released: &mut bool) -> Result<LockError, Failed> {
        Ok(crate::expect_err!(
            answer,
            LockError::WaitTimedOut { .. },
            format!("acquire of key {}", "k"),
            _granted => *released = true
        ))
    }

    fn timeout() -> LockError {
        LockError::WaitTimedOut {
            backend: "test",
            key: "k".into(),
            waited: Duration::from_secs(1),
        }
    }

    #[test]
    fn expect_err_passes_the_expected_error_through() {
        let mut released = false;
        assert!(matches!(
            check(Err(timeout()), &mut released),
            Ok(LockError::WaitTimedOut { .. })
        ));
        assert!(!released);
    }

    #[test]
    fn expect_err_names_what_was_expected_and_what_came() {
        let mut released = false;
        let Failed(message) = check(Ok(7), &mut released).unwrap_err();
        assert!(released, "the cleanup of an unexpected success did not run");
        assert_eq!(
            message,
            "acquire of key k: expected Err(LockError::WaitTimedOut { .. }), but it succeeded"
        );
        let other = LockError::NotHeld {
            backend: "test",
            key: "k".into(),
        };
        let Failed(message) = check(Err(other), &mut released).unwrap_err();
        assert_eq!(
            message,
            "acquire of key k: expected Err(LockError::WaitTimedOut { .. }), got Err(test: lock \"k\" \
             is not held by this owner)"
        );
    }
}
