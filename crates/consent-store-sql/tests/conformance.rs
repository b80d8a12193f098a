//! The shared store conformance suite on SQLite (always) and PostgreSQL (when
//! `CONSENT_TEST_DATABASE_URL` is set; under `CI=true` its absence is a failure).

use std::sync::Arc;

use consent_store::conformance::TestStore;
use consent_store_sql::{SqlOptions, SqlStore};

async fn open(url: &str) -> SqlStore {
    let store = SqlStore::connect(url, &SqlOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    store
}

mod sqlite {
    use super::*;

    async fn sqlite() -> Option<TestStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        Some(TestStore {
            store: Arc::new(open(&url).await),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(sqlite);
}

/// The breaker layer passes every call through unchanged while the store answers.
mod sqlite_behind_a_breaker {
    use super::*;
    use consent_store::breaker::{BreakerSettings, BreakerStore};

    async fn guarded() -> Option<TestStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        Some(TestStore {
            store: Arc::new(BreakerStore::new(
                Arc::new(open(&url).await),
                BreakerSettings::default(),
            )),
            guard: Box::new(dir),
        })
    }

    consent_store::store_conformance_suite!(guarded);
}

mod postgres {
    use super::*;

    /// `None` (skip with a notice) when no PostgreSQL is configured, except under CI.
    /// Cases share the database; each uses its own tenant.
    pub(crate) async fn postgres() -> Option<TestStore> {
        let url = consent_store_sql::testing::postgres_test_url()?;
        Some(TestStore {
            store: Arc::new(open(&url).await),
            guard: Box::new(()),
        })
    }

    consent_store::store_conformance_suite!(postgres);
}

/// A commit made through one store (one replica) wakes a subscriber of another store on the
/// same PostgreSQL database (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_reach_other_processes() {
    use consent_core::commands::new_event_id;
    use consent_core::{Channel, Decision, Evidence, NewEvent, Timestamp};
    use consent_store::{CacheFence, LedgerStore};

    let Some(url) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let (writer, watcher) = (open(&url).await, open(&url).await);
    let mut commits = watcher.subscribe();
    let tenant = format!("t-{}", uuid::Uuid::now_v7());
    let event = NewEvent {
        id: new_event_id(),
        subject_id: "s".into(),
        purpose_id: "analytics".into(),
        vendor_id: String::new(),
        decision: Decision::Granted,
        policy_version_id: "v1".into(),
        channel: Channel::Web,
        collected_at: Timestamp(1),
        expires_at: None,
        evidence: Evidence::default(),
        actor_key_id: String::new(),
    };
    // The LISTEN is active once `open` returned; the timeout is a safety net, not a wait.
    let written = writer
        .append(&tenant, &[event], None, CacheFence::None)
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    let heard = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match commits.recv().await {
                Ok(c) if c.tenant_id == tenant => return c.revision,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => panic!("feed closed"),
            }
        }
    })
    .await;
    let heard = heard.unwrap_or_else(|_| panic!("no notification crossed the processes"));
    assert_eq!(heard, written.revision);
}

/// A value PostgreSQL refuses as data (a NUL byte in text: SQLSTATE 22021) is INTERNAL, not
/// UNAVAILABLE: the old mapping read SQLSTATE 22021 as a number whose low byte is SQLite's
/// BUSY code, so callers were told to retry what can never succeed. (The service refuses
/// such input before the store; this is the store's own mapping.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_data_errors_are_not_reported_as_unavailable() {
    use consent_core::ConsentError;
    use consent_core::access::{Scope, issue_key};
    use consent_store::AccessStore;

    let Some(url) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let store = open(&url).await;
    let tenant_id = format!("t-{}", uuid::Uuid::now_v7());
    let tenant = consent_core::access::new_tenant(&tenant_id, "", consent_core::Timestamp::now())
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .create_tenant(&tenant)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut key, _) = issue_key(
        &tenant_id,
        "ops",
        vec![Scope::Admin],
        consent_core::Timestamp::now(),
        None,
        &[7; consent_core::access::KEY_RANDOM_BYTES],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    key.name = "bad\0name".into();
    match store.create_api_key(&key).await {
        Err(ConsentError::Internal(detail)) => assert!(detail.contains("database error")),
        other => panic!("expected Internal, got {other:?}"),
    }
}

/// A PostgreSQL that refuses new sessions (`ALLOW_CONNECTIONS false`: SQLSTATE 55000 at
/// login, as during a restart or failover) is UNAVAILABLE, so the caller retries and the
/// breaker trips, not INTERNAL (found by an outside test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_refusing_sessions_is_unavailable() {
    use consent_core::ConsentError;
    use consent_store::LedgerStore;
    use sqlx::Connection as _;
    use sqlx::Executor as _;

    let Some(admin) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let (url, name) = consent_store_sql::testing::create_scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("scratch database: {e}"));
    let store = open(&url).await;
    assert!(store.head("t").await.is_ok());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("admin: {e}"));
    let refuse = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    conn.execute(refuse(false).as_str())
        .await
        .unwrap_or_else(|e| panic!("refuse sessions: {e}"));
    conn.execute(
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            .as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("terminate sessions: {e}"));
    // The pooled sessions are gone: every read needs a new one, which is refused.
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = store.head("t").await {
            refused = Some(e);
            break;
        }
    }
    conn.execute(refuse(true).as_str())
        .await
        .unwrap_or_else(|e| panic!("allow sessions: {e}"));
    store.close().await;
    let _ = consent_store_sql::testing::drop_scratch_database(&admin, &name).await;
    match refused {
        Some(ConsentError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A store that is down (here: its pool closed) answers UNAVAILABLE; after `trip_after`
/// such answers in a row the breaker answers at once without touching it, until a probe
/// finds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_not_waited_on() {
    use consent_core::ConsentError;
    use consent_store::LedgerStore;
    use consent_store::breaker::{BreakerSettings, BreakerStore};
    use consent_store::counting::CountingStore;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let sql = open(&url).await;
    let counting = Arc::new(CountingStore::new(Arc::new(sql.clone())));
    let breaker = BreakerStore::new(
        counting.clone(),
        BreakerSettings {
            trip_after: 3,
            open_for: std::time::Duration::from_secs(3600),
        },
    );
    assert!(breaker.head("t").await.is_ok());
    sql.close().await;
    for _ in 0..100 {
        assert!(matches!(
            breaker.head("t").await,
            Err(ConsentError::Unavailable(_))
        ));
    }
    assert_eq!(
        counting.calls("head"),
        1 + 3,
        "after 3 failures the store is not asked again until the probe is due"
    );
    assert!(breaker.is_open());
}

/// Fresh ledgers of every backend, with `options`: SQLite in a temporary directory and, when
/// configured, PostgreSQL in a scratch database (these tests change the whole database).
struct Backends {
    stores: Vec<SqlStore>,
    _dir: tempfile::TempDir,
    scratch: Option<(String, String)>,
}

impl Backends {
    async fn drop_scratch(self) {
        for store in &self.stores {
            store.close().await;
        }
        if let Some((admin, name)) = &self.scratch {
            consent_store_sql::testing::drop_scratch_database(admin, name)
                .await
                .unwrap_or_else(|e| panic!("drop {name}: {e}"));
        }
    }
}

async fn every_backend(options: &SqlOptions) -> Backends {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let connect = |url: String| async move {
        let store = SqlStore::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate: {e}"));
        store
    };
    let mut stores = vec![connect(format!("sqlite://{}/ledger.db", dir.path().display())).await];
    let mut scratch = None;
    if let Some(admin) = consent_store_sql::testing::postgres_test_url() {
        let (url, name) = consent_store_sql::testing::create_scratch_database(&admin)
            .await
            .unwrap_or_else(|e| panic!("scratch database: {e}"));
        stores.push(connect(url).await);
        scratch = Some((admin, name));
    }
    Backends {
        stores,
        _dir: dir,
        scratch,
    }
}

fn grant(subject: &str) -> consent_core::NewEvent {
    use consent_core::{Channel, Decision, Evidence, NewEvent, Timestamp};
    NewEvent {
        id: consent_core::commands::new_event_id(),
        subject_id: subject.into(),
        purpose_id: "analytics".into(),
        vendor_id: String::new(),
        decision: Decision::Granted,
        policy_version_id: "v1".into(),
        channel: Channel::Web,
        collected_at: Timestamp(1_700_000_000_000_000),
        expires_at: None,
        evidence: Evidence {
            ip_address: "192.0.2.7".into(),
            ..Evidence::default()
        },
        actor_key_id: "key-1".into(),
    }
}

/// The ledger table refuses, in the database itself, every change but the erasure of the
/// evidence: a careless UPDATE or DELETE (or TRUNCATE) by hand cannot rewrite the proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_table_is_append_only_except_erasing_evidence() {
    use consent_store::{CacheFence, EventQuery, LedgerStore, verify_ledger};

    let backends = every_backend(&SqlOptions::default()).await;
    for store in &backends.stores {
        let tenant = format!("t-{}", uuid::Uuid::now_v7());
        let written = store
            .append(&tenant, &[grant("alice")], None, CacheFence::None)
            .await
            .unwrap_or_else(|e| panic!("append: {e}"));
        let this_row = format!("tenant_id = '{tenant}' AND revision = {}", written.revision);
        let mut refused = vec![
            format!("UPDATE consent_events SET decision = 'denied' WHERE {this_row}"),
            format!(
                "UPDATE consent_events SET evidence = NULL, subject_id = 'bob' WHERE {this_row}"
            ),
            format!("DELETE FROM consent_events WHERE {this_row}"),
            // An erased id has exactly one form, and only with the payload gone.
            format!(
                "UPDATE consent_events SET evidence = NULL, subject_id = 'erased:zz' WHERE {this_row}"
            ),
            format!(
                "UPDATE consent_events SET subject_id = 'erased:{}' WHERE {this_row}",
                "a".repeat(64)
            ),
        ];
        if store.backend() == consent_store_sql::Backend::Postgres {
            refused.push("TRUNCATE consent_events".into());
        }
        for sql in &refused {
            match store.execute_raw(sql).await {
                Err(e) => assert!(e.to_string().contains("append-only"), "{sql}: {e}"),
                Ok(n) => panic!("{:?}: `{sql}` changed {n} rows", store.backend()),
            }
        }
        let erased = store
            .execute_raw(&format!(
                "UPDATE consent_events SET evidence = NULL WHERE {this_row}"
            ))
            .await
            .unwrap_or_else(|e| panic!("erasing the evidence is allowed: {e}"));
        assert_eq!(erased, 1);
        let events = store
            .list_events(
                &tenant,
                &EventQuery {
                    limit: 10,
                    ..EventQuery::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("list: {e}"));
        assert!(events.len() == 1 && events[0].evidence_erased);
        let (report, _) = verify_ledger(store, &tenant)
            .await
            .unwrap_or_else(|e| panic!("verify: {e}"));
        assert!(report.ok, "the chain survives erasure: {report:?}");

        // The guard lets an id become `erased:<64 hex>`, but only the digest the entry
        // committed to verifies: a wrong one is caught at that entry.
        store
            .execute_raw(&format!(
                "UPDATE consent_events SET subject_id = 'erased:{}' WHERE {this_row}",
                "a".repeat(64)
            ))
            .await
            .unwrap_or_else(|e| panic!("the erasure form is allowed: {e}"));
        let (report, _) = verify_ledger(store, &tenant)
            .await
            .unwrap_or_else(|e| panic!("verify: {e}"));
        assert_eq!(
            report.first_bad_event_id.as_deref(),
            Some(written.events[0].event.id.as_str()),
            "{report:?}"
        );
        // And an erased id is final.
        assert!(
            store
                .execute_raw(&format!(
                    "UPDATE consent_events SET subject_id = 'erased:{}' WHERE {this_row}",
                    "b".repeat(64)
                ))
                .await
                .is_err()
        );
    }
    backends.drop_scratch().await;
}

/// A ledger written before subject keys existed (its tenant row without a key, its entries
/// on the unkeyed v1 form) verifies, is keyed from its next write on, and an erasure then
/// gives each entry the digest its form committed to: the plain one on v1 entries, the
/// keyed one after. The v1 rows are written by hand, as the earlier code wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_older_than_its_key_verifies_through_erasure() {
    use consent_core::chain::{ChainKey, ERASED_PREFIX, GENESIS, seal};
    use consent_core::{NewRecord, RecordKind, Timestamp};
    use consent_store::{CacheFence, EventQuery, LedgerStore, verify_ledger};
    use sha2::Digest;

    let backends = every_backend(&SqlOptions::default()).await;
    for store in &backends.stores {
        let pg = store.backend() == consent_store_sql::Backend::Postgres;
        let blob = |b: &[u8]| {
            if pg {
                format!("'\\x{}'::bytea", hex::encode(b))
            } else {
                format!("X'{}'", hex::encode(b))
            }
        };
        let time = |t: Timestamp| {
            if pg {
                format!(
                    "(TIMESTAMPTZ '1970-01-01 00:00:00+00' + {} * INTERVAL '1 microsecond')",
                    t.as_micros()
                )
            } else {
                t.as_micros().to_string()
            }
        };
        let tenant = format!("t-{}", uuid::Uuid::now_v7());
        let mut prev = GENESIS;
        let recorded = Timestamp(1_700_000_100_000_000);
        for revision in 1..=2 {
            let e = seal(
                &tenant,
                &ChainKey::NONE,
                grant("alice"),
                revision,
                recorded,
                prev,
            );
            prev = e.hash;
            let n = &e.event;
            let evidence =
                serde_json::to_string(&n.evidence).unwrap_or_else(|err| panic!("evidence: {err}"));
            store
                .execute_raw(&format!(
                    "INSERT INTO consent_events (tenant_id, revision, event_id, subject_id, purpose_id, \
                     vendor_id, decision, policy_version_id, channel, collected_at, recorded_at, \
                     expires_at, evidence, evidence_sha256, actor_key_id, prev_hash, hash) VALUES \
                     ('{tenant}', {revision}, '{}', 'alice', 'analytics', '', 'granted', 'v1', 'web', \
                     {}, {}, NULL, '{evidence}', {}, 'key-1', {}, {})",
                    n.id,
                    time(n.collected_at),
                    time(recorded),
                    blob(&e.evidence_sha256),
                    blob(&e.prev_hash),
                    blob(&e.hash),
                ))
                .await
                .unwrap_or_else(|err| panic!("{:?}: v1 row: {err}", store.backend()));
        }
        store
            .execute_raw(&format!(
                "INSERT INTO tenants (tenant_id, revision, head_hash, created_at) \
                 VALUES ('{tenant}', 2, {}, {})",
                blob(&prev),
                time(recorded)
            ))
            .await
            .unwrap_or_else(|err| panic!("tenant row: {err}"));
        let verify = || async {
            verify_ledger(store, &tenant)
                .await
                .unwrap_or_else(|e| panic!("verify: {e}"))
                .0
        };
        assert!(verify().await.ok, "{:?}: the v1 ledger", store.backend());
        assert_eq!(
            store.chain_key(&tenant).await.ok(),
            Some(ChainKey::NONE),
            "no key before the first write"
        );

        // The first write keys the chain from its revision on.
        for subject in ["bob", "alice"] {
            store
                .append(&tenant, &[grant(subject)], None, CacheFence::None)
                .await
                .unwrap_or_else(|e| panic!("append: {e}"));
        }
        let key = store
            .chain_key(&tenant)
            .await
            .unwrap_or_else(|e| panic!("key: {e}"));
        assert_eq!(key.keyed_from, 3);
        assert!(key.subject_key.is_some());
        assert!(verify().await.ok, "{:?}: v1 then v2", store.backend());

        let outcome = store
            .erase_subject(
                &tenant,
                "alice",
                NewRecord {
                    id: consent_core::commands::new_event_id(),
                    kind: RecordKind::SubjectErased,
                    subject_id: String::new(),
                    purpose_id: String::new(),
                    at: recorded,
                    detail: [("reason".to_owned(), "request".to_owned())].into(),
                    actor_key_id: "key-1".into(),
                },
                CacheFence::None,
            )
            .await
            .unwrap_or_else(|e| panic!("erase: {e}"));
        assert_eq!(outcome.entries_erased, 3);
        let report = verify().await;
        assert!(report.ok, "{:?}: {report:?}", store.backend());
        let events = store
            .list_events(
                &tenant,
                &EventQuery {
                    limit: 10,
                    ..EventQuery::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("list: {e}"));
        let subjects: Vec<&str> = events
            .iter()
            .map(|e| e.event.event.subject_id.as_str())
            .collect();
        let plain = format!(
            "{ERASED_PREFIX}{}",
            hex::encode(sha2::Sha256::digest(b"alice"))
        );
        let keyed = key
            .erased_subject_id("alice")
            .unwrap_or_else(|| panic!("a key"));
        assert_eq!(
            subjects,
            [plain.as_str(), plain.as_str(), "bob", keyed.as_str()]
        );
        assert_eq!(outcome.record.record.subject_id, keyed);
    }
    backends.drop_scratch().await;
}

/// An idempotency key replays only within its lifetime: after it, the same key writes again
/// (a new request), and the purge removes the expired records. A lifetime of one microsecond
/// makes every record expired by the next transaction, without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_and_are_purged() {
    use consent_core::commands::Idempotency;
    use consent_store::{CacheFence, LedgerStore};

    let key = Idempotency {
        key: "req-1".into(),
        fingerprint: [3; 32],
    };
    let lived = SqlOptions::default();
    let fleeting = SqlOptions {
        idempotency_ttl: std::time::Duration::from_micros(1),
        ..SqlOptions::default()
    };
    for options in [lived, fleeting] {
        let backends = every_backend(&options).await;
        for store in &backends.stores {
            let tenant = format!("t-{}", uuid::Uuid::now_v7());
            // A retry carries fresh event ids, as the service makes them per request.
            let write = || async {
                store
                    .append(&tenant, &[grant("alice")], Some(&key), CacheFence::None)
                    .await
            };
            let first = write().await.unwrap_or_else(|e| panic!("append: {e}"));
            let again = write().await.unwrap_or_else(|e| panic!("append: {e}"));
            let expired = options.idempotency_ttl < std::time::Duration::from_secs(1);
            assert_eq!(
                again.replayed,
                !expired,
                "{:?} {options:?}",
                store.backend()
            );
            assert_eq!(again.revision, if expired { 2 } else { first.revision });
            let purged = store
                .purge_expired_idempotency_keys()
                .await
                .unwrap_or_else(|e| panic!("purge: {e}"));
            if expired {
                assert!(
                    purged >= 1,
                    "{:?}: the expired record is purged",
                    store.backend()
                );
                let after = write().await.unwrap_or_else(|e| panic!("append: {e}"));
                assert!(!after.replayed && after.revision == 3);
            } else {
                let replay = write().await.unwrap_or_else(|e| panic!("append: {e}"));
                assert!(replay.replayed, "a live key survives the purge");
            }
        }
        backends.drop_scratch().await;
    }
}

/// On SQLite, once a subject is erased, neither its id nor its evidence is left anywhere in
/// the database file or its WAL: the rows are rewritten, deleted content is zeroed in the
/// pages written (`secure_delete`), and the erasure checkpoints the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_leaves_no_bytes_in_the_sqlite_files() {
    use consent_core::{NewRecord, RecordKind, Timestamp};
    use consent_store::{CacheFence, LedgerStore};

    const PHONE: &str = "+32470009876";
    const IP: &str = "198.51.100.77";
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("ledger.db");
    let store = SqlStore::connect(
        &format!("sqlite://{}", path.display()),
        &SqlOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let tenant = "t1";
    for i in 0..50 {
        let mut event = grant(if i % 5 == 0 { PHONE } else { "someone-else" });
        event.evidence.ip_address = if i % 5 == 0 {
            IP.into()
        } else {
            "192.0.2.9".into()
        };
        store
            .append(tenant, &[event], None, CacheFence::None)
            .await
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    let holds = |needle: &str| -> bool {
        ["", "-wal"].iter().any(|suffix| {
            let file = std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default();
            file.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    };
    assert!(
        holds(PHONE) && holds(IP),
        "the test looks for bytes that are there"
    );
    store
        .erase_subject(
            tenant,
            PHONE,
            NewRecord {
                id: consent_core::commands::new_event_id(),
                kind: RecordKind::SubjectErased,
                subject_id: String::new(),
                purpose_id: String::new(),
                at: Timestamp(0),
                detail: [("reason".to_owned(), "request".to_owned())].into(),
                actor_key_id: "key-1".into(),
            },
            CacheFence::None,
        )
        .await
        .unwrap_or_else(|e| panic!("erase: {e}"));
    assert!(!holds(PHONE), "the clear id is still in the SQLite files");
    assert!(
        !holds(IP),
        "the erased evidence is still in the SQLite files"
    );
    store.close().await;
}

/// Snapshot scans page in byte order of subject ids whatever the database's collation: on a
/// database whose default collation is dictionary order (ICU en-US sorts "a-b" before "ab"
/// and "B" after "a"), the scan case still lists subjects in byte order, each once (before
/// migration 0009 made the columns `COLLATE "C"`, the merge of events and records broke).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_scans_order_bytewise_on_a_dictionary_collation() {
    use consent_store_sql::testing::{create_scratch_database_with, drop_scratch_database};

    let Some(admin) = consent_store_sql::testing::postgres_test_url() else {
        return;
    };
    let (url, name) = create_scratch_database_with(
        &admin,
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
    )
    .await
    .unwrap_or_else(|e| panic!("scratch database: {e}"));
    let store: Arc<dyn consent_store::Store> = Arc::new(open(&url).await);
    let outcome = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            consent_store::conformance::a_snapshot_scan_reads_every_subject_at_one_revision(&store)
                .await;
        }
    })
    .await;
    drop(store);
    drop_scratch_database(&admin, &name)
        .await
        .unwrap_or_else(|e| panic!("drop {name}: {e}"));
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A snapshot scan reads the ledger only as chunks are asked for: one page of at most
/// `page` entries per store call, so what a scan holds is one page of each kind and one
/// chunk, however large the tenant (ExportSnapshot's memory bound rests on this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_scan_reads_the_ledger_as_it_is_asked() {
    use consent_store::counting::CountingStore;
    use consent_store::snapshot::SnapshotScan;
    use consent_store::{CacheFence, LedgerStore};

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    let counting = Arc::new(CountingStore::new(Arc::new(open(&url).await)));
    let tenant = format!("t-{}", uuid::Uuid::now_v7());
    for batch in 0..4 {
        let events: Vec<_> = (0..500)
            .map(|i| grant(&format!("s{:05}", batch * 500 + i)))
            .collect();
        counting
            .append(&tenant, &events, None, CacheFence::None)
            .await
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    let mut scan = SnapshotScan::start(
        Arc::clone(&counting),
        &tenant,
        None,
        consent_core::Timestamp::now(),
        vec![],
        100,
        "",
    )
    .await
    .unwrap_or_else(|e| panic!("start: {e}"));
    let mut chunks = 0;
    while let Some(chunk) = scan
        .next_chunk(100)
        .await
        .unwrap_or_else(|e| panic!("chunk: {e}"))
    {
        chunks += 1;
        assert_eq!(chunk.len(), 100);
        // The pages this chunk needed, and the first of the next one (read to know where
        // the chunk's last subject ends): never more.
        assert!(
            counting.calls("list_events") <= chunks + 1,
            "{} event pages read for {chunks} chunks",
            counting.calls("list_events")
        );
        assert!(
            counting.calls("list_records") <= 1,
            "no records: one empty page"
        );
        assert!(chunks <= 20, "2,000 subjects, 100 per chunk");
    }
    assert_eq!(chunks, 20);
}
