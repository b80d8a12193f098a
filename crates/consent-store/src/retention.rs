//! Retention storage: the operator's defaults and the tenants' rules per data category, the
//! data items product services register, legal holds, and deletion attestations (which are
//! ledger records, in the tenant's hash chain).
//!
//! The store keeps each item's `delete_after` (its anchor plus the period of the rule that
//! applies: campaign, else tenant, else default) up to date when an item is registered, its
//! anchor moves, or a rule or default changes, so due items are found by an index, in
//! `delete_after` order. What an item's *status* is at a time (keep, hold, due, deleted) is
//! decided by `consent_core::retention::item_status` on every read, never stored.

use async_trait::async_trait;
use consent_core::retention::{DataItem, HoldScope, LegalHold, RetentionDefault, RetentionRule};
use consent_core::{LedgerRecord, NewRecord, Result, Revision, Timestamp};

/// A tenant's retention rules and the operator's defaults it is bound by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionRules {
    /// The operator's defaults (from the catalogue file), ordered by category.
    pub defaults: Vec<RetentionDefault>,
    /// The tenant's own rules (tenant-wide and per campaign), ordered by category, then
    /// campaign (tenant-wide first).
    pub rules: Vec<RetentionRule>,
}

impl RetentionRules {
    /// The default of `category`, if the operator set one.
    pub fn default_for(&self, category: &str) -> Option<&RetentionDefault> {
        self.defaults
            .iter()
            .find(|d| d.rule.data_category == category)
    }

    /// The rule that applies to an item of `category` in `campaign` (campaign, tenant,
    /// default), if any.
    pub fn rule_for(&self, category: &str, campaign: &str) -> Option<&RetentionRule> {
        consent_core::retention::rule_for(
            category,
            campaign,
            &self.rules,
            self.default_for(category),
        )
    }
}

/// A data item as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    /// The item (with `deleted_at` once a deletion was attested).
    pub item: DataItem,
    /// When it must go under the rule that applies (`None` while its anchor is unknown).
    pub delete_after: Option<Timestamp>,
    /// The revision of the deletion attestation, once attested.
    pub attestation_revision: Option<Revision>,
    /// When the ledger registered it.
    pub registered_at: Timestamp,
    /// When its subject was erased (its `subject_id` is then the erased id).
    pub erased_at: Option<Timestamp>,
}

/// A legal hold as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHold {
    /// Its id (UUIDv7), for releasing it.
    pub hold_id: String,
    /// What it covers, why, and until when.
    pub hold: LegalHold,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When it was released, if it was.
    pub released_at: Option<Timestamp>,
    /// The API key that placed it.
    pub actor_key_id: String,
}

/// Which due items to list, in `delete_after` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueQuery {
    /// Only this category.
    pub data_category: Option<String>,
    /// Only this campaign.
    pub campaign_id: Option<String>,
    /// Items whose `delete_after` is at or before this time (now, or now minus the overdue
    /// grace for overdue items only).
    pub due_by: Timestamp,
    /// The time holds are judged at: an item covered by a hold in force then is left out.
    pub now: Timestamp,
    /// The paging cursor: only items after this (`delete_after`, `item_id`).
    pub after: Option<(Timestamp, String)>,
    /// At most this many items.
    pub limit: usize,
}

/// What an attestation wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The item, now deleted.
    pub item: StoredItem,
    /// The attestation's ledger record (on a replay, the first one).
    pub record: LedgerRecord,
    /// Whether the item had already been attested (nothing was written).
    pub replayed: bool,
}

/// What registering an item did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The item as stored.
    pub item: StoredItem,
    /// Whether it was already registered with the same facts (nothing was written).
    pub replayed: bool,
}

/// How far a tenant's retention sweeps have gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepMark {
    /// Expiries of grants up to this time (and `expired_revision` at it) were announced.
    pub expired_until: Timestamp,
    /// The revision of the last grant announced at `expired_until`.
    pub expired_revision: Revision,
    /// When the tenant was last swept (`None`: never).
    pub swept_at: Option<Timestamp>,
}

impl SweepMark {
    /// The mark of a tenant never swept: nothing announced yet.
    pub fn start() -> SweepMark {
        SweepMark {
            expired_until: Timestamp(Timestamp::MIN_SECONDS * Timestamp::MICROS_PER_SECOND),
            expired_revision: 0,
            swept_at: None,
        }
    }
}

/// A grant, still the current choice for its (subject, purpose, vendor), whose validity ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    /// The subject.
    pub subject_id: String,
    /// The purpose.
    pub purpose_id: String,
    /// The vendor, or empty.
    pub vendor_id: String,
    /// The granting event.
    pub event_id: String,
    /// When it lapsed.
    pub expires_at: Timestamp,
    /// The granting event's revision.
    pub revision: Revision,
}

/// What a sweep counts of a tenant's items (those not deleted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionCounts {
    /// Registered items not deleted.
    pub items: i64,
    /// Items that became due since the last sweep (and are not held).
    pub became_due: i64,
    /// Items due now, not held.
    pub due: i64,
    /// Items due for longer than the overdue grace, not held.
    pub overdue: i64,
}

/// Retention rules, data items, legal holds and deletion attestations of each tenant.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Creates or replaces the operator's defaults for their categories (others stay), and
    /// moves the `delete_after` of the items they govern. `FailedPrecondition` naming the
    /// rule when a tenant or campaign rule already stored would break a new default's bound;
    /// then nothing is written.
    async fn apply_retention_defaults(
        &self,
        tenant: &str,
        defaults: &[RetentionDefault],
    ) -> Result<()>;

    /// Creates or replaces a tenant (`campaign_id` empty) or campaign rule, and moves the
    /// `delete_after` of the items it governs. `FailedPrecondition` naming the bound when the
    /// category's default is a legal maximum or minimum the rule breaks.
    async fn set_retention_rule(&self, tenant: &str, rule: &RetentionRule) -> Result<()>;

    /// The tenant's rules and the defaults.
    async fn retention_rules(&self, tenant: &str) -> Result<RetentionRules>;

    /// Registers an item (its `deleted_at` must be `None`). `FailedPrecondition` when no rule
    /// or default covers its category; registering the same id again with the same facts
    /// returns the stored item; with other facts, `AlreadyExists`.
    async fn register_item(
        &self,
        tenant: &str,
        item: &DataItem,
        now: Timestamp,
    ) -> Result<Registered>;

    /// The items of a subject, by id, after `after_item_id` (exclusive), at most `limit`.
    async fn subject_items(
        &self,
        tenant: &str,
        subject_id: &str,
        after_item_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredItem>>;

    /// An item by id.
    async fn data_item(&self, tenant: &str, item_id: &str) -> Result<Option<StoredItem>>;

    /// Sets the time an item's anchor event happened (ticket closed, account closed, a
    /// custom anchor) and moves its `delete_after`. `NotFound` for an unknown item;
    /// `FailedPrecondition` for one already deleted.
    async fn update_anchor(
        &self,
        tenant: &str,
        item_id: &str,
        anchor_at: Timestamp,
    ) -> Result<StoredItem>;

    /// Places a legal hold.
    async fn place_legal_hold(&self, tenant: &str, hold: &StoredHold) -> Result<()>;

    /// Releases a hold at `at` (a second release keeps the first time). `NotFound` for an
    /// unknown id.
    async fn release_legal_hold(
        &self,
        tenant: &str,
        hold_id: &str,
        at: Timestamp,
    ) -> Result<StoredHold>;

    /// The holds in force at `now` (not released, not ended), by id (UUIDv7: oldest
    /// first), after `after_hold_id` (exclusive; empty: from the first), at most `limit`;
    /// with `scope`, only those with that scope.
    async fn legal_holds(
        &self,
        tenant: &str,
        scope: Option<&HoldScope>,
        now: Timestamp,
        after_hold_id: &str,
        limit: usize,
    ) -> Result<Vec<StoredHold>>;

    /// The holds not released that cover `item` (by subject, item or campaign).
    async fn holds_covering(&self, tenant: &str, item: &DataItem) -> Result<Vec<StoredHold>>;

    /// Items not deleted whose `delete_after` has come (see [`DueQuery`]) and that no hold
    /// in force keeps, ordered by (`delete_after`, `item_id`).
    async fn due_items(&self, tenant: &str, query: &DueQuery) -> Result<Vec<StoredItem>>;

    /// Records that `item_id` was deleted (or anonymised) at `deleted_at`: appends `record`
    /// (a [`consent_core::RecordKind::DeletionAttested`] ledger record) to the tenant's
    /// chain and marks the item deleted, in one transaction. An item already attested
    /// returns its first attestation and writes nothing. `NotFound` for an unknown item.
    async fn attest_deletion(
        &self,
        tenant: &str,
        item_id: &str,
        deleted_at: Timestamp,
        record: NewRecord,
    ) -> Result<Attested>;

    /// Claims sweep run `slot` (the time divided by the sweep interval) for this replica:
    /// `true` for exactly one caller per slot, whichever replica asks first; `false` for a
    /// slot already claimed or an earlier one.
    async fn claim_sweep(&self, slot: i64, now: Timestamp) -> Result<bool>;

    /// Every tenant with a ledger (that has written at least once), ordered by id.
    async fn ledger_tenants(&self) -> Result<Vec<String>>;

    /// How far the tenant's sweeps have gone ([`SweepMark::start`] if never swept).
    async fn sweep_mark(&self, tenant: &str) -> Result<SweepMark>;

    /// Grants that are still the current choice and whose `expires_at` is after the mark
    /// (time, then revision) and at or before `until`, in that order, at most `limit`.
    async fn expired_grants(
        &self,
        tenant: &str,
        after: &SweepMark,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<ExpiredGrant>>;

    /// Appends `records` (ledger records that change no consent state: expiries, sweep
    /// summaries) to the tenant's chain and stores `mark`, in one transaction.
    async fn record_sweep(
        &self,
        tenant: &str,
        records: Vec<NewRecord>,
        mark: &SweepMark,
    ) -> Result<Vec<LedgerRecord>>;

    /// Marks the items due at `now` (not deleted, not held) that no sweep reported yet as
    /// reported, and returns how many there were: the items that became due since the last
    /// sweep, however they became due.
    async fn mark_newly_due(&self, tenant: &str, now: Timestamp) -> Result<i64>;

    /// Counts of the tenant's items at `now`: all not deleted; due; due at or before
    /// `overdue_by` (overdue). Held items are not due. (`became_due` is left 0: see
    /// [`RetentionStore::mark_newly_due`].)
    async fn retention_counts(
        &self,
        tenant: &str,
        now: Timestamp,
        overdue_by: Timestamp,
    ) -> Result<RetentionCounts>;
}
