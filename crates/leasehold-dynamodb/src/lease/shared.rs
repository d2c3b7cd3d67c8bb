//! Reader–writer locks and semaphores: one item per lock, apart from the
//! mutex items (its partition key starts with a control character, which no
//! namespace or key holds, so `list` and `force_release` never see it).
//!
//! A reader–writer lock's item holds
//! - `readers`: a map from each reader's owner token to its entry (`l`: its
//!   lease in ms; `v`: the entry's own version, rewritten by every renewal);
//! - `writer`: the writer's entry (with its owner token in `o`), absent
//!   while no writer holds;
//! - `waiting`: the waiting writers' registrations, keyed by the wait's
//!   token, entries of the same shape;
//!
//! a semaphore's item holds `holders` (the permits' entries, as `readers`);
//! both hold `fence`, the counter every grant bumps (never reset).
//!
//! Every grant is one `UpdateItem` whose condition is the admission rule
//! itself, on the attributes it concerns and nothing else: a reader is
//! admitted while no `writer` exists and `waiting` is empty, a writer while
//! no `writer` exists and `readers` is empty, a permit while
//! `size(holders)` is below the semaphore's permits. The store evaluates
//! the rule atomically against the item as it is, so an attempt never loses
//! a race to an unrelated write (a renewal, a release, another grant that
//! still leaves room): a refusal is a real one. Renewals and releases touch
//! only their own entry, conditioned on it existing.
//!
//! A refused attempt gets the item back (`ALL_OLD`; read when the store
//! does not return it) and judges each entry as the mutex judges a holder:
//! expired only once this client has seen the same entry version unchanged
//! for the entry's whole lease, on its monotonic clock. Expired entries are
//! removed in one write conditioned on each one's version (so a holder that
//! renewed in between is never removed), and the attempt asks again. With
//! nothing expired it is `Contended`, carrying the soonest time a blocking
//! entry may end, and the caller's wait polls.
//!
//! Decisions the issue leaves open:
//! - a writer taken with `try_acquire_kind` (no wait) may go ahead of
//!   waiting writers: they block readers, not other writers;
//! - a waiting writer's registration lives for the writer's TTL and is
//!   rewritten at least every third of it while the writer waits (see
//!   `DynamoDbBackend::acquire_kind`); one left behind by a crashed waiter
//!   is judged expired as a dead holder is;
//! - semaphores of one key with different permit counts share one item and
//!   each grant is judged by its own count.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use leasehold_core::{FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken};
use tokio::time::Instant;

use super::observations::Verdict;
use super::{Leases, new_rvn};
use crate::error::{NAME, is_condition_failed, outcome_unknown};
use crate::item::{FENCE, returned_fence};

/// A reader–writer lock's readers: owner token → entry.
const READERS: &str = "readers";
/// A reader–writer lock's writer: an entry with its owner token in `o`.
const WRITER: &str = "writer";
/// A reader–writer lock's waiting writers: the wait's token → entry.
const WAITING: &str = "waiting";
/// A semaphore's permit holders: owner token → entry.
const HOLDERS: &str = "holders";
/// An entry's fields: the writer's owner token, the lease in ms, the version.
const OWNER: &str = "o";
const LEASE: &str = "l";
const VERSION: &str = "v";
/// How many times one attempt asks again after the item changed under it
/// (it removed expired entries, created the item, or found it freed since
/// the refusal). Each round follows progress, never a lost race; past it the
/// attempt is `Contended` and the caller's wait polls.
const ROUNDS: usize = 4;

/// Which lock an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rw,
    Semaphore,
}

impl Family {
    fn of(kind: LockKind) -> Self {
        if kind.is_rw() {
            Family::Rw
        } else {
            Family::Semaphore
        }
    }

    /// The map attributes the family's item always has once created.
    fn maps(self) -> &'static [&'static str] {
        match self {
            Family::Rw => &[READERS, WAITING],
            Family::Semaphore => &[HOLDERS],
        }
    }
}

/// Where an entry lives: a map attribute (keyed by owner), or `writer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Map(&'static str),
    Writer,
}

impl Place {
    /// Where a holder of `kind` has its entry.
    fn of(kind: LockKind) -> Self {
        match kind {
            LockKind::Read => Place::Map(READERS),
            LockKind::Write => Place::Writer,
            _ => Place::Map(HOLDERS),
        }
    }

    /// Whether an entry here keeps `kind` out.
    fn blocks(self, kind: LockKind) -> bool {
        match kind {
            LockKind::Read => matches!(self, Place::Writer | Place::Map(WAITING)),
            LockKind::Write => matches!(self, Place::Writer | Place::Map(READERS)),
            _ => self == Place::Map(HOLDERS),
        }
    }
}

/// One entry as read.
#[derive(Debug)]
struct Entry {
    place: Place,
    owner: String,
    lease: Duration,
    version: String,
}

/// The item as read: its entries, and whether it has every attribute the
/// grants' conditions need (a new lock's item does not exist yet).
#[derive(Debug)]
struct State {
    entries: Vec<Entry>,
    complete: bool,
}

/// What a refused attempt makes of the item.
struct Judgement<'a> {
    /// Entries seen unchanged for their whole lease.
    expired: Vec<&'a Entry>,
    /// The live entries that keep the asked kind out: the time each has
    /// left at most.
    blocking: Vec<Duration>,
}

fn entry(lease_ms: u64, owner: Option<&str>) -> AttributeValue {
    let mut fields = HashMap::from([
        (LEASE.to_owned(), AttributeValue::N(lease_ms.to_string())),
        (VERSION.to_owned(), AttributeValue::S(new_rvn())),
    ]);
    if let Some(owner) = owner {
        fields.insert(OWNER.to_owned(), AttributeValue::S(owner.to_owned()));
    }
    AttributeValue::M(fields)
}

fn number(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn malformed(what: &str, problem: &str) -> LockError {
    LockError::backend(NAME, format!("malformed lock item for {what}: {problem}"))
}

/// Decodes one entry's fields (`owner` from the map key, else from `o`).
fn decode_entry(
    place: Place,
    owner: Option<&str>,
    value: &AttributeValue,
    what: &str,
) -> Result<Entry, LockError> {
    let attribute = match place {
        Place::Map(map) => map,
        Place::Writer => WRITER,
    };
    let bad = || {
        malformed(
            what,
            &format!("an entry of `{attribute}` is not a leasehold entry"),
        )
    };
    let AttributeValue::M(fields) = value else {
        return Err(bad());
    };
    let owner = match (owner, fields.get(OWNER)) {
        (Some(owner), _) => owner.to_owned(),
        (None, Some(AttributeValue::S(owner))) => owner.clone(),
        _ => return Err(bad()),
    };
    let lease = match fields.get(LEASE) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let Some(AttributeValue::S(version)) = fields.get(VERSION) else {
        return Err(bad());
    };
    Ok(Entry {
        place,
        owner,
        lease: Duration::from_millis(lease),
        version: version.clone(),
    })
}

impl State {
    fn decode(
        item: Option<&HashMap<String, AttributeValue>>,
        family: Family,
        what: &str,
    ) -> Result<State, LockError> {
        let Some(item) = item.filter(|item| !item.is_empty()) else {
            return Ok(State {
                entries: Vec::new(),
                complete: false,
            });
        };
        let mut entries = Vec::new();
        let mut complete = matches!(item.get(FENCE), Some(AttributeValue::N(_)));
        for &map in family.maps() {
            match item.get(map) {
                None => complete = false,
                Some(AttributeValue::M(owners)) => {
                    for (owner, value) in owners {
                        entries.push(decode_entry(Place::Map(map), Some(owner), value, what)?);
                    }
                }
                Some(_) => {
                    return Err(malformed(what, &format!("attribute `{map}` is not a map")));
                }
            }
        }
        if family == Family::Rw
            && let Some(writer) = item.get(WRITER)
        {
            entries.push(decode_entry(Place::Writer, None, writer, what)?);
        }
        Ok(State { entries, complete })
    }

    /// Whether `kind` would be admitted by this state, its expired entries
    /// aside.
    fn admits(&self, kind: LockKind, judgement: &Judgement<'_>) -> bool {
        match kind {
            LockKind::Permit { permits } => judgement.blocking.len() < permits as usize,
            _ => judgement.blocking.is_empty(),
        }
    }
}

impl Leases {
    /// The partition key of `key`'s reader–writer lock or semaphore.
    fn shared_pk(&self, key: &Key, kind: LockKind) -> String {
        let family = if kind.is_rw() { "rw" } else { "sem" };
        format!("\u{1}{family}#{}", self.store.partition_key_for(key))
    }

    /// What this client has seen of an entry is kept under this name.
    fn seen(pk: &str, entry: &Entry) -> String {
        format!("{pk}\0{}", entry.owner)
    }

    /// One attempt at `kind` on `key`; `waiter` is a waiting writer's
    /// registration, removed by the grant.
    pub(crate) async fn acquire_shared(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        lease_ms: u64,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        let family = Family::of(kind);
        let pk = self.shared_pk(key, kind);
        let what = self.store.what(key);
        let waiter = waiter.map(|w| w.to_hex());
        let owner = OwnerToken::generate();
        let mut left = None;
        for _ in 0..ROUNDS {
            let sent_at = self.clock.now();
            let refused = match self
                .grant(key, &pk, kind, &owner, lease_ms, waiter.as_deref())
                .await?
            {
                Ok(fence) => {
                    tracing::debug!(key = key.as_str(), %kind, owner = %owner, fence, "granted");
                    return Ok(Lease::new(
                        NAME,
                        key.clone(),
                        owner,
                        FencingToken(fence),
                        sent_at,
                        ttl,
                        self.drift,
                    )
                    .with_kind(kind));
                }
                Err(refused) => refused,
            };
            let item = match refused {
                Some(item) => Some(item),
                None => self.read_shared(&pk).await?,
            };
            let state = State::decode(item.as_ref(), family, &what)?;
            if !state.complete {
                self.create(&pk, family).await?;
                continue;
            }
            let judgement = self.judge(&pk, kind, &state, waiter.as_deref());
            if !judgement.expired.is_empty() && self.prune(&pk, &judgement.expired).await? {
                tracing::debug!(
                    key = key.as_str(),
                    %kind,
                    removed = judgement.expired.len(),
                    "removed entries unrenewed for their whole lease"
                );
                continue;
            }
            if state.admits(kind, &judgement) {
                // Freed between the refusal and our read: ask again.
                continue;
            }
            left = judgement.blocking.iter().min().copied();
            break;
        }
        Err(LockError::contended(
            NAME,
            key.as_str(),
            Some(LockInfo::new(None, left)),
        ))
    }

    /// The grant write: `Ok(fence)`, or `Err` with the item it was refused
    /// on when the store returned it.
    async fn grant(
        &self,
        key: &Key,
        pk: &str,
        kind: LockKind,
        owner: &OwnerToken,
        lease_ms: u64,
        waiter: Option<&str>,
    ) -> Result<Result<u64, Option<HashMap<String, AttributeValue>>>, LockError> {
        let me = owner.to_hex();
        let mut request = self
            .store
            .update(pk)
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":one", number(1))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if kind.is_rw() {
            request = request
                .expression_attribute_names("#rd", READERS)
                .expression_attribute_names("#q", WAITING)
                .expression_attribute_names("#wr", WRITER)
                .expression_attribute_values(":zero", number(0));
        }
        request = match kind {
            LockKind::Read => request
                .update_expression("SET #rd.#me = :e, #f = #f + :one")
                .condition_expression(
                    "attribute_exists(#rd) AND attribute_exists(#q) \
                     AND attribute_not_exists(#wr) AND size(#q) = :zero",
                )
                .expression_attribute_names("#me", &me)
                .expression_attribute_values(":e", entry(lease_ms, None)),
            LockKind::Write => {
                let request = request
                    .condition_expression(
                        "attribute_exists(#rd) AND attribute_exists(#q) \
                         AND attribute_not_exists(#wr) AND size(#rd) = :zero",
                    )
                    .expression_attribute_values(":e", entry(lease_ms, Some(&me)));
                match waiter {
                    Some(waiter) => request
                        .update_expression("SET #wr = :e, #f = #f + :one REMOVE #q.#wt")
                        .expression_attribute_names("#wt", waiter),
                    None => request.update_expression("SET #wr = :e, #f = #f + :one"),
                }
            }
            LockKind::Permit { permits } => request
                .update_expression("SET #h.#me = :e, #f = #f + :one")
                .condition_expression("attribute_exists(#h) AND size(#h) < :n")
                .expression_attribute_names("#h", HOLDERS)
                .expression_attribute_names("#me", &me)
                .expression_attribute_values(":e", entry(lease_ms, None))
                .expression_attribute_values(":n", number(permits.into())),
            _ => {
                return Err(LockError::backend(
                    NAME,
                    format!("{kind} has no reader–writer or semaphore item"),
                ));
            }
        };
        match self.store.bounded(request.send()).await {
            Err(unavailable) => {
                // The request may sit in a frozen store's socket and be
                // applied later: give the grant back if it ever is.
                self.reclaim(key, kind, owner, lease_ms);
                Err(unavailable)
            }
            Ok(Ok(output)) => returned_fence(output.attributes(), &self.store.what(key)).map(Ok),
            Ok(Err(err)) if is_condition_failed(&err) => {
                let old = err.as_service_error().and_then(|e| match e {
                    UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                    _ => None,
                });
                Ok(Err(old))
            }
            Ok(Err(err)) => {
                if outcome_unknown(&err) {
                    self.reclaim(key, kind, owner, lease_ms);
                }
                Err(self.store.fail(err).await)
            }
        }
    }

    /// A strongly consistent read of the item `pk`, undecoded.
    async fn read_shared(
        &self,
        pk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, LockError> {
        let request = self
            .store
            .client
            .get_item()
            .table_name(&self.store.table)
            .key(self.store.partition_key(), AttributeValue::S(pk.to_owned()))
            .consistent_read(true);
        match self.store.bounded(request.send()).await? {
            Ok(output) => Ok(output.item),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Gives the item `pk` the attributes the grants' conditions need,
    /// keeping any it has: idempotent, so racing creators agree.
    async fn create(&self, pk: &str, family: Family) -> Result<(), LockError> {
        let mut request = self
            .store
            .update(pk)
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":empty", AttributeValue::M(HashMap::new()));
        request = match family {
            Family::Rw => request
                .update_expression(
                    "SET #rd = if_not_exists(#rd, :empty), #q = if_not_exists(#q, :empty), \
                     #f = if_not_exists(#f, :zero)",
                )
                .expression_attribute_names("#rd", READERS)
                .expression_attribute_names("#q", WAITING),
            Family::Semaphore => request
                .update_expression(
                    "SET #h = if_not_exists(#h, :empty), #f = if_not_exists(#f, :zero)",
                )
                .expression_attribute_names("#h", HOLDERS),
        };
        match self.store.bounded(request.send()).await? {
            Ok(_) => Ok(()),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Observes every entry of `state` (but `waiter`'s own registration):
    /// which have expired, and how long those that keep `kind` out may last.
    fn judge<'a>(
        &self,
        pk: &str,
        kind: LockKind,
        state: &'a State,
        waiter: Option<&str>,
    ) -> Judgement<'a> {
        let now = self.clock.now();
        let mut judgement = Judgement {
            expired: Vec::new(),
            blocking: Vec::new(),
        };
        for entry in &state.entries {
            if entry.place == Place::Map(WAITING) && Some(entry.owner.as_str()) == waiter {
                continue;
            }
            let seen = Self::seen(pk, entry);
            match self
                .observations
                .observe(&seen, &entry.version, entry.lease, now)
            {
                Verdict::Expired => judgement.expired.push(entry),
                Verdict::Live(left) if entry.place.blocks(kind) => judgement.blocking.push(left),
                Verdict::Live(_) => {}
            }
        }
        judgement
    }

    /// Removes `expired` in one write conditioned on each entry's version
    /// being the one observed; `false` when any of them changed (nothing is
    /// removed then; the next attempt judges again).
    async fn prune(&self, pk: &str, expired: &[&Entry]) -> Result<bool, LockError> {
        let mut request = self
            .store
            .update(pk)
            .expression_attribute_names("#v", VERSION);
        let (mut removals, mut conditions) = (Vec::new(), Vec::new());
        for (i, entry) in expired.iter().enumerate() {
            let path = match entry.place {
                Place::Map(map) => {
                    let (m, o) = (format!("#m{i}"), format!("#o{i}"));
                    request = request
                        .expression_attribute_names(&m, map)
                        .expression_attribute_names(&o, &entry.owner);
                    format!("{m}.{o}")
                }
                Place::Writer => {
                    request = request.expression_attribute_names("#wr", WRITER);
                    "#wr".to_owned()
                }
            };
            let version = format!(":v{i}");
            request = request
                .expression_attribute_values(&version, AttributeValue::S(entry.version.clone()));
            conditions.push(format!("{path}.#v = {version}"));
            removals.push(path);
        }
        let request = request
            .update_expression(format!("REMOVE {}", removals.join(", ")))
            .condition_expression(conditions.join(" AND "));
        match self.store.bounded(request.send()).await? {
            Ok(_) => {
                for entry in expired {
                    self.observations.forget(&Self::seen(pk, entry));
                }
                Ok(true)
            }
            Err(err) if is_condition_failed(&err) => Ok(false),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Writes (or rewrites, with a new version) a waiting writer's
    /// registration for `lease_ms`. Conditioned only on the `waiting` map
    /// existing, so it never races with grants, renewals or releases.
    pub(crate) async fn register(
        &self,
        key: &Key,
        waiter: OwnerToken,
        lease_ms: u64,
    ) -> Result<(), LockError> {
        let pk = self.shared_pk(key, LockKind::Write);
        let request = || {
            self.store
                .update(&pk)
                .update_expression("SET #q.#wt = :e")
                .condition_expression("attribute_exists(#q)")
                .expression_attribute_names("#q", WAITING)
                .expression_attribute_names("#wt", waiter.to_hex())
                .expression_attribute_values(":e", entry(lease_ms, None))
        };
        match self.store.bounded(request().send()).await? {
            Ok(_) => return Ok(()),
            Err(err) if is_condition_failed(&err) => {}
            Err(err) => return Err(self.store.fail(err).await),
        }
        // A new lock: create its item, then register.
        self.create(&pk, Family::Rw).await?;
        match self.store.bounded(request().send()).await? {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failed(&err) => Err(malformed(
                &self.store.what(key),
                "attribute `waiting` is missing right after it was created",
            )),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Withdraws a waiting writer's registration (gone already is fine).
    pub(crate) async fn withdraw(&self, key: &Key, waiter: OwnerToken) -> Result<(), LockError> {
        let pk = self.shared_pk(key, LockKind::Write);
        let request = self
            .store
            .update(&pk)
            .update_expression("REMOVE #q.#wt")
            .condition_expression("attribute_exists(#q.#wt)")
            .expression_attribute_names("#q", WAITING)
            .expression_attribute_names("#wt", waiter.to_hex());
        match self.store.bounded(request.send()).await? {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failed(&err) => Ok(()),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// An update of `lease`'s own entry: `expression` on `#e` (the entry's
    /// path, with `#l`, `#v` its fields), applied only while the entry is
    /// `lease`'s. `false` when it is not (expired and removed, or never
    /// held).
    async fn own_entry(
        &self,
        lease: &Lease,
        expression: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<bool, LockError> {
        let pk = self.shared_pk(lease.key(), lease.kind());
        let owner = lease.owner().to_hex();
        let mut request = self
            .store
            .update(&pk)
            .set_expression_attribute_values((!values.is_empty()).then_some(values));
        if expression.contains("#l") {
            request = request
                .expression_attribute_names("#l", LEASE)
                .expression_attribute_names("#v", VERSION);
        }
        request = match Place::of(lease.kind()) {
            Place::Map(map) => request
                .update_expression(expression.replace("#e", "#e0.#e1"))
                .condition_expression("attribute_exists(#e0.#e1)")
                .expression_attribute_names("#e0", map)
                .expression_attribute_names("#e1", owner),
            Place::Writer => request
                .update_expression(expression.replace("#e", "#e0"))
                .condition_expression("#e0.#o = :me")
                .expression_attribute_names("#e0", WRITER)
                .expression_attribute_names("#o", OWNER)
                .expression_attribute_values(":me", AttributeValue::S(owner)),
        };
        match self.store.bounded(request.send()).await? {
            Ok(_) => Ok(true),
            Err(err) if is_condition_failed(&err) => Ok(false),
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// Renews a reader, writer or permit: a new entry version and lease.
    pub(crate) async fn extend_shared(
        &self,
        lease: &Lease,
        ttl: Duration,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        let key = lease.key();
        let sent_at = self.clock.now();
        if !lease.is_valid_at(sent_at) {
            return Err(LockError::lost(
                NAME,
                key.as_str(),
                "the grant expired before it was extended",
            ));
        }
        let values = HashMap::from([
            (":l".to_owned(), number(lease_ms)),
            (":v".to_owned(), AttributeValue::S(new_rvn())),
        ]);
        if self
            .own_entry(lease, "SET #e.#l = :l, #e.#v = :v", values)
            .await?
        {
            Ok(lease.renewed(sent_at, ttl, self.drift))
        } else {
            Err(LockError::lost(
                NAME,
                key.as_str(),
                "the grant expired and was removed, or was never held",
            ))
        }
    }

    /// Releases a reader, writer or permit.
    pub(crate) async fn release_shared(&self, lease: &Lease) -> Result<(), LockError> {
        if self.own_entry(lease, "REMOVE #e", HashMap::new()).await? {
            tracing::debug!(key = lease.key().as_str(), kind = %lease.kind(), owner = %lease.owner(), "released");
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
    }
}

/// When a waiting writer's registration is due for a rewrite: a third of
/// its lease after the last one, so with the waits' polls capped at a third
/// of the TTL it is rewritten well inside its lease.
pub(crate) fn registration_due(last: Option<Instant>, now: Instant, ttl: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= ttl / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn map(pairs: Vec<(&str, AttributeValue)>) -> AttributeValue {
        AttributeValue::M(item(pairs))
    }

    #[test]
    fn a_full_rw_item_decodes_and_a_new_one_is_incomplete() {
        let full = item(vec![
            (FENCE, number(7)),
            (READERS, map(vec![("a", entry(1500, None))])),
            (WAITING, map(vec![])),
            (WRITER, entry(900, Some("b"))),
        ]);
        let state = State::decode(Some(&full), Family::Rw, "k").expect("decodes");
        assert!(state.complete);
        let places: Vec<_> = state
            .entries
            .iter()
            .map(|e| (e.place, e.owner.as_str(), e.lease))
            .collect();
        assert!(places.contains(&(Place::Map(READERS), "a", Duration::from_millis(1500))));
        assert!(places.contains(&(Place::Writer, "b", Duration::from_millis(900))));
        assert!(!State::decode(None, Family::Rw, "k").expect("none").complete);
        let without_waiting = item(vec![(FENCE, number(1)), (READERS, map(vec![]))]);
        let state = State::decode(Some(&without_waiting), Family::Rw, "k").expect("decodes");
        assert!(!state.complete, "a grant's condition needs `waiting` too");
    }

    #[test]
    fn a_malformed_entry_is_a_final_error_naming_its_attribute() {
        let cases = [
            (
                HOLDERS,
                AttributeValue::S("x".into()),
                "`holders` is not a map",
            ),
            (
                HOLDERS,
                map(vec![("a", map(vec![(LEASE, number(5))]))]),
                "an entry of `holders`",
            ),
            (
                HOLDERS,
                map(vec![(
                    "a",
                    map(vec![
                        (LEASE, AttributeValue::S("5".into())),
                        (VERSION, AttributeValue::S("v".into())),
                    ]),
                )]),
                "an entry of `holders`",
            ),
        ];
        for (name, value, expected) in cases {
            let bad = item(vec![(FENCE, number(1)), (name, value)]);
            let err =
                State::decode(Some(&bad), Family::Semaphore, "key \"k\"").expect_err(expected);
            assert!(err.to_string().contains(expected), "{err}");
            assert!(!err.is_retryable());
        }
        let writer_without_owner = item(vec![(WRITER, entry(5, None))]);
        let err = State::decode(Some(&writer_without_owner), Family::Rw, "k")
            .expect_err("a writer entry needs its owner");
        assert!(err.to_string().contains("an entry of `writer`"), "{err}");
    }

    #[test]
    fn who_blocks_whom() {
        let permit = LockKind::Permit { permits: 2 };
        let cases = [
            (Place::Writer, [true, true, false]),
            (Place::Map(WAITING), [true, false, false]),
            (Place::Map(READERS), [false, true, false]),
            (Place::Map(HOLDERS), [false, false, true]),
        ];
        for (place, expected) in cases {
            let blocks = [LockKind::Read, LockKind::Write, permit].map(|kind| place.blocks(kind));
            assert_eq!(blocks, expected, "{place:?}");
        }
    }

    #[test]
    fn a_registration_is_rewritten_every_third_of_its_ttl() {
        let ttl = Duration::from_secs(9);
        let t0 = Instant::now();
        assert!(registration_due(None, t0, ttl));
        assert!(!registration_due(
            Some(t0),
            t0 + Duration::from_secs(2),
            ttl
        ));
        assert!(registration_due(Some(t0), t0 + Duration::from_secs(3), ttl));
    }
}
