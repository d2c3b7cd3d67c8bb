//! Operations on the namespace's items: a paged listing of the held ones,
//! and a forced release.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use leasehold_core::{HeldLock, Key, ListPage, ListQuery, LockError, LockInfo};

use super::{Leases, new_rvn};
use crate::error::is_condition_failed;
use crate::item::{ACQUIRED_MS, FENCE, HOLDER, LEASE_MS, LockItem, OWNER, RVN};
use crate::lease::observations::Verdict;

impl Leases {
    /// One page of a `Scan` (the table's only key is the partition key, so
    /// no narrower read exists), the cursor being the partition key it
    /// stopped after. An item seen held with the same RVN for a whole lease
    /// (by this client, as a waiter would) has expired and is not shown; the
    /// listing counts as such an observation.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<ListPage, LockError> {
        let namespace = format!("{}#", self.store.namespace());
        let after = match query.cursor.as_deref() {
            Some("") => {
                return Err(LockError::Config(
                    "an empty listing cursor: pass the `next` of the previous page".into(),
                ));
            }
            cursor => cursor,
        };
        let limit = i32::try_from(query.limit.max(1)).unwrap_or(i32::MAX);
        let prefix = format!("{namespace}{}", query.prefix);
        let (items, next) = self.store.scan_held(&prefix, limit, after).await?;
        let now = self.clock.now();
        let mut locks = Vec::with_capacity(items.len());
        for item in &items {
            let Some(AttributeValue::S(pk)) = item.get(self.store.partition_key()) else {
                continue;
            };
            let Some(key) = pk.strip_prefix(&namespace) else {
                continue;
            };
            let what = format!("key {key:?} in table {}", self.store.table);
            // One unreadable item must not hide the others from an operator.
            let decoded = match LockItem::decode(item, &what) {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::warn!(%error, "listing skips an unreadable lock item");
                    continue;
                }
            };
            let Some((_, lease)) = decoded.held else {
                continue;
            };
            // Unchanged for a whole lease of our observation: expired.
            let Verdict::Live(remaining) = self.observations.observe(pk, &decoded.rvn, lease, now)
            else {
                continue;
            };
            locks.extend(decoded.info(Some(remaining)).map(|info| HeldLock {
                key: key.to_owned(),
                info,
            }));
        }
        Ok(ListPage { locks, next })
    }

    /// One conditional `UpdateItem` on a held item: removes the holder and
    /// bumps `fence` with a new RVN, so the evicted holder's next `extend`
    /// finds no owner of its own (`Lost`) and the next grant's token is above
    /// the evicted one. Returns the item as it was (`ALL_OLD`); `None` when
    /// nobody held it. The reason is only logged.
    pub(crate) async fn force_release(
        &self,
        key: &Key,
        reason: &str,
    ) -> Result<Option<LockInfo>, LockError> {
        let pk = self.store.partition_key_for(key);
        let request = self
            .store
            .update(&pk)
            .update_expression(
                "SET #rvn = :rvn, #fence = if_not_exists(#fence, :zero) + :one \
                 REMOVE #owner, #lease, #holder, #acquired",
            )
            .condition_expression("attribute_exists(#owner)")
            .expression_attribute_names("#rvn", RVN)
            .expression_attribute_names("#fence", FENCE)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lease", LEASE_MS)
            .expression_attribute_names("#holder", HOLDER)
            .expression_attribute_names("#acquired", ACQUIRED_MS)
            .expression_attribute_values(":rvn", AttributeValue::S(new_rvn()))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::AllOld);
        let output = match self.store.bounded(request.send()).await? {
            Ok(output) => output,
            Err(err) if is_condition_failed(&err) => return Ok(None),
            Err(err) => return Err(self.store.fail(err).await),
        };
        let evicted = match output.attributes() {
            Some(old) => LockItem::decode(old, &self.store.what(key))?,
            None => return Ok(None),
        };
        let info = self.estimate(&pk, &evicted);
        // The key is free: a waiter's observation of the old RVN is moot.
        self.observations.forget(&pk);
        tracing::debug!(
            key = key.as_str(),
            fence = evicted.fence,
            reason,
            "removed the holder by force"
        );
        Ok(info)
    }
}
