//! `ConsentService.ExportSnapshot` end to end on every backend: a header naming the
//! revision, chunks in byte order of subject ids whose decisions equal CheckBatch's, an end
//! with the count; the same revision asked again gives the same snapshot after more writes,
//! and Watch from it gives exactly those writes; a cut-short snapshot resumes after its last
//! subject; erased subjects are never listed; bad requests name their field.

use std::time::Duration;

use consent_client::ConsentClient;
use consent_client::pb::{self, Channel, Decision, export_snapshot_response::Part};
use consent_e2e::{apply_seed_catalog, backends, bad_fields, record};
use futures::StreamExt;
use tonic::Code;

/// A safety net so a broken stream fails the test instead of hanging it; never a timing
/// claim.
const SAFETY: Duration = Duration::from_secs(60);

const PURPOSES: [&str; 4] = [
    "call_recording",
    "analytics",
    "marketing_communications",
    "service_delivery",
];

/// A snapshot read to its end: header, subjects in order, the end's count.
#[derive(Debug)]
struct Snapshot {
    header: pb::SnapshotHeader,
    subjects: Vec<pb::SubjectDecisions>,
    chunks: usize,
    end: Option<pb::SnapshotEnd>,
}

async fn snapshot(client: &ConsentClient, request: pb::ExportSnapshotRequest) -> Snapshot {
    let mut stream = client
        .consent()
        .export_snapshot(request)
        .await
        .unwrap_or_else(|e| panic!("export_snapshot: {e:?}"))
        .into_inner();
    tokio::time::timeout(SAFETY, async {
        let mut header = None;
        let mut subjects = Vec::new();
        let mut chunks = 0;
        let mut end = None;
        while let Some(message) = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("snapshot stream: {e:?}"))
        {
            match message.part {
                Some(Part::Header(h)) => {
                    assert!(header.is_none() && chunks == 0, "one header, first");
                    header = Some(h);
                }
                Some(Part::Chunk(c)) => {
                    assert!(end.is_none(), "nothing after the end");
                    assert!((1..=1000).contains(&c.subjects.len()));
                    chunks += 1;
                    subjects.extend(c.subjects);
                }
                Some(Part::End(e)) => end = Some(e),
                None => panic!("a message without a part"),
            }
        }
        Snapshot {
            header: header.unwrap_or_else(|| panic!("no header")),
            subjects,
            chunks,
            end,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the snapshot did not end"))
}

fn ask(purposes: &[&str]) -> pb::ExportSnapshotRequest {
    pb::ExportSnapshotRequest {
        purpose_ids: purposes.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

/// What two answers must agree on (the echoes differ by design).
fn gist(r: &pb::CheckResponse) -> (bool, i32, String, Option<prost_types::Timestamp>, bool) {
    (
        r.allowed,
        r.reason,
        r.event_id.clone(),
        r.expires_at,
        r.needs_reconsent,
    )
}

/// Writes a mix of choices and rights for `n` subjects, 16 at a time; returns the subject
/// ids in byte order, without the one erased.
async fn populate(client: &ConsentClient, n: usize) -> Vec<String> {
    let subjects: Vec<String> = (0..n).map(|i| format!("+324700{i:05}")).collect();
    futures::stream::iter(subjects.iter().enumerate())
        .for_each_concurrent(16, |(i, s)| async move {
            let decision = if i % 3 == 0 {
                Decision::Denied
            } else {
                Decision::Granted
            };
            client
                .consent()
                .record_consent(record(
                    s,
                    &[
                        ("call_recording", decision),
                        ("analytics", Decision::Granted),
                    ],
                    Channel::Voice,
                ))
                .await
                .unwrap_or_else(|e| panic!("record {s}: {e}"));
        })
        .await;
    let rights = client.rights();
    // A withdraw-all, a restriction, an objection, a flag-only subject, an erasure.
    client
        .consent()
        .withdraw_consent(pb::WithdrawConsentRequest {
            subject_id: subjects[1].clone(),
            channel: Channel::Web.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("withdraw: {e}"));
    rights
        .clone()
        .restrict_processing(pb::RestrictProcessingRequest {
            subject_id: subjects[2].clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("restrict: {e}"));
    rights
        .clone()
        .object(pb::ObjectRequest {
            subject_id: "objector-without-choices".into(),
            purpose_ids: vec!["marketing_communications".into()],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("object: {e}"));
    rights
        .clone()
        .erase_subject(pb::EraseSubjectRequest {
            subject_id: subjects[4].clone(),
            reason: "request 7".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("erase: {e}"));
    let mut listed: Vec<String> = subjects
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .map(|(_, s)| s)
        .collect();
    listed.push("objector-without-choices".into());
    listed.sort();
    listed
}

/// Every subject's decisions by CheckBatch, in batches of 1,000 checks.
async fn checked(client: &ConsentClient, subjects: &[String]) -> Vec<Vec<pb::CheckResponse>> {
    let checks: Vec<pb::CheckRequest> = subjects
        .iter()
        .flat_map(|s| {
            PURPOSES.iter().map(|p| pb::CheckRequest {
                subject_id: s.clone(),
                purpose_id: (*p).into(),
                ..Default::default()
            })
        })
        .collect();
    let mut results = Vec::new();
    for batch in checks.chunks(999) {
        results.extend(
            client
                .consent()
                .check_batch(pb::CheckBatchRequest {
                    checks: batch.to_vec(),
                    consistency: None,
                })
                .await
                .unwrap_or_else(|e| panic!("check_batch: {e}"))
                .into_inner()
                .results,
        );
    }
    results.chunks(PURPOSES.len()).map(<[_]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_equals_checks_at_one_revision_and_watch_follows_it() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let subjects = populate(client, 2100).await;

        let first = snapshot(client, ask(&PURPOSES)).await;
        let h = &first.header;
        assert_eq!(h.purpose_ids, PURPOSES);
        assert!(h.revision > 0 && h.evaluated_at.is_some());
        assert_eq!(
            first.chunks, 3,
            "{b}: 2,100 subjects in chunks of at most 1,000"
        );
        let ids: Vec<&str> = first
            .subjects
            .iter()
            .map(|s| s.subject_id.as_str())
            .collect();
        assert_eq!(
            ids, subjects,
            "{b}: every subject once, in byte order, none erased"
        );
        assert_eq!(
            first.end.as_ref().map(|e| e.subjects),
            Some(i64::try_from(subjects.len()).unwrap_or(0))
        );
        // Nothing was written since: every decision is what CheckBatch answers now.
        let now = checked(client, &subjects).await;
        for (s, expected) in first.subjects.iter().zip(&now) {
            let got: Vec<_> = s.decisions.iter().map(gist).collect();
            let want: Vec<_> = expected.iter().map(gist).collect();
            assert_eq!(got, want, "{b}: {}", s.subject_id);
            assert!(s.decisions.iter().all(|d| d.revision == h.revision));
        }
        // A subject the ledger knows nothing about, and an erased one, decide as `absent`.
        let unknown = checked(client, &["never-seen".to_owned()]).await;
        let absent: Vec<_> = h.absent.iter().map(gist).collect();
        assert_eq!(absent, unknown[0].iter().map(gist).collect::<Vec<_>>());
        assert!(
            absent[3].0,
            "{b}: service delivery is allowed by default (contract)"
        );

        // More writes; the same revision asked again gives the same snapshot.
        let mut after = Vec::new();
        for (i, s) in subjects.iter().take(30).enumerate() {
            let decision = if i % 2 == 0 {
                Decision::Withdrawn
            } else {
                Decision::Granted
            };
            let written = client
                .consent()
                .record_consent(record(s, &[("call_recording", decision)], Channel::Web))
                .await
                .unwrap_or_else(|e| panic!("record: {e}"))
                .into_inner();
            after.extend(written.events.into_iter().map(|e| e.id));
        }
        let again = snapshot(
            client,
            pb::ExportSnapshotRequest {
                at_revision: h.revision,
                ..ask(&PURPOSES)
            },
        )
        .await;
        assert_eq!(again.header.revision, h.revision);
        assert_eq!(
            again.subjects, first.subjects,
            "{b}: one revision, one snapshot"
        );

        // Watch from the header's revision: exactly the writes made after it.
        let mut watch = client
            .consent()
            .watch(pb::WatchRequest {
                from_revision: h.revision,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("watch: {e}"))
            .into_inner();
        let mut seen = Vec::new();
        tokio::time::timeout(SAFETY, async {
            while seen.len() < after.len() {
                match watch.message().await {
                    Ok(Some(m)) => seen.extend(m.events.into_iter().map(|e| e.id)),
                    other => panic!("watch ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{b}: the writes after the snapshot did not all arrive"));
        assert_eq!(seen, after, "{b}: no gap, no duplicate");

        // At the head, the snapshot sees them; each decision is again CheckBatch's.
        let latest = snapshot(client, ask(&PURPOSES)).await;
        let now = checked(client, &subjects).await;
        for (s, expected) in latest.subjects.iter().zip(&now) {
            let got: Vec<_> = s.decisions.iter().map(gist).collect();
            let want: Vec<_> = expected.iter().map(gist).collect();
            assert_eq!(got, want, "{b}: {} at the head", s.subject_id);
        }

        // Resumed after a subject: the rest, counted from there.
        let cut = &subjects[1500];
        let rest = snapshot(
            client,
            pb::ExportSnapshotRequest {
                at_revision: h.revision,
                after_subject_id: cut.clone(),
                ..ask(&PURPOSES)
            },
        )
        .await;
        assert_eq!(
            rest.subjects,
            first.subjects[1501..],
            "{b}: resumed after {cut}"
        );
        assert_eq!(
            rest.end.map(|e| e.subjects),
            Some(i64::try_from(subjects.len() - 1501).unwrap_or(0))
        );

        // No purposes named: every catalogued purpose, in id order.
        let all = snapshot(client, ask(&[])).await;
        let mut catalogued = all.header.purpose_ids.clone();
        catalogued.sort();
        assert_eq!(all.header.purpose_ids, catalogued);
        assert!(all.header.purpose_ids.len() >= PURPOSES.len());
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_requests_name_their_field() {
    for server in backends().await {
        let b = server.backend;
        let client = &server.client;
        apply_seed_catalog(client).await;
        let head = client
            .consent()
            .record_consent(record(
                "s1",
                &[("analytics", Decision::Granted)],
                Channel::Web,
            ))
            .await
            .unwrap_or_else(|e| panic!("record: {e}"))
            .into_inner()
            .revision;
        let refused = |request: pb::ExportSnapshotRequest| async move {
            match client.consent().export_snapshot(request).await {
                Ok(stream) => {
                    // A refusal may come as the stream's status.
                    let first = stream.into_inner().next().await;
                    match first {
                        Some(Err(status)) => status,
                        other => panic!("{b}: expected a refusal, got {other:?}"),
                    }
                }
                Err(status) => status,
            }
        };
        let bad = refused(pb::ExportSnapshotRequest {
            purpose_ids: vec!["analytics".into(), "analytics".into(), String::new()],
            at_revision: -1,
            after_subject_id: "erased:abc".into(),
            vendor_id: "bad\u{200b}vendor".into(),
        })
        .await;
        assert_eq!(bad.code(), Code::InvalidArgument, "{b}: {bad:?}");
        let mut fields = bad_fields(&bad);
        fields.sort();
        assert_eq!(
            fields,
            [
                "after_subject_id",
                "at_revision",
                "purpose_ids[1]",
                "purpose_ids[2]",
                "vendor_id"
            ]
        );
        let unknown = refused(ask(&["no_such_purpose"])).await;
        assert_eq!(unknown.code(), Code::NotFound, "{b}: {unknown:?}");
        let ahead = refused(pb::ExportSnapshotRequest {
            at_revision: head + 1,
            ..ask(&["analytics"])
        })
        .await;
        assert_eq!(ahead.code(), Code::FailedPrecondition, "{b}: {ahead:?}");
        assert!(ahead.message().contains("ahead"), "{b}: {ahead:?}");
        server.stop().await;
    }
}

/// A snapshot outlives the check made when it opened: a key revoked mid-snapshot ends it
/// with UNAUTHENTICATED before its end. The scan waits for its reader (2 chunks queued, and
/// what HTTP/2 flow control lets through), so most of the 30 chunks are never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_snapshot() {
    let acme = consent_e2e::RevocableReader::start().await;
    seed(&acme.server, "acme", 30).await;
    let mut stream = acme
        .reader
        .consent()
        .export_snapshot(ask(&["analytics"]))
        .await
        .unwrap_or_else(|e| panic!("export_snapshot: {e:?}"))
        .into_inner();
    let first = stream.message().await;
    assert!(
        matches!(&first, Ok(Some(m)) if matches!(m.part, Some(Part::Header(_)))),
        "{first:?}"
    );
    acme.revoke().await;
    let (chunks, ended) = chunks_until_the_end(&mut stream).await;
    assert!(
        matches!(&ended, Err(e) if e.code() == Code::Unauthenticated),
        "{ended:?} after {chunks} chunks"
    );
    assert!(
        chunks < 30,
        "{chunks} chunks were sent after the revocation"
    );
    acme.server.stop().await;
}

/// Writes `thousands` x 1,000 subjects `s000000`... (one grant each) to `tenant`.
async fn seed(server: &consent_e2e::TestServer, tenant: &str, thousands: usize) {
    let subjects: Vec<String> = (0..thousands * 1000).map(|i| format!("s{i:06}")).collect();
    consent_e2e::seed_grants(server, tenant, &subjects).await;
}

/// Counts the chunks `stream` gives until it yields anything else (its end, an error).
async fn chunks_until_the_end(
    stream: &mut tonic::Streaming<pb::ExportSnapshotResponse>,
) -> (
    usize,
    Result<Option<pb::ExportSnapshotResponse>, tonic::Status>,
) {
    let mut chunks = 0;
    let ended = tokio::time::timeout(SAFETY, async {
        loop {
            match stream.message().await {
                Ok(Some(pb::ExportSnapshotResponse {
                    part: Some(Part::Chunk(_)),
                })) => chunks += 1,
                other => return other,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the snapshot went on past the safety net"));
    (chunks, ended)
}

/// Shutting down ends an open snapshot whose reader reads nothing, instead of waiting on
/// it; what the reader then gets ends with UNAVAILABLE telling it where to resume, never a
/// plain end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_snapshot_with_where_to_resume() {
    let server = consent_e2e::TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    seed(&server, "default", 30).await;
    let mut stream = server
        .client
        .consent()
        .export_snapshot(ask(&["analytics"]))
        .await
        .unwrap_or_else(|e| panic!("export_snapshot: {e:?}"))
        .into_inner();
    let first = stream.message().await;
    assert!(matches!(&first, Ok(Some(_))), "{first:?}");
    tokio::time::timeout(SAFETY, server.stop())
        .await
        .unwrap_or_else(|_| panic!("shutdown waited on an open snapshot"));
    let (chunks, ended) = chunks_until_the_end(&mut stream).await;
    assert!(chunks < 30, "{chunks} chunks");
    match ended {
        Err(e) => assert!(
            e.code() == Code::Unavailable && e.message().contains("after_subject_id"),
            "{e:?}"
        ),
        Ok(other) => panic!("the snapshot ended without an error: {other:?}"),
    }
}

/// Subjects erased while a snapshot is read are not listed once the erasure committed
/// (beyond the few chunks the transport already held), and the end counts what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_erased_during_a_snapshot_are_not_listed_after_it() {
    let server = consent_e2e::TestServer::sqlite().await;
    apply_seed_catalog(&server.client).await;
    seed(&server, "default", 30).await;
    // A reader with HTTP/2's smallest windows (64 KiB), so the transport holds little
    // (by default a client takes 2 MB, here the whole snapshot, before it reads any).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let reader = ConsentClient::from_channel(channel);
    let mut stream = reader
        .consent()
        .export_snapshot(ask(&["analytics"]))
        .await
        .unwrap_or_else(|e| panic!("export_snapshot: {e:?}"))
        .into_inner();
    let mut listed: Vec<String> = Vec::new();
    // The header and the first chunk.
    for _ in 0..2 {
        match stream.message().await {
            Ok(Some(pb::ExportSnapshotResponse {
                part: Some(Part::Chunk(c)),
            })) => listed.extend(c.subjects.into_iter().map(|s| s.subject_id)),
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    // Erase subjects all along the rest, near (queued) and far (not read yet).
    let erased: Vec<String> = (1000..30_000)
        .step_by(97)
        .map(|i| format!("s{i:06}"))
        .collect();
    for subject in &erased {
        server
            .client
            .rights()
            .erase_subject(pb::EraseSubjectRequest {
                subject_id: subject.clone(),
                reason: "request".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("erase: {e}"));
    }
    let mut end = None;
    tokio::time::timeout(SAFETY, async {
        while let Some(message) = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("stream: {e:?}"))
        {
            match message.part {
                Some(Part::Chunk(c)) => listed.extend(c.subjects.into_iter().map(|s| s.subject_id)),
                Some(Part::End(e)) => end = Some(e.subjects),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the snapshot did not end"));
    assert_eq!(
        end,
        Some(i64::try_from(listed.len()).unwrap_or(0)),
        "the end counts what was sent"
    );
    let erased_and_listed: Vec<&String> = erased
        .iter()
        .filter(|e| listed.binary_search(e).is_ok())
        .collect();
    // Only subjects within the first chunks after the first one (those the transport may
    // already have held) can predate their erasure.
    assert!(
        erased_and_listed.iter().all(|s| s.as_str() < "s008000"),
        "listed after their erasure: {erased_and_listed:?}"
    );
    assert_eq!(
        listed.len(),
        30_000 - erased.len() + erased_and_listed.len()
    );
    server.stop().await;
}
