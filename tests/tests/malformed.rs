//! Request bodies that are not what the method expects, sent as raw HTTP/2 frames (a client
//! that is not tonic): each answers INVALID_ARGUMENT with a `google.rpc.BadRequest` naming
//! the request body, never INTERNAL, and the server serves on.

use bytes::Bytes;
use consent_e2e::{TestServer, bad_fields};
use consent_server::transport_status::BODY_FIELD;
use tonic::Code;

/// A gRPC message frame: compressed flag, big-endian length, payload.
fn frame(compressed: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![compressed];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Sends one raw frame to `path` over a fresh HTTP/2 connection; returns the gRPC status
/// (from the headers of a trailers-only answer, or from the trailers).
async fn raw_call(server: &TestServer, path: &str, body: Vec<u8>) -> tonic::Status {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("{what}: {e}") };
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .unwrap_or_else(|e| fail("connect", &e));
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| fail("handshake", &e));
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap_or_else(|e| fail("ready", &e));
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap_or_else(|e| fail("request", &e));
    let (response, mut stream) = client
        .send_request(request, false)
        .unwrap_or_else(|e| fail("send", &e));
    stream
        .send_data(Bytes::from(body), true)
        .unwrap_or_else(|e| fail("send body", &e));
    let response = response.await.unwrap_or_else(|e| fail("response", &e));
    let (parts, mut body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return status;
    }
    // Bounded by the server: it ends the stream after its answer.
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| fail("body", &e));
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .unwrap_or_else(|e| fail("trailers", &e))
        .unwrap_or_default();
    tonic::Status::from_header_map(&trailers).unwrap_or_else(|| fail("status", &"none"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_invalid_argument() {
    let server = TestServer::sqlite().await;
    // CheckRequest.subject_id is field 1, a string (wire type 2).
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "a varint longer than ten bytes",
            frame(
                0,
                &[
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
            ),
        ),
        (
            "invalid UTF-8 in a string",
            frame(0, &[0x0a, 0x02, 0xc3, 0x28]),
        ),
        ("wire type 7", frame(0, &[0x0f, 0x01, 0x02])),
        ("a length past the end", frame(0, &[0x0a, 0x40, b'x'])),
        (
            "the compressed flag without grpc-encoding",
            frame(1, &[0x0a, 0x01, b's']),
        ),
    ];
    for (what, body) in cases {
        let status = raw_call(&server, "/consent.v1.ConsentService/Check", body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(bad_fields(&status), [BODY_FIELD], "{what}");
    }
    // A well-formed request on the same server: NOT_FOUND (no catalogue), as usual.
    let fine = raw_call(
        &server,
        "/consent.v1.ConsentService/Check",
        frame(0, &[0x0a, 0x01, b's', 0x12, 0x01, b'p']),
    )
    .await;
    assert_eq!(fine.code(), Code::NotFound, "{fine:?}");
    server.stop().await;
}

/// The peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// 8 MB of empty checks (4 million of them) is refused by counting, before decoding: the
/// server's memory grows by about the body (buffered), not by 4 million decoded requests
/// (about 420 MB before the fix). Measured as this process's peak resident memory, since
/// the server runs in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_empty_checks_are_refused_before_decoding() {
    let server = TestServer::sqlite().await;
    let empties = [0x0a_u8, 0x00].repeat(4_000_000);
    let before = peak_rss_kib();
    let status = raw_call(
        &server,
        "/consent.v1.ConsentService/CheckBatch",
        frame(0, &empties),
    )
    .await;
    let after = peak_rss_kib();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["checks"]);
    assert!(status.message().contains("got 4000000"), "{status:?}");
    if let (Some(before), Some(after)) = (before, after) {
        assert!(
            after.saturating_sub(before) < 150 * 1024,
            "peak memory grew by {} MiB",
            after.saturating_sub(before) / 1024
        );
    }
    server.stop().await;
}

/// Two request messages in the body of a unary call: INVALID_ARGUMENT naming the body
/// (tonic alone answered the first and ignored the second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_takes_exactly_one_message() {
    let server = TestServer::sqlite().await;
    let check = [0x0a, 0x01, b's', 0x12, 0x01, b'p'];
    let two = [frame(0, &check), frame(0, &check)].concat();
    let status = raw_call(&server, "/consent.v1.ConsentService/Check", two).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), [BODY_FIELD]);
    server.stop().await;
}
