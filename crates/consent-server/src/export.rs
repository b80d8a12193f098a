//! Everything held about a subject (GDPR Art. 15 access, Art. 20 portability), as JSON
//! documents streamed in bounded memory: the subject's flags and current decisions, each
//! consent event as a consent record carrying the ISO/IEC TS 27560 core fields, each other
//! ledger record, each registered data item with its status, and a closing summary. The
//! mapping to ISO/IEC TS 27560 is documented in `docs/retention.md`.
//!
//! Everything is read up to the tenant revision read first, so the export is one
//! consistent cut of the ledger even while writes go on.

use std::sync::Arc;

use consent_core::retention::{Erasure, RetentionBound, item_status};
use consent_core::{
    Catalog, Clock, ConsentError, ConsentEvent, Decision, LedgerRecord, Result, Revision,
    SUBJECT_WIDE, StateEntry, SubjectState, Timestamp, decide,
};
use consent_store::{Consistency, EventQuery, LedgerEntry, RetentionRules, Store, list_entries};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Ledger entries and items read per page (a page of events with the largest evidence is a
/// few MB).
const PAGE: usize = 100;
/// Documents buffered ahead of a slow reader.
const BUFFER: usize = 16;
/// Exports one replica runs at once; more are RESOURCE_EXHAUSTED (an outside test held 20
/// stalled exports of maximal evidence open: 1.6 GB). Each holds at most a page and the
/// buffer.
pub const MAX_CONCURRENT_EXPORTS: usize = 8;

/// One exported document.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportDocument {
    /// `subject`, `consent_record`, `ledger_record`, `data_item`, `identity` or `end`.
    pub document_type: &'static str,
    /// The document.
    pub json: Value,
}

/// What an export reads from, and the exports in flight.
#[derive(Clone)]
pub struct Exporter {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    overdue_grace_secs: i64,
    running: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

fn time(t: Timestamp) -> Value {
    Value::String(t.to_string())
}

fn opt_time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, time)
}

impl Exporter {
    /// An exporter over `store`, "now" from `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, overdue_grace_secs: i64) -> Exporter {
        Exporter {
            store,
            clock,
            overdue_grace_secs,
            running: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS)),
        }
    }

    /// Starts exporting `subject_id` of `tenant`; the documents arrive on the receiver (the
    /// export waits while the reader is slow, so memory stays bounded).
    /// `ResourceExhausted` when [`MAX_CONCURRENT_EXPORTS`] run already.
    pub fn start(
        &self,
        tenant: String,
        subject_id: String,
    ) -> Result<mpsc::Receiver<Result<ExportDocument>>> {
        let permit = Arc::clone(&self.running)
            .try_acquire_owned()
            .map_err(|_| {
                ConsentError::ResourceExhausted(format!(
                    "{MAX_CONCURRENT_EXPORTS} subject exports are running on this replica; retry when one ends"
                ))
            })?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this.run(&tenant, &subject_id, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn run(
        &self,
        tenant: &str,
        subject_id: &str,
        tx: &mpsc::Sender<Result<ExportDocument>>,
    ) -> Result<()> {
        let now = self.clock.now();
        let head = self.store.head(tenant).await?.revision;
        let catalog = self.store.catalog(tenant, Consistency::Full).await?;
        // The person: the subject that answers for the one asked (itself unless a merge
        // closed it) and every subject merged into that one, whose choices it holds.
        let (root, state) =
            crate::ledger::root_of(self.store.as_ref(), tenant, subject_id, Consistency::Full)
                .await?;
        let merged = if state.flags.absorbed {
            self.store.merged_into(tenant, &root).await?
        } else {
            Vec::new()
        };
        let subject_id = root.as_str();
        let group: Vec<&str> = std::iter::once(subject_id)
            .chain(merged.iter().map(String::as_str))
            .collect();
        let rules = self.store.retention_rules(tenant).await?;
        let send = |document_type: &'static str, json: Value| async move {
            tx.send(Ok(ExportDocument {
                document_type,
                json,
            }))
            .await
            .is_ok()
        };
        let decisions: Vec<Value> = catalog
            .purposes
            .values()
            .map(|p| {
                let v = decide(p, "", &state, &catalog, now);
                json!({
                    "purpose_id": p.id,
                    "allowed": v.allowed,
                    "reason": v.reason.as_str(),
                    "legal_basis": p.legal_basis.as_str(),
                    "event_id": v.event_id,
                })
            })
            .collect();
        let subject = json!({
            "subject_id": subject_id,
            "controller": {"tenant_id": tenant},
            "exported_at": time(now),
            "revision": head,
            "flags": {
                "restricted_since": opt_time(state.flags.restricted_since),
                "objections": state.flags.objections.iter()
                    .map(|(p, since)| json!({"purpose_id": p, "since": time(*since)}))
                    .collect::<Vec<_>>(),
                "gpc_since": opt_time(state.flags.gpc_since),
                // Erased: nothing else is held about the id (its entries carry a digest).
                "erased_since": opt_time(state.flags.erased_since),
            },
            "decisions": decisions,
            // Subjects merged into this one (the same person): their entries and items follow.
            "merged_subjects": merged,
        });
        if !send("subject", subject).await {
            return Ok(());
        }
        let (mut events, mut records, mut items) = (0usize, 0usize, 0usize);
        for member in &group {
            let mut after: Revision = 0;
            while after < head {
                let page = list_entries(
                    self.store.as_ref(),
                    tenant,
                    &EventQuery {
                        subject_id: Some((*member).to_owned()),
                        after_revision: after,
                        until_revision: Some(head),
                        limit: PAGE,
                        ..EventQuery::default()
                    },
                )
                .await?;
                let Some(last) = page.last() else { break };
                after = last.revision();
                for entry in &page {
                    let (document_type, json) = match entry {
                        LedgerEntry::Event(e) => {
                            events += 1;
                            let record = consent_record(
                                tenant,
                                &e.event,
                                e.evidence_erased,
                                &catalog,
                                &state,
                                &rules,
                                now,
                            );
                            ("consent_record", record)
                        }
                        LedgerEntry::Record(r) => {
                            records += 1;
                            ("ledger_record", ledger_record(&r.record, r.detail_erased))
                        }
                    };
                    if !send(document_type, json).await {
                        return Ok(());
                    }
                }
            }
            let mut after_item = String::new();
            loop {
                let page = self
                    .store
                    .subject_items(tenant, member, &after_item, PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after_item = last.item.item_id.clone();
                for stored in page {
                    items += 1;
                    let holds: Vec<_> = self
                        .store
                        .holds_covering(tenant, &stored.item)
                        .await?
                        .into_iter()
                        .map(|h| h.hold)
                        .collect();
                    let item = &stored.item;
                    let rule = rules.rule_for(&item.data_category, &item.campaign_id);
                    let verdict = rule.map(|rule| {
                        let kept_by_law = rules
                            .default_for(&item.data_category)
                            .is_some_and(|d| d.bound == RetentionBound::Minimum);
                        item_status(
                            item,
                            rule,
                            kept_by_law,
                            &holds,
                            stored.erased_at.map(|at| Erasure { at }),
                            now,
                            self.overdue_grace_secs,
                        )
                    });
                    let json = json!({
                        "item_id": item.item_id,
                        "subject_id": item.subject_id,
                        "data_category": item.data_category,
                        "campaign_id": item.campaign_id,
                        "created_at": time(item.created_at),
                        "anchor_at": opt_time(item.anchor_at),
                        "delete_after": opt_time(verdict.as_ref().and_then(|v| v.delete_after)),
                        "status": verdict.as_ref().map(|v| json!(v.status)),
                        "reason": verdict.as_ref().map(|v| v.reason.clone()),
                        "retention": rule.map(|r| json!({
                            "period_secs": r.period_secs,
                            "anchor": r.anchor.as_str(),
                            "action": r.action,
                            "legal_basis": r.legal_basis,
                        })),
                        "deleted_at": opt_time(item.deleted_at),
                        "attestation_revision": stored.attestation_revision,
                        "revision": head,
                    });
                    if !send("data_item", json).await {
                        return Ok(());
                    }
                }
            }
        }
        // The ids the person is known by: their types, and their values where the ledger
        // holds them (phone numbers and emails it holds only as keyed hashes: none to give).
        // Links made after the export's revision are left out, as later entries are.
        let identities: Vec<_> = self
            .store
            .list_identities(tenant, subject_id)
            .await?
            .into_iter()
            .filter(|i| i.revision <= head)
            .collect();
        for identity in &identities {
            let json = json!({
                "subject_id": subject_id,
                "type": identity.link.kind.as_str(),
                "value": identity.link.value,
                "stored_as": if identity.link.value.is_some() { "value" } else { "keyed_hash" },
                "linked_at": time(identity.linked_at),
                "link_revision": identity.revision,
                "revision": head,
            });
            if !send("identity", json).await {
                return Ok(());
            }
        }
        send(
            "end",
            json!({
                "subject_id": subject_id,
                "revision": head,
                "consent_records": events,
                "ledger_records": records,
                "data_items": items,
                "identities": identities.len(),
            }),
        )
        .await;
        Ok(())
    }
}

/// The state of a consent event now: whether it is still the subject's choice for its
/// purpose and vendor (and not overtaken by a withdraw-all), and what it says.
fn record_state(
    event: &ConsentEvent,
    current: Option<&StateEntry>,
    withdrawn_by_all: bool,
    now: Timestamp,
) -> &'static str {
    match current {
        _ if withdrawn_by_all => "superseded",
        Some(c) if c.event_id == event.event.id => match event.event.decision {
            Decision::Granted if event.event.expires_at.is_some_and(|t| t <= now) => "expired",
            Decision::Granted => "active",
            Decision::Denied => "refused",
            Decision::Withdrawn => "withdrawn",
        },
        _ => "superseded",
    }
}

/// A consent event as a consent record with the ISO/IEC TS 27560 core fields.
fn consent_record(
    tenant: &str,
    event: &ConsentEvent,
    evidence_erased: bool,
    catalog: &Catalog,
    state: &SubjectState,
    rules: &RetentionRules,
    now: Timestamp,
) -> Value {
    let n = &event.event;
    let purpose = catalog.purposes.get(&n.purpose_id);
    let policy = catalog.policy_version(&n.policy_version_id);
    let current = state
        .entries
        .iter()
        .find(|e| e.purpose_id == n.purpose_id && e.vendor_id == n.vendor_id);
    let recipients: Vec<Value> = if !n.vendor_id.is_empty() {
        vec![n.vendor_id.clone()]
    } else {
        purpose
            .map(|p| {
                p.vendor_ids
                    .iter()
                    .filter(|v| policy.is_none_or(|pv| pv.vendor_ids.contains(v)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
    .into_iter()
    .map(|id| {
        let name = catalog.vendors.get(&id).map(|v| v.name.clone());
        json!({"vendor_id": id, "name": name})
    })
    .collect();
    let retention = rules.rule_for("consent_proof", "").map(|r| {
        json!({
            "data_category": "consent_proof",
            "period_secs": r.period_secs,
            "anchor": r.anchor.as_str(),
            "legal_basis": r.legal_basis,
        })
    });
    // A withdraw-all collected at or after a grant overtakes it, as in `decide`.
    let this = consent_core::StateEntry::from_event(event);
    let withdraw_all = (n.decision == Decision::Granted && n.purpose_id != SUBJECT_WIDE)
        .then(|| state.subject_wide().find(|w| w.supersedes(&this)))
        .flatten();
    let withdrawn_by = withdraw_all.map(|w| w.event_id.clone()).or_else(|| {
        current
            .filter(|c| c.event_id != n.id && c.decision == Decision::Withdrawn)
            .map(|c| c.event_id.clone())
    });
    let purposes = if n.purpose_id == SUBJECT_WIDE {
        json!([{"purpose_id": "", "scope": "every purpose and vendor (a withdraw-all)"}])
    } else {
        json!([{
            "purpose_id": n.purpose_id,
            "name": purpose.map(|p| p.name.clone()),
            "description": purpose.map(|p| p.description.clone()),
            "category": purpose.map(|p| p.category.as_str()),
            "legal_basis": purpose.map(|p| p.legal_basis.as_str()),
        }])
    };
    json!({
        "schema": "consent-ledger/iso-27560-consent-record/v1",
        "record_id": n.id,
        "pii_principal_id": n.subject_id,
        "controller": {"tenant_id": tenant},
        "notice": {
            "policy_version_id": n.policy_version_id,
            "published_at": opt_time(policy.map(|p| p.published_at)),
            "text_sha256": policy.map(|p| p.text_sha256.clone()),
        },
        "purposes": purposes,
        "recipients": recipients,
        "retention": retention,
        "collection": {
            "method": n.channel.as_str(),
            "evidence": if evidence_erased {
                json!({"erased": true})
            } else {
                serde_json::to_value(&n.evidence).unwrap_or(Value::Null)
            },
            "evidence_sha256": hex::encode(event.evidence_sha256),
        },
        "event": {
            "type": n.decision.as_str(),
            "time": time(n.collected_at),
            "recorded_at": time(event.recorded_at),
            "actor_key_id": n.actor_key_id,
        },
        "validity": {"expires_at": opt_time(n.expires_at)},
        "state": record_state(event, current, withdraw_all.is_some(), now),
        "withdrawal": {
            "method": "any channel, as easily as consent was given: ConsentService.WithdrawConsent (web, mobile, voice, API)",
            "withdrawn_by_event": withdrawn_by,
        },
        "proof": {
            "revision": event.revision,
            "prev_hash": hex::encode(event.prev_hash),
            "hash": hex::encode(event.hash),
        },
    })
}

/// A ledger record as a document.
fn ledger_record(record: &LedgerRecord, detail_erased: bool) -> Value {
    let n = &record.record;
    json!({
        "record_id": n.id,
        "kind": n.kind.as_str(),
        "subject_id": n.subject_id,
        "purpose_id": n.purpose_id,
        "at": time(n.at),
        "recorded_at": time(record.recorded_at),
        "detail": if detail_erased { json!({"erased": true}) } else { json!(n.detail) },
        "actor_key_id": n.actor_key_id,
        "proof": {
            "revision": record.revision,
            "detail_sha256": hex::encode(record.detail_sha256),
            "prev_hash": hex::encode(record.prev_hash),
            "hash": hex::encode(record.hash),
        },
    })
}
