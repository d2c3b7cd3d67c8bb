//! Reader–writer locks and semaphores against the mutex and the raw store
//! operations, in one run: 16 tasks each, over a fixed window.
//!
//! - `raw`: the store's raw lock+unlock operations (the mutex's floor), each
//!   task on its own key.
//! - `mutex`: `Locker::try_lock` + release, each task on its own key.
//! - `read`: `RwLock::read` + release, every task on **one** key: readers
//!   share, so this is the best case the mutex cannot have on one key.
//! - `permit`: `Semaphore::acquire` + release, every task on one semaphore
//!   of 16 permits (each acquisition finds a free permit: the cost of the
//!   permit bookkeeping itself).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use leasehold_core::{LockBackend, Locker, WaitPolicy};

use crate::Config;
use crate::harness::{self, Op, lock_unlock};
use crate::log;
use crate::stores::{Subject, err};

/// Tasks in every measurement.
pub const TASKS: usize = 16;

/// One store's row.
#[derive(Clone, Debug)]
pub struct KindsRow {
    /// Subject.
    pub name: String,
    /// Raw lock+unlock ops/s (if the store has a raw baseline).
    pub raw: Option<f64>,
    /// Mutex lock+unlock ops/s.
    pub mutex: f64,
    /// Read lock+unlock ops/s, all tasks on one key.
    pub read: Option<f64>,
    /// Permit acquire+release ops/s on one semaphore of 16.
    pub permit: Option<f64>,
    /// Why a figure is missing (the first error of the row), if one is.
    pub failure: Option<String>,
}

/// An op over a locker: read (or take a permit of) the key, then release.
fn shared_op(locker: Locker, permits: Option<u32>) -> Op {
    Arc::new(move |key: String| {
        let locker = locker.clone();
        Box::pin(async move {
            let guard = match permits {
                None => locker.rw_lock(key.as_str()).map_err(err)?.read().await,
                Some(n) => {
                    locker
                        .semaphore(key.as_str(), n)
                        .map_err(err)?
                        .acquire()
                        .await
                }
            }
            .map_err(err)?;
            guard.release().await.map_err(err)
        }) as BoxFuture<'static, _>
    })
}

/// Measures every subject that is leasehold's own and has reader–writer
/// locks or semaphores; the others are left out.
pub async fn measure(config: &Config, subjects: &[Subject]) -> Result<Vec<KindsRow>, String> {
    let mut rows = Vec::new();
    for s in subjects {
        let Some(backend) = s.backend.as_ref() else {
            continue;
        };
        let caps = backend.capabilities();
        if !caps.rw_locks && !caps.semaphores {
            log(format!("kinds: {} has neither, skipped", s.name));
            continue;
        }
        log(format!("kinds: {}", s.name));
        let locker = locker(backend.clone());
        let window = config.window;
        let mut failure: Option<String> = None;
        let mut keep = |figure: Result<f64, String>| match figure {
            Ok(ops) => Some(ops),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        };
        let raw = match &s.raw {
            Some(raw) => {
                keep(harness::throughput(&format!("{}-kraw", s.name), raw, TASKS, window).await)
            }
            None => None,
        };
        let mutex = keep(
            harness::throughput(
                &format!("{}-kmutex", s.name),
                &lock_unlock(s.try_lock.clone()),
                TASKS,
                window,
            )
            .await,
        );
        let read = if caps.rw_locks {
            let op = shared_op(locker.clone(), None);
            keep(
                harness::throughput_on(&format!("{}-kread", s.name), &op, TASKS, window, true)
                    .await,
            )
        } else {
            None
        };
        let permit = if caps.semaphores {
            let op = shared_op(locker, Some(TASKS as u32));
            keep(
                harness::throughput_on(&format!("{}-kpermit", s.name), &op, TASKS, window, true)
                    .await,
            )
        } else {
            None
        };
        rows.push(KindsRow {
            name: s.name.clone(),
            raw,
            mutex: mutex.unwrap_or(0.0),
            read,
            permit,
            failure,
        });
    }
    Ok(rows)
}

fn locker(backend: Arc<dyn LockBackend>) -> Locker {
    Locker::builder_from_arc(backend)
        .wait(WaitPolicy::new(Duration::from_secs(60)))
        .build()
}
