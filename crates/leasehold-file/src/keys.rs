//! Keys to file names: an injective encoding, and a SHA-256 name for keys
//! too long to encode.

use leasehold_core::LockKind;
use sha2::{Digest, Sha256};

/// The longest encoded key kept readable in a file name. Longer keys are
/// hashed: file names are limited to 255 bytes, and a name also carries a
/// suffix (`.state`, `.<owner>.alive`: at most 39 bytes more).
const MAX_ENCODED: usize = 180;

/// The file name stem of `key`: `k-` and the key with every byte outside
/// `[a-z0-9_-]` written `%xx` (lowercase hex), or, when that is longer than
/// 180 bytes, `h-` and the SHA-256 of the key in hex.
///
/// Injective: the `%` escape is itself escaped, so two keys never encode to
/// one `k-` name; uppercase letters are escaped too, so a case-insensitive
/// file system (macOS, Windows shares) cannot fold two keys together; `k-`
/// and `h-` names never meet. Two long keys share a lock only if their
/// SHA-256 digests are equal; that would cost false contention (the second
/// key waits for the first), never a lost exclusion, and no one knows how to
/// make it happen. Stable across versions: it is the contract between
/// processes sharing the directory.
pub fn file_stem(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len() + 2);
    encoded.push_str("k-");
    for byte in key.bytes() {
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02x}"));
        }
        if encoded.len() > MAX_ENCODED + 2 {
            return hashed(key);
        }
    }
    encoded
}

fn hashed(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// The key a `k-` stem encodes, or `None` for a hashed (`h-`) or foreign
/// name (whose key is read from its state file instead).
pub(crate) fn decode_stem(stem: &str) -> Option<String> {
    let encoded = stem.strip_prefix("k-")?;
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Bytes as lowercase hex (keys and labels inside state files).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase or uppercase hex back to bytes.
pub(crate) fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// The stem of the state of `kind`'s family for `key`: the mutex's own
/// [`file_stem`], or it behind `rw.` (reader–writer lock) or `sem.`
/// (semaphore).
pub(crate) fn family_stem(kind: LockKind, key: &str) -> String {
    let prefix = match kind {
        LockKind::Read | LockKind::Write => "rw.",
        LockKind::Permit { .. } => "sem.",
        _ => "",
    };
    format!("{prefix}{}", file_stem(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_injective_and_case_safe() {
        let keys = [
            "a", "A", "%41", "a b", "a%20b", "a/b", "é", "x.state", "k-a",
        ];
        let stems: std::collections::HashSet<String> = keys.iter().map(|k| file_stem(k)).collect();
        assert_eq!(stems.len(), keys.len());
        let folded: std::collections::HashSet<String> =
            stems.iter().map(|s| s.to_ascii_lowercase()).collect();
        assert_eq!(folded.len(), keys.len(), "two stems differ only in case");
        for key in keys {
            assert_eq!(decode_stem(&file_stem(key)).as_deref(), Some(key));
        }
    }

    #[test]
    fn long_keys_are_hashed_and_stay_distinct() {
        let a = format!("{}a", "x".repeat(1000));
        let b = format!("{}b", "x".repeat(1000));
        assert!(file_stem(&a).starts_with("h-"));
        assert_ne!(file_stem(&a), file_stem(&b));
        assert!(file_stem(&a).len() <= MAX_ENCODED + 2);
        assert_eq!(decode_stem(&file_stem(&a)), None);
        let longest_readable = "é".repeat(30);
        assert!(file_stem(&longest_readable).starts_with("k-"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(b"a\nb")).unwrap(), b"a\nb");
        assert_eq!(unhex("zz"), None);
    }
}
