//! Retention: how long each category of a subject's data may be kept, and what a stored item's
//! status is at a given time. Pure: the store keeps rules, items and holds; this module says
//! which rule applies, when an item must go, and why it may not go yet.
//!
//! Rules come in three layers, the most specific winning: a **campaign** rule (a tenant's
//! campaign may keep recordings shorter), the **tenant** rule for the category, and the
//! operator's **default** from the catalogue file (`[retention.<category>]`, the seed
//! periods). A default may be a *bound*: a legal **maximum** (tenants and campaigns may only
//! shorten it: recordings, 90 days) or a legal **minimum** (they may only lengthen it:
//! billing, 7 years under accounting law; such items are also kept through an erasure).
//!
//! An item's status is computed on every read against the current time ([`item_status`]):
//! it is `Due` the moment its `delete_after` passes, whatever any job did; a legal hold keeps
//! it (and says why) until released or until the hold's end; an attested deletion makes it
//! `Deleted` for good.

use serde::{Deserialize, Serialize};

use crate::error::{ConsentError, Result};
use crate::time::Timestamp;

/// One day in seconds (periods are whole seconds).
const DAY_SECS: i64 = 86_400;
/// A year as the catalogue file's durations count it (`7years`: 365.25 days each).
const YEAR_SECS: i64 = 31_557_600;

/// What starts an item's retention period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionAnchor {
    /// When the item was created.
    Created,
    /// When the subject's account was closed (account data: life of the account + 30 days).
    AccountClosed,
    /// When the support ticket was closed.
    TicketClosed,
    /// A time the product service sets itself (`UpdateAnchor`).
    Custom,
}

impl RetentionAnchor {
    /// The name used in files, messages and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionAnchor::Created => "created",
            RetentionAnchor::AccountClosed => "account_closed",
            RetentionAnchor::TicketClosed => "ticket_closed",
            RetentionAnchor::Custom => "custom",
        }
    }
}

/// What happens to an item at the end of its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionAction {
    /// Permanent deletion.
    Delete,
    /// Irreversible anonymisation (aggregates may stay).
    Anonymise,
}

/// Whether an operator default binds the tenants' and campaigns' rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionBound {
    /// A starting point: tenants and campaigns may set any period.
    #[default]
    None,
    /// A legal maximum: rules may only shorten it.
    Maximum,
    /// A legal minimum (a legal obligation to keep): rules may only lengthen it, and an
    /// erasure does not make such items due.
    Minimum,
}

/// How long one category of data is kept, for a tenant (`campaign_id` empty) or one of its
/// campaigns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    /// The category, e.g. `call_recording`.
    pub data_category: String,
    /// The campaign the rule is for; empty for the tenant-wide rule.
    pub campaign_id: String,
    /// How long after the anchor the item may be kept, in seconds (> 0).
    pub period_secs: i64,
    /// What starts the period.
    pub anchor: RetentionAnchor,
    /// What happens at its end.
    pub action: RetentionAction,
    /// Why the data may be kept that long (shown to people and auditors).
    pub legal_basis: String,
}

/// The operator's rule for a category (from the catalogue file), with its bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDefault {
    /// The rule (its `campaign_id` is empty).
    pub rule: RetentionRule,
    /// Whether the period is a legal maximum or minimum.
    pub bound: RetentionBound,
}

impl RetentionDefault {
    /// Whether a tenant or campaign rule respects this default's bound: a bound fixes the
    /// anchor (a later anchor would stretch a maximum) and limits the period one way.
    /// `FailedPrecondition` naming the bound otherwise.
    pub fn admits(&self, rule: &RetentionRule) -> Result<()> {
        let default = &self.rule;
        let category = &default.data_category;
        if self.bound != RetentionBound::None && rule.anchor != default.anchor {
            return Err(ConsentError::FailedPrecondition(format!(
                "the retention of {category} is bound by the operator to {} after {}: a rule must keep the anchor {}",
                describe_period(default.period_secs),
                default.anchor.as_str(),
                default.anchor.as_str()
            )));
        }
        match self.bound {
            RetentionBound::Maximum if rule.period_secs > default.period_secs => {
                Err(ConsentError::FailedPrecondition(format!(
                    "the retention period of {category} must be at most {} (a legal maximum set by the operator: {}), got {}",
                    describe_period(default.period_secs),
                    default.legal_basis,
                    describe_period(rule.period_secs)
                )))
            }
            RetentionBound::Minimum if rule.period_secs < default.period_secs => {
                Err(ConsentError::FailedPrecondition(format!(
                    "the retention period of {category} must be at least {} (kept under a legal obligation: {}), got {}",
                    describe_period(default.period_secs),
                    default.legal_basis,
                    describe_period(rule.period_secs)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A period for people: whole years or days when it is, else as `humantime` writes it
/// (`1month 6days 1h`, the form the catalogue file accepts).
pub fn describe_period(secs: i64) -> String {
    match secs {
        YEAR_SECS => "1 year".to_owned(),
        s if s > 0 && s % YEAR_SECS == 0 => format!("{} years", s / YEAR_SECS),
        DAY_SECS => "1 day".to_owned(),
        s if s > 0 && s % DAY_SECS == 0 => format!("{} days", s / DAY_SECS),
        s => {
            humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs())).to_string()
        }
    }
}

/// The rule that applies to an item of `category` in `campaign`: the campaign's rule, else
/// the tenant's, else the operator's default. `None` when the category has no rule at all.
pub fn rule_for<'a>(
    category: &str,
    campaign: &str,
    tenant_rules: &'a [RetentionRule],
    default: Option<&'a RetentionDefault>,
) -> Option<&'a RetentionRule> {
    let of = |campaign_id: &str| {
        tenant_rules
            .iter()
            .find(|r| r.data_category == category && r.campaign_id == campaign_id)
    };
    (!campaign.is_empty())
        .then(|| of(campaign))
        .flatten()
        .or_else(|| of(""))
        .or(default.map(|d| &d.rule))
}

/// Something a product service stores about a subject, registered with the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataItem {
    /// The product service's id for it.
    pub item_id: String,
    /// Whose data it is.
    pub subject_id: String,
    /// Its category, e.g. `call_recording`.
    pub data_category: String,
    /// The campaign it belongs to; empty for none.
    pub campaign_id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its anchor event happened (account or ticket closed, custom), once known.
    pub anchor_at: Option<Timestamp>,
    /// When its deletion (or anonymisation) was attested.
    pub deleted_at: Option<Timestamp>,
}

/// What a legal hold covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldScope {
    /// Every item of a subject.
    Subject(String),
    /// One item.
    Item(String),
    /// Every item of a campaign.
    Campaign(String),
}

/// A legal hold: the items it covers are kept whatever their period, until it is released
/// or its end passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    /// What it covers.
    pub scope: HoldScope,
    /// Why (e.g. a court order's reference).
    pub reason: String,
    /// When it ends by itself; `None` until released.
    pub until: Option<Timestamp>,
}

impl LegalHold {
    /// Whether the hold keeps `item` at `now`.
    pub fn covers(&self, item: &DataItem, now: Timestamp) -> bool {
        let in_scope = match &self.scope {
            HoldScope::Subject(s) => *s == item.subject_id,
            HoldScope::Item(i) => *i == item.item_id,
            HoldScope::Campaign(c) => !c.is_empty() && *c == item.campaign_id,
        };
        in_scope && self.until.is_none_or(|until| now < until)
    }
}

/// An item's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Within its period (or waiting for its anchor).
    Keep,
    /// Kept by a legal hold (whether or not its period has ended): never due while held.
    Hold,
    /// Must be deleted (or anonymised) now.
    Due,
    /// Its deletion was attested.
    Deleted,
}

/// An item's status at a time, with the facts behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemVerdict {
    /// The status.
    pub status: ItemStatus,
    /// When it must go (`None` while its anchor is unknown).
    pub delete_after: Option<Timestamp>,
    /// Due for longer than the grace period.
    pub overdue: bool,
    /// Why, in words (the hold's reason, the rule, the erasure, the missing anchor).
    pub reason: String,
}

/// When an item must go under `rule`: its anchor time plus the period (`None` while an
/// anchor other than creation is unknown).
pub fn delete_after(item: &DataItem, rule: &RetentionRule) -> Option<Timestamp> {
    let anchor = match rule.anchor {
        RetentionAnchor::Created => Some(item.created_at),
        _ => item.anchor_at,
    }?;
    Some(
        anchor.saturating_add(
            rule.period_secs
                .saturating_mul(Timestamp::MICROS_PER_SECOND),
        ),
    )
}

/// The erasure of the item's subject, as far as retention is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Erasure {
    /// When the subject was erased.
    pub at: Timestamp,
}

/// An item's status at `now`: deleted if attested; else held by any hold that covers it
/// (due or not yet); else due once its `delete_after` has passed, or at once after its subject's erasure
/// unless its category is kept under a legal obligation (`kept_by_law`); else kept. An item
/// due for more than `overdue_grace_secs` is overdue.
pub fn item_status(
    item: &DataItem,
    rule: &RetentionRule,
    kept_by_law: bool,
    holds: &[LegalHold],
    erasure: Option<Erasure>,
    now: Timestamp,
    overdue_grace_secs: i64,
) -> ItemVerdict {
    let scheduled = delete_after(item, rule);
    let erased = erasure.filter(|_| !kept_by_law);
    // An erasure brings the end forward to the erasure; it never postpones it.
    let due_at = match (scheduled, erased) {
        (Some(at), Some(e)) => Some(at.min(e.at)),
        (None, Some(e)) => Some(e.at),
        (at, None) => at,
    };
    if let Some(deleted) = item.deleted_at {
        return ItemVerdict {
            status: ItemStatus::Deleted,
            delete_after: due_at,
            overdue: false,
            reason: format!("deletion attested at {}", deleted),
        };
    }
    // A hold shows whether or not the item is due yet: whoever looks at a held item learns
    // that it is held, and why, before its period ends.
    if let Some(hold) = holds.iter().find(|h| h.covers(item, now)) {
        return ItemVerdict {
            status: ItemStatus::Hold,
            delete_after: due_at,
            overdue: false,
            reason: format!("legal hold: {}", hold.reason),
        };
    }
    match due_at {
        Some(at) if at <= now => ItemVerdict {
            status: ItemStatus::Due,
            delete_after: Some(at),
            overdue: now.as_micros().saturating_sub(at.as_micros())
                > overdue_grace_secs.saturating_mul(Timestamp::MICROS_PER_SECOND),
            reason: if erased.is_some_and(|e| scheduled.is_none_or(|s| e.at < s)) {
                "the subject was erased".to_owned()
            } else {
                format!(
                    "{} of {} after {} ended",
                    describe_period(rule.period_secs),
                    rule.data_category,
                    rule.anchor.as_str()
                )
            },
        },
        Some(at) => ItemVerdict {
            status: ItemStatus::Keep,
            delete_after: Some(at),
            overdue: false,
            reason: if erasure.is_some() && kept_by_law {
                format!(
                    "kept under a legal obligation despite the erasure: {}",
                    rule.legal_basis
                )
            } else {
                format!(
                    "kept {} after {}: {}",
                    describe_period(rule.period_secs),
                    rule.anchor.as_str(),
                    rule.legal_basis
                )
            },
        },
        None => ItemVerdict {
            status: ItemStatus::Keep,
            delete_after: None,
            overdue: false,
            reason: format!(
                "waiting for its anchor ({}): kept {} after it",
                rule.anchor.as_str(),
                describe_period(rule.period_secs)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: i64 = 1_700_000_000 * Timestamp::MICROS_PER_SECOND;

    fn at_day(day: i64) -> Timestamp {
        Timestamp(T0 + day * DAY_SECS * Timestamp::MICROS_PER_SECOND)
    }

    fn rule(category: &str, campaign: &str, days: i64, anchor: RetentionAnchor) -> RetentionRule {
        RetentionRule {
            data_category: category.into(),
            campaign_id: campaign.into(),
            period_secs: days * DAY_SECS,
            anchor,
            action: RetentionAction::Delete,
            legal_basis: "privacy policy section 5".into(),
        }
    }

    fn item(campaign: &str) -> DataItem {
        DataItem {
            item_id: "rec-1".into(),
            subject_id: "alice".into(),
            data_category: "call_recording".into(),
            campaign_id: campaign.into(),
            created_at: at_day(0),
            anchor_at: None,
            deleted_at: None,
        }
    }

    fn status(item: &DataItem, rule: &RetentionRule, holds: &[LegalHold], day: i64) -> ItemVerdict {
        item_status(item, rule, false, holds, None, at_day(day), 7 * DAY_SECS)
    }

    #[test]
    fn the_campaign_rule_wins_over_the_tenant_rule_and_the_default() {
        let default = RetentionDefault {
            rule: rule("call_recording", "", 90, RetentionAnchor::Created),
            bound: RetentionBound::Maximum,
        };
        let tenant = vec![
            rule("call_recording", "", 60, RetentionAnchor::Created),
            rule("call_recording", "spring", 30, RetentionAnchor::Created),
            rule("billing", "spring", 10, RetentionAnchor::Created),
        ];
        let pick = |campaign| {
            rule_for("call_recording", campaign, &tenant, Some(&default)).map(|r| r.period_secs)
        };
        assert_eq!(pick("spring"), Some(30 * DAY_SECS));
        assert_eq!(pick("autumn"), Some(60 * DAY_SECS));
        assert_eq!(pick(""), Some(60 * DAY_SECS));
        assert_eq!(
            rule_for("call_recording", "x", &[], Some(&default)).map(|r| r.period_secs),
            Some(90 * DAY_SECS)
        );
        assert_eq!(rule_for("usage_log", "", &tenant, None), None);
    }

    #[test]
    fn bounds_refuse_rules_on_the_wrong_side_naming_the_bound() {
        let maximum = RetentionDefault {
            rule: rule("call_recording", "", 90, RetentionAnchor::Created),
            bound: RetentionBound::Maximum,
        };
        assert!(
            maximum
                .admits(&rule("call_recording", "c", 30, RetentionAnchor::Created))
                .is_ok()
        );
        assert!(
            maximum
                .admits(&rule("call_recording", "", 90, RetentionAnchor::Created))
                .is_ok()
        );
        let longer = maximum.admits(&rule("call_recording", "c", 91, RetentionAnchor::Created));
        assert!(
            matches!(&longer, Err(ConsentError::FailedPrecondition(m)) if m.contains("at most 90 days")),
            "{longer:?}"
        );
        let later_anchor =
            maximum.admits(&rule("call_recording", "c", 30, RetentionAnchor::Custom));
        assert!(
            matches!(&later_anchor, Err(ConsentError::FailedPrecondition(m)) if m.contains("anchor created")),
            "{later_anchor:?}"
        );
        let minimum = RetentionDefault {
            rule: rule("billing", "", 7 * 365, RetentionAnchor::Created),
            bound: RetentionBound::Minimum,
        };
        let shorter = minimum.admits(&rule("billing", "", 365, RetentionAnchor::Created));
        assert!(
            matches!(&shorter, Err(ConsentError::FailedPrecondition(m)) if m.contains("at least 2555 days")),
            "{shorter:?}"
        );
        assert!(
            minimum
                .admits(&rule("billing", "", 10 * 365, RetentionAnchor::Created))
                .is_ok()
        );
        let free = RetentionDefault {
            bound: RetentionBound::None,
            ..maximum.clone()
        };
        assert!(
            free.admits(&rule("call_recording", "", 400, RetentionAnchor::Custom))
                .is_ok()
        );
    }

    #[test]
    fn an_item_is_due_the_moment_its_period_ends() {
        let r = rule("call_recording", "", 30, RetentionAnchor::Created);
        let i = item("");
        assert_eq!(status(&i, &r, &[], 29).status, ItemStatus::Keep);
        let end = status(&i, &r, &[], 30);
        assert_eq!(
            (end.status, end.delete_after),
            (ItemStatus::Due, Some(at_day(30)))
        );
        assert!(!end.overdue);
        assert!(
            status(&i, &r, &[], 38).overdue,
            "due for more than the 7-day grace"
        );
    }

    #[test]
    fn an_item_waits_for_its_anchor() {
        let r = rule("support_ticket", "", 730, RetentionAnchor::TicketClosed);
        let mut i = item("");
        let open = status(&i, &r, &[], 5000);
        assert_eq!((open.status, open.delete_after), (ItemStatus::Keep, None));
        assert!(open.reason.contains("ticket_closed"), "{}", open.reason);
        i.anchor_at = Some(at_day(100));
        assert_eq!(status(&i, &r, &[], 829).status, ItemStatus::Keep);
        assert_eq!(status(&i, &r, &[], 830).status, ItemStatus::Due);
    }

    #[test]
    fn holds_on_subject_item_and_campaign_keep_an_item_until_they_end() {
        let r = rule("call_recording", "", 30, RetentionAnchor::Created);
        let i = item("spring");
        for scope in [
            HoldScope::Subject("alice".into()),
            HoldScope::Item("rec-1".into()),
            HoldScope::Campaign("spring".into()),
        ] {
            let hold = LegalHold {
                scope: scope.clone(),
                reason: "court order 2026/123".into(),
                until: Some(at_day(60)),
            };
            let held = status(&i, &r, std::slice::from_ref(&hold), 40);
            assert_eq!(held.status, ItemStatus::Hold, "{scope:?}");
            let early = status(&i, &r, std::slice::from_ref(&hold), 10);
            assert_eq!(early.status, ItemStatus::Hold, "held before due: {scope:?}");
            assert!(held.reason.contains("court order 2026/123"));
            assert_eq!(
                status(&i, &r, &[hold], 60).status,
                ItemStatus::Due,
                "{scope:?}"
            );
        }
        let elsewhere = LegalHold {
            scope: HoldScope::Campaign("autumn".into()),
            reason: "other".into(),
            until: None,
        };
        assert_eq!(status(&i, &r, &[elsewhere], 40).status, ItemStatus::Due);
        let no_campaign = LegalHold {
            scope: HoldScope::Campaign(String::new()),
            reason: "empty".into(),
            until: None,
        };
        assert_eq!(
            status(&item(""), &r, &[no_campaign], 40).status,
            ItemStatus::Due
        );
    }

    #[test]
    fn erasure_makes_items_due_at_once_unless_kept_by_law() {
        let r = rule("call_recording", "", 90, RetentionAnchor::Created);
        let erased = Some(Erasure { at: at_day(10) });
        let v = item_status(&item(""), &r, false, &[], erased, at_day(11), DAY_SECS);
        assert_eq!(
            (v.status, v.delete_after),
            (ItemStatus::Due, Some(at_day(10)))
        );
        assert!(v.reason.contains("erased"), "{}", v.reason);
        let billing = rule("billing", "", 7 * 365, RetentionAnchor::Created);
        let kept = item_status(&item(""), &billing, true, &[], erased, at_day(11), DAY_SECS);
        assert_eq!(kept.status, ItemStatus::Keep);
        assert!(kept.reason.contains("legal obligation"), "{}", kept.reason);
    }

    #[test]
    fn an_attested_deletion_is_final() {
        let r = rule("call_recording", "", 30, RetentionAnchor::Created);
        let mut i = item("");
        i.deleted_at = Some(at_day(31));
        let hold = LegalHold {
            scope: HoldScope::Item("rec-1".into()),
            reason: "late".into(),
            until: None,
        };
        assert_eq!(status(&i, &r, &[hold], 40).status, ItemStatus::Deleted);
    }

    #[test]
    fn periods_read_as_days() {
        assert_eq!(describe_period(DAY_SECS), "1 day");
        assert_eq!(describe_period(90 * DAY_SECS), "90 days");
        assert_eq!(describe_period(90), "1m 30s");
        assert_eq!(describe_period(1), "1s");
        assert_eq!(describe_period(3600), "1h");
        assert_eq!(describe_period(13 * 2_630_016), "1year 1month 43m 12s");
        assert_eq!(describe_period(7 * YEAR_SECS), "7 years");
        assert_eq!(describe_period(YEAR_SECS), "1 year");
    }

    proptest! {
        /// No hold that covers an item ever lets it be due, whatever the times.
        #[test]
        fn a_covering_hold_never_lets_an_item_be_due(
            period_days in 1i64..4000,
            now_day in -10i64..8000,
            until_day in proptest::option::of(-10i64..8000),
            erased_day in proptest::option::of(-10i64..8000),
            scope in 0u8..3,
        ) {
            let r = rule("call_recording", "", period_days, RetentionAnchor::Created);
            let i = item("spring");
            let hold = LegalHold {
                scope: match scope {
                    0 => HoldScope::Subject("alice".into()),
                    1 => HoldScope::Item("rec-1".into()),
                    _ => HoldScope::Campaign("spring".into()),
                },
                reason: "r".into(),
                until: until_day.map(at_day),
            };
            let now = at_day(now_day);
            let v = item_status(&i, &r, false, std::slice::from_ref(&hold), erased_day.map(|d| Erasure { at: at_day(d) }), now, 0);
            if hold.covers(&i, now) {
                prop_assert_ne!(v.status, ItemStatus::Due);
            }
            // Due exactly when the end has passed and no hold applies.
            let end = at_day(period_days).min(erased_day.map_or(Timestamp(i64::MAX), at_day));
            prop_assert_eq!(
                v.status == ItemStatus::Due,
                end <= now && !hold.covers(&i, now)
            );
        }

        /// A campaign rule never applies to another campaign's items.
        #[test]
        fn rules_apply_to_their_own_campaign(campaign in "[a-z]{0,3}", other in "[a-z]{1,3}") {
            let tenant = vec![rule("call_recording", &other, 1, RetentionAnchor::Created)];
            let picked = rule_for("call_recording", &campaign, &tenant, None);
            prop_assert_eq!(picked.is_some(), campaign == other);
        }
    }
}
