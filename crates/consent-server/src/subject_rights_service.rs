//! `consent.v1.SubjectRightsService`: thin handlers for restriction (Art. 18), objection
//! (Art. 21) and GPC (each validates, resolves the person when named by an identity, calls
//! [`crate::ledger::Ledger::exercise`], and answers what changed), the export of a subject (Art. 15/20, [`crate::export`]) and its erasure
//! (Art. 17, [`crate::ledger::Ledger::erase`]).

use consent_core::identity::SubjectRef;
use consent_core::validate::Violations;
use consent_proto::v1 as pb;
use consent_proto::v1::subject_rights_service_server::SubjectRightsService;
use consent_store::FlagsOutcome;
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::context::{Principal, principal};
use crate::convert::flags_out;
use crate::error::status;
use crate::ledger::RightsRequest;
use crate::retention_service::record_out;
use crate::service::{Api, validated_subject};

type RpcResult<T> = Result<Response<T>, Status>;

/// The fields every rights request has, checked: the person (by `subject_id` or by
/// `identity`), the purposes (if any), the reason in words. An implicit subject's `alias:`
/// id is refused, as for consent writes: once its identity is linked, a right exercised
/// there would reach no check made by the identity.
fn validated(
    subject_id: &str,
    identity: Option<&pb::Identity>,
    purpose_ids: &[String],
    reason: &str,
) -> Result<SubjectRef, Status> {
    let mut v = Violations::new();
    if identity.is_none() {
        v.subject_id("subject_id", subject_id);
    }
    let subject = crate::convert::command_subject_in(&mut v, subject_id, identity);
    v.id_list("purpose_ids", purpose_ids);
    v.text("reason", reason);
    v.finish().map_err(status)?;
    validated_subject(subject)
}

fn change_out(outcome: FlagsOutcome) -> pb::RightsChange {
    pb::RightsChange {
        changed: !outcome.records.is_empty(),
        records: outcome
            .records
            .iter()
            .map(|r| record_out(r, true))
            .collect(),
        flags: Some(flags_out(&outcome.flags)),
        revision: outcome.revision,
    }
}

impl Api {
    async fn exercise(
        &self,
        who: &Principal,
        subject: SubjectRef,
        request: RightsRequest,
        reason: &str,
    ) -> Result<pb::RightsChange, Status> {
        let outcome = self
            .ledger()
            .exercise(who, &subject, &request, reason)
            .await
            .map_err(status)?;
        self.committed(who, outcome.revision);
        Ok(change_out(outcome))
    }
}

#[tonic::async_trait]
impl SubjectRightsService for Api {
    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> RpcResult<pb::EraseSubjectResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject =
            crate::convert::subject_ref_in(&mut v, "", &r.subject_id, r.identity.as_ref());
        if r.reason
            .chars()
            .all(|c| c.is_whitespace() || consent_core::validate::is_invisible(c))
        {
            v.add(
                "reason",
                "must not be empty or blank: say why (e.g. the request's reference); it stays in the ledger",
            );
        }
        v.text("reason", &r.reason);
        v.finish().map_err(status)?;
        let subject = validated_subject(subject)?;
        let outcome = self
            .ledger()
            .erase(&who, &subject, &r.reason)
            .await
            .map_err(status)?;
        let record = &outcome.record;
        self.committed(&who, record.revision);
        Ok(Response::new(pb::EraseSubjectResponse {
            erased_id: record.record.subject_id.clone(),
            erased_at: Some(crate::convert::timestamp(record.record.at)),
            revision: record.revision,
            already_erased: outcome.already_erased,
            entries_erased: outcome.entries_erased,
            items_due: outcome.items_due,
            items_kept_by_law: outcome.items_kept,
        }))
    }

    type ExportSubjectStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportSubjectResponse, Status>> + Send + 'static>>;

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> RpcResult<Self::ExportSubjectStream> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let subject =
            crate::convert::subject_ref_in(&mut v, "", &r.subject_id, r.identity.as_ref());
        v.finish().map_err(status)?;
        let subject_id = self.subject(&who, subject).await?;
        let documents = self
            .retention()
            .exporter()
            .start(who.tenant_id, subject_id)
            .map_err(status)?;
        let stream = ReceiverStream::new(documents).map(|document| match document {
            Ok(d) => Ok(pb::ExportSubjectResponse {
                document_type: d.document_type.to_owned(),
                json: d.json.to_string(),
            }),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn restrict_processing(
        &self,
        request: Request<pb::RestrictProcessingRequest>,
    ) -> RpcResult<pb::RestrictProcessingResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let subject = validated(&r.subject_id, r.identity.as_ref(), &[], &r.reason)?;
        let change = self
            .exercise(&who, subject, RightsRequest::Restrict, &r.reason)
            .await?;
        Ok(Response::new(pb::RestrictProcessingResponse {
            change: Some(change),
        }))
    }

    async fn lift_restriction(
        &self,
        request: Request<pb::LiftRestrictionRequest>,
    ) -> RpcResult<pb::LiftRestrictionResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let subject = validated(&r.subject_id, r.identity.as_ref(), &[], &r.reason)?;
        let change = self
            .exercise(&who, subject, RightsRequest::LiftRestriction, &r.reason)
            .await?;
        Ok(Response::new(pb::LiftRestrictionResponse {
            change: Some(change),
        }))
    }

    async fn object(&self, request: Request<pb::ObjectRequest>) -> RpcResult<pb::ObjectResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let subject = validated(
            &r.subject_id,
            r.identity.as_ref(),
            &r.purpose_ids,
            &r.reason,
        )?;
        let change = self
            .exercise(
                &who,
                subject,
                RightsRequest::Object(r.purpose_ids),
                &r.reason,
            )
            .await?;
        Ok(Response::new(pb::ObjectResponse {
            change: Some(change),
        }))
    }

    async fn withdraw_objection(
        &self,
        request: Request<pb::WithdrawObjectionRequest>,
    ) -> RpcResult<pb::WithdrawObjectionResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let subject = validated(
            &r.subject_id,
            r.identity.as_ref(),
            &r.purpose_ids,
            &r.reason,
        )?;
        let change = self
            .exercise(
                &who,
                subject,
                RightsRequest::WithdrawObjection(r.purpose_ids),
                &r.reason,
            )
            .await?;
        Ok(Response::new(pb::WithdrawObjectionResponse {
            change: Some(change),
        }))
    }

    async fn set_gpc(&self, request: Request<pb::SetGpcRequest>) -> RpcResult<pb::SetGpcResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let subject = validated(&r.subject_id, r.identity.as_ref(), &[], &r.reason)?;
        let change = self
            .exercise(&who, subject, RightsRequest::Gpc(r.enabled), &r.reason)
            .await?;
        Ok(Response::new(pb::SetGpcResponse {
            change: Some(change),
        }))
    }
}
