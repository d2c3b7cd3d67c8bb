//! The operator's steps on one server: reading holders (one script call for
//! any number of keys), paging through the held keys with `SCAN`, and the
//! force release; and [`ScanCursor`], where a listing stands, shared with
//! Redlock.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use leasehold_core::{HeldLock, Key, ListPage, ListQuery, LockError, LockInfo};

use crate::scripts;
use crate::store::{RedisNode, holder_info};

/// The most lock keys one `SCAN` call is asked to visit (`COUNT`), whatever
/// the page size: a page reads at most about this many holders in one
/// script call, so a huge `limit` never blocks the server.
pub const MAX_SCAN_COUNT: usize = 1_000;

/// A holder as the inspect and force-release scripts answer it:
/// `(owner_prefix, acquired_ms, label, pttl, counter)`.
type HolderReply = (String, i64, Vec<u8>, i64, i64);

impl RedisNode {
    /// The holder of `key`: owner prefix, holder label, when it was taken
    /// (server time), remaining TTL, fencing token. Read-only; cancel safe.
    pub async fn inspect_raw(&self, key: &Key) -> Result<Option<LockInfo>, LockError> {
        let mut found = self.inspect_many_raw(std::slice::from_ref(key)).await?;
        Ok(found.pop().flatten())
    }

    /// The holders of `keys` (as [`RedisNode::inspect_raw`] tells them), in
    /// order, with one script call. Read-only; cancel safe.
    pub async fn inspect_many_raw(&self, keys: &[Key]) -> Result<Vec<Option<LockInfo>>, LockError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|key| self.layout().lock_key(key)).collect();
        let mut found = vec![None; keys.len()];
        for group in self.slot_groups(&names) {
            let mut invocation = scripts::inspect().prepare_invoke();
            for &i in &group {
                invocation
                    .key(names[i].as_str())
                    .key(self.layout().fence_key(&keys[i]));
            }
            let replies: Vec<Option<HolderReply>> = self
                .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            if replies.len() != group.len() {
                return Err(LockError::backend(
                    crate::NAME,
                    format!(
                        "inspect script answered {} holders for {} keys",
                        replies.len(),
                        group.len()
                    ),
                ));
            }
            for (&i, reply) in group.iter().zip(replies) {
                found[i] = reply.map(held);
            }
        }
        Ok(found)
    }

    /// One `SCAN cursor MATCH <this namespace's locks under prefix> COUNT
    /// count` (count capped at [`MAX_SCAN_COUNT`]): the next cursor (0 when
    /// the scan is complete) and the keys of the lock names found, which may
    /// have expired since or repeat ones found before (`SCAN`'s own
    /// guarantees). Never blocks the server; read-only; cancel safe.
    pub async fn scan_raw(
        &self,
        cursor: u64,
        prefix: &str,
        count: usize,
    ) -> Result<(u64, Vec<Key>), LockError> {
        let scan = scan_cmd(self.layout(), cursor, prefix, count);
        let (next, names): (u64, Vec<Vec<u8>>) = self
            .call(|mut conn| async move { scan.query_async(&mut conn).await })
            .await?;
        let keys = names
            .iter()
            .filter_map(|name| self.layout().key_of(name))
            .collect();
        Ok((next, keys))
    }

    /// Deletes `key`'s lock whoever holds it, advances its fencing counter
    /// past the evicted token, publishes the release (waiters wake) and
    /// writes `reason` to the server's log, in one script
    /// ([`scripts::FORCE_RELEASE_SRC`]). Returns the evicted holder, `None`
    /// when the key was free (then nothing changes). Cancel safety: dropped,
    /// it may or may not have run.
    pub async fn force_release_raw(
        &self,
        key: &Key,
        reason: &str,
    ) -> Result<Option<LockInfo>, LockError> {
        let (lock, fence) = (self.layout().lock_key(key), self.layout().fence_key(key));
        let (channel, reason) = (self.release_channel(key), reason.to_owned());
        let reply: Option<HolderReply> = self
            .call(|mut conn| async move {
                scripts::force_release()
                    .key(lock)
                    .key(fence)
                    .arg(channel)
                    .arg(reason)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.map(held))
    }
}

/// `SCAN cursor MATCH <the namespace's locks under prefix> COUNT count`
/// (count capped at [`MAX_SCAN_COUNT`]).
pub(crate) fn scan_cmd(
    layout: &crate::KeyLayout,
    cursor: u64,
    prefix: &str,
    count: usize,
) -> redis::Cmd {
    let mut scan = redis::cmd("SCAN");
    scan.arg(cursor)
        .arg("MATCH")
        .arg(layout.scan_pattern(prefix))
        .arg("COUNT")
        .arg(count.clamp(1, MAX_SCAN_COUNT));
    scan
}

/// The holder of one script reply: an empty label or an unknown grant time
/// (a lock written by an older version) is left out.
fn held((prefix, acquired_ms, label, pttl, counter): HolderReply) -> LockInfo {
    let label = (!label.is_empty()).then(|| String::from_utf8_lossy(&label).into_owned());
    let acquired_at = u64::try_from(acquired_ms)
        .ok()
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    holder_info(prefix, pttl, counter)
        .with_metadata(label)
        .with_acquired_at(acquired_at)
}

/// One page of the single server's listing: the held keys its next `SCAN`
/// step finds (after any found before and not shown yet), read in one script
/// call; expired ones are left out.
pub(crate) async fn list(node: &RedisNode, query: &ListQuery) -> Result<ListPage, LockError> {
    let limit = query.limit.max(1);
    // One server, or every master of a cluster (sorted, so a cursor's
    // positions keep their meaning while the cluster's masters do).
    let masters = node.masters().await?;
    let mut cursor = ScanCursor::parse(query.cursor.as_deref(), masters.len())?;
    let mut found = cursor.take_pending(limit);
    for (server, addr) in masters.iter().enumerate() {
        if found.len() >= limit {
            break;
        }
        if let Some(at) = cursor.scan_at(server) {
            let (next, keys) = node.scan_on(addr, at, &query.prefix, limit).await?;
            cursor.advance(server, next);
            found.extend(keys.into_iter().map(|key| (server, key)));
        }
    }
    let keys: Vec<Key> = found.iter().map(|(_, key)| key.clone()).collect();
    let holders = node.inspect_many_raw(&keys).await?;
    let held = found
        .into_iter()
        .zip(holders)
        .filter_map(|((server, key), holder)| Some((server, key, holder?)))
        .collect();
    Ok(cursor.finish(held, limit))
}

/// Where one server's `SCAN` stands in a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanState {
    /// Continue from this `SCAN` cursor (0: not started).
    At(u64),
    /// The scan is complete.
    Done,
    /// The server failed during the listing; its scan was given up (its
    /// keys are found through the other servers, where a majority holds
    /// them).
    Abandoned,
}

/// Where a listing over one or more servers stands: each server's `SCAN`
/// cursor, and the held keys found but not shown yet (one `SCAN` call may
/// find more than a page holds). Its text is the opaque
/// [`ListPage::next`]: the servers' states separated by `,` (a `SCAN`
/// cursor, `done` or `abandoned`), then one line per key not shown yet,
/// `<server> <key>` (keys hold no line breaks). For one server with nothing
/// pending it is just the `SCAN` cursor.
///
/// ```
/// use leasehold_redis::{ScanCursor, ScanState};
/// let cursor = ScanCursor::parse(Some("17,done"), 2).unwrap();
/// assert_eq!(cursor.scans, [ScanState::At(17), ScanState::Done]);
/// assert_eq!(cursor.to_next().as_deref(), Some("17,done"));
/// assert!(ScanCursor::parse(Some("17"), 2).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanCursor {
    /// Each server's scan, in server order.
    pub scans: Vec<ScanState>,
    /// Held keys found and not shown yet, each with the index of the server
    /// whose scan found it, in the order to show them.
    pub pending: VecDeque<(usize, Key)>,
}

impl ScanCursor {
    /// The cursor of a listing over `servers` servers: `None` starts one;
    /// text this type did not make (or made for another number of servers)
    /// is [`LockError::Config`].
    pub fn parse(text: Option<&str>, servers: usize) -> Result<Self, LockError> {
        let Some(text) = text else {
            return Ok(ScanCursor {
                scans: vec![ScanState::At(0); servers],
                pending: VecDeque::new(),
            });
        };
        let bad = || LockError::Config(format!("{text:?} is not a redis listing cursor"));
        let mut lines = text.split('\n');
        let scans = lines
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|state| match state {
                "done" => Ok(ScanState::Done),
                "abandoned" => Ok(ScanState::Abandoned),
                at => at.parse().map(ScanState::At).map_err(|_| bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if scans.len() != servers {
            return Err(bad());
        }
        let pending = lines
            .map(|line| {
                let (server, key) = line.split_once(' ').ok_or_else(bad)?;
                let server: usize = server.parse().map_err(|_| bad())?;
                let key = Key::new(key).map_err(|_| bad())?;
                if server >= servers {
                    return Err(bad());
                }
                Ok((server, key))
            })
            .collect::<Result<_, _>>()?;
        Ok(ScanCursor { scans, pending })
    }

    /// The text of this cursor, `None` when the listing is over (every scan
    /// done or abandoned, nothing pending).
    pub fn to_next(&self) -> Option<String> {
        let scanning = self.scans.iter().any(|s| matches!(s, ScanState::At(_)));
        if !scanning && self.pending.is_empty() {
            return None;
        }
        let states: Vec<String> = self
            .scans
            .iter()
            .map(|state| match state {
                ScanState::At(at) => at.to_string(),
                ScanState::Done => "done".into(),
                ScanState::Abandoned => "abandoned".into(),
            })
            .collect();
        let mut text = states.join(",");
        for (server, key) in &self.pending {
            text.push('\n');
            text.push_str(&server.to_string());
            text.push(' ');
            text.push_str(key.as_str());
        }
        Some(text)
    }

    /// Takes up to `limit` keys not shown yet, to be shown first.
    pub fn take_pending(&mut self, limit: usize) -> Vec<(usize, Key)> {
        let take = limit.min(self.pending.len());
        self.pending.drain(..take).collect()
    }

    /// Where server `server`'s scan goes on, if this page scans it: only
    /// once every key found before has been shown, and while its scan runs.
    pub fn scan_at(&self, server: usize) -> Option<u64> {
        match self.scans.get(server) {
            Some(ScanState::At(at)) if self.pending.is_empty() => Some(*at),
            _ => None,
        }
    }

    /// Records the cursor `SCAN` answered for `server` (0: complete).
    pub fn advance(&mut self, server: usize, next: u64) {
        if let Some(state) = self.scans.get_mut(server) {
            *state = if next == 0 {
                ScanState::Done
            } else {
                ScanState::At(next)
            };
        }
    }

    /// Gives up `server`'s scan (it failed).
    pub fn abandon(&mut self, server: usize) {
        if let Some(state) = self.scans.get_mut(server) {
            *state = ScanState::Abandoned;
        }
    }

    /// The page of the held keys found, in order: the first `limit` are
    /// shown, the rest wait for the next page.
    pub fn finish(mut self, held: Vec<(usize, Key, LockInfo)>, limit: usize) -> ListPage {
        let mut held = held.into_iter();
        let locks = held
            .by_ref()
            .take(limit)
            .map(|(_, key, info)| HeldLock {
                key: key.as_str().to_owned(),
                info,
            })
            .collect();
        for (i, (server, key, _)) in held.enumerate() {
            self.pending.insert(i, (server, key));
        }
        ListPage {
            locks,
            next: self.to_next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn a_cursor_survives_its_text_with_odd_keys_pending() {
        let mut cursor = ScanCursor::parse(None, 3).unwrap();
        cursor.advance(0, 42);
        cursor.advance(1, 0);
        cursor.abandon(2);
        cursor.pending.push_back((1, key("a b,c\u{e9}")));
        cursor.pending.push_back((0, key("x")));
        let text = cursor.to_next().unwrap();
        assert_eq!(ScanCursor::parse(Some(&text), 3).unwrap(), cursor);
        for bad in [
            "",
            "x,done,done",
            "1,2",
            "1,2,3\n3 k",
            "1,2,3\n0",
            "1,2,3\n0 ",
        ] {
            assert!(
                matches!(ScanCursor::parse(Some(bad), 3), Err(LockError::Config(_))),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn a_page_holds_at_most_its_limit_and_keeps_the_rest_for_the_next() {
        let cursor = ScanCursor::parse(Some("7"), 1).unwrap();
        let found = ["a", "b", "c"]
            .into_iter()
            .map(|name| (0, key(name), LockInfo::default()))
            .collect();
        let page = cursor.finish(found, 2);
        assert_eq!(page.locks.len(), 2);
        let mut next = ScanCursor::parse(page.next.as_deref(), 1).unwrap();
        assert_eq!(
            next.scan_at(0),
            None,
            "the kept key comes before scanning on"
        );
        assert_eq!(next.take_pending(2), [(0, key("c"))]);
        assert_eq!(next.scan_at(0), Some(7));
        next.advance(0, 0);
        assert_eq!(next.to_next(), None);
    }
}
