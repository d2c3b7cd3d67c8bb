//! How a namespace and a [`Key`] become Redis key and channel names.

use std::fmt::Write;

use leasehold_core::{Key, LockError};

/// The Redis names of one namespace: per lock key a lock key and a fencing
/// counter key that share a cluster hash slot, and one release channel.
///
/// Layout, for namespace `ns` and key `k`:
/// - lock: `{ns:k}:lock` (value: the holder's owner token, PX TTL)
/// - fencing counter: `{ns:k}:fence` (an integer, never deleted, no TTL)
/// - release channel: `ns:released` (payload: the released lock key's name)
///
/// The namespace is percent-encoded for `%`, `{`, `}` and `:`, the key for
/// `%`, `{` and `}`. So the first `{…}` of every name is exactly the hash
/// tag (both keys of a lock land in one cluster slot), the first `:` inside it
/// separates namespace from key, and the mapping is injective: two different
/// (namespace, key) pairs never share a Redis name. Every legal [`Key`]
/// (quotes, spaces, Lua metacharacters, emoji) goes through unchanged except
/// for those three characters; the names are passed to scripts as `KEYS`,
/// never spliced into Lua source.
///
/// ```
/// use leasehold_core::Key;
/// use leasehold_redis::KeyLayout;
/// let layout = KeyLayout::new("app").unwrap();
/// let key = Key::new("orders:{42}").unwrap();
/// assert_eq!(layout.lock_key(&key), "{app:orders:%7B42%7D}:lock");
/// assert_eq!(layout.fence_key(&key), "{app:orders:%7B42%7D}:fence");
/// assert_eq!(layout.channel(), "app:released");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    namespace: String,
    encoded_namespace: String,
}

impl KeyLayout {
    /// The layout of `namespace`; any non-empty string without control
    /// characters is allowed.
    pub fn new(namespace: &str) -> Result<Self, LockError> {
        if namespace.is_empty() || namespace.chars().any(|c| c.is_ascii_control()) {
            return Err(LockError::Config(format!(
                "redis namespace {namespace:?} must be non-empty and free of control characters"
            )));
        }
        Ok(KeyLayout {
            namespace: namespace.to_owned(),
            encoded_namespace: encode(namespace, &['%', '{', '}', ':']),
        })
    }

    /// The namespace as given.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The hash tag shared by a key's lock and counter: `{ns:key}`.
    pub fn tag(&self, key: &Key) -> String {
        let mut tag = String::with_capacity(self.encoded_namespace.len() + key.as_str().len() + 3);
        tag.push('{');
        tag.push_str(&self.encoded_namespace);
        tag.push(':');
        tag.push_str(&encode(key.as_str(), &['%', '{', '}']));
        tag.push('}');
        tag
    }

    /// The Redis key holding the lock (value: owner token, with a PX TTL).
    pub fn lock_key(&self, key: &Key) -> String {
        self.tag(key) + ":lock"
    }

    /// The Redis key holding the per-key fencing counter (never deleted).
    pub fn fence_key(&self, key: &Key) -> String {
        self.tag(key) + ":fence"
    }

    /// The channel the release script publishes on; the payload is the
    /// released lock key's name ([`KeyLayout::lock_key`]).
    pub fn channel(&self) -> String {
        format!("{}:released", self.encoded_namespace)
    }
}

/// Percent-encodes the characters in `special` (all ASCII), leaving the rest.
fn encode(raw: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if special.contains(&c) {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn braces_and_percent_signs_cannot_forge_another_name() {
        let layout = KeyLayout::new("ns").unwrap();
        let names = ["a}b", "a%7Db", "a%257Db", "{a}", "%7Ba%7D", "a", "a:b"];
        let encoded: std::collections::HashSet<_> =
            names.iter().map(|n| layout.lock_key(&key(n))).collect();
        assert_eq!(
            encoded.len(),
            names.len(),
            "two keys shared a name: {encoded:?}"
        );
        for name in encoded {
            let tag_end = name.find('}').unwrap();
            assert_eq!(&name[tag_end..], "}:lock", "hash tag of {name} ends early");
        }
    }

    #[test]
    fn namespaces_with_colons_do_not_collide_with_keys() {
        let a = KeyLayout::new("a:b").unwrap().lock_key(&key("c"));
        let b = KeyLayout::new("a").unwrap().lock_key(&key("b:c"));
        assert_ne!(a, b);
    }

    #[test]
    fn empty_namespace_is_a_config_error() {
        assert!(matches!(KeyLayout::new(""), Err(LockError::Config(_))));
        assert!(matches!(KeyLayout::new("a\nb"), Err(LockError::Config(_))));
    }
}
