//! The one place where a domain error becomes a gRPC status, with rich details:
//! `google.rpc.BadRequest` for invalid input, `google.rpc.ErrorInfo` for everything else.

use consent_core::ConsentError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "consent.v1";

/// Most field violations one answer lists in its `BadRequest`; the rest are counted. With
/// the clipping below, an error stays under 8 KiB of metadata, the default limit of gRPC
/// C-core clients (which would otherwise report RESOURCE_EXHAUSTED and lose the fields).
pub const MAX_REPORTED_VIOLATIONS: usize = 10;
/// Violations also spelled out in the status message (the rest are in the details).
const MAX_VIOLATIONS_IN_MESSAGE: usize = 3;
/// Longest field name echoed back, in bytes (a field name can quote a caller's map key).
const MAX_FIELD_BYTES: usize = 128;
/// Longest violation description echoed back, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The status of invalid input: every violation (up to a cap, clipped) in a BadRequest,
/// the first few in the message.
fn invalid_argument(violations: Vec<consent_core::FieldViolation>) -> Status {
    let total = violations.len();
    let shown: Vec<(String, String)> = violations
        .into_iter()
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|v| {
            (
                clip(&v.field, MAX_FIELD_BYTES),
                clip(&v.description, MAX_DESCRIPTION_BYTES),
            )
        })
        .collect();
    let mut message = shown
        .iter()
        .take(MAX_VIOLATIONS_IN_MESSAGE)
        .map(|(field, description)| clip(&format!("{field}: {description}"), 160))
        .collect::<Vec<_>>()
        .join("; ");
    if total > MAX_VIOLATIONS_IN_MESSAGE {
        message.push_str(&format!(
            "; {} invalid fields in all (google.rpc.BadRequest lists up to {MAX_REPORTED_VIOLATIONS})",
            total
        ));
    }
    let mut details = ErrorDetails::new();
    for (field, description) in shown {
        details.add_bad_request_violation(field, description);
    }
    if total > MAX_REPORTED_VIOLATIONS {
        details.add_bad_request_violation(
            "(more)",
            format!(
                "{} more invalid fields are not listed; fix these and retry",
                total - MAX_REPORTED_VIOLATIONS
            ),
        );
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Maps an error to its status. Internal details are logged, not sent.
pub fn status(error: ConsentError) -> Status {
    let message = error.to_string();
    let info = |code: Code, reason: &str, metadata: Vec<(&str, String)>| {
        let metadata = metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<std::collections::HashMap<_, _>>();
        Status::with_error_details(
            code,
            message.clone(),
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
        )
    };
    match error {
        ConsentError::InvalidArgument(violations) => invalid_argument(violations),
        ConsentError::NotFound { kind, id } => info(
            Code::NotFound,
            "NOT_FOUND",
            vec![("kind", kind.to_owned()), ("id", id)],
        ),
        ConsentError::AlreadyExists(_) => info(Code::AlreadyExists, "ALREADY_EXISTS", vec![]),
        ConsentError::FailedPrecondition(_) => {
            info(Code::FailedPrecondition, "FAILED_PRECONDITION", vec![])
        }
        ConsentError::PermissionDenied(_) => {
            info(Code::PermissionDenied, "PERMISSION_DENIED", vec![])
        }
        ConsentError::ResourceExhausted(_) => {
            info(Code::ResourceExhausted, "RESOURCE_EXHAUSTED", vec![])
        }
        ConsentError::Aborted(_) => info(Code::Aborted, "ABORTED", vec![]),
        ConsentError::Unavailable(detail) => {
            tracing::warn!(%detail, "store unavailable");
            info(Code::Unavailable, "STORE_UNAVAILABLE", vec![])
        }
        ConsentError::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            Status::with_error_details(
                Code::Internal,
                "internal error; the server log has the details",
                ErrorDetails::with_error_info(
                    "INTERNAL",
                    ERROR_DOMAIN,
                    std::collections::HashMap::new(),
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_core::FieldViolation;

    #[test]
    fn invalid_argument_carries_bad_request_fields() {
        let s = status(ConsentError::InvalidArgument(vec![FieldViolation::new(
            "subject_id",
            "must not be empty",
        )]));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("subject_id: must not be empty"));
        let details = s.get_error_details();
        let bad = details
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "subject_id");
    }

    #[test]
    fn many_or_huge_violations_stay_small() {
        let huge_key = "k".repeat(4 << 20);
        let violations: Vec<FieldViolation> = (0..60)
            .map(|i| {
                FieldViolation::new(
                    format!("evidence.attributes[{huge_key:?}].key{i}"),
                    "é".repeat(3000),
                )
            })
            .collect();
        let s = status(ConsentError::InvalidArgument(violations));
        assert_eq!(s.code(), Code::InvalidArgument);
        let mut headers = http::HeaderMap::new();
        assert!(s.add_header(&mut headers).is_ok());
        let size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        assert!(size < 8 * 1024, "{size} bytes of metadata");
        let listed = s
            .get_details_bad_request()
            .map(|b| b.field_violations)
            .unwrap_or_default();
        assert_eq!(listed.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert_eq!(listed[MAX_REPORTED_VIOLATIONS].field, "(more)");
        assert!(s.message().contains("60 invalid fields"));
    }

    #[test]
    fn codes_follow_the_kind() {
        assert_eq!(
            status(ConsentError::not_found("purpose", "x")).code(),
            Code::NotFound
        );
        assert_eq!(
            status(ConsentError::AlreadyExists("k".into())).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            status(ConsentError::FailedPrecondition("p".into())).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            status(ConsentError::PermissionDenied("no".into())).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            status(ConsentError::Unavailable("db".into())).code(),
            Code::Unavailable
        );
        let internal = status(ConsentError::Internal("secret detail".into()));
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("secret"));
    }
}
