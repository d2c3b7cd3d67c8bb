//! How a lock [`Key`] maps onto etcd keys.
//!
//! A lock is the set of etcd keys under its *queue prefix*
//! `namespace + encode(key) + "/"`; each acquisition adds one entry
//! `prefix + owner token (32 hex digits)`. `encode` percent-encodes `%` and
//! `/` (and nothing else), so an encoded key never contains `/` and two
//! different keys never share a prefix, nor is one's prefix inside another's
//! range. The namespace always ends with `/` (see
//! [`EtcdConfig::namespace`](crate::EtcdConfig::namespace)), so the last
//! two `/` of a prefix enclose the encoded key and the namespace is what
//! comes before: two different (namespace, key) pairs never share a prefix.

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget};
use leasehold_core::{Key, OwnerToken};

/// The etcd keys of one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockKeys {
    /// `namespace + encode(key) + "/"`.
    pub prefix: Vec<u8>,
}

impl LockKeys {
    pub fn new(namespace: &str, key: &Key) -> Self {
        let mut prefix = Vec::with_capacity(namespace.len() + key.as_str().len() + 8);
        prefix.extend_from_slice(namespace.as_bytes());
        encode(&mut prefix, key.as_bytes());
        prefix.push(b'/');
        LockKeys { prefix }
    }

    /// The lock whose queue `entry` (a whole etcd key) is an entry of, or
    /// `None` for any other key under the namespace (a retirement marker, a
    /// session key, a foreign key).
    pub fn of_entry(namespace: &str, entry: &[u8]) -> Option<(Key, LockKeys)> {
        let rest = entry.strip_prefix(namespace.as_bytes())?;
        let slash = rest.iter().position(|&b| b == b'/')?;
        let key = Key::new(decode(&rest[..slash])?).ok()?;
        let keys = LockKeys::new(namespace, &key);
        // Re-encoding proves the name canonical and the owner part a token.
        keys.owner_of(entry).map(|_| (key, keys))
    }

    /// The end of the prefix range (exclusive).
    pub fn range_end(&self) -> Vec<u8> {
        prefix_end(&self.prefix)
    }

    /// The queue entry of one acquisition.
    pub fn entry(&self, owner: &OwnerToken) -> Vec<u8> {
        let mut entry = self.prefix.clone();
        entry.extend_from_slice(owner.to_hex().as_bytes());
        entry
    }

    /// The compare every acquisition's txn makes: the entry's retirement
    /// marker is absent. Once the reaper has written the marker, a copy of
    /// the txn that reaches the store late (sent before a timeout, applied
    /// after the caller gave up) cannot put the entry any more.
    pub fn not_retired(entry: &[u8]) -> Compare {
        Compare::create_revision(retirement_marker(entry), CompareOp::Equal, 0)
    }

    /// A keys-only read of the whole queue.
    fn range(&self) -> GetOptions {
        GetOptions::new()
            .with_range(self.range_end())
            .with_keys_only()
    }

    /// The queue head: the entry with the lowest create revision.
    pub fn head(&self) -> GetOptions {
        self.range()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    }

    /// The queue head with its value (the holder label), for reports.
    pub fn holder(&self) -> GetOptions {
        GetOptions::new()
            .with_range(self.range_end())
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    }

    /// The number of entries in the queue (the holder and its waiters).
    pub fn count(&self) -> GetOptions {
        GetOptions::new()
            .with_range(self.range_end())
            .with_count_only()
    }

    /// The newest entry created at or before `max_revision` (the predecessor
    /// of an entry created at `max_revision + 1`).
    pub fn newest(&self, max_revision: Option<i64>) -> GetOptions {
        let options = self
            .range()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        match max_revision {
            Some(max) => options.with_max_create_revision(max),
            None => options,
        }
    }

    /// The owner token of a queue entry of this lock, if it is one.
    pub fn owner_of(&self, entry: &[u8]) -> Option<OwnerToken> {
        let hex = entry.strip_prefix(self.prefix.as_slice())?;
        OwnerToken::from_hex(std::str::from_utf8(hex).ok()?)
    }
}

/// Appends `bytes` with `%` and `/` percent-encoded. The code is prefix
/// free, so a key starts with a prefix exactly when its encoding starts with
/// the prefix's encoding (listings by prefix are range reads).
pub(crate) fn encode(out: &mut Vec<u8>, bytes: &[u8]) {
    for byte in bytes {
        match byte {
            b'%' => out.extend_from_slice(b"%25"),
            b'/' => out.extend_from_slice(b"%2F"),
            other => out.push(*other),
        }
    }
}

/// The name [`encode`] made `encoded` from, or `None` if it made no such
/// bytes.
fn decode(encoded: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = match (byte, tail) {
            (b'%', [b'2', b'5', tail @ ..]) => {
                out.push(b'%');
                tail
            }
            (b'%', [b'2', b'F', tail @ ..]) => {
                out.push(b'/');
                tail
            }
            (b'%' | b'/', _) => return None,
            (other, tail) => {
                out.push(other);
                tail
            }
        };
    }
    String::from_utf8(out).ok()
}

/// The end (exclusive) of the range of every key starting with `prefix`:
/// its last byte below 0xff incremented, the 0xff bytes after it dropped
/// (`[0]`, etcd's "to the end", when there is none).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key that retires a queue entry for good: the entry with its
/// prefix's final `/` turned into a NUL (`namespace + encode(key) + "\0" +
/// owner`). It has no `/` after the encoded key, so it lies in no lock's
/// prefix range and no queue ever sees it.
pub(crate) fn retirement_marker(entry: &[u8]) -> Vec<u8> {
    let mut marker = entry.to_vec();
    if let Some(slash) = marker.iter().rposition(|&b| b == b'/') {
        marker[slash] = 0;
    }
    marker
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(name: &str) -> LockKeys {
        LockKeys::new("ns/", &Key::new(name).unwrap())
    }

    #[test]
    fn slashes_and_percent_signs_are_encoded_so_prefixes_never_nest() {
        assert_eq!(keys("a/b").prefix, b"ns/a%2Fb/");
        assert_eq!(keys("a%2Fb").prefix, b"ns/a%252Fb/");
        let a = keys("a");
        let nested = keys("a/x");
        assert!(!nested.prefix.starts_with(&a.prefix));
        assert!(nested.prefix.as_slice() >= a.range_end().as_slice() || nested.prefix < a.prefix);
    }

    #[test]
    fn distinct_awkward_keys_get_distinct_prefixes() {
        let names = [
            "a",
            "a/",
            "/a",
            "a//b",
            "a/b",
            "a%2Fb",
            "a%",
            "%",
            "with space",
            "quote'\"",
            "emoji 🔒",
            "ns/a",
            "a;DROP TABLE x",
            "redis.call('del')",
        ];
        let prefixes: std::collections::HashSet<_> = names.iter().map(|n| keys(n).prefix).collect();
        assert_eq!(prefixes.len(), names.len());
    }

    #[test]
    fn a_namespace_and_key_pair_never_meets_another_at_the_join() {
        use crate::EtcdConfig;
        let prefix = |namespace: &str, key: &str| {
            let namespace = EtcdConfig::default().namespace(namespace).namespace_str();
            LockKeys::new(&namespace, &Key::new(key).unwrap()).prefix
        };
        assert_ne!(prefix("app", "2:x"), prefix("app2", ":x"));
        assert_ne!(prefix("app/2", ":x"), prefix("app/", "2/:x"));
        assert_eq!(prefix("app", "x"), prefix("app/", "x"));
    }

    #[test]
    fn retirement_markers_lie_outside_every_lock_range() {
        let names = ["a", "a/b", "a%2Fb", "orders:42", "x", "a%", "ns"];
        let owner = OwnerToken::generate();
        for name in names {
            let marker = retirement_marker(&keys(name).entry(&owner));
            for other in names {
                let k = keys(other);
                assert!(
                    !(marker.as_slice() >= k.prefix.as_slice() && marker < k.range_end()),
                    "the marker of {name:?} lies in {other:?}'s queue"
                );
            }
        }
        assert_ne!(
            retirement_marker(&keys("a").entry(&owner)),
            retirement_marker(&keys("a").entry(&OwnerToken::generate()))
        );
    }

    #[test]
    fn entries_name_their_lock_and_nothing_else_does() {
        let owner = OwnerToken::generate();
        for name in ["a", "a/b", "a%2Fb", "100%", "emoji 🔒", "x%"] {
            let k = keys(name);
            let (key, found) = LockKeys::of_entry("ns/", &k.entry(&owner)).unwrap();
            assert_eq!((key.as_str(), &found), (name, &k));
            assert_eq!(
                LockKeys::of_entry("ns/", &retirement_marker(&k.entry(&owner))),
                None
            );
            assert_eq!(LockKeys::of_entry("other/", &k.entry(&owner)), None);
        }
        for foreign in [
            &b"ns/a/short"[..],
            b"ns/a%2/0123",
            b"ns/\0session/0001",
            b"ns/a",
        ] {
            assert_eq!(LockKeys::of_entry("ns/", foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn prefix_ranges_hold_exactly_the_keys_under_the_prefix() {
        assert_eq!(prefix_end(b"ns/a"), b"ns/b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(keys("a").range_end(), b"ns/a0");
        let mut encoded = b"ns/".to_vec();
        encode(&mut encoded, b"a/");
        for (name, inside) in [("a/b", true), ("a/", true), ("a", false), ("a%2F", false)] {
            let prefix = keys(name).prefix;
            let within = prefix >= encoded && prefix < prefix_end(&encoded);
            assert_eq!(within, inside, "{name:?}");
        }
    }

    #[test]
    fn entries_carry_the_owner_and_stay_inside_the_prefix_range() {
        let k = keys("orders:42");
        let owner = OwnerToken::generate();
        let entry = k.entry(&owner);
        assert!(entry.as_slice() >= k.prefix.as_slice() && entry < k.range_end());
        assert_eq!(k.owner_of(&entry), Some(owner));
        assert_eq!(keys("orders:4").owner_of(&entry), None);
    }
}
