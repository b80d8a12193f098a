//! The Rust SDK (`consent-client`) end to end against a real `consentd`: the builder, typed
//! methods and typed errors, retries that never apply a write twice (the answer to a
//! committed write lost on the way back), `filter_allowed` over 100,000 subjects equal to
//! per-subject checks, `snapshot` + `watch` reaching the state direct checks see.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consent_cache::testing::Relay;
use consent_client::pb::{self, Channel};
use consent_client::{Check, ConsentClient, Error, Record, RetryPolicy, Withdraw};
use consent_core::access::Scope;
use consent_e2e::{TestServer, apply_seed_catalog};
use consent_server::config::{AuthMode, Config};
use consent_server::server::ServerSettings;
use consent_store::Store;
use futures::StreamExt;

/// A safety net so a broken stream fails the test instead of hanging it; never a timing
/// claim.
const SAFETY: Duration = Duration::from_secs(120);

/// A client of `server` for `tenant` with `scopes`, built the way product services do.
async fn sdk(server: &TestServer, tenant: &str, scopes: &[Scope]) -> ConsentClient {
    let token = server.create_key(tenant, scopes, None).await;
    ConsentClient::builder(format!("http://{}", server.addr))
        .api_key(token)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn ok<T>(r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("SDK call failed: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_methods_and_typed_errors() {
    let server = TestServer::sqlite_with(ServerSettings::with_auth(AuthMode::ApiKey)).await;
    let admin = sdk(&server, "acme", Scope::ALL).await;
    apply_seed_catalog(&admin).await;
    let subject = "+32470000001";

    // Writes: a retried record with the caller's key is applied once.
    let record = || {
        Record::new(subject)
            .grant("call_recording")
            .deny("marketing_communications")
            .channel(Channel::Voice)
            .evidence(pb::Evidence {
                call_id: "call-42".into(),
                ..Default::default()
            })
            .idempotency_key("call-42")
    };
    let first = ok(admin.record_consent(record()).await);
    let again = ok(admin.record_consent(record()).await);
    assert_eq!(first.events.len(), 2);
    assert_eq!(
        again.events, first.events,
        "the same key replays the same events"
    );
    // Without a key the SDK makes one per logical write: two calls, two writes.
    ok(admin
        .record_consent(Record::new(subject).grant("analytics"))
        .await);
    ok(admin
        .record_consent(Record::new(subject).grant("analytics"))
        .await);

    assert!(ok(admin.allowed(subject, "call_recording").await));
    let answer = ok(admin
        .check(Check::new(subject, "call_recording").at_least_revision(first.revision))
        .await);
    assert_eq!(answer.reason(), pb::Reason::Granted);
    let batch = ok(admin
        .check_batch(pb::CheckBatchRequest {
            checks: vec![
                Check::new(subject, "call_recording").into(),
                Check::new(subject, "marketing_communications").into(),
            ],
            consistency: None,
        })
        .await);
    assert_eq!(
        batch.results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        [true, false]
    );
    let withdrawn = ok(admin
        .withdraw_consent(Withdraw::purposes(subject, ["call_recording"]).channel(Channel::Voice))
        .await);
    assert!(
        !ok(admin
            .check_at_least(subject, "call_recording", withdrawn.revision)
            .await)
        .allowed
    );
    let state = ok(admin
        .get_subject_state(pb::GetSubjectStateRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await);
    assert!(!state.purposes.is_empty());
    let events = ok(admin
        .list_events(pb::ListEventsRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await);
    assert_eq!(events.events.len(), 5, "2 + 1 + 1 + 1 withdrawal");

    // Catalogue, rights, admin.
    assert!(
        !ok(admin.list_purposes(pb::ListPurposesRequest {}).await)
            .purposes
            .is_empty()
    );
    ok(admin.list_vendors(pb::ListVendorsRequest {}).await);
    ok(admin
        .list_policy_versions(pb::ListPolicyVersionsRequest {})
        .await);
    ok(admin
        .restrict_processing(pb::RestrictProcessingRequest {
            subject_id: subject.into(),
            identity: None,
            reason: "letter".into(),
        })
        .await);
    assert_eq!(
        ok(admin
            .check(Check::new(subject, "analytics").fully_consistent())
            .await)
        .reason(),
        pb::Reason::ProcessingRestricted
    );
    ok(admin
        .lift_restriction(pb::LiftRestrictionRequest {
            subject_id: subject.into(),
            ..Default::default()
        })
        .await);
    ok(admin
        .set_gpc(pb::SetGpcRequest {
            subject_id: subject.into(),
            enabled: true,
            ..Default::default()
        })
        .await);
    let verified = ok(admin.verify_ledger(pb::VerifyLedgerRequest {}).await);
    assert!(verified.ok, "{verified:?}");
    let created = ok(admin
        .create_api_key(pb::CreateApiKeyRequest {
            name: "reader".into(),
            scopes: vec!["consent:read".into()],
            ..Default::default()
        })
        .await);
    assert!(
        ok(admin.list_api_keys(pb::ListApiKeysRequest {}).await)
            .api_keys
            .len()
            >= 2
    );

    // Typed errors, decoded from the rich details.
    match admin.check(Check::new("", "analytics")).await {
        Err(Error::InvalidArgument { violations, .. }) => {
            assert_eq!(violations[0].field, "subject_id", "{violations:?}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match admin.check(Check::new(subject, "no_such_purpose")).await {
        Err(Error::NotFound { kind, id, .. }) => {
            assert_eq!(
                (kind.as_deref(), id.as_deref()),
                (Some("purpose"), Some("no_such_purpose"))
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let reader = ok(admin.with_api_key(&created.key));
    match reader
        .record_consent(Record::new(subject).grant("analytics"))
        .await
    {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    ok(admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: created.api_key.map(|k| k.key_id).unwrap_or_default(),
        })
        .await);
    match reader.check(Check::new(subject, "analytics")).await {
        Err(Error::Unauthenticated { .. }) => {}
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    let erased = ok(admin
        .erase_subject(pb::EraseSubjectRequest {
            subject_id: subject.into(),
            reason: "request 9".into(),
            ..Default::default()
        })
        .await);
    assert!(!erased.already_erased);
    match admin
        .record_consent(Record::new(subject).grant("analytics"))
        .await
    {
        Err(Error::FailedPrecondition { .. }) => {}
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    server.stop().await;
}

/// A store in front of the server's that, once armed, drops the client's connection (the
/// relay between client and server) right after a write commits: the write is in the
/// ledger, its answer is lost.
struct LoseTheAnswer {
    inner: Arc<dyn Store>,
    /// The store method after whose success the connection drops, once.
    armed: Mutex<Option<&'static str>>,
    relay: Relay,
}

impl LoseTheAnswer {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn around<T: Send>(
        &self,
        method: &'static str,
        call: impl Future<Output = consent_core::Result<T>> + Send,
    ) -> consent_core::Result<T> {
        let out = call.await;
        let hit = out.is_ok()
            && self
                .armed
                .lock()
                .is_ok_and(|mut armed| armed.take_if(|m| *m == method).is_some());
        if hit {
            self.relay.sever();
        }
        out
    }
}

consent_store::store_proxy!(LoseTheAnswer);

fn arm(store: &LoseTheAnswer, method: &'static str) {
    if let Ok(mut armed) = store.armed.lock() {
        *armed = Some(method);
    }
}

fn disarmed(store: &LoseTheAnswer) -> bool {
    store.armed.lock().is_ok_and(|armed| armed.is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_retried_and_applied_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}/consent.db", dir.path().display());
    let stack = consent_server::stack::open(&config, true)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let server_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let relay = Relay::to(server_port)
        .await
        .unwrap_or_else(|e| panic!("relay: {e}"));
    let relay_port = relay.port;
    let store = Arc::new(LoseTheAnswer {
        inner: Arc::clone(&stack.store),
        armed: Mutex::new(None),
        relay,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(consent_server::server::serve(
        ServerSettings::with_auth(AuthMode::None),
        Arc::clone(&store) as Arc<dyn Store>,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = ConsentClient::builder(format!("http://127.0.0.1:{relay_port}"))
        .retry(RetryPolicy {
            max_attempts: 20,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            multiplier: 2.0,
        })
        .connect_lazy()
        .unwrap_or_else(|e| panic!("client: {e}"));
    apply_seed_catalog(&client).await;

    arm(&store, "append");
    let written = client
        .record_consent(Record::new("+32470000009").grant("call_recording"))
        .await;
    assert!(disarmed(&store), "the first answer was lost");
    let written = written.unwrap_or_else(|e| panic!("the retried write failed: {e:?}"));
    let events = ok(client
        .list_events(pb::ListEventsRequest {
            subject_id: "+32470000009".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(events.events.len(), 1, "applied once: {events:?}");
    let ids = |events: &[pb::ConsentEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&events.events),
        ids(&written.events),
        "the retry's answer is the first write's"
    );

    // A write whose retry could apply it twice (a legal hold) is not retried.
    arm(&store, "place_legal_hold");
    let hold = client
        .set_legal_hold(pb::SetLegalHoldRequest {
            scope: Some(pb::set_legal_hold_request::Scope::SubjectId(
                "+32470000009".into(),
            )),
            reason: "litigation".into(),
            until: None,
        })
        .await;
    assert!(disarmed(&store), "the hold was placed, its answer lost");
    assert!(
        matches!(hold, Err(Error::Unavailable { .. })),
        "not retried: {hold:?}"
    );
    let _ = stop.send(());
    let _ = serving.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_allowed_over_100_000_subjects_matches_per_subject_checks() {
    let server = TestServer::sqlite().await;
    let client = server.client.clone();
    apply_seed_catalog(&client).await;
    // Every third subject granted, the rest unknown (no decision): seeded in the ledger.
    let granted: Vec<String> = (0..100_000)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("s{i:06}"))
        .collect();
    consent_e2e::seed_grants(&server, "default", &granted).await;
    // One of them withdrew through the API since.
    ok(client
        .withdraw_consent(Withdraw::purposes("s000003", ["analytics"]).channel(Channel::Web))
        .await);
    let ids = futures::stream::iter((0..100_000).map(|i| format!("s{i:06}")));
    let allowed: Vec<String> = tokio::time::timeout(SAFETY, async {
        client
            .filter_allowed(ids, "analytics")
            .map(|r| r.unwrap_or_else(|e| panic!("filter: {e:?}")))
            .collect()
            .await
    })
    .await
    .unwrap_or_else(|_| panic!("the filter did not end"));
    let expected: Vec<String> = granted
        .iter()
        .filter(|s| *s != "s000003")
        .cloned()
        .collect();
    assert_eq!(allowed.len(), expected.len());
    assert_eq!(allowed, expected, "allowed ids, in input order");
    // Per-subject checks agree, on a sample of every kind.
    let allowed: HashSet<&String> = allowed.iter().collect();
    for i in (0..100_000).step_by(997).chain([0, 3, 6, 99_999]) {
        let id = format!("s{i:06}");
        assert_eq!(
            ok(client.allowed(&id, "analytics").await),
            allowed.contains(&id),
            "{id}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_watch_reaches_the_state_checks_see() {
    let server = TestServer::sqlite().await;
    let client = server.client.clone();
    apply_seed_catalog(&client).await;
    let subjects: Vec<String> = (0..2500).map(|i| format!("p{i:05}")).collect();
    consent_e2e::seed_grants(&server, "default", &subjects).await;

    let mut snapshot = ok(client
        .snapshot(pb::ExportSnapshotRequest {
            purpose_ids: vec!["analytics".into()],
            ..Default::default()
        })
        .await);
    // Writes while the snapshot is read: the snapshot stays at its revision, the feed
    // brings them.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in (0..2500).step_by(50) {
                let id = format!("p{i:05}");
                let w = Withdraw::purposes(id, ["analytics"]).channel(Channel::Web);
                client
                    .withdraw_consent(w)
                    .await
                    .unwrap_or_else(|e| panic!("withdraw: {e:?}"));
            }
            client
                .record_consent(Record::new("late-comer").grant("analytics"))
                .await
                .unwrap_or_else(|e| panic!("record: {e:?}"))
                .revision
        })
    };
    let mut state: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    while let Some(subject) = snapshot.subjects.next().await {
        let subject = ok(subject);
        state.insert(subject.subject_id, subject.decisions[0].allowed);
    }
    assert_eq!(state.len(), 2500, "every subject once");
    let last = writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    // Follow the feed from the snapshot's revision until the last write.
    let mut feed = client.watch(pb::WatchRequest {
        from_revision: snapshot.header.revision,
        purpose_ids: vec!["analytics".into()],
        ..Default::default()
    });
    tokio::time::timeout(SAFETY, async {
        while let Some(message) = feed.next().await {
            let message = ok(message);
            for e in message.events {
                let granted = e.decision() == pb::Decision::Granted;
                state.insert(e.subject_id, granted);
            }
            if message.revision >= last {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the feed did not reach the last write"));
    for (subject, allowed) in &state {
        assert_eq!(
            ok(client.allowed(subject, "analytics").await),
            *allowed,
            "{subject}"
        );
    }
    assert_eq!(state.len(), 2501);
    server.stop().await;
}

/// The local cache answers repeated checks in-process, and a change (an event, a right, an
/// erasure) made anywhere drops the answers it makes stale as soon as the feed delivers
/// it; checks it may not answer (fully consistent, as of a time, a revision the feed has
/// not reached) go to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_serves_hits_and_follows_every_change() {
    use consent_client::LocalCacheOptions;

    let server = TestServer::sqlite().await;
    let client = server.client.clone();
    apply_seed_catalog(&client).await;
    ok(client
        .record_consent(Record::new("hot").grant("analytics"))
        .await);
    ok(client
        .record_consent(Record::new("other").grant("analytics"))
        .await);
    let cached = ok(client.local_cache(LocalCacheOptions::default()).await);
    let hits = |c: &consent_client::LocalCache| c.hits_and_misses().0;

    assert!(ok(cached.allowed("hot", "analytics").await));
    assert!(ok(cached.allowed("other", "analytics").await));
    assert_eq!(cached.hits_and_misses(), (0, 2));
    assert!(ok(cached.allowed("hot", "analytics").await));
    assert_eq!(hits(&cached), 1, "the second check is a hit");

    // A withdrawal through another path: once the feed delivers it, no stale allow.
    let w = ok(client
        .withdraw_consent(Withdraw::purposes("hot", ["analytics"]).channel(Channel::Web))
        .await);
    tokio::time::timeout(SAFETY, cached.wait_for_revision(w.revision))
        .await
        .unwrap_or_else(|_| panic!("the feed did not deliver the withdrawal"));
    assert!(
        !ok(cached.allowed("hot", "analytics").await),
        "no stale allow"
    );
    // A revision the feed may not have reached yet is asked of the service if so.
    let ahead = ok(client
        .record_consent(Record::new("hot").grant("analytics"))
        .await);
    let fresh = ok(cached
        .check(Check::new("hot", "analytics").at_least_revision(ahead.revision))
        .await);
    assert!(fresh.allowed && fresh.revision >= ahead.revision);
    assert!(
        ok(cached.allowed("other", "analytics").await),
        "other subjects stay"
    );
    let before = hits(&cached);
    assert!(ok(cached.allowed("other", "analytics").await));
    assert_eq!(hits(&cached), before + 1);

    // A right (restriction) drops the subject's answers too.
    let restricted = ok(client
        .restrict_processing(pb::RestrictProcessingRequest {
            subject_id: "other".into(),
            identity: None,
            reason: "letter".into(),
        })
        .await);
    let restricted = restricted.change.map_or(0, |c| c.revision);
    tokio::time::timeout(SAFETY, cached.wait_for_revision(restricted))
        .await
        .unwrap_or_else(|_| panic!("the feed did not deliver the restriction"));
    assert!(!ok(cached.allowed("other", "analytics").await));

    // An erasure (its record names only the erased id) drops every answer.
    ok(client
        .record_consent(Record::new("gone").grant("analytics"))
        .await);
    assert!(ok(cached.allowed("gone", "analytics").await));
    assert!(ok(cached.allowed("gone", "analytics").await));
    let erased = ok(client
        .erase_subject(pb::EraseSubjectRequest {
            subject_id: "gone".into(),
            reason: "request".into(),
            ..Default::default()
        })
        .await);
    tokio::time::timeout(SAFETY, cached.wait_for_revision(erased.revision))
        .await
        .unwrap_or_else(|_| panic!("the feed did not deliver the erasure"));
    let after = ok(cached.check(Check::new("gone", "analytics")).await);
    assert_eq!(after.reason(), pb::Reason::SubjectErased);

    // Fully consistent and as-of checks always ask the service.
    let misses = cached.hits_and_misses().1;
    ok(cached
        .check(Check::new("gone", "analytics").fully_consistent())
        .await);
    ok(cached
        .check(Check::new("gone", "analytics").at(std::time::SystemTime::now()))
        .await);
    assert_eq!(cached.hits_and_misses().1, misses + 2);
    server.stop().await;
}

/// The catalogue, retention and rights methods of the SDK, each against the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_retention_and_rights_methods_round_trip() {
    let server = TestServer::sqlite().await;
    let client = server.client.clone();
    apply_seed_catalog(&client).await;
    consent_e2e::apply_seed_retention(&server, "default").await;

    let purpose = ok(client
        .get_purpose(pb::GetPurposeRequest {
            id: "analytics".into(),
        })
        .await);
    assert_eq!(purpose.purpose.map(|p| p.id).as_deref(), Some("analytics"));
    let policy = ok(client
        .get_policy_version(pb::GetPolicyVersionRequest {
            id: "2025-05".into(),
        })
        .await);
    assert!(policy.policy_version.is_some());
    let vendors = ok(client.list_vendors(pb::ListVendorsRequest {}).await);
    let mut vendor = vendors.vendors[0].clone();
    vendor.name = "Renamed".into();
    ok(client
        .upsert_vendor(pb::UpsertVendorRequest {
            vendor: Some(vendor),
        })
        .await);
    let mut analytics = ok(client
        .get_purpose(pb::GetPurposeRequest {
            id: "analytics".into(),
        })
        .await)
    .purpose
    .unwrap_or_default();
    analytics.description = "measures the calls".into();
    ok(client
        .upsert_purpose(pb::UpsertPurposeRequest {
            purpose: Some(analytics),
        })
        .await);

    // Retention: a campaign rule, an item, its anchor, a hold, due items, an attestation.
    ok(client
        .set_retention_rule(pb::SetRetentionRuleRequest {
            data_category: "call_recording".into(),
            campaign_id: "spring".into(),
            period: Some(prost_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            anchor: pb::RetentionAnchor::Created.into(),
            action: pb::RetentionAction::Delete.into(),
            legal_basis: "customer setting".into(),
        })
        .await);
    let rules = ok(client
        .list_retention_rules(pb::ListRetentionRulesRequest {})
        .await);
    assert!(!rules.defaults.is_empty());
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
    let request = pb::RegisterDataItemRequest {
        item_id: "rec-1".into(),
        subject_id: "+32470000005".into(),
        data_category: "call_recording".into(),
        campaign_id: "spring".into(),
        created_at: Some(consent_client::timestamp(long_ago)),
        anchor_at: None,
    };
    ok(client.register_data_item(request.clone()).await);
    let again = ok(client.register_data_item(request).await);
    assert!(again.replayed, "the same facts again are a replay");
    let item = ok(client
        .get_data_item(pb::GetDataItemRequest {
            item_id: "rec-1".into(),
        })
        .await);
    assert_eq!(item.item.map(|i| i.status()), Some(pb::DataItemStatus::Due));
    let hold = ok(client
        .set_legal_hold(pb::SetLegalHoldRequest {
            scope: Some(pb::set_legal_hold_request::Scope::ItemId("rec-1".into())),
            reason: "audit".into(),
            until: None,
        })
        .await);
    let holds = ok(client
        .list_legal_holds(pb::ListLegalHoldsRequest::default())
        .await);
    assert_eq!(holds.holds.len(), 1);
    assert!(
        ok(client
            .list_due_items(pb::ListDueItemsRequest::default())
            .await)
        .items
        .is_empty(),
        "a held item is not due"
    );
    ok(client
        .release_legal_hold(pb::ReleaseLegalHoldRequest {
            hold_id: hold.hold.map(|h| h.hold_id).unwrap_or_default(),
        })
        .await);
    let due = ok(client
        .list_due_items(pb::ListDueItemsRequest::default())
        .await);
    assert_eq!(due.items.len(), 1);
    let attested = ok(client
        .attest_deletion(pb::AttestDeletionRequest {
            item_id: "rec-1".into(),
            method: "deleted".into(),
            deleted_at: Some(consent_client::timestamp(std::time::SystemTime::now())),
        })
        .await);
    assert!(!attested.replayed);

    // An item whose period runs from an anchor event (a ticket closed).
    ok(client
        .register_data_item(pb::RegisterDataItemRequest {
            item_id: "ticket-1".into(),
            subject_id: "+32470000005".into(),
            data_category: "support_ticket".into(),
            created_at: Some(consent_client::timestamp(long_ago)),
            ..Default::default()
        })
        .await);
    let anchored = ok(client
        .update_anchor(pb::UpdateAnchorRequest {
            item_id: "ticket-1".into(),
            anchor_at: Some(consent_client::timestamp(long_ago)),
        })
        .await);
    assert!(anchored.item.is_some_and(|i| i.anchor_at.is_some()));
    // Publishing a policy version again with the same content returns the stored one.
    let republished = ok(client
        .publish_policy_version(pb::PublishPolicyVersionRequest {
            policy_version: policy.policy_version.clone(),
        })
        .await);
    assert_eq!(republished.policy_version, policy.policy_version);

    // Rights: object and withdraw the objection (marketing), lift a restriction.
    let subject = "+32470000006";
    ok(client
        .object(pb::ObjectRequest {
            subject_id: subject.into(),
            identity: None,
            purpose_ids: vec!["marketing_communications".into()],
            reason: "letter".into(),
        })
        .await);
    assert_eq!(
        ok(client
            .check(Check::new(subject, "marketing_communications"))
            .await)
        .reason(),
        pb::Reason::Objected
    );
    ok(client
        .withdraw_objection(pb::WithdrawObjectionRequest {
            subject_id: subject.into(),
            identity: None,
            purpose_ids: vec!["marketing_communications".into()],
            reason: "changed mind".into(),
        })
        .await);
    assert_eq!(
        ok(client
            .check(Check::new(subject, "marketing_communications"))
            .await)
        .reason(),
        pb::Reason::NoDecision
    );
    let mut export = client.export_subject(pb::ExportSubjectRequest {
        subject_id: subject.into(),
        ..Default::default()
    });
    let mut documents = 0;
    while let Some(document) = export.next().await {
        ok(document);
        documents += 1;
    }
    assert!(documents > 0);
    server.stop().await;
}

/// One consentd on `listener` over the SQLite file of `config`, until `stop` fires.
async fn serve_on(
    config: &Config,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    consent_store_sql::SqlStore,
) {
    let stack = consent_server::stack::open(config, true)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consent_server::server::serve(
        ServerSettings::with_auth(AuthMode::None),
        Arc::clone(&stack.store),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, task, stack.ledger)
}

/// A write sent while the server is down (stopped, then started again on the same
/// address) is retried until the server is back and applied once; a watch open across the
/// restart resumes from its last revision and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_a_server_restart_succeed_and_apply_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}/consent.db", dir.path().display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let (stop, task, ledger) = serve_on(&config, listener).await;
    let client = ConsentClient::builder(format!("http://{addr}"))
        .retry(RetryPolicy {
            max_attempts: 300,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            multiplier: 2.0,
        })
        .connect_lazy()
        .unwrap_or_else(|e| panic!("client: {e}"));
    apply_seed_catalog(&client).await;
    let first = ok(client
        .record_consent(Record::new("a").grant("analytics"))
        .await);
    let mut feed = client.watch(pb::WatchRequest::default());
    let seen = |message: Option<Result<pb::WatchResponse, Error>>| {
        message
            .unwrap_or_else(|| panic!("the feed ended"))
            .unwrap_or_else(|e| panic!("the feed failed: {e:?}"))
    };
    let mut events: Vec<String> = Vec::new();
    while events.len() < first.events.len() {
        events.extend(seen(feed.next().await).events.into_iter().map(|e| e.id));
    }

    // Down: stopped and its store closed.
    let _ = stop.send(());
    let _ = task.await;
    ledger.close().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .record_consent(Record::new("b").grant("analytics"))
                .await
        }
    });
    // Back on the same address.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
    let (stop, task, _ledger) = serve_on(&config, listener).await;
    let second = pending
        .await
        .unwrap_or_else(|e| panic!("task: {e}"))
        .unwrap_or_else(|e| panic!("the write across the restart failed: {e:?}"));
    let listed = ok(client
        .list_events(pb::ListEventsRequest {
            subject_id: "b".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(listed.events.len(), 1, "applied once");
    assert_eq!(listed.events[0].id, second.events[0].id);
    // The feed resumed from its last revision: the write made while it was down, once.
    tokio::time::timeout(SAFETY, async {
        while !events.contains(&second.events[0].id) {
            events.extend(seen(feed.next().await).events.into_iter().map(|e| e.id));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the feed did not resume"));
    let mut sorted = events.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), events.len(), "no event twice");
    let _ = stop.send(());
    let _ = task.await;
}
