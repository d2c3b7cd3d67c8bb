//! The lock item: its attribute names and a decoder that never panics.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::AttributeValue;
use leasehold_core::{FencingToken, LockError, LockInfo, OwnerToken};

use crate::error::NAME;

/// Owner token of the current holder (32 hex digits); absent while free.
pub(crate) const OWNER: &str = "owner";
/// Lease duration of the current holder in milliseconds; absent while free.
pub(crate) const LEASE_MS: &str = "lease_ms";
/// Record version number: 128 random bits, rewritten by every write.
pub(crate) const RVN: &str = "rvn";
/// Fencing counter: bumped by every acquisition, never reset.
pub(crate) const FENCE: &str = "fence";
/// Untrusted holder metadata (pid, host); absent while free.
pub(crate) const HOLDER: &str = "holder";
/// When the holder took the key, in milliseconds since the epoch by the
/// *holder's* wall clock (DynamoDB has no clock of its own to ask): shown,
/// never used to decide anything. Absent while free, and on items written
/// before it existed.
pub(crate) const ACQUIRED_MS: &str = "acquired_ms";

/// A decoded lock item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockItem {
    /// The holder's owner token and lease duration, or `None` while free.
    pub(crate) held: Option<(OwnerToken, Duration)>,
    pub(crate) rvn: String,
    pub(crate) fence: u64,
    pub(crate) holder: Option<String>,
    pub(crate) acquired_at: Option<SystemTime>,
}

impl LockItem {
    /// Decodes `item`, naming the attribute that is missing or of the wrong
    /// type. `what` says which item it is (for the error).
    pub(crate) fn decode(
        item: &HashMap<String, AttributeValue>,
        what: &str,
    ) -> Result<LockItem, LockError> {
        let rvn = string(item, RVN, what)?.ok_or_else(|| missing(RVN, what))?;
        let fence = number(item, FENCE, what)?.ok_or_else(|| missing(FENCE, what))?;
        let holder = string(item, HOLDER, what)?;
        let acquired_at = number(item, ACQUIRED_MS, what)?
            .and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        let held = match string(item, OWNER, what)? {
            None => None,
            Some(owner) => {
                let token = OwnerToken::from_hex(&owner).ok_or_else(|| {
                    malformed(
                        OWNER,
                        what,
                        "is not 32 hex digits (not written by leasehold)".into(),
                    )
                })?;
                let lease = number(item, LEASE_MS, what)?.ok_or_else(|| missing(LEASE_MS, what))?;
                if lease == 0 {
                    return Err(malformed(LEASE_MS, what, "is zero".into()));
                }
                Some((token, Duration::from_millis(lease)))
            }
        };
        Ok(LockItem {
            held,
            rvn,
            fence,
            holder,
            acquired_at,
        })
    }

    /// What `inspect` and `Contended` report about the holder, with the time
    /// left as this client estimates it.
    pub(crate) fn info(&self, remaining: Option<Duration>) -> Option<LockInfo> {
        let (owner, _) = self.held.as_ref()?;
        Some(
            LockInfo::new(Some(FencingToken(self.fence)), remaining)
                .with_owner(owner)
                .with_metadata(self.holder.clone())
                .with_acquired_at(self.acquired_at),
        )
    }
}

/// Reads the fencing counter from the attributes an update returned.
pub(crate) fn returned_fence(
    attributes: Option<&HashMap<String, AttributeValue>>,
    what: &str,
) -> Result<u64, LockError> {
    let empty = HashMap::new();
    number(attributes.unwrap_or(&empty), FENCE, what)?.ok_or_else(|| missing(FENCE, what))
}

fn string(
    item: &HashMap<String, AttributeValue>,
    name: &str,
    what: &str,
) -> Result<Option<String>, LockError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(value)) => Ok(Some(value.clone())),
        Some(other) => Err(malformed(
            name,
            what,
            format!("has type {}, expected a string (S)", type_name(other)),
        )),
    }
}

fn number(
    item: &HashMap<String, AttributeValue>,
    name: &str,
    what: &str,
) -> Result<Option<u64>, LockError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(value)) => value.parse::<u64>().map(Some).map_err(|_| {
            malformed(
                name,
                what,
                format!("is the number {value:?}, expected a whole number from 0 to 2^64-1"),
            )
        }),
        Some(other) => Err(malformed(
            name,
            what,
            format!("has type {}, expected a number (N)", type_name(other)),
        )),
    }
}

fn type_name(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        _ => "unknown",
    }
}

fn missing(name: &str, what: &str) -> LockError {
    malformed(name, what, "is missing".into())
}

fn malformed(name: &str, what: &str, problem: String) -> LockError {
    LockError::backend(
        NAME,
        format!("malformed lock item for {what}: attribute `{name}` {problem}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    fn held_item() -> HashMap<String, AttributeValue> {
        HashMap::from([
            (OWNER.into(), s(&OwnerToken::generate().to_hex())),
            (LEASE_MS.into(), n("1500")),
            (RVN.into(), s("abc")),
            (FENCE.into(), n("7")),
            (HOLDER.into(), s("pid=1")),
            (ACQUIRED_MS.into(), n("1700000000000")),
        ])
    }

    #[test]
    fn a_held_item_decodes() {
        let item = LockItem::decode(&held_item(), "k").expect("decodes");
        assert_eq!(item.fence, 7);
        assert_eq!(item.held.unwrap().1, Duration::from_millis(1500));
        assert_eq!(
            item.acquired_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn a_free_item_needs_no_owner_or_lease() {
        let mut map = held_item();
        map.remove(OWNER);
        map.remove(LEASE_MS);
        let item = LockItem::decode(&map, "k").expect("decodes");
        assert!(item.held.is_none());
        assert!(item.info(None).is_none());
    }

    #[test]
    fn each_broken_attribute_is_named_in_the_error() {
        let cases: Vec<(&str, Option<AttributeValue>, &str)> = vec![
            (RVN, None, "`rvn` is missing"),
            (RVN, Some(n("1")), "`rvn` has type N"),
            (FENCE, None, "`fence` is missing"),
            (FENCE, Some(s("x")), "`fence` has type S"),
            (FENCE, Some(n("-1")), "`fence` is the number"),
            (FENCE, Some(n("1.5")), "`fence` is the number"),
            (
                OWNER,
                Some(AttributeValue::Bool(true)),
                "`owner` has type BOOL",
            ),
            (OWNER, Some(s("me")), "`owner` is not 32 hex"),
            (LEASE_MS, None, "`lease_ms` is missing"),
            (LEASE_MS, Some(n("0")), "`lease_ms` is zero"),
            (HOLDER, Some(n("3")), "`holder` has type N"),
            (ACQUIRED_MS, Some(s("x")), "`acquired_ms` has type S"),
        ];
        for (name, value, expected) in cases {
            let mut map = held_item();
            match value {
                Some(value) => map.insert(name.into(), value),
                None => map.remove(name),
            };
            let err = LockItem::decode(&map, "key \"k\"").expect_err(expected);
            let text = err.to_string();
            assert!(text.contains(expected), "expected {expected:?} in {text:?}");
            assert!(!err.is_retryable(), "a malformed item is not transient");
        }
    }
}
