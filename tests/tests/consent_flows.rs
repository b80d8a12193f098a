//! Consent scenarios from the seeds, end to end, on every backend.

use consent_client::pb;
use consent_client::pb::{Channel, Decision, Reason};
use consent_e2e::RawChecks;
use consent_e2e::{TestServer, apply_seed_catalog, backends, days_ago, record};

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str, server: &TestServer) -> T {
    match r {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("[{}] {what}: {status:?}", server.backend),
    }
}

async fn check(server: &TestServer, req: pb::CheckRequest) -> pb::CheckResponse {
    match server.client.check_request_raw(req).await {
        Ok(r) => r,
        Err(status) => panic!("[{}] check: {status:?}", server.backend),
    }
}

fn check_req(subject: &str, purpose: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject_id: subject.into(),
        purpose_id: purpose.into(),
        ..Default::default()
    }
}

/// Withdraws `purposes` (none: everything) of `subject` on the web, collected at `at`
/// (`None`: now).
async fn withdraw(
    server: &TestServer,
    subject: &str,
    purposes: &[&str],
    at: Option<prost_types::Timestamp>,
) -> pb::WithdrawConsentResponse {
    ok(
        server
            .client
            .consent()
            .withdraw_consent(pb::WithdrawConsentRequest {
                subject_id: subject.into(),
                purpose_ids: purposes.iter().map(|p| (*p).to_string()).collect(),
                channel: Channel::Web.into(),
                collected_at: at,
                ..Default::default()
            })
            .await,
        "withdraw",
        server,
    )
}

/// A caller agrees on a voice call to recording and transcription, not to AI analysis; the
/// proof carries the call and recording ids; later they withdraw everything on the web.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_call_consent_then_withdraw_everything() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let subject = "+32470000001";
        let mut req = record(
            subject,
            &[
                ("call_recording", Decision::Granted),
                ("ai_transcription", Decision::Granted),
                ("ai_call_analysis", Decision::Denied),
            ],
            Channel::Voice,
        );
        req.evidence = Some(pb::Evidence {
            call_id: "call-42".into(),
            recording_id: "rec-42".into(),
            transcript_sha256: "ab".repeat(32),
            ..Default::default()
        });
        let written = ok(
            server.client.consent().record_consent(req).await,
            "record",
            &server,
        );
        assert_eq!(written.events.len(), 3);
        assert_eq!(written.revision, 3);
        assert!(
            written
                .events
                .iter()
                .all(|e| e.policy_version_id == "2025-05"),
            "latest policy by default"
        );
        assert_eq!(
            written.events[1].prev_hash, written.events[0].hash,
            "events are chained"
        );

        let recording = check(&server, check_req(subject, "call_recording")).await;
        assert!(recording.allowed, "[{}] {recording:?}", server.backend);
        assert_eq!(recording.reason(), Reason::Granted);
        assert_eq!(
            recording.event_id, written.events[0].id,
            "the answer cites its proof"
        );
        assert_eq!(recording.legal_basis(), pb::LegalBasis::Consent);
        assert!(recording.expires_at.is_some());
        let analysis = check(&server, check_req(subject, "ai_call_analysis")).await;
        assert_eq!(
            (analysis.allowed, analysis.reason()),
            (false, Reason::Denied)
        );
        let marketing = check(&server, check_req(subject, "marketing_communications")).await;
        assert_eq!(
            (marketing.allowed, marketing.reason()),
            (false, Reason::NoDecision)
        );
        assert!(marketing.needs_reconsent);
        let session = check(&server, check_req(subject, "service_delivery")).await;
        assert_eq!(
            (session.allowed, session.reason()),
            (true, Reason::StrictlyNecessary)
        );
        let accounting = check(&server, check_req("someone-else", "accounting")).await;
        assert!(accounting.allowed);

        // Everything granted is withdrawn; the refusal stays a refusal.
        let withdrawn = withdraw(&server, subject, &[], None).await;
        // One subject-wide event: every purpose and vendor, whatever was granted.
        let written: Vec<_> = withdrawn
            .events
            .iter()
            .map(|e| (e.purpose_id.as_str(), e.vendor_id.as_str(), e.decision()))
            .collect();
        assert_eq!(written, [("", "", Decision::Withdrawn)]);
        assert_eq!(withdrawn.revision, 4);
        for purpose in ["call_recording", "ai_transcription"] {
            let c = check(&server, check_req(subject, purpose)).await;
            assert_eq!(
                (c.allowed, c.reason()),
                (false, Reason::Withdrawn),
                "{purpose}"
            );
        }
        assert_eq!(
            check(&server, check_req(subject, "ai_call_analysis"))
                .await
                .reason(),
            Reason::Denied
        );

        // Every catalogued purpose in one call.
        let state = ok(
            server
                .client
                .consent()
                .get_subject_state(pb::GetSubjectStateRequest {
                    subject_id: subject.into(),
                    ..Default::default()
                })
                .await,
            "state",
            &server,
        );
        assert_eq!(state.purposes.len(), 11);
        assert_eq!(state.revision, 4);
        assert!(
            state
                .purposes
                .windows(2)
                .all(|w| w[0].purpose_id < w[1].purpose_id)
        );

        // The proof history, with the evidence as given.
        let history = ok(
            server
                .client
                .consent()
                .list_events(pb::ListEventsRequest {
                    subject_id: subject.into(),
                    purpose_id: "call_recording".into(),
                    ..Default::default()
                })
                .await,
            "list",
            &server,
        );
        let decisions: Vec<_> = history
            .events
            .iter()
            .map(pb::ConsentEvent::decision)
            .collect();
        assert_eq!(decisions, [Decision::Granted, Decision::Withdrawn]);
        let evidence = history.events[0].evidence.clone().unwrap_or_default();
        assert_eq!(
            (evidence.call_id.as_str(), evidence.recording_id.as_str()),
            ("call-42", "rec-42")
        );
        assert_eq!(history.events[1].channel(), Channel::Web);

        let verify = ok(
            server
                .client
                .admin()
                .verify_ledger(pb::VerifyLedgerRequest {})
                .await,
            "verify",
            &server,
        );
        assert!(verify.ok, "{verify:?}");
        assert_eq!(verify.events_checked, 4);
        server.stop().await;
    }
}

fn seconds_from_now(seconds: i64) -> prost_types::Timestamp {
    let now = consent_client::timestamp(std::time::SystemTime::now());
    prost_types::Timestamp {
        seconds: now.seconds + seconds,
        nanos: now.nanos,
    }
}

fn check_at(subject: &str, purpose: &str, at: prost_types::Timestamp) -> pb::CheckRequest {
    pb::CheckRequest {
        at: Some(at),
        ..check_req(subject, purpose)
    }
}

/// A grant stamped two minutes ahead (a caller's clock running fast; accepted up to five
/// minutes) takes effect when it is recorded, so a withdrawal made after it wins, also once
/// the clock has passed the grant's stamp (checked as of three minutes from now), for a
/// purpose withdrawal and for a withdraw-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_stamped_in_the_future_never_beats_a_later_withdrawal() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        for (subject, purposes) in [
            ("fast-clock-1", vec!["call_recording"]),
            ("fast-clock-2", vec![]),
        ] {
            let mut grant = record(
                subject,
                &[("call_recording", Decision::Granted)],
                Channel::Api,
            );
            grant.collected_at = Some(seconds_from_now(120));
            let granted = ok(
                server.client.consent().record_consent(grant).await,
                "record",
                &server,
            );
            let event = &granted.events[0];
            let seconds =
                |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
            assert!(
                seconds(&event.collected_at) <= seconds(&event.recorded_at),
                "[{}] stored as of its recording: {event:?}",
                server.backend
            );
            withdraw(&server, subject, &purposes, None).await;
            for req in [
                check_req(subject, "call_recording"),
                check_at(subject, "call_recording", seconds_from_now(180)),
            ] {
                let c = check(&server, req).await;
                assert_eq!(
                    (c.allowed, c.reason()),
                    (false, Reason::Withdrawn),
                    "[{}] {subject} withdrew {purposes:?}",
                    server.backend
                );
            }
        }
        server.stop().await;
    }
}

/// A withdraw-all withdraws every choice collected before it: an import arriving afterwards
/// with an older grant, for a purpose that was granted then (per vendor) or never, does not
/// allow; a choice made after the withdrawal does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_import_after_a_withdraw_all_does_not_allow() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let subject = "imported-later";
        let mut per_vendor = record(subject, &[("analytics", Decision::Granted)], Channel::Web);
        per_vendor.decisions[0].vendor_id = "google_analytics_4".into();
        per_vendor.collected_at = Some(days_ago(2));
        ok(
            server.client.consent().record_consent(per_vendor).await,
            "record",
            &server,
        );
        withdraw(&server, subject, &[], Some(days_ago(1))).await;
        let mut import = record(
            subject,
            &[
                ("analytics", Decision::Granted),
                ("call_recording", Decision::Granted),
            ],
            Channel::Import,
        );
        import.collected_at = Some(consent_client::timestamp(
            std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 + 3_600),
        ));
        ok(
            server.client.consent().record_consent(import).await,
            "import",
            &server,
        );
        for (purpose, vendor) in [
            ("analytics", ""),
            ("analytics", "google_analytics_4"),
            ("call_recording", ""),
        ] {
            let c = check(
                &server,
                pb::CheckRequest {
                    vendor_id: vendor.into(),
                    ..check_req(subject, purpose)
                },
            )
            .await;
            assert_eq!(
                (c.allowed, c.reason()),
                (false, Reason::Withdrawn),
                "[{}] {purpose} {vendor}",
                server.backend
            );
        }
        let regrant = record(
            subject,
            &[("call_recording", Decision::Granted)],
            Channel::Web,
        );
        ok(
            server.client.consent().record_consent(regrant).await,
            "regrant",
            &server,
        );
        let c = check(&server, check_req(subject, "call_recording")).await;
        assert_eq!((c.allowed, c.reason()), (true, Reason::Granted));
        server.stop().await;
    }
}

/// A consent older than the purpose's 6-month validity has expired; as-of checks see the past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_as_of() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let mut grant = record(
            "web-user-1",
            &[("analytics", Decision::Granted)],
            Channel::Import,
        );
        grant.collected_at = Some(days_ago(200));
        ok(
            server.client.consent().record_consent(grant).await,
            "import grant",
            &server,
        );

        let now = check(&server, check_req("web-user-1", "analytics")).await;
        assert_eq!(
            (now.allowed, now.reason(), now.needs_reconsent),
            (false, Reason::Expired, true)
        );
        let mut then = check_req("web-user-1", "analytics");
        then.at = Some(days_ago(100));
        let then = check(&server, then).await;
        assert_eq!(
            (then.allowed, then.reason()),
            (true, Reason::Granted),
            "[{}]",
            server.backend
        );
        let mut before = check_req("web-user-1", "analytics");
        before.at = Some(days_ago(300));
        assert_eq!(check(&server, before).await.reason(), Reason::NoDecision);

        // A withdrawal on day -50, then an import of an older grant (day -60): still withdrawn.
        let mut fresh = record(
            "web-user-2",
            &[("analytics", Decision::Granted)],
            Channel::Web,
        );
        fresh.collected_at = Some(days_ago(70));
        ok(
            server.client.consent().record_consent(fresh).await,
            "grant",
            &server,
        );
        let mut withdraw = record(
            "web-user-2",
            &[("analytics", Decision::Withdrawn)],
            Channel::Web,
        );
        withdraw.collected_at = Some(days_ago(50));
        ok(
            server.client.consent().record_consent(withdraw).await,
            "withdraw",
            &server,
        );
        let mut late_import = record(
            "web-user-2",
            &[("analytics", Decision::Granted)],
            Channel::Import,
        );
        late_import.collected_at = Some(days_ago(60));
        ok(
            server.client.consent().record_consent(late_import).await,
            "late import",
            &server,
        );
        let c = check(&server, check_req("web-user-2", "analytics")).await;
        assert_eq!(
            (c.allowed, c.reason()),
            (false, Reason::Withdrawn),
            "[{}]",
            server.backend
        );
        let mut mid = check_req("web-user-2", "analytics");
        mid.at = Some(days_ago(55));
        let mid = check(&server, mid).await;
        assert_eq!(
            mid.reason(),
            Reason::Granted,
            "between the import and the withdrawal"
        );
        server.stop().await;
    }
}

/// A material policy version that changes a purpose makes earlier consents need renewal;
/// consenting under the new version clears it. Vendors outside the policy are not covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_policy_change_requires_reconsent() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let mut grant = record(
            "u1",
            &[
                ("analytics", Decision::Granted),
                ("functional", Decision::Granted),
            ],
            Channel::Web,
        );
        grant.collected_at = Some(days_ago(10));
        ok(
            server.client.consent().record_consent(grant).await,
            "grant",
            &server,
        );

        let mut with_vendor = check_req("u1", "analytics");
        with_vendor.vendor_id = "google_analytics_4".into();
        assert_eq!(
            check(&server, with_vendor.clone()).await.reason(),
            Reason::Granted
        );
        let mut other_vendor = check_req("u1", "analytics");
        other_vendor.vendor_id = "stripe".into();
        assert_eq!(
            check(&server, other_vendor).await.reason(),
            Reason::VendorNotCovered
        );

        let catalog = server.client.catalog();
        let mut v1 = ok(
            catalog
                .clone()
                .get_policy_version(pb::GetPolicyVersionRequest {
                    id: "2025-05".into(),
                })
                .await,
            "get policy",
            &server,
        )
        .policy_version
        .unwrap_or_default();
        v1.id = "2026-11".into();
        v1.published_at = Some(days_ago(1));
        v1.material = true;
        v1.changed_purpose_ids = vec!["analytics".into()];
        ok(
            catalog
                .clone()
                .publish_policy_version(pb::PublishPolicyVersionRequest {
                    policy_version: Some(v1),
                })
                .await,
            "publish",
            &server,
        );
        let analytics = check(&server, check_req("u1", "analytics")).await;
        assert_eq!(
            (
                analytics.allowed,
                analytics.reason(),
                analytics.needs_reconsent
            ),
            (false, Reason::ReconsentRequired, true)
        );
        assert_eq!(
            check(&server, check_req("u1", "functional")).await.reason(),
            Reason::Granted,
            "unchanged purpose"
        );

        let renewed = ok(
            server
                .client
                .consent()
                .record_consent(record(
                    "u1",
                    &[("analytics", Decision::Granted)],
                    Channel::Web,
                ))
                .await,
            "renew",
            &server,
        );
        assert_eq!(renewed.events[0].policy_version_id, "2026-11");
        assert_eq!(
            check(&server, check_req("u1", "analytics")).await.reason(),
            Reason::Granted
        );
        server.stop().await;
    }
}

/// The same idempotency key and request replays the first answer; another request conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_replay() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let mut req = record(
            "u1",
            &[("call_recording", Decision::Granted)],
            Channel::Voice,
        );
        req.idempotency_key = "call-7-consent".into();
        req.collected_at = Some(days_ago(1));
        let first = ok(
            server.client.consent().record_consent(req.clone()).await,
            "first",
            &server,
        );
        let again = ok(
            server.client.consent().record_consent(req.clone()).await,
            "replay",
            &server,
        );
        assert_eq!(
            first, again,
            "[{}] a replay returns the original events",
            server.backend
        );

        let mut different = req.clone();
        different.decisions[0].decision = Decision::Denied.into();
        let err = server
            .client
            .consent()
            .record_consent(different)
            .await
            .err();
        assert_eq!(err.map(|s| s.code()), Some(tonic::Code::AlreadyExists));
        let events = ok(
            server
                .client
                .consent()
                .list_events(pb::ListEventsRequest::default())
                .await,
            "list",
            &server,
        );
        assert_eq!(events.events.len(), 1, "nothing written twice");
        server.stop().await;
    }
}

/// Batches answer in request order; consistency tokens; paging through the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_consistency_and_paging() {
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        let mut last_revision = 0;
        for i in 0..5 {
            let decision = if i % 2 == 0 {
                Decision::Granted
            } else {
                Decision::Denied
            };
            let w = ok(
                server
                    .client
                    .consent()
                    .record_consent(record(
                        &format!("s{i}"),
                        &[("analytics", decision)],
                        Channel::Web,
                    ))
                    .await,
                "record",
                &server,
            );
            last_revision = w.revision;
        }
        let checks: Vec<_> = (0..5)
            .rev()
            .map(|i| check_req(&format!("s{i}"), "analytics"))
            .collect();
        let batch = ok(
            server
                .client
                .consent()
                .check_batch(pb::CheckBatchRequest {
                    checks,
                    consistency: Some(pb::Consistency {
                        requirement: Some(pb::consistency::Requirement::AtLeastRevision(
                            last_revision,
                        )),
                    }),
                })
                .await,
            "batch",
            &server,
        );
        let answers: Vec<_> = batch
            .results
            .iter()
            .map(|r| (r.subject_id.as_str(), r.allowed))
            .collect();
        assert_eq!(
            answers,
            [
                ("s4", true),
                ("s3", false),
                ("s2", true),
                ("s1", false),
                ("s0", true)
            ]
        );
        assert_eq!(batch.revision, last_revision);

        let ahead = server
            .client
            .check_at_least("s0", "analytics", last_revision + 100)
            .await
            .err();
        assert_eq!(
            ahead.map(|s| s.code()),
            Some(tonic::Code::FailedPrecondition)
        );
        let fresh = server
            .client
            .check_at_least("s0", "analytics", last_revision)
            .await;
        assert!(fresh.is_ok_and(|c| c.allowed && c.revision >= last_revision));

        let mut seen = Vec::new();
        let mut token = String::new();
        for _page in 0..10 {
            let page = ok(
                server
                    .client
                    .consent()
                    .list_events(pb::ListEventsRequest {
                        page_size: 2,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await,
                "page",
                &server,
            );
            seen.extend(page.events.iter().map(|e| e.revision));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        server.stop().await;
    }
}

/// Times differing by less than a microsecond tie once stored: a withdraw-all at T+999 ns and
/// a grant imported afterwards, collected at T+500 ns, must not allow (a tie goes to the
/// withdrawal); nor a purpose withdrawal at T+999 ns against an import at T+1 ns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_a_few_nanoseconds_apart_never_allow_after_a_withdrawal() {
    // One second for both choices (two calls to days_ago could straddle a second).
    let base = days_ago(1);
    let at = |nanos: i32| prost_types::Timestamp {
        seconds: base.seconds,
        nanos,
    };
    for server in backends().await {
        apply_seed_catalog(&server.client).await;
        for (subject, purposes) in [("ns-all", vec![]), ("ns-purpose", vec!["call_recording"])] {
            withdraw(&server, subject, &purposes, Some(at(999))).await;
            let mut import = record(
                subject,
                &[("call_recording", Decision::Granted)],
                Channel::Import,
            );
            import.collected_at = Some(at(500));
            ok(
                server.client.consent().record_consent(import).await,
                "import",
                &server,
            );
            let c = check(&server, check_req(subject, "call_recording")).await;
            assert_eq!(
                (c.allowed, c.reason()),
                (false, Reason::Withdrawn),
                "[{}] {subject}",
                server.backend
            );
        }
        server.stop().await;
    }
}
