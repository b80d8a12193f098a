//! `consent.v1.RetentionService`: thin handlers that validate (every bad field in one
//! `INVALID_ARGUMENT`), call [`crate::retention::Retention`], and convert.

use consent_core::retention::{
    DataItem, HoldScope, ItemStatus, RetentionAction, RetentionAnchor, RetentionBound,
    RetentionDefault, RetentionRule,
};
use consent_core::validate::Violations;
use consent_core::{ConsentError, LedgerRecord, Timestamp};
use consent_proto::v1 as pb;
use consent_proto::v1::retention_service_server::RetentionService;
use consent_store::StoredHold;
use tonic::{Request, Response, Status};

use crate::context::principal;
use crate::convert::{
    action_in, action_out, anchor_in, anchor_out, duration, duration_in, time_in, timestamp,
};
use crate::error::status;
use crate::retention::{Attestation, DueFilter, ItemView};
use crate::service::Api;

type RpcResult<T> = Result<Response<T>, Status>;

fn bound_out(bound: RetentionBound) -> pb::RetentionBound {
    match bound {
        RetentionBound::None => pb::RetentionBound::None,
        RetentionBound::Maximum => pb::RetentionBound::Maximum,
        RetentionBound::Minimum => pb::RetentionBound::Minimum,
    }
}

fn status_out(s: ItemStatus) -> pb::DataItemStatus {
    match s {
        ItemStatus::Keep => pb::DataItemStatus::Keep,
        ItemStatus::Hold => pb::DataItemStatus::Hold,
        ItemStatus::Due => pb::DataItemStatus::Due,
        ItemStatus::Deleted => pb::DataItemStatus::Deleted,
    }
}

fn rule_out(r: &RetentionRule) -> pb::RetentionRule {
    pb::RetentionRule {
        data_category: r.data_category.clone(),
        campaign_id: r.campaign_id.clone(),
        period: Some(duration(r.period_secs)),
        anchor: anchor_out(r.anchor).into(),
        action: action_out(r.action).into(),
        legal_basis: r.legal_basis.clone(),
    }
}

fn default_out(d: &RetentionDefault) -> pb::RetentionDefault {
    pb::RetentionDefault {
        rule: Some(rule_out(&d.rule)),
        bound: bound_out(d.bound).into(),
    }
}

fn item_out(view: &ItemView) -> pb::DataItem {
    let item = &view.stored.item;
    pb::DataItem {
        item_id: item.item_id.clone(),
        subject_id: item.subject_id.clone(),
        data_category: item.data_category.clone(),
        campaign_id: item.campaign_id.clone(),
        created_at: Some(timestamp(item.created_at)),
        anchor_at: item.anchor_at.map(timestamp),
        delete_after: view.verdict.delete_after.map(timestamp),
        status: status_out(view.verdict.status).into(),
        reason: view.verdict.reason.clone(),
        overdue: view.verdict.overdue,
        deleted_at: item.deleted_at.map(timestamp),
        attestation_revision: view.stored.attestation_revision.unwrap_or(0),
        registered_at: Some(timestamp(view.stored.registered_at)),
        action: view
            .action
            .map_or(pb::RetentionAction::Unspecified, action_out)
            .into(),
    }
}

fn hold_out(h: &StoredHold) -> pb::LegalHold {
    use pb::legal_hold::Scope;
    pb::LegalHold {
        hold_id: h.hold_id.clone(),
        scope: Some(match &h.hold.scope {
            HoldScope::Subject(id) => Scope::SubjectId(id.clone()),
            HoldScope::Item(id) => Scope::ItemId(id.clone()),
            HoldScope::Campaign(id) => Scope::CampaignId(id.clone()),
        }),
        reason: h.hold.reason.clone(),
        until: h.hold.until.map(timestamp),
        created_at: Some(timestamp(h.created_at)),
        released_at: h.released_at.map(timestamp),
        actor_key_id: h.actor_key_id.clone(),
    }
}

/// A ledger record to the wire; `with_detail` false leaves the detail out (Watch).
pub fn record_out(r: &LedgerRecord, with_detail: bool) -> pb::LedgerRecord {
    let n = &r.record;
    pb::LedgerRecord {
        id: n.id.clone(),
        kind: crate::convert::record_kind_out(n.kind).into(),
        subject_id: n.subject_id.clone(),
        purpose_id: n.purpose_id.clone(),
        at: Some(timestamp(n.at)),
        recorded_at: Some(timestamp(r.recorded_at)),
        detail: if with_detail {
            n.detail
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            Default::default()
        },
        detail_sha256: hex::encode(r.detail_sha256),
        revision: r.revision,
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
        actor_key_id: n.actor_key_id.clone(),
    }
}

fn finish(v: Violations) -> Result<(), Status> {
    v.finish().map_err(status)
}

/// A required time that may not be later than now plus the allowed skew.
fn past_time(
    v: &mut Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let converted = time_in(v, field, t);
    v.not_future(field, converted, now);
    converted
}

fn required_time(
    v: &mut Violations,
    field: &str,
    t: Option<&prost_types::Timestamp>,
    now: Timestamp,
) -> Timestamp {
    if t.is_none() {
        v.add(field, "is required");
    }
    past_time(v, field, t, now).unwrap_or(Timestamp(0))
}

/// Free text that must say something.
fn required_text(v: &mut Violations, field: &str, value: &str, why: &str) {
    if value.trim().is_empty() {
        v.add(field, format!("must not be empty: {why}"));
    } else {
        v.text(field, value);
    }
}

/// `d<delete_after micros>:<item_id>`: the last item of a page.
fn due_token(after: &(Timestamp, String)) -> String {
    format!("d{}:{}", after.0.as_micros(), after.1)
}

fn due_token_in(v: &mut Violations, token: &str) -> Option<(Timestamp, String)> {
    if token.is_empty() {
        return None;
    }
    let parsed = token
        .strip_prefix('d')
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(micros, id)| Some((Timestamp(micros.parse().ok()?), id.to_owned())))
        .filter(|(_, id)| !id.is_empty());
    if parsed.is_none() {
        v.add(
            "page_token",
            "is not a next_page_token of a previous ListDueItems page",
        );
    }
    parsed
}

#[tonic::async_trait]
impl RetentionService for Api {
    async fn set_retention_rule(
        &self,
        request: Request<pb::SetRetentionRuleRequest>,
    ) -> RpcResult<pb::SetRetentionRuleResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        match &r.period {
            None => v.add(
                "period",
                "is required (e.g. \"2592000s\" for 30 days in grpcurl JSON)",
            ),
            Some(p) if p.nanos != 0 => v.add(
                "period",
                "must be whole seconds (nanos 0): a retention period is not finer than a second",
            ),
            Some(_) => {}
        }
        let period = duration_in(&mut v, "period", r.period.as_ref());
        let anchor = anchor_in(r.anchor);
        v.required(
            "anchor",
            anchor,
            "RETENTION_ANCHOR_CREATED, _ACCOUNT_CLOSED, _TICKET_CLOSED, _CUSTOM",
        );
        let action = action_in(r.action);
        v.required(
            "action",
            action,
            "RETENTION_ACTION_DELETE, RETENTION_ACTION_ANONYMISE",
        );
        let rule = RetentionRule {
            data_category: r.data_category,
            campaign_id: r.campaign_id,
            period_secs: period.unwrap_or(1),
            anchor: anchor.unwrap_or(RetentionAnchor::Created),
            action: action.unwrap_or(RetentionAction::Delete),
            legal_basis: r.legal_basis,
        };
        v.retention_rule("", &rule);
        finish(v)?;
        let retention = self.retention();
        retention.set_rule(&who, &rule).await.map_err(status)?;
        Ok(Response::new(pb::SetRetentionRuleResponse {
            rule: Some(rule_out(&rule)),
        }))
    }

    async fn list_retention_rules(
        &self,
        request: Request<pb::ListRetentionRulesRequest>,
    ) -> RpcResult<pb::ListRetentionRulesResponse> {
        let who = principal(&request)?;
        let rules = self.retention().rules(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListRetentionRulesResponse {
            rules: rules.rules.iter().map(rule_out).collect(),
            defaults: rules.defaults.iter().map(default_out).collect(),
        }))
    }

    async fn register_data_item(
        &self,
        request: Request<pb::RegisterDataItemRequest>,
    ) -> RpcResult<pb::RegisterDataItemResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let now = self.retention().now();
        let mut v = Violations::new();
        v.id("item_id", &r.item_id);
        v.subject_id("subject_id", &r.subject_id);
        v.id("data_category", &r.data_category);
        v.optional_id("campaign_id", &r.campaign_id);
        let created_at = required_time(&mut v, "created_at", r.created_at.as_ref(), now);
        let anchor_at = past_time(&mut v, "anchor_at", r.anchor_at.as_ref(), now);
        if anchor_at.is_some_and(|a| a < created_at) {
            v.add("anchor_at", "must not be before created_at");
        }
        finish(v)?;
        let item = DataItem {
            item_id: r.item_id,
            subject_id: r.subject_id,
            data_category: r.data_category,
            campaign_id: r.campaign_id,
            created_at,
            anchor_at,
            deleted_at: None,
        };
        let (view, replayed) = self
            .retention()
            .register(&who, &item)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegisterDataItemResponse {
            item: Some(item_out(&view)),
            replayed,
        }))
    }

    async fn get_data_item(
        &self,
        request: Request<pb::GetDataItemRequest>,
    ) -> RpcResult<pb::GetDataItemResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.id("item_id", &r.item_id);
        finish(v)?;
        let view = self
            .retention()
            .item(&who, &r.item_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetDataItemResponse {
            item: Some(item_out(&view)),
        }))
    }

    async fn update_anchor(
        &self,
        request: Request<pb::UpdateAnchorRequest>,
    ) -> RpcResult<pb::UpdateAnchorResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let now = self.retention().now();
        let mut v = Violations::new();
        v.id("item_id", &r.item_id);
        let anchor_at = required_time(&mut v, "anchor_at", r.anchor_at.as_ref(), now);
        finish(v)?;
        let view = self
            .retention()
            .update_anchor(&who, &r.item_id, anchor_at)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateAnchorResponse {
            item: Some(item_out(&view)),
        }))
    }

    async fn set_legal_hold(
        &self,
        request: Request<pb::SetLegalHoldRequest>,
    ) -> RpcResult<pb::SetLegalHoldResponse> {
        use pb::set_legal_hold_request::Scope;
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let scope = match r.scope {
            Some(Scope::SubjectId(id)) => {
                v.subject_id("subject_id", &id);
                Some(HoldScope::Subject(id))
            }
            Some(Scope::ItemId(id)) => {
                v.id("item_id", &id);
                Some(HoldScope::Item(id))
            }
            Some(Scope::CampaignId(id)) => {
                v.id("campaign_id", &id);
                Some(HoldScope::Campaign(id))
            }
            None => {
                v.add(
                    "scope",
                    "is required: set one of subject_id, item_id, campaign_id",
                );
                None
            }
        };
        required_text(
            &mut v,
            "reason",
            &r.reason,
            "say why the data must be kept (e.g. a court order's reference)",
        );
        let until = time_in(&mut v, "until", r.until.as_ref());
        finish(v)?;
        let Some(scope) = scope else {
            return Err(status(ConsentError::invalid("scope", "is required")));
        };
        let hold = self
            .retention()
            .place_hold(&who, scope, r.reason, until)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetLegalHoldResponse {
            hold: Some(hold_out(&hold)),
        }))
    }

    async fn release_legal_hold(
        &self,
        request: Request<pb::ReleaseLegalHoldRequest>,
    ) -> RpcResult<pb::ReleaseLegalHoldResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.id("hold_id", &r.hold_id);
        finish(v)?;
        let hold = self
            .retention()
            .release_hold(&who, &r.hold_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReleaseLegalHoldResponse {
            hold: Some(hold_out(&hold)),
        }))
    }

    async fn list_legal_holds(
        &self,
        request: Request<pb::ListLegalHoldsRequest>,
    ) -> RpcResult<pb::ListLegalHoldsResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let limit = v.page_size("page_size", r.page_size);
        let after = r
            .page_token
            .strip_prefix('h')
            .unwrap_or_default()
            .to_owned();
        if !r.page_token.is_empty() && after.is_empty() {
            v.add(
                "page_token",
                "is not a next_page_token of a previous ListLegalHolds page",
            );
        }
        finish(v)?;
        let (holds, next) = self
            .retention()
            .holds(&who, &after, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListLegalHoldsResponse {
            holds: holds.iter().map(hold_out).collect(),
            next_page_token: next.map(|id| format!("h{id}")).unwrap_or_default(),
        }))
    }

    async fn list_due_items(
        &self,
        request: Request<pb::ListDueItemsRequest>,
    ) -> RpcResult<pb::ListDueItemsResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.optional_id("data_category", &r.data_category);
        v.optional_id("campaign_id", &r.campaign_id);
        let limit = v.page_size("page_size", r.page_size);
        let after = due_token_in(&mut v, &r.page_token);
        finish(v)?;
        let page = self
            .retention()
            .due(
                &who,
                &DueFilter {
                    data_category: Some(r.data_category).filter(|s| !s.is_empty()),
                    campaign_id: Some(r.campaign_id).filter(|s| !s.is_empty()),
                    overdue_only: r.overdue_only,
                    after,
                    limit,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListDueItemsResponse {
            items: page.items.iter().map(item_out).collect(),
            next_page_token: page.next.as_ref().map(due_token).unwrap_or_default(),
        }))
    }

    async fn attest_deletion(
        &self,
        request: Request<pb::AttestDeletionRequest>,
    ) -> RpcResult<pb::AttestDeletionResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let now = self.retention().now();
        let mut v = Violations::new();
        v.id("item_id", &r.item_id);
        required_text(
            &mut v,
            "method",
            &r.method,
            "say how the item was deleted or anonymised",
        );
        let deleted_at = required_time(&mut v, "deleted_at", r.deleted_at.as_ref(), now);
        finish(v)?;
        let (view, attested) = self
            .retention()
            .attest(
                &who,
                &Attestation {
                    item_id: r.item_id,
                    method: r.method,
                    deleted_at,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AttestDeletionResponse {
            item: Some(item_out(&view)),
            revision: attested.record.revision,
            record: Some(record_out(&attested.record, true)),
            replayed: attested.replayed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_tokens_round_trip_and_refuse_garbage() {
        let after = (Timestamp(1_700_000_000_000_000), "rec:1".to_owned());
        let mut v = Violations::new();
        assert_eq!(due_token_in(&mut v, &due_token(&after)), Some(after));
        for bad in ["x", "d12", "dabc:x", "d12:"] {
            let mut v = Violations::new();
            assert_eq!(due_token_in(&mut v, bad), None, "{bad}");
            assert!(v.finish().is_err(), "{bad}");
        }
    }
}
