//! The cases, one file per family; each file lists its cases at the top, one
//! line each, with what it proves. [`all_cases`] concatenates the families.
//!
//! A case is an `async fn` taking the case context ([`Ctx`](crate::Ctx)), with a doc
//! comment saying what it proves; the helpers they share are public in
//! [`crate::support`]. `conformance/tests/broken.rs` proves the cases against
//! backends with one bug each.

use crate::case::Case;

mod admin;
mod election;
mod exclusion;
mod expiry;
pub(crate) mod faults;
mod fencing;
mod guard;
mod keys;
mod ownership;
pub(crate) mod rw;
mod schedule;
mod semaphore;
mod waiting;

/// Every case, family by family: exclusion, ownership, expiry, fencing,
/// waiting, the guard, keys, faults, admin, scheduling, election,
/// reader–writer locks, semaphores.
pub fn all_cases() -> Vec<Case> {
    [
        exclusion::cases(),
        ownership::cases(),
        expiry::cases(),
        fencing::cases(),
        waiting::cases(),
        guard::cases(),
        keys::cases(),
        faults::cases(),
        admin::cases(),
        schedule::cases(),
        election::cases(),
        rw::cases(),
        semaphore::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
