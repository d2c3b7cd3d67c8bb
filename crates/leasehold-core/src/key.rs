//! Validated lock names.

use std::fmt;

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Which rule a rejected key broke. Each rule is checked once, here; backends
/// never see an invalid key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRule {
    /// The key was empty.
    #[error("a key must not be empty")]
    Empty,
    /// The key was longer than [`MAX_KEY_BYTES`].
    #[error("a key must be at most {MAX_KEY_BYTES} bytes of UTF-8, this one has {0}")]
    TooLong(usize),
    /// The key contained NUL or another ASCII control character.
    #[error("a key must not contain control characters; found {0:?} at byte {1}")]
    ControlCharacter(char, usize),
}

/// A validated lock name.
///
/// Rules: non-empty; at most 1024 bytes of UTF-8; no NUL or other ASCII
/// control character (U+0000–U+001F, U+007F). Everything else is legal:
/// slashes, spaces, quotes, `%`, emoji, SQL and Lua metacharacters. Each
/// backend encodes the key for its store so that two different keys never
/// share a lock (a backend that must hash, like Postgres advisory ids, says so
/// and can only cause false contention).
///
/// ```
/// use leasehold_core::Key;
/// let key = Key::new("stock:sku-42").unwrap();
/// assert_eq!(key.as_str(), "stock:sku-42");
/// assert!(Key::new("").is_err());
/// assert!(Key::new("a\0b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Checks the rules and wraps the name.
    pub fn new(name: impl Into<String>) -> Result<Self, KeyRule> {
        let name = name.into();
        Self::check(&name)?;
        Ok(Key(name))
    }

    /// Checks `name` against the key rules without allocating.
    pub fn check(name: &str) -> Result<(), KeyRule> {
        if name.is_empty() {
            return Err(KeyRule::Empty);
        }
        if name.len() > MAX_KEY_BYTES {
            return Err(KeyRule::TooLong(name.len()));
        }
        if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_ascii_control()) {
            return Err(KeyRule::ControlCharacter(c, at));
        }
        Ok(())
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's bytes: the canonical order of multi-lock acquisition.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The key's class for adaptive TTL: the part before the first `:`, or
    /// the whole key.
    pub fn default_class(&self) -> &str {
        self.0.split(':').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyRule;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

impl TryFrom<String> for Key {
    type Error = KeyRule;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

/// Anything that names a key: `&str`, `String`, `Key`, `&Key`.
pub trait IntoKey {
    /// Validates (if needed) and converts; a name that breaks a key rule
    /// gives that [`KeyRule`] (a `LockError::InvalidKey` through `?`).
    fn into_key(self) -> Result<Key, KeyRule>;
}

impl IntoKey for Key {
    fn into_key(self) -> Result<Key, KeyRule> {
        Ok(self)
    }
}
impl IntoKey for &Key {
    fn into_key(self) -> Result<Key, KeyRule> {
        Ok(self.clone())
    }
}
impl IntoKey for &str {
    fn into_key(self) -> Result<Key, KeyRule> {
        Key::new(self)
    }
}
impl IntoKey for String {
    fn into_key(self) -> Result<Key, KeyRule> {
        Key::new(self)
    }
}
impl IntoKey for &String {
    fn into_key(self) -> Result<Key, KeyRule> {
        Key::new(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_rejected() {
        assert_eq!(Key::new(""), Err(KeyRule::Empty));
    }

    #[test]
    fn key_longer_than_limit_is_rejected_and_limit_is_accepted() {
        assert!(Key::new("x".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            Key::new("x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyRule::TooLong(MAX_KEY_BYTES + 1))
        );
        // The limit is bytes, not characters: 257 four-byte emoji are 1028 bytes.
        assert_eq!(Key::new("🔒".repeat(257)), Err(KeyRule::TooLong(1028)));
    }

    #[test]
    fn control_characters_are_rejected_with_position() {
        assert_eq!(Key::new("a\0b"), Err(KeyRule::ControlCharacter('\0', 1)));
        assert_eq!(Key::new("ab\n"), Err(KeyRule::ControlCharacter('\n', 2)));
        assert_eq!(
            Key::new("\u{7f}"),
            Err(KeyRule::ControlCharacter('\u{7f}', 0))
        );
    }

    #[test]
    fn awkward_but_legal_keys_are_accepted() {
        for name in [
            "a/b/c",
            "with space",
            "'; DROP TABLE locks; --",
            "%_\\",
            "redis.call('del', KEYS[1])",
            "🔒émoji",
            "..",
            "/",
        ] {
            assert!(Key::new(name).is_ok(), "{name:?} should be a legal key");
        }
    }

    #[test]
    fn default_class_is_prefix_before_first_colon() {
        assert_eq!(Key::new("stock:42:x").unwrap().default_class(), "stock");
        assert_eq!(Key::new("plain").unwrap().default_class(), "plain");
    }
}
