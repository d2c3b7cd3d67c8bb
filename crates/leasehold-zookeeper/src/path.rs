//! How keys and contenders are named in ZooKeeper.
//!
//! A key becomes ONE path segment under the namespace: ASCII letters, digits,
//! `-` and `_` stay as they are, every other byte of the key's UTF-8 becomes
//! `%XX` (upper-case hex). The mapping is injective and reversible, the result
//! never contains `/`, never is `.` or `..` (dots are escaped), and uses only
//! characters ZooKeeper accepts in a path (no surrogates, no control or
//! private-use characters), so every legal [`Key`] works.
//!
//! A contender is an ephemeral sequential child of the key's node named
//! `{owner token hex}-lock-{sequence}`: the owner token in the name lets a
//! client find its own node again when the reply to its create was lost
//! (ZOOKEEPER-1262; Curator's "protected" mode does the same with a UUID).

use leasehold_core::{Key, OwnerToken};

/// The part between the owner token and ZooKeeper's sequence suffix.
pub(crate) const MARK: &str = "-lock-";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The key as one ZooKeeper path segment.
pub(crate) fn encode_key(key: &Key) -> String {
    let mut out = String::with_capacity(key.as_str().len());
    for &byte in key.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
    }
    out
}

/// The key a segment made by [`encode_key`] stands for (`None` for a segment
/// it cannot have made).
pub(crate) fn decode_key(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = segment.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| HEX.contains(&b)) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The mark of a reader's node of a reader–writer lock.
pub(crate) const READ_MARK: &str = "-read-";
/// The mark of a writer's node of a reader–writer lock.
pub(crate) const WRITE_MARK: &str = "-write-";
/// The mark of a permit's node of a semaphore.
pub(crate) const PERMIT_MARK: &str = "-lease-";

/// The name prefix of `owner`'s contender node; ZooKeeper appends the sequence.
pub(crate) fn contender_prefix(owner: &OwnerToken) -> String {
    node_prefix(owner, MARK)
}

/// The name prefix of `owner`'s node with `mark` (one of the marks above).
pub(crate) fn node_prefix(owner: &OwnerToken, mark: &str) -> String {
    format!("{}{mark}", owner.to_hex())
}

/// One contender for a key, parsed from its node name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contender {
    /// The node's name (not its path).
    pub name: String,
    /// ZooKeeper's sequence number: the queue position.
    pub sequence: i64,
    /// A mutex's or a writer's node: readers wait for it.
    pub exclusive: bool,
}

impl Contender {
    /// Parses `{32 hex}{mark}{digits}` (any mark above); anything else is
    /// not ours to judge.
    pub fn parse(name: &str) -> Option<Contender> {
        let (owner, rest) = name.split_at_checked(32)?;
        if !owner.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (mark, digits) = [MARK, READ_MARK, WRITE_MARK, PERMIT_MARK]
            .into_iter()
            .find_map(|mark| Some((mark, rest.strip_prefix(mark)?)))?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Contender {
            name: name.to_owned(),
            sequence: digits.parse().ok()?,
            exclusive: mark == MARK || mark == WRITE_MARK,
        })
    }

    /// Whether this node carries `owner`'s token.
    pub fn is_owned_by(&self, owner: &OwnerToken) -> bool {
        self.name.starts_with(&owner.to_hex())
    }

    /// The first 8 hex digits of the owner token (for `LockInfo`).
    pub fn owner_hint(&self) -> String {
        self.name[..8].to_owned()
    }
}

/// The contenders among `children`, in queue order (lowest sequence first).
pub(crate) fn queue(children: &[String]) -> Vec<Contender> {
    let mut contenders: Vec<Contender> = children
        .iter()
        .filter_map(|c| Contender::parse(c))
        .collect();
    contenders.sort_by_key(|c| c.sequence);
    contenders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn awkward_keys_become_one_valid_segment_and_round_trip() {
        for name in [
            "/",
            "..",
            ".",
            "a/b/../c",
            "with space",
            "100%",
            "%41",
            "A",
            "🔒émoji",
            "'; DROP TABLE locks; --",
            "redis.call('del', KEYS[1])",
            "\u{fff0}\u{e000}\u{80}",
        ] {
            let segment = encode_key(&key(name));
            assert!(
                !segment.contains('/'),
                "{name:?} -> {segment:?} has a slash"
            );
            assert!(segment != "." && segment != "..", "{name:?} -> {segment:?}");
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_%".contains(&b)),
                "{name:?} -> {segment:?} has characters ZooKeeper may refuse"
            );
            assert_eq!(decode_key(&segment).as_deref(), Some(name));
        }
    }

    #[test]
    fn distinct_keys_never_share_a_segment() {
        let names = [
            "%41", "A", "a", "%2541", "a b", "a%20b", "a+b", "a_b", "a-b",
        ];
        let segments: std::collections::HashSet<String> =
            names.iter().map(|n| encode_key(&key(n))).collect();
        assert_eq!(segments.len(), names.len(), "{segments:?}");
    }

    #[test]
    fn longest_key_fits_zookeeper_path_limits() {
        let longest = key(&"é".repeat(512));
        assert_eq!(encode_key(&longest).len(), 3 * 1024);
    }

    #[test]
    fn contenders_sort_by_sequence_and_foreign_children_are_ignored() {
        let a = OwnerToken::from_bytes([1; 16]);
        let b = OwnerToken::from_bytes([2; 16]);
        let children = vec![
            format!("{}0000000010", contender_prefix(&a)),
            "stray-node".to_owned(),
            format!("{}0000000002", contender_prefix(&b)),
            format!("{}-lock-", a.to_hex()),
        ];
        let queue = queue(&children);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue[0].sequence, 2);
        assert!(queue[0].is_owned_by(&b) && !queue[0].is_owned_by(&a));
        assert_eq!(queue[1].owner_hint(), a.short());
    }

    #[test]
    fn reader_writer_and_permit_nodes_parse_with_their_side() {
        let a = OwnerToken::from_bytes([1; 16]);
        let b = OwnerToken::from_bytes([2; 16]);
        let children = vec![
            format!("{}0000000003", node_prefix(&a, READ_MARK)),
            format!("{}0000000001", node_prefix(&b, WRITE_MARK)),
            format!("{}0000000002", node_prefix(&b, PERMIT_MARK)),
            format!("{}-reader-0000000004", a.to_hex()),
        ];
        let queue = queue(&children);
        let sides: Vec<(i64, bool)> = queue.iter().map(|c| (c.sequence, c.exclusive)).collect();
        assert_eq!(sides, [(1, true), (2, false), (3, false)]);
        assert!(queue[2].is_owned_by(&a) && !queue[2].is_owned_by(&b));
    }
}
