//! Reader–writer locks and semaphores: one item per lock, apart from the
//! mutex items (its partition key starts with a control character, which no
//! namespace or key holds, so `inspect`, `list` and `force_release` never
//! see it), with
//! - `holders`: a map from each holder's owner token to its grant (`k`: `r`
//!   reader, `w` writer, `p` permit; `l`: lease in ms; `v`: the entry's own
//!   record version, rewritten by every renewal);
//! - `waiting`: the waiting writers' registrations, the same shape;
//! - `fence`: the counter every grant bumps (never reset), and `rvn`, the
//!   item's version, rewritten by every write.
//!
//! An attempt reads the item (strongly consistent), judges each entry as the
//! mutex judges a holder (expired only once this client has seen the same
//! entry version unchanged for its whole lease, on its monotonic clock),
//! decides, and writes conditionally on the item version it read (pruning
//! the expired entries in the same write); a write that lost a race reads
//! again and decides again, a few times.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use leasehold_core::{FencingToken, Key, Lease, LockError, LockInfo, LockKind, OwnerToken};

use super::observations::Verdict;
use super::{Leases, new_rvn};
use crate::error::{NAME, is_condition_failed};
use crate::item::{FENCE, RVN, returned_fence};

const HOLDERS: &str = "holders";
const WAITING: &str = "waiting";
/// How many times an attempt decides again after losing a write race.
const RACES: usize = 8;

/// One entry of `holders` or `waiting`.
struct Entry {
    owner: String,
    kind: String,
    lease: Duration,
    version: String,
}

/// The item as read.
struct State {
    rvn: Option<String>,
    holders: Option<Vec<Entry>>,
    waiting: Option<Vec<Entry>>,
}

/// An update expression under construction: only the names and values it
/// uses (DynamoDB refuses unused ones).
#[derive(Default)]
struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn name(&mut self, placeholder: &str, name: &str) -> String {
        self.names.insert(placeholder.to_owned(), name.to_owned());
        placeholder.to_owned()
    }
    fn value(&mut self, placeholder: &str, value: AttributeValue) -> String {
        self.values.insert(placeholder.to_owned(), value);
        placeholder.to_owned()
    }
    /// Sets `map.owner = entry`, or the whole map when it does not exist yet.
    fn put_entry(
        &mut self,
        map: &str,
        exists: bool,
        slot: &str,
        owner: &str,
        entry: AttributeValue,
    ) {
        let m = self.name(&format!("#{slot}m"), map);
        if exists {
            let o = self.name(&format!("#{slot}o"), owner);
            let v = self.value(&format!(":{slot}"), entry);
            self.set.push(format!("{m}.{o} = {v}"));
        } else {
            let whole = AttributeValue::M(HashMap::from([(owner.to_owned(), entry)]));
            let v = self.value(&format!(":{slot}"), whole);
            self.set.push(format!("{m} = {v}"));
        }
    }
    fn remove_entry(&mut self, map: &str, placeholder: &str, owner: &str) {
        let m = self.name(&format!("#{}", &map[..1]), map);
        let o = self.name(placeholder, owner);
        self.remove.push(format!("{m}.{o}"));
    }
    fn expression(&self) -> String {
        let mut expression = format!("SET {}", self.set.join(", "));
        if !self.remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", self.remove.join(", ")));
        }
        expression
    }
}

fn entry(kind: &str, lease_ms: u64) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("k".to_owned(), AttributeValue::S(kind.to_owned())),
        ("l".to_owned(), AttributeValue::N(lease_ms.to_string())),
        ("v".to_owned(), AttributeValue::S(new_rvn())),
    ]))
}

fn kind_code(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Read => "r",
        LockKind::Write => "w",
        _ => "p",
    }
}

fn malformed(what: &str, problem: &str) -> LockError {
    LockError::backend(NAME, format!("malformed lock item for {what}: {problem}"))
}

fn decode_entries(
    item: &HashMap<String, AttributeValue>,
    map: &str,
    what: &str,
) -> Result<Option<Vec<Entry>>, LockError> {
    let Some(value) = item.get(map) else {
        return Ok(None);
    };
    let AttributeValue::M(entries) = value else {
        return Err(malformed(what, &format!("attribute `{map}` is not a map")));
    };
    let bad = || {
        malformed(
            what,
            &format!("an entry of `{map}` is not a leasehold entry"),
        )
    };
    entries
        .iter()
        .map(|(owner, entry)| {
            let AttributeValue::M(fields) = entry else {
                return Err(bad());
            };
            let text = |name: &str| match fields.get(name) {
                Some(AttributeValue::S(s)) => Ok(s.clone()),
                _ => Err(bad()),
            };
            let lease = match fields.get("l") {
                Some(AttributeValue::N(n)) => n.parse::<u64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            Ok(Entry {
                owner: owner.clone(),
                kind: text("k")?,
                lease: Duration::from_millis(lease),
                version: text("v")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Leases {
    /// The partition key of `key`'s reader–writer lock or semaphore.
    fn shared_pk(&self, key: &Key, kind: LockKind) -> String {
        let family = if kind.is_rw() { "rw" } else { "sem" };
        format!("\u{1}{family}#{}", self.store.partition_key_for(key))
    }

    async fn read_state(&self, pk: &str, what: &str) -> Result<State, LockError> {
        let request = self
            .store
            .client
            .get_item()
            .table_name(&self.store.table)
            .key(self.store.partition_key(), AttributeValue::S(pk.to_owned()))
            .consistent_read(true);
        let output = match self.store.bounded(request.send()).await? {
            Ok(output) => output,
            Err(err) => return Err(self.store.fail(err).await),
        };
        let Some(item) = output.item() else {
            return Ok(State {
                rvn: None,
                holders: None,
                waiting: None,
            });
        };
        let rvn = match item.get(RVN) {
            Some(AttributeValue::S(rvn)) => Some(rvn.clone()),
            _ => {
                return Err(malformed(
                    what,
                    "attribute `rvn` is missing or not a string",
                ));
            }
        };
        Ok(State {
            rvn,
            holders: decode_entries(item, HOLDERS, what)?,
            waiting: decode_entries(item, WAITING, what)?,
        })
    }

    /// One attempt at `kind` on `key`; `waiter` is a waiting writer's
    /// registration, (re)written when refused and removed when granted.
    pub(crate) async fn acquire_shared(
        &self,
        key: &Key,
        kind: LockKind,
        ttl: Duration,
        lease_ms: u64,
        waiter: Option<OwnerToken>,
    ) -> Result<Lease, LockError> {
        let pk = self.shared_pk(key, kind);
        let what = self.store.what(key);
        let waiter = waiter.map(|w| w.to_hex());
        if let Some(waiter) = &waiter {
            self.register(&pk, waiter, lease_ms).await?;
        }
        for _ in 0..RACES {
            let state = self.read_state(&pk, &what).await?;
            let now = self.clock.now();
            let mut update = Update::default();
            let mut live = Vec::new();
            for (map, entries) in [(HOLDERS, &state.holders), (WAITING, &state.waiting)] {
                for (i, e) in entries.iter().flatten().enumerate() {
                    if Some(&e.owner) == waiter.as_ref() && map == WAITING {
                        continue;
                    }
                    let seen = format!("{pk}\0{}", e.owner);
                    match self.observations.observe(&seen, &e.version, e.lease, now) {
                        Verdict::Expired => {
                            update.remove_entry(map, &format!("#{}{i}", &map[..1]), &e.owner)
                        }
                        Verdict::Live(left) => {
                            let code = if map == WAITING { "q" } else { e.kind.as_str() };
                            live.push((code.to_owned(), left));
                        }
                    }
                }
            }
            let blocking: Vec<Duration> = live
                .iter()
                .filter(|(code, _)| match kind {
                    LockKind::Read => code == "w" || code == "q",
                    LockKind::Write => code == "r" || code == "w",
                    _ => code == "p",
                })
                .map(|(_, left)| *left)
                .collect();
            let admitted = match kind {
                LockKind::Permit { permits } => blocking.len() < permits as usize,
                _ => blocking.is_empty(),
            };
            let owner = OwnerToken::generate();
            let r = update.name("#r", RVN);
            let v = update.value(":rvn", AttributeValue::S(new_rvn()));
            update.set.push(format!("{r} = {v}"));
            if admitted {
                let f = update.name("#f", FENCE);
                let zero = update.value(":zero", AttributeValue::N("0".into()));
                let one = update.value(":one", AttributeValue::N("1".into()));
                update
                    .set
                    .push(format!("{f} = if_not_exists({f}, {zero}) + {one}"));
                let me = owner.to_hex();
                let grant = entry(kind_code(kind), lease_ms);
                update.put_entry(HOLDERS, state.holders.is_some(), "g", &me, grant);
                if let (Some(waiter), Some(_)) = (&waiter, &state.waiting) {
                    update.remove_entry(WAITING, "#me", waiter);
                }
            } else {
                let left = blocking.iter().min().copied();
                return Err(LockError::contended(
                    NAME,
                    key.as_str(),
                    Some(LockInfo::new(None, left)),
                ));
            }
            let sent_at = self.clock.now();
            let mut request = self
                .store
                .update(&pk)
                .update_expression(update.expression())
                .set_expression_attribute_names(Some(update.names))
                .set_expression_attribute_values(Some(update.values))
                .return_values(ReturnValue::UpdatedNew);
            request = match &state.rvn {
                None => request.condition_expression("attribute_not_exists(#r)"),
                Some(seen) => request
                    .condition_expression("#r = :seen")
                    .expression_attribute_values(":seen", AttributeValue::S(seen.clone())),
            };
            match self.store.bounded(request.send()).await? {
                Ok(output) => {
                    let fence = returned_fence(output.attributes(), &what)?;
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
                // Someone wrote the item since we read it: decide again.
                Err(err) if is_condition_failed(&err) => continue,
                Err(err) => return Err(self.store.fail(err).await),
            }
        }
        Err(LockError::contended(NAME, key.as_str(), None))
    }

    /// Writes (or renews) a waiting writer's registration, whatever else
    /// the item holds: no condition on the item's version, which it changes,
    /// so a reader deciding on an older read loses its write and reads again.
    async fn register(&self, pk: &str, waiter: &str, lease_ms: u64) -> Result<(), LockError> {
        let values = HashMap::from([(":q".to_owned(), entry("q", lease_ms))]);
        if self
            .own_map(pk, WAITING, waiter, ", #m.#o = :q", values)
            .await?
        {
            return Ok(());
        }
        // No `waiting` map yet: create it, unless someone just did.
        let request = self
            .store
            .update(pk)
            .update_expression("SET #r = :rvn, #m = :m")
            .condition_expression("attribute_not_exists(#m)")
            .expression_attribute_names("#r", RVN)
            .expression_attribute_names("#m", WAITING)
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
            .expression_attribute_values(
                ":m",
                AttributeValue::M(HashMap::from([(waiter.to_owned(), entry("q", lease_ms))])),
            );
        match self.store.bounded(request.send()).await? {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failed(&err) => {
                let values = HashMap::from([(":q".to_owned(), entry("q", lease_ms))]);
                self.own_map(pk, WAITING, waiter, ", #m.#o = :q", values)
                    .await
                    .map(|_| ())
            }
            Err(err) => Err(self.store.fail(err).await),
        }
    }

    /// [`own_entry`](Self::own_entry) conditional on the map existing
    /// rather than the entry.
    async fn own_map(
        &self,
        pk: &str,
        map: &str,
        owner: &str,
        clauses: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<bool, LockError> {
        self.conditional(pk, map, owner, clauses, values, "attribute_exists(#m)")
            .await
    }

    /// A write on `lease`'s own entry in `map` (`SET`/`REMOVE` clauses
    /// using `#m.#o`), applied only while the entry exists.
    async fn own_entry(
        &self,
        pk: &str,
        map: &str,
        owner: &str,
        clauses: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<bool, LockError> {
        self.conditional(pk, map, owner, clauses, values, "attribute_exists(#m.#o)")
            .await
    }

    /// An update of `pk` with `SET #r = :rvn` and `clauses` (on `#m`, `#o`:
    /// `map`, `owner`), applied only when `condition` holds.
    async fn conditional(
        &self,
        pk: &str,
        map: &str,
        owner: &str,
        clauses: &str,
        values: HashMap<String, AttributeValue>,
        condition: &str,
    ) -> Result<bool, LockError> {
        let mut request = self
            .store
            .update(pk)
            .update_expression(format!("SET #r = :rvn {clauses}"))
            .condition_expression(condition)
            .expression_attribute_names("#r", RVN)
            .expression_attribute_names("#m", map)
            .expression_attribute_names("#o", owner)
            .set_expression_attribute_values(Some(values))
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()));
        if clauses.contains("#l") {
            request = request
                .expression_attribute_names("#l", "l")
                .expression_attribute_names("#v", "v");
        }
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
        let pk = self.shared_pk(key, lease.kind());
        let values = HashMap::from([
            (":l".to_owned(), AttributeValue::N(lease_ms.to_string())),
            (":v".to_owned(), AttributeValue::S(new_rvn())),
        ]);
        let clauses = ", #m.#o.#l = :l, #m.#o.#v = :v";
        if self
            .own_entry(&pk, HOLDERS, &lease.owner().to_hex(), clauses, values)
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
        let pk = self.shared_pk(lease.key(), lease.kind());
        let owner = lease.owner().to_hex();
        if self
            .own_entry(&pk, HOLDERS, &owner, "REMOVE #m.#o", HashMap::new())
            .await?
        {
            Ok(())
        } else {
            Err(LockError::not_held(NAME, lease.key().as_str()))
        }
    }

    /// Withdraws a waiting writer's registration (gone already is fine).
    pub(crate) async fn withdraw(&self, key: &Key, waiter: OwnerToken) -> Result<(), LockError> {
        let pk = self.shared_pk(key, LockKind::Write);
        self.own_entry(
            &pk,
            WAITING,
            &waiter.to_hex(),
            "REMOVE #m.#o",
            HashMap::new(),
        )
        .await
        .map(|_| ())
    }
}
