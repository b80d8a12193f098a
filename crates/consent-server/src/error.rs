//! The one place where a domain error becomes a gRPC status, with rich details:
//! `google.rpc.BadRequest` for invalid input, `google.rpc.ErrorInfo` for everything else.

use consent_core::ConsentError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "consent.v1";

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
        ConsentError::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_bad_request_violation(v.field, v.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
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
