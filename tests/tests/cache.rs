//! Cache coherence through real servers: two replicas sharing one PostgreSQL (and Redis).

use consent_client::pb;
use consent_client::pb::{Channel, Decision, Reason};
use consent_e2e::RawChecks;
use consent_e2e::{TestServer, apply_seed_catalog, record};
use consent_server::config::{AuthMode, CacheConfig, CacheMode};
use consent_server::server::ServerSettings;

fn with_consistency(subject: &str, requirement: pb::consistency::Requirement) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: "call_recording".into(),
        consistency: Some(pb::Consistency {
            requirement: Some(requirement),
        }),
        ..Default::default()
    }
}

/// Records `decision` on call recording for the subject `caller` through `server`; returns
/// the revision.
async fn record_on(server: &TestServer, decision: Decision, channel: Channel) -> i64 {
    server
        .client
        .consent()
        .record_consent(record("caller", &[("call_recording", decision)], channel))
        .await
        .unwrap_or_else(|e| panic!("record: {e}"))
        .into_inner()
        .revision
}

async fn reason(server: &TestServer, subject: &str) -> Reason {
    server
        .client
        .check_raw(subject, "call_recording")
        .await
        .unwrap_or_else(|e| panic!("check: {e}"))
        .reason()
}

/// After WithdrawConsent returns on replica A, Check on replica B answers WITHDRAWN at once,
/// though B had the grant in the shared Redis cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_on_one_replica_is_seen_on_another_at_once() {
    let (Some(db), Some(redis)) = (
        consent_store_sql::testing::postgres_test_url(),
        consent_cache::testing::redis_test_url(),
    ) else {
        return;
    };
    let cache = CacheConfig {
        mode: CacheMode::Redis,
        redis_url: redis,
        ..CacheConfig::default()
    };
    let a = TestServer::postgres_with_cache(&db, ServerSettings::with_auth(AuthMode::None), cache)
        .await;
    let b = a.replica().await;
    apply_seed_catalog(&a.client).await;
    record_on(&a, Decision::Granted, Channel::Voice).await;
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    let hits = b
        .cache_stats
        .as_ref()
        .map(|s| s.snapshot().0)
        .unwrap_or_default();
    assert!(hits >= 1, "B answered from Redis");

    a.client
        .consent()
        .withdraw_consent(pb::WithdrawConsentRequest {
            subject_id: "caller".into(),
            channel: Channel::Web.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("withdraw: {e}"));
    assert_eq!(reason(&b, "caller").await, Reason::Withdrawn);
    b.stop().await;
    a.stop().await;
}

/// Even replicas with in-process caches (coherent only with their own writes) answer
/// `at_least_revision` and `fully_consistent` from the ledger when their cache is behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_tokens_cross_replicas_with_in_process_caches() {
    let Some(db) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    // Explicitly: on PostgreSQL the default (`auto`) has no in-process cache.
    let memory = CacheConfig {
        mode: CacheMode::Memory,
        ..CacheConfig::default()
    };
    let a = TestServer::postgres_with_cache(&db, ServerSettings::with_auth(AuthMode::None), memory)
        .await;
    let b = a.replica().await;
    assert!(b.cache_stats.is_some(), "B has an in-process cache");
    apply_seed_catalog(&a.client).await;
    record_on(&a, Decision::Granted, Channel::Voice).await;
    assert_eq!(
        reason(&b, "caller").await,
        Reason::Granted,
        "B caches the grant"
    );
    let withdrawn = record_on(&a, Decision::Withdrawn, Channel::Web).await;
    use pb::consistency::Requirement;
    let at_least = b
        .client
        .check_request_raw(with_consistency(
            "caller",
            Requirement::AtLeastRevision(withdrawn),
        ))
        .await
        .unwrap_or_else(|e| panic!("check: {e}"));
    assert_eq!(at_least.reason(), Reason::Withdrawn);
    assert!(at_least.revision >= withdrawn);
    let full = b
        .client
        .check_request_raw(with_consistency(
            "caller",
            Requirement::FullyConsistent(true),
        ))
        .await
        .unwrap_or_else(|e| panic!("check: {e}"));
    assert_eq!(full.reason(), Reason::Withdrawn);
    b.stop().await;
    a.stop().await;
}

/// Two replicas on one PostgreSQL with the default configuration (no cache settings): the
/// default must not let them disagree. Before, it was an in-process cache on each, so B
/// answered the grant it had cached after A's withdrawal, for up to `cache.ttl_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_with_the_default_cache_agree() {
    let Some(db) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let a = TestServer::postgres_with(&db, ServerSettings::with_auth(AuthMode::None)).await;
    let b = a.replica().await;
    apply_seed_catalog(&a.client).await;
    record_on(&a, Decision::Granted, Channel::Voice).await;
    for _ in 0..2 {
        assert_eq!(reason(&b, "caller").await, Reason::Granted);
    }
    record_on(&a, Decision::Withdrawn, Channel::Web).await;
    assert_eq!(reason(&b, "caller").await, Reason::Withdrawn);
    b.stop().await;
    a.stop().await;
}

/// After RestrictProcessing returns on replica A, Check on replica B answers
/// PROCESSING_RESTRICTED at once, though B had the grant in the shared Redis cache; after
/// LiftRestriction, GRANTED again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restriction_or_an_erasure_on_one_replica_is_seen_on_another_at_once() {
    let (Some(db), Some(redis)) = (
        consent_store_sql::testing::postgres_test_url(),
        consent_cache::testing::redis_test_url(),
    ) else {
        return;
    };
    let cache = CacheConfig {
        mode: CacheMode::Redis,
        redis_url: redis,
        ..CacheConfig::default()
    };
    let a = TestServer::postgres_with_cache(&db, ServerSettings::with_auth(AuthMode::None), cache)
        .await;
    let b = a.replica().await;
    apply_seed_catalog(&a.client).await;
    record_on(&a, Decision::Granted, Channel::Voice).await;
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    let restrict = pb::RestrictProcessingRequest {
        subject_id: "caller".into(),
        identity: None,
        reason: String::new(),
    };
    a.client
        .rights()
        .restrict_processing(restrict)
        .await
        .unwrap_or_else(|e| panic!("restrict: {e}"));
    assert_eq!(reason(&b, "caller").await, Reason::ProcessingRestricted);
    a.client
        .rights()
        .lift_restriction(pb::LiftRestrictionRequest {
            subject_id: "caller".into(),
            identity: None,
            reason: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("lift: {e}"));
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    // The first read after the lift fills B's cache, the second is served from it.
    assert_eq!(reason(&b, "caller").await, Reason::Granted);
    // An erasure too: B's cached grant is gone when the RPC returns.
    a.client
        .rights()
        .erase_subject(pb::EraseSubjectRequest {
            subject_id: "caller".into(),
            reason: "Art. 17 request".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("erase: {e}"));
    assert_eq!(reason(&b, "caller").await, Reason::SubjectErased);
    b.stop().await;
    a.stop().await;
}
