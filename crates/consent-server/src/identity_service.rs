//! `consent.v1.IdentityService`: thin handlers over [`crate::identities`] (link, unlink,
//! resolve, list); each validates, calls the ledger and answers what stands.

use consent_core::ConsentError;
use consent_core::access::Scope;
use consent_core::identity::Identity;
use consent_core::validate::Violations;
use consent_proto::v1 as pb;
use consent_proto::v1::identity_service_server::IdentityService;
use consent_store::StoredIdentity;
use tonic::{Request, Response, Status};

use crate::context::principal;
use crate::convert::{evidence_in, identity_in, identity_type_out, timestamp};
use crate::error::status;
use crate::identities::LinkMerging;
use crate::service::Api;

type RpcResult<T> = Result<Response<T>, Status>;

/// A link to the wire (the value only for the types kept in clear).
pub fn linked_out(identity: &StoredIdentity) -> pb::LinkedIdentity {
    pb::LinkedIdentity {
        r#type: identity_type_out(identity.link.kind).into(),
        value: identity.link.value.clone().unwrap_or_default(),
        alias_sha256: identity.link.alias.to_hex(),
        subject_id: identity.subject_id.clone(),
        revision: identity.revision,
        linked_at: Some(timestamp(identity.linked_at)),
    }
}

/// The required `identity` field, normalised (violations in `v`).
fn required_identity(v: &mut Violations, identity: Option<&pb::Identity>) -> Option<Identity> {
    match identity {
        Some(identity) => identity_in(v, "identity", identity),
        None => {
            v.add("identity", "must be set: the identity's type and value");
            None
        }
    }
}

/// `INVALID_ARGUMENT` for the violations in `v`, else the identity read.
fn checked(v: Violations, identity: Option<Identity>) -> Result<Identity, Status> {
    v.finish().map_err(status)?;
    identity.ok_or_else(|| {
        status(ConsentError::Internal(
            "an identity passed validation without being read".into(),
        ))
    })
}

/// The subject, identity and evidence of a link or unlink, checked.
fn link_request(
    subject_id: &str,
    identity: Option<&pb::Identity>,
    evidence: Option<pb::Evidence>,
) -> Result<(Identity, consent_core::Evidence), Status> {
    let mut v = Violations::new();
    v.subject_id("subject_id", subject_id);
    v.not_implicit("subject_id", subject_id);
    let identity = required_identity(&mut v, identity);
    let evidence = evidence_in(evidence);
    v.evidence("evidence", &evidence);
    Ok((checked(v, identity)?, evidence))
}

#[tonic::async_trait]
impl IdentityService for Api {
    async fn link_identity(
        &self,
        request: Request<pb::LinkIdentityRequest>,
    ) -> RpcResult<pb::LinkIdentityResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let (identity, evidence) = link_request(&r.subject_id, r.identity.as_ref(), r.evidence)?;
        // A merge moves choices from one subject to another: it is a consent write too.
        if (r.merge || r.carry_choices) && !who.allows(Scope::ConsentWrite) {
            return Err(Status::permission_denied(format!(
                "merge and carry_choices move choices between subjects: the key needs the {} scope as well as {}",
                Scope::ConsentWrite.as_str(),
                Scope::IdentityWrite.as_str()
            )));
        }
        let how = LinkMerging {
            merge: r.merge,
            carry_choices: r.carry_choices,
        };
        let linked = self
            .ledger()
            .link(&who, &r.subject_id, &identity, &evidence, how)
            .await
            .map_err(status)?;
        self.committed(&who, linked.revision);
        Ok(Response::new(pb::LinkIdentityResponse {
            identity: Some(linked_out(&linked.identity)),
            already_linked: linked.already_linked,
            revision: linked.revision,
            merged_subject_id: linked.merged_from.unwrap_or_default(),
        }))
    }

    async fn unlink_identity(
        &self,
        request: Request<pb::UnlinkIdentityRequest>,
    ) -> RpcResult<pb::UnlinkIdentityResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let (identity, evidence) = link_request(&r.subject_id, r.identity.as_ref(), r.evidence)?;
        let outcome = self
            .ledger()
            .unlink(&who, &r.subject_id, &identity, &evidence)
            .await
            .map_err(status)?;
        self.committed(&who, outcome.revision);
        Ok(Response::new(pb::UnlinkIdentityResponse {
            identity: Some(linked_out(&outcome.identity)),
            revision: outcome.revision,
        }))
    }

    async fn resolve_identity(
        &self,
        request: Request<pb::ResolveIdentityRequest>,
    ) -> RpcResult<pb::ResolveIdentityResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let identity = required_identity(&mut v, r.identity.as_ref());
        let identity = checked(v, identity)?;
        let resolution = self
            .ledger()
            .resolve(&who, &identity)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResolveIdentityResponse {
            subject_id: resolution.subject_id,
            linked: resolution.link.is_some(),
            identity: resolution.link.as_ref().map(linked_out),
        }))
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> RpcResult<pb::ListIdentitiesResponse> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        v.subject_id("subject_id", &r.subject_id);
        v.finish().map_err(status)?;
        let identities = self
            .ledger()
            .identities(&who, &r.subject_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: identities.iter().map(linked_out).collect(),
        }))
    }
}
