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
        // One allocation, not one per byte: it is on every grant and release.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for byte in self.0 {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
        hex
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
///
/// Tokens are per key and per store: two keys' tokens are not comparable,
/// and moving a resource to another store (or another namespace) starts a
/// new sequence, so reset the resource's high-water mark when you switch.
///
/// Applying it, in SQL (the write lands only if no newer holder wrote; zero
/// rows updated means this holder is stale and must stop):
///
/// ```sql
/// UPDATE accounts SET balance = $1, fence = $2
///  WHERE id = $3 AND fence <= $2
/// ```
///
/// and over HTTP, as a header the service compares with the highest it saw
/// for the resource (`Fencing-Token: 42`; answer `409 Conflict` when lower).
/// `examples/fenced_postgres.rs` runs the SQL version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The number as an `i64` (SQL `BIGINT`), or `None` above `i64::MAX`
    /// (no store here comes near it: a counter bumped a million times a
    /// second takes 292,000 years).
    ///
    /// ```
    /// use leasehold_core::FencingToken;
    /// assert_eq!(FencingToken(42).as_i64(), Some(42));
    /// assert_eq!(FencingToken(u64::MAX).as_i64(), None);
    /// ```
    pub fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
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
        let known = OwnerToken::from_bytes([
            0x00, 0x01, 0x0f, 0x10, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xfe, 0xff, 0x12, 0x34, 0x56,
            0x78, 0x9a,
        ]);
        assert_eq!(known.to_hex(), "00010f107f80abcdeffeff123456789a");
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
