//! The retention application layer between the gRPC handlers and the store: resolves the
//! rule of an item, computes its status now with `consent_core::retention::item_status`,
//! pages due items, and builds deletion attestations. It knows nothing of gRPC.
//!
//! "Now" comes from a [`Clock`], so tests move time on without sleeping.

use std::sync::Arc;

use consent_core::commands::new_event_id;
use consent_core::retention::{
    DataItem, Erasure, HoldScope, ItemStatus, ItemVerdict, LegalHold, RetentionAction,
    RetentionBound, RetentionRule, item_status,
};
use consent_core::{Clock, ConsentError, NewRecord, RecordKind, Result, Timestamp};
use consent_store::{
    Attested, DueQuery, Registered, RetentionRules, Store, StoredHold, StoredItem,
};

use crate::context::Principal;

/// An item with its status now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemView {
    /// The item as stored.
    pub stored: StoredItem,
    /// Its status, reason and whether it is overdue.
    pub verdict: ItemVerdict,
    /// What happens at the end of its period (`None` if no rule covers it any more).
    pub action: Option<RetentionAction>,
}

/// A page of due items and the cursor of the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuePage {
    /// The items, by `delete_after` then id.
    pub items: Vec<ItemView>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<(Timestamp, String)>,
}

/// What to list as due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueFilter {
    /// Only this category.
    pub data_category: Option<String>,
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Only items due for longer than the overdue grace.
    pub overdue_only: bool,
    /// Start after this (`delete_after`, `item_id`).
    pub after: Option<(Timestamp, String)>,
    /// Page size.
    pub limit: usize,
}

/// A deletion attestation as the caller gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The item.
    pub item_id: String,
    /// How it was deleted or anonymised.
    pub method: String,
    /// When.
    pub deleted_at: Timestamp,
}

/// Retention rules, items, holds and attestations of the caller's tenant.
#[derive(Clone)]
pub struct Retention {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    overdue_grace_secs: i64,
    exporter: crate::export::Exporter,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("clock", &self.clock)
            .field("overdue_grace_secs", &self.overdue_grace_secs)
            .finish_non_exhaustive()
    }
}

impl Retention {
    /// Over `store`, with "now" from `clock`; an item due for longer than
    /// `overdue_grace_secs` is overdue.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, overdue_grace_secs: i64) -> Retention {
        Retention {
            exporter: crate::export::Exporter::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                overdue_grace_secs,
            ),
            store,
            clock,
            overdue_grace_secs,
        }
    }

    /// The exporter of subjects over the same store and clock (one per server: it bounds
    /// the exports running at once).
    pub fn exporter(&self) -> &crate::export::Exporter {
        &self.exporter
    }

    /// The current time of this layer's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Creates or replaces a tenant or campaign rule.
    pub async fn set_rule(&self, who: &Principal, rule: &RetentionRule) -> Result<()> {
        self.store.set_retention_rule(&who.tenant_id, rule).await
    }

    /// The tenant's rules and the operator's defaults.
    pub async fn rules(&self, who: &Principal) -> Result<RetentionRules> {
        self.store.retention_rules(&who.tenant_id).await
    }

    /// Registers an item and returns it with its status now.
    pub async fn register(&self, who: &Principal, item: &DataItem) -> Result<(ItemView, bool)> {
        let Registered { item, replayed } = self
            .store
            .register_item(&who.tenant_id, item, self.now())
            .await?;
        Ok((self.view(&who.tenant_id, item).await?, replayed))
    }

    /// An item with its status now; `NotFound` if unknown.
    pub async fn item(&self, who: &Principal, item_id: &str) -> Result<ItemView> {
        let stored = self
            .store
            .data_item(&who.tenant_id, item_id)
            .await?
            .ok_or_else(|| ConsentError::not_found("data item", item_id))?;
        self.view(&who.tenant_id, stored).await
    }

    /// Sets an item's anchor time.
    pub async fn update_anchor(
        &self,
        who: &Principal,
        item_id: &str,
        anchor_at: Timestamp,
    ) -> Result<ItemView> {
        // The item alone (not its status): only its creation time is checked here.
        let created_at = self
            .store
            .data_item(&who.tenant_id, item_id)
            .await?
            .ok_or_else(|| ConsentError::not_found("data item", item_id))?
            .item
            .created_at;
        if anchor_at < created_at {
            return Err(ConsentError::invalid(
                "anchor_at",
                format!("must not be before the item's created_at ({created_at})"),
            ));
        }
        let stored = self
            .store
            .update_anchor(&who.tenant_id, item_id, anchor_at)
            .await?;
        self.view(&who.tenant_id, stored).await
    }

    /// Places a hold.
    pub async fn place_hold(
        &self,
        who: &Principal,
        scope: HoldScope,
        reason: String,
        until: Option<Timestamp>,
    ) -> Result<StoredHold> {
        let now = self.now();
        if until.is_some_and(|u| u <= now) {
            return Err(ConsentError::invalid(
                "until",
                "must be in the future: a hold that has already ended would keep nothing",
            ));
        }
        let hold = StoredHold {
            hold_id: new_event_id(),
            hold: LegalHold {
                scope,
                reason,
                until,
            },
            created_at: now,
            released_at: None,
            actor_key_id: who.key_id.clone(),
        };
        self.store.place_legal_hold(&who.tenant_id, &hold).await?;
        Ok(hold)
    }

    /// Releases a hold now.
    pub async fn release_hold(&self, who: &Principal, hold_id: &str) -> Result<StoredHold> {
        self.store
            .release_legal_hold(&who.tenant_id, hold_id, self.now())
            .await
    }

    /// One page of the holds in force now, by id after `after_hold_id`; the id to continue
    /// after when there are more.
    pub async fn holds(
        &self,
        who: &Principal,
        after_hold_id: &str,
        limit: usize,
    ) -> Result<(Vec<StoredHold>, Option<String>)> {
        let mut holds = self
            .store
            .legal_holds(
                &who.tenant_id,
                None,
                self.now(),
                after_hold_id,
                limit.saturating_add(1),
            )
            .await?;
        let more = holds.len() > limit;
        holds.truncate(limit);
        let next = more
            .then(|| holds.last().map(|h| h.hold_id.clone()))
            .flatten();
        Ok((holds, next))
    }

    /// One page of the items due now (or overdue), not held.
    pub async fn due(&self, who: &Principal, filter: &DueFilter) -> Result<DuePage> {
        let now = self.now();
        let due_by = if filter.overdue_only {
            // Overdue: due for *longer* than the grace, so due strictly before this.
            Timestamp(
                now.as_micros()
                    .saturating_sub(
                        self.overdue_grace_secs
                            .saturating_mul(Timestamp::MICROS_PER_SECOND),
                    )
                    .saturating_sub(1),
            )
        } else {
            now
        };
        let query = DueQuery {
            data_category: filter.data_category.clone(),
            campaign_id: filter.campaign_id.clone(),
            due_by,
            now,
            after: filter.after.clone(),
            limit: filter.limit.saturating_add(1),
        };
        let mut found = self.store.due_items(&who.tenant_id, &query).await?;
        let more = found.len() > filter.limit;
        found.truncate(filter.limit);
        let next = if more {
            found.last().map(|i| {
                (
                    i.delete_after.unwrap_or(Timestamp(0)),
                    i.item.item_id.clone(),
                )
            })
        } else {
            None
        };
        let rules = self.rules(who).await?;
        // The store left held items out; the verdict still gets no holds (none apply).
        let items = found
            .into_iter()
            .map(|stored| self.view_with(&rules, &[], stored, now))
            .collect();
        Ok(DuePage { items, next })
    }

    /// Records a deletion attestation (a ledger record) and returns the deleted item.
    pub async fn attest(
        &self,
        who: &Principal,
        attestation: &Attestation,
    ) -> Result<(ItemView, Attested)> {
        let before = self.item(who, &attestation.item_id).await?;
        let item = &before.stored.item;
        if attestation.deleted_at < item.created_at && item.deleted_at.is_none() {
            return Err(ConsentError::invalid(
                "deleted_at",
                format!(
                    "must not be before the item's created_at ({}): an item cannot be deleted before it existed",
                    item.created_at
                ),
            ));
        }
        let status = match before.verdict.status {
            ItemStatus::Keep => "keep",
            ItemStatus::Hold => "hold",
            ItemStatus::Due => "due",
            ItemStatus::Deleted => "deleted",
        };
        let record = NewRecord {
            id: new_event_id(),
            kind: RecordKind::DeletionAttested,
            subject_id: item.subject_id.clone(),
            purpose_id: String::new(),
            at: attestation.deleted_at,
            detail: [
                ("item_id", item.item_id.clone()),
                ("data_category", item.data_category.clone()),
                ("campaign_id", item.campaign_id.clone()),
                ("method", attestation.method.clone()),
                ("deleted_at", attestation.deleted_at.to_string()),
                // What the ledger said when the deletion was attested: an auditor sees a
                // held or early deletion for what it was.
                ("status_at_attestation", status.to_owned()),
                ("reason_at_attestation", before.verdict.reason.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            actor_key_id: who.key_id.clone(),
        };
        let attested = self
            .store
            .attest_deletion(
                &who.tenant_id,
                &attestation.item_id,
                attestation.deleted_at,
                record,
            )
            .await?;
        let view = self.view(&who.tenant_id, attested.item.clone()).await?;
        Ok((view, attested))
    }

    async fn view(&self, tenant: &str, stored: StoredItem) -> Result<ItemView> {
        let rules = self.store.retention_rules(tenant).await?;
        let holds: Vec<LegalHold> = self
            .store
            .holds_covering(tenant, &stored.item)
            .await?
            .into_iter()
            .map(|h| h.hold)
            .collect();
        Ok(self.view_with(&rules, &holds, stored, self.now()))
    }

    fn view_with(
        &self,
        rules: &RetentionRules,
        holds: &[LegalHold],
        stored: StoredItem,
        now: Timestamp,
    ) -> ItemView {
        let item = &stored.item;
        let Some(rule) = rules.rule_for(&item.data_category, &item.campaign_id) else {
            // Registration needs a rule and rules are never removed; say so rather than fail.
            return ItemView {
                verdict: ItemVerdict {
                    status: if item.deleted_at.is_some() {
                        ItemStatus::Deleted
                    } else {
                        ItemStatus::Keep
                    },
                    delete_after: stored.delete_after,
                    overdue: false,
                    reason: format!("no retention rule covers {}", item.data_category),
                },
                stored,
                action: None,
            };
        };
        let kept_by_law = rules
            .default_for(&item.data_category)
            .is_some_and(|d| d.bound == RetentionBound::Minimum);
        let verdict = item_status(
            item,
            rule,
            kept_by_law,
            holds,
            stored.erased_at.map(|at| Erasure { at }),
            now,
            self.overdue_grace_secs,
        );
        ItemView {
            action: Some(rule.action),
            verdict,
            stored,
        }
    }
}
