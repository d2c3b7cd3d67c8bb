//! The names derived from a key: its `GET_LOCK` name, and quoted SQL
//! identifiers.

use sha2::{Digest, Sha256};

/// Every lock name starts with this, so an operator reading
/// `performance_schema` or `IS_USED_LOCK` output can tell leasehold's locks
/// from others.
const LOCK_NAME_PREFIX: &str = "leasehold:";

/// The `GET_LOCK` name of `key` in `namespace`: `leasehold:` followed by the
/// first 54 hex digits (216 bits) of
/// `SHA-256("leasehold\0" || u32_be(len(namespace)) || namespace || key)`,
/// 64 characters in all (MySQL's limit on lock names).
///
/// Every key is hashed, short ones too: MySQL compares lock names
/// case-insensitively and limits them to 64 characters, so no key could be
/// used verbatim in general, and one scheme for all keys cannot mix a
/// verbatim name up with a hashed one. The length prefix keeps
/// `("a:b", "c")` and `("a", "b:c")` apart; at 216 bits of SHA-256 a
/// collision is not expected in practice, and one would only make two keys
/// contend falsely (equal names are one lock): exclusion is never lost.
/// Lock names are server-wide (not per database): give applications sharing
/// a server their own namespaces. Stable across versions and platforms: it
/// is part of the contract between processes.
pub fn lock_name(namespace: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"leasehold\0");
    hash.update((namespace.len() as u32).to_be_bytes());
    hash.update(namespace.as_bytes());
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut name = String::with_capacity(64);
    name.push_str(LOCK_NAME_PREFIX);
    for byte in &digest[..27] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// Quotes a MySQL identifier: wraps it in backticks and doubles any backtick
/// inside, so any name is taken literally.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_are_64_characters_stable_and_namespace_separated() {
        let name = lock_name("", "orders:42");
        assert_eq!(name.len(), 64, "{name}");
        assert!(name.starts_with("leasehold:"));
        // Pinned: changing the hash would split the lock between versions.
        assert_eq!(
            lock_name("", "a"),
            "leasehold:fbf5c9bc022d0b758fb9e0ffd2c3f9974dfc80b9a2c3b186c80e92"
        );
        assert_ne!(lock_name("a:b", "c"), lock_name("a", "b:c"));
        assert_ne!(lock_name("x", "k"), lock_name("y", "k"));
        assert_ne!(lock_name("", "K"), lock_name("", "k"));
        let long = "k".repeat(1024);
        assert_eq!(lock_name("ns", &long).len(), 64);
    }

    #[test]
    fn identifiers_are_quoted_literally() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }
}
