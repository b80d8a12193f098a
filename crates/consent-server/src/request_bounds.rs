//! Bounds what a request costs to decode, before tonic decodes it.
//!
//! A message within `limits.max_message_bytes` can still decode to far more memory than it
//! takes on the wire: 8 MB of empty `CheckRequest`s is 4 million structs (about 420 MB)
//! before the handler could count them. For each method with a repeated top-level field,
//! this layer reads the (size-limited) body, counts that field's entries by walking the
//! protobuf wire format without decoding anything, and refuses more than the method accepts
//! with `INVALID_ARGUMENT` naming the field, the way the handler would have. Every request
//! to the API must also hold exactly one message (tonic would read the first and ignore the
//! rest). A body it cannot walk is passed on unchanged: tonic's decoder then rejects it.
//!
//! A streaming method (`CheckStream`) cannot be read whole first: its body passes through
//! [`FrameBounded`], which holds back each message until all of it has arrived, checks it
//! the same way, and ends the stream with the error instead of passing a message over.

use bytes::{Buf, Bytes};
use consent_core::ConsentError;
use consent_core::validate::{
    MAX_BATCH_CHECKS, MAX_DECISIONS, MAX_LIST_ENTRIES, MAX_WITHDRAW_PURPOSES,
};
use http_body_util::{BodyExt, Full, Limited};
use tonic::Status;
use tonic::body::Body;

use crate::error::status;

/// A repeated top-level field of a method's request, and how many entries it may hold.
#[derive(Clone, Copy, Debug)]
struct RepeatedLimit {
    path: &'static str,
    field_number: u64,
    field: &'static str,
    what: &'static str,
    max: usize,
}

/// Every method whose request has a repeated top-level field (proto field numbers).
const REPEATED_LIMITS: &[RepeatedLimit] = &[
    RepeatedLimit {
        path: "/consent.v1.ConsentService/CheckBatch",
        field_number: 1,
        field: "checks",
        what: "checks",
        max: MAX_BATCH_CHECKS,
    },
    RepeatedLimit {
        path: "/consent.v1.ConsentService/RecordConsent",
        field_number: 2,
        field: "decisions",
        what: "decisions",
        max: MAX_DECISIONS,
    },
    RepeatedLimit {
        path: "/consent.v1.ConsentService/WithdrawConsent",
        field_number: 2,
        field: "purpose_ids",
        what: "purposes",
        max: MAX_WITHDRAW_PURPOSES,
    },
    RepeatedLimit {
        path: "/consent.v1.ConsentService/Watch",
        field_number: 3,
        field: "purpose_ids",
        what: "entries",
        max: MAX_LIST_ENTRIES,
    },
    RepeatedLimit {
        path: "/consent.v1.ConsentService/ExportSnapshot",
        field_number: 1,
        field: "purpose_ids",
        what: "entries",
        max: MAX_LIST_ENTRIES,
    },
    RepeatedLimit {
        path: "/consent.v1.AdminService/CreateApiKey",
        field_number: 3,
        field: "scopes",
        what: "entries",
        max: MAX_LIST_ENTRIES,
    },
];

/// Reads one varint, or `None` if the buffer ends inside it or it is longer than 10 bytes.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// How many times `field_number` occurs at the top level of a protobuf message, or `None`
/// when the bytes are not a well-formed message (left to the decoder to reject).
pub fn count_field(mut message: &[u8], field_number: u64) -> Option<usize> {
    let mut count = 0;
    while message.has_remaining() {
        let key = varint(&mut message)?;
        let skip = match key & 0x7 {
            0 => {
                varint(&mut message)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut message)?).ok()?,
            5 => 4,
            // Groups (3, 4) are not used by this API; 6 and 7 do not exist.
            _ => return None,
        };
        if skip > message.remaining() {
            return None;
        }
        message.advance(skip);
        if key >> 3 == field_number {
            count += 1;
        }
    }
    Some(count)
}

/// Streaming methods: many messages, each checked as it arrives ([`FrameBounded`]).
const STREAMING_LIMITS: &[RepeatedLimit] = &[RepeatedLimit {
    path: "/consent.v1.ConsentService/CheckStream",
    field_number: 2,
    field: "checks",
    what: "checks",
    max: MAX_BATCH_CHECKS,
}];

/// The limit a request to `path` is checked against, if any.
fn limit_of(path: &str) -> Option<RepeatedLimit> {
    REPEATED_LIMITS.iter().copied().find(|l| l.path == path)
}

/// Checks a gRPC request body (frames of flag, length, message): exactly one message (every
/// method here takes one request message; gRPC calls more a protocol error, tonic would
/// read the first and ignore the rest), and at most `limit`'s entries when there is one.
/// `Err` is the status to answer.
fn check_frames(mut body: &[u8], limit: Option<&RepeatedLimit>) -> Result<(), Status> {
    let mut messages = 0;
    while body.remaining() >= 5 {
        let compressed = body.get_u8();
        let len = usize::try_from(body.get_u32()).unwrap_or(usize::MAX);
        if compressed != 0 || len > body.remaining() {
            // Compressed or truncated: tonic's decoder answers it.
            return Ok(());
        }
        messages += 1;
        if messages > 1 {
            return Err(status(ConsentError::invalid(
                crate::transport_status::BODY_FIELD,
                "must hold exactly one request message",
            )));
        }
        if let Some(limit) = limit {
            let count = count_field(&body[..len], limit.field_number).unwrap_or(0);
            if count > limit.max {
                return Err(status(ConsentError::invalid(
                    limit.field,
                    format!(
                        "must hold at most {} {}, got {count}",
                        limit.max, limit.what
                    ),
                )));
            }
        }
        body.advance(len);
    }
    Ok(())
}

/// Reads the body of a request to this API (at most `max_message_bytes` plus its frame
/// header) and checks it; returns the request to pass on, with the same body.
async fn bounded(
    request: http::Request<Body>,
    limit: Option<RepeatedLimit>,
    max_message_bytes: usize,
) -> Result<http::Request<Body>, Status> {
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match Limited::new(body, max_message_bytes.saturating_add(5))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::resource_exhausted(format!(
                "the request is larger than limits.max_message_bytes ({max_message_bytes})"
            )));
        }
        Err(e) => {
            return Err(Status::cancelled(format!(
                "the request body ended early: {e}"
            )));
        }
    };
    check_frames(&bytes, limit.as_ref())?;
    Ok(http::Request::from_parts(
        parts,
        Body::new(Full::new(bytes)),
    ))
}

/// A streaming request body whose messages are passed on only whole and checked: at most
/// `max_message_bytes` each, at most `limit`'s entries. A message that breaks a bound ends
/// the body with the error (tonic's decoder then yields it to the handler as the stream's
/// error); nothing of it was decoded. Bytes wait here only until their message is whole.
pub(crate) struct FrameBounded {
    inner: Body,
    pending: bytes::BytesMut,
    limit: RepeatedLimit,
    max_message_bytes: usize,
    /// The inner body ended.
    done: bool,
    /// An error was returned: the body is over.
    failed: bool,
}

impl FrameBounded {
    fn new(inner: Body, limit: RepeatedLimit, max_message_bytes: usize) -> FrameBounded {
        FrameBounded {
            inner,
            pending: bytes::BytesMut::new(),
            limit,
            max_message_bytes,
            done: false,
            failed: false,
        }
    }

    /// The next whole message (with its frame header) if it has arrived and is within the
    /// bounds; `Err` if it is not.
    fn whole_message(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(header) = self.pending.get(..5) else {
            return Ok(None);
        };
        let compressed = header[0] != 0;
        let len = usize::try_from(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ]))
        .unwrap_or(usize::MAX);
        if len > self.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "a message of {len} bytes is larger than limits.max_message_bytes ({})",
                self.max_message_bytes
            )));
        }
        if self.pending.len() < 5 + len {
            return Ok(None);
        }
        let message = self.pending.split_to(5 + len).freeze();
        // A compressed message is left to tonic (which refuses compression it was not
        // configured for); an unreadable one to its decoder.
        if !compressed
            && let Some(count) = message
                .get(5..)
                .and_then(|m| count_field(m, self.limit.field_number))
            && count > self.limit.max
        {
            return Err(status(ConsentError::invalid(
                self.limit.field,
                format!(
                    "must hold at most {} {}, got {count}",
                    self.limit.max, self.limit.what
                ),
            )));
        }
        Ok(Some(message))
    }
}

impl http_body::Body for FrameBounded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            match this.whole_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(http_body::Frame::data(message)))),
                Ok(None) => {}
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.done {
                // A partial message at the end: tonic's decoder reports it.
                return Poll::Ready(
                    (!this.pending.is_empty())
                        .then(|| Ok(http_body::Frame::data(this.pending.split().freeze()))),
                );
            }
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending.extend_from_slice(&data),
                    // Trailers: whatever is pending goes first (it cannot be whole, or it
                    // would have gone), then the trailers.
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.done && self.pending.is_empty())
    }
}

/// The gate applying the bounds above.
#[derive(Clone, Copy, Debug)]
pub struct RequestBounds {
    max_message_bytes: usize,
}

impl RequestBounds {
    /// Bodies are read up to `max_message_bytes` (tonic refuses more anyway).
    pub fn new(max_message_bytes: usize) -> RequestBounds {
        RequestBounds { max_message_bytes }
    }
}

impl crate::gate::Gate for RequestBounds {
    async fn admit(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = request.uri().path();
        // The consent.v1 services; health and reflection (whose reflection stream takes
        // many messages) are tonic's and pass as they are.
        if !path.starts_with("/consent.v1.") {
            return Ok(request);
        }
        if let Some(limit) = STREAMING_LIMITS.iter().copied().find(|l| l.path == path) {
            let max_message_bytes = self.max_message_bytes;
            return Ok(
                request.map(|body| Body::new(FrameBounded::new(body, limit, max_message_bytes)))
            );
        }
        let limit = limit_of(path);
        bounded(request, limit, self.max_message_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_top_level_entries_without_decoding() {
        // Field 1 (length-delimited) three times, field 2 (varint) once, nested field 1
        // inside the second entry not counted.
        let message = [0x0a, 0x00, 0x0a, 0x02, 0x08, 0x01, 0x10, 0x05, 0x0a, 0x00];
        assert_eq!(count_field(&message, 1), Some(3));
        assert_eq!(count_field(&message, 2), Some(1));
        assert_eq!(count_field(&[0x0a, 0x05, 0x00], 1), None, "truncated");
        assert_eq!(count_field(&[0x0f], 1), None, "wire type 7");
        assert_eq!(count_field(&[], 1), Some(0));
    }

    #[test]
    fn too_many_entries_are_refused_naming_the_field() {
        let Some(limit) = limit_of("/consent.v1.ConsentService/CheckBatch") else {
            panic!("CheckBatch is bounded");
        };
        let empties = |n: usize| frame(&[0x0a, 0x00].repeat(n));
        assert!(check_frames(&empties(MAX_BATCH_CHECKS), Some(&limit)).is_ok());
        let refused = check_frames(&empties(MAX_BATCH_CHECKS + 1), Some(&limit)).err();
        assert_eq!(
            refused.as_ref().map(Status::code),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(refused.is_some_and(|s| s.message().contains("checks")));
        assert!(
            check_frames(&frame(&[0x0f]), Some(&limit)).is_ok(),
            "left to the decoder"
        );
    }

    /// A streaming body cut into `chunks`, read through [`FrameBounded`]: the data frames it
    /// passes on, then its error if it ends with one.
    async fn through_bounds(
        chunks: Vec<Vec<u8>>,
        max_message_bytes: usize,
    ) -> (Vec<Bytes>, Option<Status>) {
        let limit = STREAMING_LIMITS[0];
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c)))),
        );
        let body = Body::new(http_body_util::StreamBody::new(frames));
        let mut bounded = FrameBounded::new(body, limit, max_message_bytes);
        let mut passed = Vec::new();
        while let Some(frame) = bounded.frame().await {
            match frame {
                Ok(f) => passed.extend(f.into_data().ok()),
                Err(e) => return (passed, Some(e)),
            }
        }
        (passed, None)
    }

    #[tokio::test]
    async fn streamed_messages_pass_whole_and_bounded() {
        // A CheckStreamRequest with `n` empty checks (field 2).
        let request = |n: usize| frame(&[0x12, 0x00].repeat(n));
        let (one, two) = (request(3), request(MAX_BATCH_CHECKS));
        // Cut anywhere, even inside the header: each message comes out whole, on its own.
        let mut all = one.clone();
        all.extend_from_slice(&two);
        let chunks: Vec<Vec<u8>> = all.chunks(7).map(<[u8]>::to_vec).collect();
        let (passed, error) = through_bounds(chunks, 1 << 20).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(passed, [Bytes::from(one.clone()), Bytes::from(two)]);

        // One check too many: the messages before it pass, then the stream ends with the
        // field named; nothing of the bad message is passed on.
        let (passed, error) = through_bounds(
            vec![one.clone(), request(MAX_BATCH_CHECKS + 1), one.clone()],
            1 << 20,
        )
        .await;
        assert_eq!(passed, [Bytes::from(one.clone())]);
        let error = error.unwrap_or_else(|| panic!("the bad message was passed"));
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("checks"), "{error:?}");

        // A message announced larger than the limit is refused at its header.
        let (passed, error) = through_bounds(vec![vec![0, 0, 0x20, 0, 0]], 1 << 20).await;
        assert!(passed.is_empty());
        assert_eq!(
            error.map(|e| e.code()),
            Some(tonic::Code::ResourceExhausted)
        );

        // A message cut short at the end goes to the decoder, which reports it.
        let (passed, error) = through_bounds(vec![one[..4].to_vec()], 1 << 20).await;
        assert!(error.is_none());
        assert_eq!(passed, [Bytes::from(one[..4].to_vec())]);
    }
}
