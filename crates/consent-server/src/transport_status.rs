//! Corrects the codes tonic gives to faults it finds in a request before any handler runs,
//! so a caller's mistake never reads as the server's:
//!
//! - a body that is not valid protobuf for the method (bad varint, invalid UTF-8 in a
//!   string, wire type 7, a truncated message), a compressed flag without `grpc-encoding`, or
//!   a body that does not decompress: tonic answers `INTERNAL`, as gRPC's defaults suggest;
//!   here they are `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming the request
//!   body, because the caller must fix its request and no operator should be paged for it;
//! - a request over `limits.max_message_bytes`: tonic answers `OUT_OF_RANGE`; gRPC's guide
//!   and this API say `RESOURCE_EXHAUSTED` for an exceeded limit (the message is kept).
//!
//! These faults are answered trailers-only (status in the response headers), which is where
//! [`correct`] looks; a streaming handler meets them mid-stream, as errors of its request
//! stream, and passes them through [`correct_stream_error`].

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The beginnings of tonic's messages for a request body it could not read.
const UNREADABLE_BODY: &[&str] = &[
    "failed to decode Protobuf message",
    "protocol error: received message with compressed-flag",
    "protocol error: received message with invalid compression flag",
    "Error decompressing",
    "Unexpected EOF decoding stream",
    "Missing request message",
];

/// The field a BadRequest names for a body that could not be read.
pub const BODY_FIELD: &str = "(request body)";

/// Rewrites a trailers-only response carrying one of the statuses above.
pub fn correct(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let corrected = match code {
        Some("11") => Status::from_header_map(headers)
            .filter(|s| s.message().contains("too large"))
            .map(|s| Status::new(Code::ResourceExhausted, s.message())),
        Some("13") => Status::from_header_map(headers)
            .filter(|s| UNREADABLE_BODY.iter().any(|p| s.message().starts_with(p)))
            .map(|s| unreadable_body(s.message())),
        _ => None,
    };
    if let Some(status) = corrected {
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            headers.remove(name);
        }
        if status.add_header(headers).is_err() {
            // The status could not be written as headers; answer the bare code at least.
            headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        }
    }
    response
}

/// The same correction for an error a streaming handler reads from its request stream
/// (tonic reports there, mid-stream, what it answers trailers-only for a unary call).
pub fn correct_stream_error(status: Status) -> Status {
    match status.code() {
        Code::Internal
            if UNREADABLE_BODY
                .iter()
                .any(|p| status.message().starts_with(p)) =>
        {
            unreadable_body(status.message())
        }
        Code::OutOfRange if status.message().contains("too large") => {
            Status::new(Code::ResourceExhausted, status.message())
        }
        _ => status,
    }
}

fn unreadable_body(detail: &str) -> Status {
    let description =
        format!("must be a valid protobuf message of the method's request type: {detail}");
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{BODY_FIELD}: {description}"),
        ErrorDetails::with_bad_request_violation(BODY_FIELD, description),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &Status) -> Status {
        let response = correct(status.clone().into_http());
        Status::from_header_map(response.headers()).unwrap_or_else(|| Status::unknown("none"))
    }

    #[test]
    fn unreadable_bodies_are_invalid_argument_naming_the_body() {
        for message in [
            "failed to decode Protobuf message: invalid varint",
            "failed to decode Protobuf message: CheckRequest.subject_id: invalid string value: data is not UTF-8 encoded",
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            "Missing request message.",
        ] {
            let status = answered(&Status::internal(message));
            assert_eq!(status.code(), Code::InvalidArgument, "{message}");
            let fields: Vec<String> = status
                .get_details_bad_request()
                .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
                .unwrap_or_default();
            assert_eq!(fields, [BODY_FIELD]);
        }
    }

    #[test]
    fn other_statuses_are_left_alone() {
        let ours = Status::internal("internal error; the server log has the details");
        assert_eq!(answered(&ours).code(), Code::Internal);
        assert_eq!(
            answered(&Status::out_of_range("revision")).code(),
            Code::OutOfRange
        );
        let oversized = Status::out_of_range(
            "Error, decoded message length too large: found 9000000 bytes, the limit is: 8388608 bytes",
        );
        let corrected = answered(&oversized);
        assert_eq!(corrected.code(), Code::ResourceExhausted);
        assert!(corrected.message().contains("9000000"));
    }

    #[test]
    fn stream_errors_get_the_same_correction() {
        let bad = correct_stream_error(Status::internal(
            "failed to decode Protobuf message: invalid varint",
        ));
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().starts_with(BODY_FIELD), "{bad:?}");
        let large = correct_stream_error(Status::out_of_range("message too large"));
        assert_eq!(large.code(), Code::ResourceExhausted);
        // A server fault stays one.
        let fault = correct_stream_error(Status::internal("the store broke"));
        assert_eq!(fault.code(), Code::Internal);
    }
}
