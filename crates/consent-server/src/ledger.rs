//! The application layer between the gRPC handlers and the store: validates commands,
//! plans writes with `consent_core`, reads state and decides. It knows nothing of gRPC.

use std::borrow::Cow;
use std::collections::HashMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use std::sync::Arc;

use consent_core::access::{ApiKey, KEY_RANDOM_BYTES, Scope, issue_key};
use consent_core::chain::VerifyReport;
use consent_core::commands::{RecordConsent, WithdrawConsent};
use consent_core::identity::SubjectRef;
use consent_core::merges::GroupPast;
use consent_core::{
    Catalog, ConsentError, NewRecord, PolicyVersion, Purpose, RecordKind, Result, Revision,
    SubjectFlags, SubjectState, Timestamp, Vendor, Verdict, decide,
};
use consent_store::{
    AppendOutcome, CacheFence, Consistency, ErasureOutcome, EventQuery, FlagsOutcome, LedgerEntry,
    LedgerHead, Store, StoredEvent, verify_ledger,
};

use crate::context::Principal;

/// Merges a read follows through subjects' (cached) states before it asks the store for the
/// root of the group (a merge points at the subject merged into; if that one was merged in
/// turn, one more hop).
const MERGES_FOLLOWED: usize = 4;

/// Most hops before a read gives up (each hop past [`MERGES_FOLLOWED`] jumps to the root the
/// store names; more than one such jump means merges are moving the root meanwhile).
const MAX_MERGE_HOPS: usize = 12;

/// The subject that answers for `subject_id` and its current state (see [`answering`]).
pub async fn root_of(
    store: &dyn Store,
    tenant: &str,
    subject_id: &str,
    consistency: Consistency,
) -> Result<(String, Arc<SubjectState>)> {
    let own = store
        .subject_state(tenant, subject_id, None, consistency)
        .await?;
    answering(store, tenant, subject_id, own, consistency).await
}

/// The subject that answers for `subject_id`, whose state `own` was read, and its current
/// state: itself, or, when a merge closed it, the root of its group (the subject it was
/// merged into, or the one that was merged into in turn...), whose projection holds its
/// choices. A few merges are followed through the (cached) states; a longer chain jumps to
/// the root the store names. An implicit subject (`alias:...`) whose identity is no longer
/// linked into that group answers for itself, with its own choices: an identity unlinked
/// from an account does not read the account's.
pub async fn answering(
    store: &dyn Store,
    tenant: &str,
    subject_id: &str,
    own: Arc<SubjectState>,
    consistency: Consistency,
) -> Result<(String, Arc<SubjectState>)> {
    let mut subject = subject_id.to_owned();
    let mut state = Arc::clone(&own);
    let mut hops = 0;
    while let Some(into) = state.flags.merged_into.clone() {
        hops += 1;
        let next = if hops <= MERGES_FOLLOWED {
            into
        } else if hops <= MAX_MERGE_HOPS {
            store.merge_root(tenant, &subject).await?.unwrap_or(into)
        } else {
            return Err(ConsentError::Unavailable(format!(
                "subject `{subject_id}` is being merged faster than it can be read; retry"
            )));
        };
        state = store
            .subject_state(tenant, &next, None, consistency)
            .await?;
        subject = next;
    }
    if subject != subject_id
        && let Some(alias) = consent_core::identity::implicit_alias(subject_id)
    {
        let link = store.resolve_identity(tenant, &alias).await?;
        if link.is_none_or(|l| l.subject_id != subject) {
            return Ok((subject_id.to_owned(), own));
        }
    }
    Ok((subject, state))
}

/// What answers for a subject asked: the subject, when a merge closed the one asked into it;
/// its state (current, or its history; for the history of a merged group, only the group's
/// flags and revision); and, for the history of a merged group, the group's past, which then
/// answers for any time ([`Settled::at`]).
#[derive(Clone, Debug)]
struct Settled {
    answered_by: Option<String>,
    state: Arc<SubjectState>,
    group: Option<Arc<GroupPast>>,
}

impl Settled {
    /// The subject that answered for `asked` at `at` when it was another, and its state then:
    /// a merged group as it stood at `at`, or the state read.
    fn at(&self, asked: &str, at: Timestamp) -> (Option<String>, Cow<'_, SubjectState>) {
        match &self.group {
            Some(group) => {
                let (root, state) = group.state_at(asked, at);
                ((root != asked).then_some(root), Cow::Owned(state))
            }
            None => (self.answered_by.clone(), Cow::Borrowed(self.state.as_ref())),
        }
    }
}

/// Records read per page when looking for a member's merge record.
const RECORD_PAGE: usize = 200;

/// Tries of a consent write by identity whose identity keeps moving (each resolves it
/// again); past them the caller gets `ABORTED` and may send the request again.
const IDENTITY_WRITE_TRIES: usize = 3;

/// A consent write the ledger plans and appends ([`Ledger::write_consent`]).
pub trait ConsentWrite: Clone + Send {
    /// Names the subject written (and, for a write by identity, `identity:` and the alias
    /// key, which its idempotency fingerprint takes instead of the subject).
    fn name(&mut self, subject_id: String, named_by: String);
    /// Checks the command's fields.
    fn validate(&self, now: Timestamp) -> Result<()>;
    /// The events to append.
    fn plan(
        &self,
        catalog: &Catalog,
        now: Timestamp,
        actor_key_id: &str,
    ) -> Result<Vec<consent_core::NewEvent>>;
    /// Its idempotency key and fingerprint, if it has a key.
    fn idempotency(&self) -> Option<consent_core::commands::Idempotency>;
}

macro_rules! consent_write {
    ($command:ty) => {
        impl ConsentWrite for $command {
            fn name(&mut self, subject_id: String, named_by: String) {
                (self.subject_id, self.named_by) = (subject_id, named_by);
            }
            fn validate(&self, now: Timestamp) -> Result<()> {
                <$command>::validate(self, now)
            }
            fn plan(
                &self,
                catalog: &Catalog,
                now: Timestamp,
                actor_key_id: &str,
            ) -> Result<Vec<consent_core::NewEvent>> {
                <$command>::plan(self, catalog, now, actor_key_id)
            }
            fn idempotency(&self) -> Option<consent_core::commands::Idempotency> {
                <$command>::idempotency(self)
            }
        }
    };
}
consent_write!(RecordConsent);
consent_write!(WithdrawConsent);

/// Erasures of a group's root tried, when merges keep closing the root found first.
const ERASE_TRIES: usize = 3;

/// Subjects whose current states one store call reads.
const BATCH_STATE_READ: usize = 1000;

/// History reads a batch keeps in flight at once (bounded so one batch cannot take the whole
/// connection pool).
const BATCH_READ_CONCURRENCY: usize = 8;

/// The catalogue freshness a read needs: revisions are ledger positions, not catalogue
/// versions, so only "bypass every cache" carries over; a cached catalogue is invalidated by
/// every catalogue write anyway.
fn catalog_consistency(consistency: Consistency) -> Consistency {
    match consistency {
        Consistency::Full => Consistency::Full,
        Consistency::MinimizeLatency | Consistency::AtLeast(_) => Consistency::MinimizeLatency,
    }
}

/// Issues a key for `tenant_id` with fresh randomness from the operating system.
pub fn new_api_key(
    tenant_id: &str,
    name: &str,
    scopes: Vec<Scope>,
    expires_in_secs: Option<i64>,
) -> Result<(ApiKey, String)> {
    let mut random = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|e| {
        ConsentError::Unavailable(format!("no randomness from the operating system: {e}"))
    })?;
    issue_key(
        tenant_id,
        name,
        scopes,
        Timestamp::now(),
        expires_in_secs,
        &random,
    )
}

/// A request under GDPR Art. 18 or 21, or a GPC signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RightsRequest {
    /// Restrict processing (Art. 18).
    Restrict,
    /// Lift the restriction.
    LiftRestriction,
    /// Object to these purposes (empty: every purpose an objection applies to).
    Object(Vec<String>),
    /// Withdraw the objections to these purposes (empty: the general one).
    WithdrawObjection(Vec<String>),
    /// Set (true) or clear (false) the GPC signal.
    Gpc(bool),
}

/// One check, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckQuery {
    /// The person.
    pub subject_id: String,
    /// The purpose.
    pub purpose_id: String,
    /// The vendor, or empty.
    pub vendor_id: String,
    /// As-of time; `None` means now.
    pub at: Option<Timestamp>,
}

/// A decided check and the revision it was computed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The decision.
    pub verdict: Verdict,
    /// The revision of the state it used.
    pub revision: Revision,
    /// The subject whose state answered when not the one asked: the subject a merge closed
    /// it into.
    pub answered_by: Option<String>,
}

/// The ledger service logic over a store.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
    /// Each tenant's identity key, once read (it never changes; see `crate::identities`).
    pub(crate) identity_keys: crate::identities::IdentityKeys,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Ledger {
    /// Logic over `store`.
    pub fn new(store: Arc<dyn Store>) -> Ledger {
        Ledger {
            store,
            identity_keys: Default::default(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Records decisions or withdraws choices (validated, checked against the catalogue,
    /// appended atomically) for the person `subject` names. By identity, the identity is
    /// resolved now and the store checks in the write's transaction that it still stands
    /// for the subject written: a link, unlink or merge committed in between aborts the
    /// write, which resolves the identity again (at most [`IDENTITY_WRITE_TRIES`] times).
    pub async fn write_consent<C: ConsentWrite>(
        &self,
        who: &Principal,
        subject: &SubjectRef,
        mut command: C,
    ) -> Result<AppendOutcome> {
        self.naming_again(who, subject, |subject_id, alias| {
            let named_by = alias.map_or_else(String::new, |a| format!("identity:{}", a.to_hex()));
            command.name(subject_id, named_by);
            let command = command.clone();
            async move { self.append_command(who, &command, alias.as_ref()).await }
        })
        .await
    }

    /// Runs `write` on the subject `subject` names (and, by identity, the identity's alias
    /// key); by identity, again with the identity resolved anew when the store aborts it
    /// because the identity was linked, unlinked or merged meanwhile, at most
    /// [`IDENTITY_WRITE_TRIES`] times in all.
    async fn naming_again<T, F, Fut>(
        &self,
        who: &Principal,
        subject: &SubjectRef,
        mut write: F,
    ) -> Result<T>
    where
        F: FnMut(String, Option<consent_core::identity::AliasKey>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let (subject_id, alias) = self.named_subject(who, subject).await?;
            let by_identity = alias.is_some();
            match write(subject_id, alias).await {
                Err(ConsentError::Aborted(_)) if by_identity && tries < IDENTITY_WRITE_TRIES => {}
                other => return other,
            }
        }
    }

    /// Validates and plans `command` against the catalogue and appends its events (named by
    /// `alias` when by identity: [`consent_store::LedgerStore::append_by_identity`]).
    async fn append_command<C: ConsentWrite>(
        &self,
        who: &Principal,
        command: &C,
        alias: Option<&consent_core::identity::AliasKey>,
    ) -> Result<AppendOutcome> {
        let now = Timestamp::now();
        command.validate(now)?;
        let catalog = self
            .store
            .catalog(&who.tenant_id, Consistency::Full)
            .await?;
        let events = command.plan(&catalog, now, &who.key_id)?;
        let idempotency = command.idempotency();
        let (tenant, idempotency) = (who.tenant_id.as_str(), idempotency.as_ref());
        match alias {
            Some(alias) => {
                self.store
                    .append_by_identity(tenant, &events, idempotency, CacheFence::None, alias)
                    .await
            }
            None => {
                self.store
                    .append(tenant, &events, idempotency, CacheFence::None)
                    .await
            }
        }
    }

    /// The catalogue of the caller's tenant.
    pub async fn catalog(&self, who: &Principal) -> Result<Arc<Catalog>> {
        self.store
            .catalog(&who.tenant_id, Consistency::MinimizeLatency)
            .await
    }

    /// What `decide` needs about a subject, and the subject that answers for it (itself,
    /// or the subject a merge closed it into): its current state (`at` = `None`: the
    /// projection, through the cache) or its whole history (`at` set: `decide` takes the
    /// latest choice collected by then, so one read serves every as-of time, a merged group's
    /// included), as fresh as `consistency` asks.
    async fn state(
        &self,
        tenant: &str,
        subject_id: &str,
        at: Option<Timestamp>,
        now: Timestamp,
        consistency: Consistency,
    ) -> Result<Settled> {
        let (state, group) = match at {
            Some(_) => self.history(tenant, subject_id).await?,
            None => {
                let state = self
                    .store
                    .subject_state(tenant, subject_id, None, consistency)
                    .await?;
                (state, None)
            }
        };
        self.settle(
            tenant,
            subject_id,
            state,
            group,
            at.is_some(),
            now,
            consistency,
        )
        .await
    }

    /// A subject's history and, when merges absorbed other subjects into it, the group's
    /// past ([`GroupPast`]: each member's history and when it was merged into which), so that
    /// a past time reads the group as it stood then: a member's choices count from its merge
    /// on, and before it the member answered for itself.
    async fn history(
        &self,
        tenant: &str,
        subject_id: &str,
    ) -> Result<(Arc<SubjectState>, Option<Arc<GroupPast>>)> {
        let state = self.store.subject_history(tenant, subject_id).await?;
        if !state.flags.absorbed || state.flags.merged_into.is_some() {
            return Ok((Arc::new(state), None));
        }
        let mut group = GroupPast::new(subject_id, state);
        // Merged-away subjects are closed: their histories and merge records no longer change.
        let members: Vec<_> = stream::iter(self.store.merged_into(tenant, subject_id).await?)
            .map(|member| async move {
                let history = self.store.subject_history(tenant, &member).await?;
                let (into, at) = self.closing_merge(tenant, &member).await?;
                Ok::<_, ConsentError>((member, history, into, at))
            })
            .buffer_unordered(BATCH_READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (member, history, into, at) in members {
            group.add_member(member, history.entries, history.revision, into, at);
        }
        // The state read holds the group's flags and revision; its entries are the group's.
        Ok((Arc::new(group.current().clone()), Some(Arc::new(group))))
    }

    /// The merge that closed `member`: the subject it was merged into, and when the ledger
    /// recorded it (from its own `subjects_merged` record).
    async fn closing_merge(&self, tenant: &str, member: &str) -> Result<(String, Timestamp)> {
        let mut query = EventQuery {
            subject_id: Some(member.to_owned()),
            limit: RECORD_PAGE,
            ..EventQuery::default()
        };
        loop {
            let page = self.store.list_records(tenant, &query).await?;
            for stored in &page {
                if let Some((into, from)) = stored.record.record.merged()
                    && from == member
                {
                    return Ok((into.to_owned(), stored.record.recorded_at));
                }
            }
            match page.last() {
                Some(last) if page.len() == RECORD_PAGE => {
                    query.after_revision = last.record.revision;
                }
                _ => break,
            }
        }
        Err(ConsentError::Internal(format!(
            "subject `{member}` is merged into a group but its ledger holds no merge record"
        )))
    }

    /// Follows a state read for `subject_id` to the subject that answers for it (a subject
    /// closed by a merge answers by the one it was merged into), checks it against
    /// `consistency`, and swaps a current state that holds a choice collected after `now`
    /// for the history.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        tenant: &str,
        subject_id: &str,
        state: Arc<SubjectState>,
        group: Option<Arc<GroupPast>>,
        history: bool,
        now: Timestamp,
        consistency: Consistency,
    ) -> Result<Settled> {
        // Another subject answers only when a merge closed this one (no copy of the id on
        // the usual path).
        let mut settled = Settled {
            answered_by: None,
            state,
            group,
        };
        if settled.state.flags.merged_into.is_some() {
            // The merge is followed through current states (a history carries the same
            // flags); the answering subject's history is read after.
            let own = if history {
                self.store
                    .subject_state(tenant, subject_id, None, consistency)
                    .await?
            } else {
                Arc::clone(&settled.state)
            };
            let (root, current) =
                answering(self.store.as_ref(), tenant, subject_id, own, consistency).await?;
            if root != subject_id {
                (settled.state, settled.group) = if history {
                    self.history(tenant, &root).await?
                } else {
                    (current, None)
                };
                settled.answered_by = Some(root);
            }
        }
        // A projection written before choices were capped at their recording time may hold
        // one collected slightly in the future; "now" must see the choice before it, which
        // the history has.
        if !history && settled.state.has_entries_after(now) {
            let answering = settled.answered_by.as_deref().unwrap_or(subject_id);
            (settled.state, settled.group) = self.history(tenant, answering).await?;
        }
        if let Consistency::AtLeast(min) = consistency
            && settled.state.revision < min
        {
            return Err(ConsentError::FailedPrecondition(format!(
                "at_least_revision {min} is ahead of the ledger (revision {}); use a revision a write returned",
                settled.state.revision
            )));
        }
        Ok(settled)
    }

    /// Decides a list of checks against one catalogue read, reading each subject's current
    /// state at most once and its history at most once, whatever the number of checks and
    /// of distinct as-of times.
    pub async fn check_many(
        &self,
        who: &Principal,
        queries: &[CheckQuery],
        consistency: Consistency,
    ) -> Result<Vec<Checked>> {
        let now = Timestamp::now();
        let catalog = self
            .store
            .catalog(&who.tenant_id, catalog_consistency(consistency))
            .await?;
        // Validate every reference first: a bad batch costs no state reads.
        let mut targets = Vec::with_capacity(queries.len());
        for q in queries {
            let purpose = catalog.require_purpose(&q.purpose_id)?;
            if !q.vendor_id.is_empty() {
                catalog.require_vendor(&q.vendor_id)?;
            }
            targets.push(purpose);
        }
        // (subject, whether as of a time): the history serves every as-of time.
        let key = |q: &CheckQuery| (q.subject_id.clone(), q.at.is_some());
        let tenant = who.tenant_id.as_str();
        let distinct = |as_of: bool| {
            let mut subjects: Vec<String> = queries
                .iter()
                .filter(|q| q.at.is_some() == as_of)
                .map(|q| q.subject_id.clone())
                .collect();
            subjects.sort_unstable();
            subjects.dedup();
            subjects
        };
        // (the subject that answers, its state), by the subject asked.
        let mut states: HashMap<(String, bool), Settled> = HashMap::new();
        // Current states: one store call per chunk (one query on the SQL stores).
        for chunk in distinct(false).chunks(BATCH_STATE_READ) {
            let read = self
                .store
                .subject_states(tenant, chunk, consistency)
                .await?;
            for (subject, state) in chunk.iter().zip(read) {
                let settled = self
                    .settle(tenant, subject, state, None, false, now, consistency)
                    .await?;
                states.insert((subject.clone(), false), settled);
            }
        }
        // Histories, for the as-of checks: a few subjects at a time.
        let histories: Vec<((String, bool), Settled)> = stream::iter(distinct(true))
            .map(|subject| async move {
                let state = self
                    .state(tenant, &subject, Some(now), now, consistency)
                    .await?;
                Ok::<_, ConsentError>(((subject, true), state))
            })
            .buffer_unordered(BATCH_READ_CONCURRENCY)
            .try_collect()
            .await?;
        states.extend(histories);
        let mut results = Vec::with_capacity(queries.len());
        for (q, purpose) in queries.iter().zip(targets) {
            let Some(settled) = states.get(&key(q)) else {
                return Err(ConsentError::Internal(
                    "subject state missing from the batch".into(),
                ));
            };
            let at = q.at.unwrap_or(now);
            let (answered_by, state) = settled.at(&q.subject_id, at);
            results.push(Checked {
                verdict: decide(purpose, &q.vendor_id, &state, &catalog, at),
                revision: state.revision,
                answered_by,
            });
        }
        Ok(results)
    }

    /// Every catalogued purpose's decision for one subject, ordered by purpose id.
    pub async fn subject_decisions(
        &self,
        who: &Principal,
        subject_id: &str,
        at: Option<Timestamp>,
        consistency: Consistency,
    ) -> Result<(Vec<(Purpose, Verdict)>, Revision, SubjectFlags)> {
        let now = Timestamp::now();
        let catalog = self
            .store
            .catalog(&who.tenant_id, catalog_consistency(consistency))
            .await?;
        let settled = self
            .state(&who.tenant_id, subject_id, at, now, consistency)
            .await?;
        let at = at.unwrap_or(now);
        let (answering, state) = settled.at(subject_id, at);
        let decisions = catalog
            .purposes
            .values()
            .map(|p| (p.clone(), decide(p, "", &state, &catalog, at)))
            .collect();
        let mut flags = state.flags.clone();
        // A merged-away subject answers with the flags of the subject it was merged into,
        // saying so.
        flags.merged_into = answering;
        flags.absorbed = false;
        Ok((decisions, state.revision, flags))
    }

    /// Records a rights request as ledger records (one per purpose for objections) and moves
    /// the subject's flags. An objection names catalogued purposes it can apply to
    /// (`NotFound` for an unknown one, `FailedPrecondition` for one it cannot apply to).
    pub async fn exercise(
        &self,
        who: &Principal,
        subject: &SubjectRef,
        request: &RightsRequest,
        reason: &str,
    ) -> Result<FlagsOutcome> {
        self.naming_again(who, subject, |subject_id, alias| async move {
            self.exercise_on(who, &subject_id, alias.as_ref(), request, reason)
                .await
        })
        .await
    }

    /// [`Ledger::exercise`] on `subject_id`, named by `alias` when by identity.
    async fn exercise_on(
        &self,
        who: &Principal,
        subject_id: &str,
        alias: Option<&consent_core::identity::AliasKey>,
        request: &RightsRequest,
        reason: &str,
    ) -> Result<FlagsOutcome> {
        let now = Timestamp::now();
        if let RightsRequest::Object(purposes) = request {
            let catalog = self.catalog(who).await?;
            for id in purposes {
                let purpose = catalog.require_purpose(id)?;
                if !purpose.objection_applies() {
                    return Err(ConsentError::FailedPrecondition(format!(
                        "an objection cannot apply to purpose `{id}` ({} on {}): objections apply to purposes that are not strictly necessary and rest on legitimate interest or public task, and to marketing; for a consent-based purpose withdraw the consent instead",
                        purpose.category, purpose.legal_basis
                    )));
                }
            }
        }
        let record = |kind: RecordKind, purpose_id: &str| NewRecord {
            id: consent_core::commands::new_event_id(),
            kind,
            subject_id: subject_id.to_owned(),
            purpose_id: purpose_id.to_owned(),
            at: now,
            detail: if reason.is_empty() {
                Default::default()
            } else {
                [("reason".to_owned(), reason.to_owned())].into()
            },
            actor_key_id: who.key_id.clone(),
        };
        let for_purposes = |kind: RecordKind, purposes: &[String]| -> Vec<NewRecord> {
            if purposes.is_empty() {
                vec![record(kind, "")]
            } else {
                purposes.iter().map(|p| record(kind, p)).collect()
            }
        };
        let records = match request {
            RightsRequest::Restrict => vec![record(RecordKind::ProcessingRestricted, "")],
            RightsRequest::LiftRestriction => vec![record(RecordKind::RestrictionLifted, "")],
            RightsRequest::Object(p) => for_purposes(RecordKind::Objected, p),
            RightsRequest::WithdrawObjection(p) => for_purposes(RecordKind::ObjectionWithdrawn, p),
            RightsRequest::Gpc(true) => vec![record(RecordKind::GpcSet, "")],
            RightsRequest::Gpc(false) => vec![record(RecordKind::GpcCleared, "")],
        };
        match alias {
            Some(alias) => {
                self.store
                    .append_flags_by_identity(
                        &who.tenant_id,
                        subject_id,
                        records,
                        CacheFence::None,
                        alias,
                    )
                    .await
            }
            None => {
                self.store
                    .append_flags(&who.tenant_id, subject_id, records, CacheFence::None)
                    .await
            }
        }
    }

    /// Erases a subject (Art. 17; see `LedgerStore::erase_subject`) with the subjects a
    /// merge made one person with it: the subject that answers for the group first (from
    /// then on every read by any member answers "erased"), then each subject merged into
    /// it (their closures name it until they go, so a retry after a crash finds and
    /// finishes them), then the implicit subjects of its identities that hold anything.
    /// The outcome is the first erasure's, with the counts of all.
    pub async fn erase(
        &self,
        who: &Principal,
        subject: &SubjectRef,
        reason: &str,
    ) -> Result<ErasureOutcome> {
        self.naming_again(who, subject, |subject_id, alias| async move {
            self.erase_group(who, &subject_id, alias.as_ref(), reason)
                .await
        })
        .await
    }

    /// [`Ledger::erase`] of `subject_id`, named by `alias` when by identity (the store
    /// checks, in the transaction that erases the group's root, that it still stands for
    /// that root: a merge moved its link there).
    async fn erase_group(
        &self,
        who: &Principal,
        subject_id: &str,
        alias: Option<&consent_core::identity::AliasKey>,
        reason: &str,
    ) -> Result<ErasureOutcome> {
        let tenant = who.tenant_id.as_str();
        // A merge may close the subject found between its lookup and its erasure (the store
        // then refuses): look again.
        let mut tries = 0;
        let (root, mut outcome, identities) = loop {
            let state = self
                .store
                .subject_state(tenant, subject_id, None, Consistency::Full)
                .await?;
            let settled = self
                .settle(
                    tenant,
                    subject_id,
                    state,
                    None,
                    false,
                    Timestamp::now(),
                    Consistency::Full,
                )
                .await?;
            let root = settled.answered_by.unwrap_or_else(|| subject_id.to_owned());
            // Listed before the erasure, which drops the links.
            let identities = self.store.list_identities(tenant, &root).await?;
            match self.erase_one(who, &root, alias, reason).await {
                Ok(erased) => break (root, erased, identities),
                Err(ConsentError::FailedPrecondition(_))
                    if tries < ERASE_TRIES
                        && self.store.merge_root(tenant, &root).await?.is_some() =>
                {
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // Read after the root's erasure: nothing merges into an erased subject, so the list
        // is final.
        let members = self.store.merged_into(tenant, &root).await?;
        // The person's identities own implicit subjects of their own, which keep what the
        // identity recorded before it was linked: once unlinked by the erasure, a check by
        // the identity would read them (a grant made anonymously answering again for a
        // person who asked to be erased). Those that hold anything are erased too.
        let mut implicit = Vec::new();
        for identity in &identities {
            let id = consent_core::identity::implicit_subject_id(&identity.link.alias);
            if id != root && !members.contains(&id) && self.holds_anything(tenant, &id).await? {
                implicit.push(id);
            }
        }
        for subject in members.iter().chain(&implicit) {
            let erased = self.erase_one(who, subject, None, reason).await?;
            outcome.already_erased &= erased.already_erased;
            outcome.entries_erased += erased.entries_erased;
            outcome.items_due += erased.items_due;
            outcome.items_kept += erased.items_kept;
            outcome.revision = outcome.revision.max(erased.revision);
        }
        Ok(outcome)
    }

    /// Whether the ledger holds anything about `subject_id`: a choice or a rights flag (its
    /// current state: every event has its row there), or a record (a lifted restriction, a
    /// merge).
    async fn holds_anything(&self, tenant: &str, subject_id: &str) -> Result<bool> {
        let state = self
            .store
            .subject_state(tenant, subject_id, None, Consistency::Full)
            .await?;
        if !state.entries.is_empty() || state.flags != SubjectFlags::default() {
            return Ok(true);
        }
        let query = EventQuery {
            subject_id: Some(subject_id.to_owned()),
            limit: 1,
            ..EventQuery::default()
        };
        Ok(!self.store.list_records(tenant, &query).await?.is_empty())
    }

    async fn erase_one(
        &self,
        who: &Principal,
        subject_id: &str,
        alias: Option<&consent_core::identity::AliasKey>,
        reason: &str,
    ) -> Result<ErasureOutcome> {
        let record = NewRecord {
            id: consent_core::commands::new_event_id(),
            kind: RecordKind::SubjectErased,
            // The store writes the erased id here: the clear id never reaches the record.
            subject_id: String::new(),
            purpose_id: String::new(),
            at: Timestamp::now(),
            detail: [("reason".to_owned(), reason.to_owned())].into(),
            actor_key_id: who.key_id.clone(),
        };
        match alias {
            Some(alias) => {
                self.store
                    .erase_subject_by_identity(
                        &who.tenant_id,
                        subject_id,
                        record,
                        CacheFence::None,
                        alias,
                    )
                    .await
            }
            None => {
                self.store
                    .erase_subject(&who.tenant_id, subject_id, record, CacheFence::None)
                    .await
            }
        }
    }

    /// Events and records in revision order (see `consent_store::list_entries`).
    pub async fn entries(&self, who: &Principal, query: &EventQuery) -> Result<Vec<LedgerEntry>> {
        consent_store::list_entries(self.store.as_ref(), &who.tenant_id, query).await
    }

    /// Events matching `query` (consent events only).
    pub async fn events(&self, who: &Principal, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.store.list_events(&who.tenant_id, query).await
    }

    /// Stores a purpose whose vendors exist.
    pub async fn upsert_purpose(&self, who: &Principal, purpose: &Purpose) -> Result<()> {
        let catalog = self
            .store
            .catalog(&who.tenant_id, Consistency::Full)
            .await?;
        for vendor in &purpose.vendor_ids {
            catalog.require_vendor(vendor)?;
        }
        self.store.upsert_purpose(&who.tenant_id, purpose).await
    }

    /// Stores a vendor.
    pub async fn upsert_vendor(&self, who: &Principal, vendor: &Vendor) -> Result<()> {
        self.store.upsert_vendor(&who.tenant_id, vendor).await
    }

    /// Publishes a policy version whose purposes and vendors exist.
    pub async fn publish_policy_version(
        &self,
        who: &Principal,
        policy: &PolicyVersion,
    ) -> Result<PolicyVersion> {
        let catalog = self
            .store
            .catalog(&who.tenant_id, Consistency::Full)
            .await?;
        for purpose in &policy.purpose_ids {
            catalog.require_purpose(purpose)?;
        }
        for vendor in &policy.vendor_ids {
            catalog.require_vendor(vendor)?;
        }
        self.store
            .publish_policy_version(&who.tenant_id, policy)
            .await
    }

    /// Issues an API key for the caller's tenant (`tenant_id` empty or the caller's own).
    pub async fn create_api_key(
        &self,
        who: &Principal,
        tenant_id: &str,
        name: &str,
        scopes: Vec<Scope>,
        expires_in_secs: Option<i64>,
    ) -> Result<(ApiKey, String)> {
        if !tenant_id.is_empty() && tenant_id != who.tenant_id {
            return Err(ConsentError::PermissionDenied(format!(
                "an admin key of tenant `{}` cannot create keys for tenant `{tenant_id}`",
                who.tenant_id
            )));
        }
        let (key, token) = new_api_key(&who.tenant_id, name, scopes, expires_in_secs)?;
        self.store.create_api_key(&key).await?;
        Ok((key, token))
    }

    /// The keys of the caller's tenant.
    pub async fn api_keys(&self, who: &Principal) -> Result<Vec<ApiKey>> {
        self.store.list_api_keys(&who.tenant_id).await
    }

    /// Revokes a key of the caller's tenant.
    pub async fn revoke_api_key(&self, who: &Principal, key_id: &str) -> Result<ApiKey> {
        self.store
            .revoke_api_key(&who.tenant_id, key_id, Timestamp::now())
            .await
    }

    /// Recomputes the tenant's hash chain.
    pub async fn verify(&self, who: &Principal) -> Result<(VerifyReport, LedgerHead)> {
        verify_ledger(self.store.as_ref(), &who.tenant_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_core::IdentityType;
    use consent_core::commands::new_event_id;
    use consent_core::{Channel, Decision, Evidence, LegalBasis, NewEvent, PurposeCategory};
    use consent_store::counting::CountingStore;
    use consent_store::{CacheFence, CatalogStore, IdentityStore as _, LedgerStore, NewLink};

    const HOUR: i64 = 3_600 * Timestamp::MICROS_PER_SECOND;

    /// A SQLite ledger (counting its calls, in a directory kept while the guard lives) whose
    /// tenant `t` has the purpose `analytics` and the policy version `v1`.
    async fn seeded_store() -> Result<(Arc<CountingStore>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().map_err(|e| ConsentError::Internal(e.to_string()))?;
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let sql = consent_store_sql::SqlStore::connect(&url, &Default::default()).await?;
        sql.migrate().await?;
        let store = Arc::new(CountingStore::new(Arc::new(sql)));
        let tenant = "t";
        store
            .upsert_purpose(
                tenant,
                &Purpose {
                    id: "analytics".into(),
                    name: "Analytics".into(),
                    description: String::new(),
                    category: PurposeCategory::Analytics,
                    legal_basis: LegalBasis::Consent,
                    vendor_ids: vec![],
                    validity_secs: None,
                },
            )
            .await?;
        store
            .publish_policy_version(
                tenant,
                &PolicyVersion {
                    id: "v1".into(),
                    published_at: Timestamp(0),
                    purpose_ids: vec!["analytics".into()],
                    vendor_ids: vec![],
                    material: false,
                    changed_purpose_ids: vec![],
                    text_sha256: String::new(),
                },
            )
            .await?;
        Ok((store, dir))
    }

    /// A batch with thousands of distinct as-of times for one subject reads its history once
    /// (and its current state once), and answers each time as the history says.
    #[tokio::test]
    async fn a_batch_reads_each_history_once_whatever_the_times() -> Result<()> {
        let (store, _dir) = seeded_store().await?;
        let tenant = "t";
        // 200 choices an hour apart, alternating grant and withdrawal.
        let start = Timestamp::now().as_micros() - 300 * HOUR;
        let events: Vec<NewEvent> = (0..200)
            .map(|i| NewEvent {
                id: new_event_id(),
                subject_id: "alice".into(),
                purpose_id: "analytics".into(),
                vendor_id: String::new(),
                decision: if i % 2 == 0 {
                    Decision::Granted
                } else {
                    Decision::Withdrawn
                },
                policy_version_id: "v1".into(),
                channel: Channel::Import,
                collected_at: Timestamp(start + i * HOUR),
                expires_at: None,
                evidence: Evidence::default(),
                actor_key_id: String::new(),
            })
            .collect();
        store
            .append(tenant, &events, None, CacheFence::None)
            .await?;
        let ledger = Ledger::new(store.clone());
        let who = caller();
        let mut queries: Vec<CheckQuery> = (0..4_000)
            .map(|i| CheckQuery {
                subject_id: "alice".into(),
                purpose_id: "analytics".into(),
                vendor_id: String::new(),
                at: Some(Timestamp(start + i * (HOUR / 20) + 1)),
            })
            .collect();
        queries.push(CheckQuery {
            at: None,
            ..queries[0].clone()
        });
        let before = (
            store.calls("subject_history"),
            store.calls("subject_state"),
            store.calls("subject_states"),
        );
        let checked = ledger
            .check_many(&who, &queries, Consistency::MinimizeLatency)
            .await?;
        assert_eq!(store.calls("subject_history") - before.0, 1);
        // The current state of every subject in the batch comes from one batch read.
        assert_eq!(store.calls("subject_state") - before.1, 0);
        assert_eq!(store.calls("subject_states") - before.2, 1);
        for (q, c) in queries.iter().zip(&checked).take(4_000) {
            // Within hour h after the start, choice h is the latest: even hours grant.
            let hour = q.at.map_or(0, |t| (t.as_micros() - start) / HOUR);
            assert_eq!(c.verdict.allowed, hour % 2 == 0, "{q:?}");
        }
        assert!(
            !checked[4_000].verdict.allowed,
            "now: the last choice withdrew"
        );
        Ok(())
    }

    /// The decisions of `subject`'s current state in tenant `t`.
    async fn decisions_of(store: &Arc<CountingStore>, subject: &str) -> Result<Vec<Decision>> {
        let state = store
            .subject_state("t", subject, None, Consistency::Full)
            .await?;
        Ok(state.entries.iter().map(|e| e.decision).collect())
    }

    /// A caller of tenant `t` holding every scope.
    fn caller() -> Principal {
        Principal {
            tenant_id: "t".into(),
            key_id: String::new(),
            scopes: consent_core::access::Scope::ALL.to_vec(),
        }
    }

    /// A withdrawal of `analytics`, its subject named by the ledger.
    fn analytics_withdrawn() -> WithdrawConsent {
        WithdrawConsent {
            subject_id: String::new(),
            purpose_ids: vec!["analytics".into()],
            channel: Some(Channel::Web),
            collected_at: None,
            evidence: Evidence::default(),
            idempotency_key: String::new(),
            named_by: String::new(),
        }
    }

    /// A write committed by another caller.
    type Interloper =
        Box<dyn FnOnce(Arc<dyn Store>) -> futures::future::BoxFuture<'static, Result<()>> + Send>;

    /// A store that lets another caller's write commit just before the next call of one
    /// method reaches the ledger: the races outside attacks found, made deterministic.
    struct Interposed {
        inner: Arc<dyn Store>,
        method: &'static str,
        interloper: std::sync::Mutex<Option<Interloper>>,
    }

    impl std::fmt::Debug for Interposed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Interposed")
        }
    }

    impl Interposed {
        fn new(inner: Arc<dyn Store>, method: &'static str) -> Arc<Interposed> {
            Arc::new(Interposed {
                inner,
                method,
                interloper: std::sync::Mutex::new(None),
            })
        }

        /// `write` commits before the next call of the method.
        fn before_next(&self, write: Interloper) {
            if let Ok(mut slot) = self.interloper.lock() {
                *slot = Some(write);
            }
        }

        fn inner(&self) -> &dyn Store {
            self.inner.as_ref()
        }

        async fn around<T: Send>(
            &self,
            method: &'static str,
            call: impl std::future::Future<Output = Result<T>> + Send,
        ) -> Result<T> {
            let interloper = if method == self.method {
                self.interloper.lock().ok().and_then(|mut l| l.take())
            } else {
                None
            };
            if let Some(write) = interloper {
                write(Arc::clone(&self.inner)).await?;
            }
            call.await
        }
    }

    consent_store::store_proxy!(Interposed);

    /// The link record of `link` to `subject`.
    fn link_record_of(kind: RecordKind, subject: &str, link: &NewLink) -> NewRecord {
        NewRecord {
            id: new_event_id(),
            kind,
            subject_id: subject.into(),
            purpose_id: String::new(),
            at: Timestamp::now(),
            detail: [
                ("identity_type".to_owned(), link.kind.as_str().to_owned()),
                ("alias_sha256".to_owned(), link.alias.to_hex()),
            ]
            .into(),
            actor_key_id: String::new(),
        }
    }

    /// A withdrawal by a cookie resolved while the cookie was not linked, whose write comes
    /// after the cookie's link to the account, lands on the account: the store aborts the
    /// first try (the cookie no longer stands for its implicit subject) and the ledger
    /// resolves it again. Without that, the account kept answering GRANTED.
    #[tokio::test]
    async fn a_withdrawal_by_identity_racing_a_link_lands_on_the_linked_subject() -> Result<()> {
        let (seeded, _dir) = seeded_store().await?;
        let racing = Interposed::new(seeded.clone(), "append");
        let ledger = Ledger::new(racing.clone());
        let who = caller();
        let grant = NewEvent {
            id: new_event_id(),
            subject_id: "acct".into(),
            purpose_id: "analytics".into(),
            vendor_id: String::new(),
            decision: Decision::Granted,
            policy_version_id: "v1".into(),
            channel: Channel::Web,
            collected_at: Timestamp::now(),
            expires_at: None,
            evidence: Evidence::default(),
            actor_key_id: String::new(),
        };
        seeded.append("t", &[grant], None, CacheFence::None).await?;
        let cookie = consent_core::identity::Identity::parse(IdentityType::Cookie, "ck-race")
            .map_err(ConsentError::Internal)?;
        let alias = ledger.identity_key("t").await?.alias_key(&cookie);
        let link = NewLink {
            alias,
            kind: IdentityType::Cookie,
            value: cookie.stored_value().map(str::to_owned),
        };
        // Resolved now: not linked, so its own subject.
        assert_eq!(ledger.resolve(&who, &cookie).await?.link, None);
        racing.before_next(Box::new(move |store| {
            Box::pin(async move {
                let record = link_record_of(RecordKind::IdentityLinked, "acct", &link);
                store
                    .link_identity("t", "acct", &link, record, CacheFence::None)
                    .await
                    .map(drop)
            })
        }));
        let withdrawal = analytics_withdrawn();
        let written = ledger
            .write_consent(&who, &SubjectRef::Identity(cookie), withdrawal)
            .await?;
        assert_eq!(
            written
                .events
                .iter()
                .map(|e| e.event.subject_id.as_str())
                .collect::<Vec<_>>(),
            ["acct"]
        );
        assert_eq!(decisions_of(&seeded, "acct").await?, [Decision::Withdrawn]);
        let implicit = consent_core::identity::implicit_subject_id(&alias);
        let own = seeded
            .subject_state("t", &implicit, None, Consistency::Full)
            .await?;
        assert!(
            own.entries.is_empty(),
            "nothing landed on the implicit subject"
        );
        Ok(())
    }

    /// A link asking to carry the identity's choices, while an unlink of the identity from
    /// another subject commits between its lookup and its write, never links without
    /// carrying: it is refused (the identity stood linked when read), and sent again it
    /// carries. An outside attack got the plain link, and the identity's own withdrawal
    /// stayed behind while a check by it answered GRANTED.
    #[tokio::test]
    async fn a_carry_racing_an_unlink_is_never_a_plain_link() -> Result<()> {
        let (seeded, _dir) = seeded_store().await?;
        let racing = Interposed::new(seeded.clone(), "link_identity");
        let ledger = Ledger::new(racing.clone());
        let who = caller();
        let cookie = consent_core::identity::Identity::parse(IdentityType::Cookie, "ck-carry")
            .map_err(ConsentError::Internal)?;
        let withdrawal = analytics_withdrawn();
        ledger
            .write_consent(&who, &SubjectRef::Identity(cookie.clone()), withdrawal)
            .await?;
        let alias = ledger.identity_key("t").await?.alias_key(&cookie);
        let link = NewLink {
            alias,
            kind: IdentityType::Cookie,
            value: cookie.stored_value().map(str::to_owned),
        };
        let record = link_record_of(RecordKind::IdentityLinked, "acct-a", &link);
        seeded
            .link_identity("t", "acct-a", &link, record, CacheFence::None)
            .await?;
        // Another caller unlinks it from acct-a just before this link would be written.
        let unlinked = link.clone();
        racing.before_next(Box::new(move |store| {
            Box::pin(async move {
                let record = link_record_of(RecordKind::IdentityUnlinked, "acct-a", &unlinked);
                store
                    .unlink_identity("t", "acct-a", &unlinked.alias, record, CacheFence::None)
                    .await
                    .map(drop)
            })
        }));
        let carry = crate::identities::LinkMerging {
            merge: false,
            carry_choices: true,
        };
        let first = ledger
            .link(&who, "acct-d", &cookie, &Evidence::default(), carry)
            .await;
        assert!(
            matches!(&first, Err(ConsentError::FailedPrecondition(m)) if m.contains("acct-a")),
            "{first:?}"
        );
        // The refusal wrote nothing (the unlink still waits for the link's write, which was
        // never sent); the unlink commits now, and the link is sent again.
        let pending_unlink = racing
            .interloper
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        let Some(unlink) = pending_unlink else {
            panic!("the refused link reached the store");
        };
        unlink(seeded.clone()).await?;
        let second = ledger
            .link(&who, "acct-d", &cookie, &Evidence::default(), carry)
            .await?;
        assert_eq!(
            second.merged_from,
            Some(consent_core::identity::implicit_subject_id(&alias))
        );
        assert_eq!(
            decisions_of(&seeded, "acct-d").await?,
            [Decision::Withdrawn],
            "the cookie's withdrawal was carried"
        );
        Ok(())
    }
}
