//! Owner tokens (the proof of ownership) and fencing tokens (the order of
//! ownership).

use std::fmt;

/// 128 random bits from the OS CSPRNG, drawn fresh for every acquisition.
///
/// It is the only proof of ownership: release and extend compare it in the
/// store. Its `Debug` and `Display` show only the first 8 hex digits, so logs
/// never carry a full token; [`OwnerToken::to_hex`] gives the full value for
/// the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken([u8; 16]);

impl OwnerToken {
    /// Draws a fresh token from the OS CSPRNG.
    ///
    /// # Panics
    /// Only if the operating system has no working random source, in which
    /// case no lock could be safe.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source failed");
        OwnerToken(bytes)
    }

    /// Wraps known bytes (tests, and backends reading a token back).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        OwnerToken(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// All 32 lowercase hex digits, as stores keep it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits back into a token.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(OwnerToken(bytes))
    }

    /// The first 8 hex digits: enough to tell holders apart in a log, useless
    /// as proof of ownership.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_owned()
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({}…)", self.short())
    }
}

impl fmt::Display for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.short())
    }
}

/// A number that orders the holders of one key.
///
/// With [`Fencing::Strict`](crate::Fencing::Strict), every acquisition of a key
/// gets a token strictly greater than every token handed out before for that
/// key, across releases, expiries and client crashes. A resource that keeps the
/// highest token it accepted and rejects lower ones stays safe when a paused
/// holder wakes up after losing its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tokens_are_distinct_and_round_trip_through_hex() {
        let a = OwnerToken::generate();
        let b = OwnerToken::generate();
        assert_ne!(a, b, "two 128-bit draws collided");
        assert_eq!(OwnerToken::from_hex(&a.to_hex()), Some(a));
        assert_eq!(a.to_hex().len(), 32);
        assert_eq!(OwnerToken::from_hex("zz"), None);
        assert_eq!(OwnerToken::from_hex(&"é".repeat(16)), None);
    }

    #[test]
    fn logs_never_show_the_full_owner_token() {
        let token = OwnerToken::generate();
        let full = token.to_hex();
        assert!(!format!("{token:?}").contains(&full));
        assert!(!format!("{token}").contains(&full));
    }
}
