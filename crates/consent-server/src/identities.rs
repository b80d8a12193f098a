//! Identities in the server: which subject an `identity` in a request stands for, and the
//! link logic behind `consent.v1.IdentityService` (see [`consent_core::identity`] for the
//! model: normalisation, alias keys, implicit subjects).
//!
//! An identity is hashed with its tenant's identity key, derived from the tenant's subject
//! key, which the store gives a tenant on first use ([`consent_store::IdentityStore::ensure_subject_key`])
//! and which never changes: it is read once per tenant and kept here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use consent_core::identity::{AliasKey, Identity, IdentityKey, SubjectRef, implicit_subject_id};
use consent_core::{ConsentError, Evidence, NewRecord, RecordKind, Result, Timestamp};
use consent_store::{CacheFence, LinkOutcome, Merge, MergeVia, NewLink, StoredIdentity};

use crate::context::Principal;
use crate::ledger::Ledger;

/// What a link may merge (see `LinkIdentityRequest` in the proto).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkMerging {
    /// The identity linked to another subject: merge that subject into this one.
    pub merge: bool,
    /// The identity not linked: merge its implicit subject (and its choices) into this one.
    pub carry_choices: bool,
}

/// What a link did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// The link as it now stands.
    pub identity: StoredIdentity,
    /// Nothing was written: it already stood (a retry).
    pub already_linked: bool,
    /// The tenant revision after the write (the head, when nothing was written).
    pub revision: consent_core::Revision,
    /// The subject merged into the one linked to, if one was.
    pub merged_from: Option<String>,
}

/// Each tenant's identity key, once read.
#[derive(Clone, Debug, Default)]
pub struct IdentityKeys(Arc<RwLock<HashMap<String, IdentityKey>>>);

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Its alias key.
    pub alias: AliasKey,
    /// The subject: the one it is linked to, or its implicit subject.
    pub subject_id: String,
    /// The link, when it is linked.
    pub link: Option<StoredIdentity>,
}

impl Ledger {
    /// The identity key of `tenant` (given to the tenant on first use).
    pub async fn identity_key(&self, tenant: &str) -> Result<IdentityKey> {
        if let Some(key) = self.read_keys()?.get(tenant) {
            return Ok(*key);
        }
        let chain = self.store().ensure_subject_key(tenant).await?;
        let key = IdentityKey::of(&chain).ok_or_else(|| {
            ConsentError::Internal(format!(
                "tenant `{tenant}` has no subject key after one was given"
            ))
        })?;
        self.identity_keys
            .0
            .write()
            .map_err(|_| ConsentError::Internal("the identity key map is poisoned".into()))?
            .insert(tenant.to_owned(), key);
        Ok(key)
    }

    fn read_keys(&self) -> Result<std::sync::RwLockReadGuard<'_, HashMap<String, IdentityKey>>> {
        self.identity_keys
            .0
            .read()
            .map_err(|_| ConsentError::Internal("the identity key map is poisoned".into()))
    }

    /// What `identity` stands for in the caller's tenant.
    pub async fn resolve(&self, who: &Principal, identity: &Identity) -> Result<Resolution> {
        let alias = self.identity_key(&who.tenant_id).await?.alias_key(identity);
        let link = self
            .store()
            .resolve_identity(&who.tenant_id, &alias)
            .await?;
        Ok(Resolution {
            alias,
            subject_id: link
                .as_ref()
                .map_or_else(|| implicit_subject_id(&alias), |l| l.subject_id.clone()),
            link,
        })
    }

    /// The subject a request names.
    pub async fn subject_of(&self, who: &Principal, subject: SubjectRef) -> Result<String> {
        Ok(self.named_subject(who, &subject).await?.0)
    }

    /// The subject a request names and, when by identity, the identity's alias key (a write
    /// hands it to the store, which checks in the write's transaction that the identity
    /// still stands for that subject).
    pub(crate) async fn named_subject(
        &self,
        who: &Principal,
        subject: &SubjectRef,
    ) -> Result<(String, Option<AliasKey>)> {
        match subject {
            SubjectRef::Id(id) => Ok((id.clone(), None)),
            SubjectRef::Identity(identity) => {
                let resolution = self.resolve(who, identity).await?;
                Ok((resolution.subject_id, Some(resolution.alias)))
            }
        }
    }

    /// The subjects requests name, in order (each identity resolved once).
    pub async fn subjects_of(
        &self,
        who: &Principal,
        subjects: Vec<SubjectRef>,
    ) -> Result<Vec<String>> {
        let mut resolved: HashMap<Identity, String> = HashMap::new();
        let mut ids = Vec::with_capacity(subjects.len());
        for subject in subjects {
            ids.push(match subject {
                SubjectRef::Id(id) => id,
                SubjectRef::Identity(identity) => match resolved.get(&identity) {
                    Some(id) => id.clone(),
                    None => {
                        let id = self.resolve(who, &identity).await?.subject_id;
                        resolved.insert(identity, id.clone());
                        id
                    }
                },
            });
        }
        Ok(ids)
    }

    /// Links `identity` to `subject_id` (see `IdentityStore::link_identity`), merging as
    /// `how` allows: the subject the identity is linked to (`merge`), or the identity's own
    /// implicit subject with its choices (`carry_choices`), into `subject_id`.
    pub async fn link(
        &self,
        who: &Principal,
        subject_id: &str,
        identity: &Identity,
        evidence: &Evidence,
        how: LinkMerging,
    ) -> Result<Linked> {
        let link = self.new_link(who, identity).await?;
        let tenant = who.tenant_id.as_str();
        let resolution = self
            .store()
            .resolve_identity_at(tenant, &link.alias)
            .await?;
        let standing = resolution.link;
        let merge_from = match &standing {
            Some(linked) if how.merge && linked.subject_id != subject_id => {
                Some((linked.subject_id.clone(), MergeVia::Linked(link.alias)))
            }
            // Carrying was asked, and the identity stands linked: a plain link must not be
            // sent, since an unlink committed before it would let it link without carrying
            // (an outside attack lost a withdrawal that way). Linked here: nothing to do, as
            // of this read; linked elsewhere: refused, as the store would.
            Some(linked) if how.carry_choices => {
                if linked.subject_id != subject_id {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "the {} identity is already linked to subject `{}`: unlink it from that subject first (an identity stands for one subject), or link it with merge if both subjects are the same person",
                        linked.link.kind.as_str(),
                        linked.subject_id
                    )));
                }
                return Ok(Linked {
                    already_linked: true,
                    identity: linked.clone(),
                    revision: resolution.revision,
                    merged_from: None,
                });
            }
            None if how.carry_choices => {
                let own = implicit_subject_id(&link.alias);
                // Its choices were carried once already (then it was unlinked): into this
                // subject, they are here and a plain link does; elsewhere, refused.
                match self.store().merge_root(tenant, &own).await? {
                    None => Some((own, MergeVia::NewLink(link.clone()))),
                    Some(root) if root == subject_id => None,
                    Some(root) => {
                        return Err(ConsentError::FailedPrecondition(format!(
                            "the identity's own choices were carried into subject `{root}` before it was unlinked from it: link it to `{root}`, or link it without carry_choices"
                        )));
                    }
                }
            }
            _ => None,
        };
        let Some((from, via)) = merge_from else {
            let record = link_record(who, RecordKind::IdentityLinked, subject_id, &link, evidence);
            let outcome = self
                .store()
                .link_identity(tenant, subject_id, &link, record, CacheFence::None)
                .await?;
            return Ok(Linked {
                already_linked: outcome.record.is_none(),
                identity: outcome.identity,
                revision: outcome.revision,
                merged_from: None,
            });
        };
        let mut records = Vec::with_capacity(3);
        if matches!(via, MergeVia::NewLink(_)) {
            records.push(link_record(
                who,
                RecordKind::IdentityLinked,
                subject_id,
                &link,
                evidence,
            ));
        }
        for side in [subject_id, from.as_str()] {
            let mut record = link_record(who, RecordKind::SubjectsMerged, side, &link, evidence);
            record.detail.extend([
                ("merged_into".to_owned(), subject_id.to_owned()),
                ("merged_from".to_owned(), from.clone()),
                (
                    "carry_choices".to_owned(),
                    matches!(via, MergeVia::NewLink(_)).to_string(),
                ),
            ]);
            records.push(record);
        }
        let merge = Merge {
            into: subject_id.to_owned(),
            from: from.clone(),
            via,
            records,
        };
        let merged = self
            .store()
            .merge_subjects(tenant, &merge, CacheFence::None)
            .await?;
        let identity = self
            .store()
            .resolve_identity(tenant, &link.alias)
            .await?
            .ok_or_else(|| {
                ConsentError::Unavailable(
                    "the identity was unlinked right after the merge; resolve it again".into(),
                )
            })?;
        Ok(Linked {
            already_linked: merged.records.is_empty(),
            identity,
            revision: merged.revision,
            merged_from: (!merged.records.is_empty()).then_some(from),
        })
    }

    /// Unlinks `identity` from `subject_id` (see `IdentityStore::unlink_identity`).
    pub async fn unlink(
        &self,
        who: &Principal,
        subject_id: &str,
        identity: &Identity,
        evidence: &Evidence,
    ) -> Result<LinkOutcome> {
        let link = self.new_link(who, identity).await?;
        let record = link_record(
            who,
            RecordKind::IdentityUnlinked,
            subject_id,
            &link,
            evidence,
        );
        self.store()
            .unlink_identity(
                &who.tenant_id,
                subject_id,
                &link.alias,
                record,
                CacheFence::None,
            )
            .await
    }

    /// The identities linked to `subject_id`.
    pub async fn identities(
        &self,
        who: &Principal,
        subject_id: &str,
    ) -> Result<Vec<StoredIdentity>> {
        self.store()
            .list_identities(&who.tenant_id, subject_id)
            .await
    }

    async fn new_link(&self, who: &Principal, identity: &Identity) -> Result<NewLink> {
        Ok(NewLink {
            alias: self.identity_key(&who.tenant_id).await?.alias_key(identity),
            kind: identity.kind,
            value: identity.stored_value().map(str::to_owned),
        })
    }
}

/// The ledger record of a link or unlink: the identity's type, alias key and (for the types
/// kept in clear) value, and the evidence given, as `evidence.*` (erasable like all details:
/// only their digest is in the chain).
fn link_record(
    who: &Principal,
    kind: RecordKind,
    subject_id: &str,
    link: &NewLink,
    evidence: &Evidence,
) -> NewRecord {
    let mut detail = BTreeMap::from([
        ("identity_type".to_owned(), link.kind.as_str().to_owned()),
        ("alias_sha256".to_owned(), link.alias.to_hex()),
    ]);
    if let Some(value) = &link.value {
        detail.insert("value".to_owned(), value.clone());
    }
    for (name, value) in [
        ("call_id", &evidence.call_id),
        ("recording_id", &evidence.recording_id),
        ("transcript_sha256", &evidence.transcript_sha256),
        ("notice_text_sha256", &evidence.notice_text_sha256),
        ("ip_address", &evidence.ip_address),
        ("user_agent", &evidence.user_agent),
    ] {
        if !value.is_empty() {
            detail.insert(format!("evidence.{name}"), value.clone());
        }
    }
    for (name, value) in &evidence.attributes {
        detail.insert(format!("evidence.attributes.{name}"), value.clone());
    }
    NewRecord {
        id: consent_core::commands::new_event_id(),
        kind,
        subject_id: subject_id.to_owned(),
        purpose_id: String::new(),
        at: Timestamp::now(),
        detail,
        actor_key_id: who.key_id.clone(),
    }
}
