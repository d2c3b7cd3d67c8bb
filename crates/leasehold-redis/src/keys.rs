//! How a namespace and a [`Key`] become Redis key and channel names.

use std::fmt::Write;

use leasehold_core::{Key, LockError};

/// The Redis names of one namespace: per lock key a lock key and a fencing
/// counter key that share a cluster hash slot, and one release channel.
///
/// Layout, for namespace `ns` and key `k`:
/// - lock: `{ns:k}:lock` (value: `<owner token> <acquired ms> <holder
///   label>`, PX TTL; see [`scripts`](crate::scripts))
/// - fencing counter: `{ns:k}:fence` (an integer, never deleted, no TTL)
/// - release channel: `ns:released` (payload: the released lock key's name);
///   on a Redis Cluster the key's shard channel `{ns:k}:released` instead
/// - the reader–writer lock `k` (independent of the mutex `k`):
///   `{ns:k}:rw:writer` (the writer's owner token, PX TTL),
///   `{ns:k}:rw:readers` and `{ns:k}:rw:waiting` (sorted sets of owner
///   tokens scored by their expiry in server milliseconds: the readers and
///   the waiting writers), `{ns:k}:rw:fence` (its own counter, never
///   deleted); see [`scripts::RW_ACQUIRE_SRC`](crate::scripts::RW_ACQUIRE_SRC)
/// - the semaphore `k`: `{ns:k}:sem:holders` (sorted set of owner tokens
///   scored by expiry) and `{ns:k}:sem:fence`
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
        tag.push_str(&encode(key.as_str(), KEY_SPECIAL));
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

    /// A Redis name of the reader–writer lock or semaphore of `key`:
    /// `{ns:key}:<part>` (`rw:writer`, `rw:readers`, `rw:waiting`,
    /// `rw:fence`, `sem:holders`, `sem:fence`). Never ends in `:lock`, so
    /// `list` and `key_of` never see it.
    ///
    /// ```
    /// use leasehold_core::Key;
    /// use leasehold_redis::KeyLayout;
    /// let layout = KeyLayout::new("app").unwrap();
    /// let key = Key::new("pool").unwrap();
    /// assert_eq!(layout.shared_key(&key, "sem:holders"), "{app:pool}:sem:holders");
    /// ```
    pub fn shared_key(&self, key: &Key, part: &str) -> String {
        self.tag(key) + ":" + part
    }

    /// The `SCAN MATCH` pattern of the lock keys of this namespace whose key
    /// starts with `prefix` (byte-wise: the encoding keeps prefixes). Glob
    /// metacharacters of the namespace and prefix are escaped, so they match
    /// only themselves.
    ///
    /// ```
    /// use leasehold_redis::KeyLayout;
    /// let layout = KeyLayout::new("app*").unwrap();
    /// assert_eq!(layout.scan_pattern("jobs:[a]"), r"{app\*:jobs:\[a\]*}:lock");
    /// ```
    pub fn scan_pattern(&self, prefix: &str) -> String {
        let mut literal = String::with_capacity(self.encoded_namespace.len() + prefix.len() + 2);
        literal.push('{');
        literal.push_str(&self.encoded_namespace);
        literal.push(':');
        literal.push_str(&encode(prefix, KEY_SPECIAL));
        let mut pattern = String::with_capacity(literal.len() + 8);
        for c in literal.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("*}:lock");
        pattern
    }

    /// The key whose lock key (in this namespace) is `name`, or `None` for
    /// any other Redis name (a counter, another namespace, a foreign key).
    pub fn key_of(&self, name: &[u8]) -> Option<Key> {
        let head = format!("{{{}:", self.encoded_namespace);
        let encoded = name
            .strip_prefix(head.as_bytes())?
            .strip_suffix(b"}:lock")?;
        let key = Key::new(String::from_utf8(decode(encoded)?).ok()?).ok()?;
        // Only the one encoding of a key is its lock (`%7b` is not `%7B`).
        (self.lock_key(&key).as_bytes() == name).then_some(key)
    }

    /// The channel the release script publishes on; the payload is the
    /// released lock key's name ([`KeyLayout::lock_key`]).
    pub fn channel(&self) -> String {
        format!("{}:released", self.encoded_namespace)
    }

    /// The shard channel of `key`'s releases on a Redis Cluster,
    /// `{ns:key}:released`: under the key's hash tag, so it lives in the
    /// key's slot, and the release scripts `SPUBLISH` on it (a channel
    /// name starting with `{` is a shard channel to them; [`channel`]
    /// never starts with one, since the namespace's `{` is encoded).
    ///
    /// [`channel`]: KeyLayout::channel
    ///
    /// ```
    /// use leasehold_core::Key;
    /// use leasehold_redis::KeyLayout;
    /// let layout = KeyLayout::new("app").unwrap();
    /// assert_eq!(layout.shard_channel(&Key::new("a").unwrap()), "{app:a}:released");
    /// ```
    pub fn shard_channel(&self, key: &Key) -> String {
        self.tag(key) + ":released"
    }
}

/// The characters percent-encoded in a key.
const KEY_SPECIAL: &[char] = &['%', '{', '}'];

/// Undoes [`encode`]: `%XX` becomes the byte `XX`; `None` for a malformed
/// escape.
fn decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hex = [*bytes.next()?, *bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
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
    fn lock_names_decode_back_to_their_key_and_nothing_else_does() {
        let layout = KeyLayout::new("n{s}:%").unwrap();
        for name in ["a", "a}b", "%7B", "sp ace", "é🔒", "x:*?[]\\"] {
            let k = key(name);
            assert_eq!(layout.key_of(layout.lock_key(&k).as_bytes()), Some(k));
        }
        let k = key("a");
        assert_eq!(layout.key_of(layout.fence_key(&k).as_bytes()), None);
        let other = KeyLayout::new("n").unwrap();
        assert_eq!(other.key_of(layout.lock_key(&k).as_bytes()), None);
        assert_eq!(layout.key_of(b"{n%7Bs%7D%3A%25:a%7b}:lock"), None);
        assert_eq!(layout.key_of(b"{n%7Bs%7D%3A%25:a%7}:lock"), None);
    }

    #[test]
    fn empty_namespace_is_a_config_error() {
        assert!(matches!(KeyLayout::new(""), Err(LockError::Config(_))));
        assert!(matches!(KeyLayout::new("a\nb"), Err(LockError::Config(_))));
    }
}
