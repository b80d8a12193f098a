//! Typed errors: every failed call is one [`Error`] variant, decoded from the gRPC status
//! and its rich details (`google.rpc.BadRequest`, `ErrorInfo`, `RetryInfo`).

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// A field of a request and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, e.g. `decisions[2].purpose_id`.
    pub field: String,
    /// The rule it broke.
    pub description: String,
}

/// Why a call failed. Match on the variant; every variant's `message` is the server's words.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request broke the API's rules; `violations` names each field and rule.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
        /// Each bad field and the rule it broke.
        violations: Vec<FieldViolation>,
    },
    /// Something the request names does not exist (`kind` and `id` when the server says).
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
        /// What kind of thing (`purpose`, `vendor`, `data item`...), if told.
        kind: Option<String>,
        /// Its id, if told.
        id: Option<String>,
    },
    /// The thing exists already, or an idempotency key was reused for another request.
    #[error("already exists: {message}")]
    AlreadyExists {
        /// The server's message.
        message: String,
    },
    /// The request is valid but the state does not allow it (an erased subject, a revision
    /// ahead of the ledger...).
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
    },
    /// The key lacks the scope this call needs.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// No key, an unknown, revoked or expired key.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// A limit was reached (request rate, open streams); retry after `retry_after` if told.
    #[error("resource exhausted: {message}")]
    ResourceExhausted {
        /// The server's message.
        message: String,
        /// How long to wait, when the server says.
        retry_after: Option<Duration>,
    },
    /// The service or its store cannot answer now (retried by the client when safe; this
    /// is what is left after the retries). Never read it as "allowed".
    #[error("unavailable: {message}")]
    Unavailable {
        /// The server's (or the transport's) message.
        message: String,
        /// How long to wait, when the server says.
        retry_after: Option<Duration>,
    },
    /// The call's deadline passed.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The message.
        message: String,
    },
    /// The call was cancelled.
    #[error("cancelled: {message}")]
    Cancelled {
        /// The message.
        message: String,
    },
    /// A revision or position past the end (gRPC OUT_OF_RANGE).
    #[error("out of range: {message}")]
    OutOfRange {
        /// The message.
        message: String,
    },
    /// A server fault; its log has the details.
    #[error("internal error: {message}")]
    Internal {
        /// The server's message.
        message: String,
    },
    /// Any other status.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
    },
    /// The client could not be built (bad URL, bad key, bad TLS material).
    #[error("client configuration: {0}")]
    Config(String),
    /// The server answered something this client cannot read (a stream broke its own
    /// rules, e.g. a snapshot without its header).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code the error stands for (`Unknown` for the client's own errors).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Cancelled { .. } => Code::Cancelled,
            Error::OutOfRange { .. } => Code::OutOfRange,
            Error::Internal { .. } => Code::Internal,
            Error::Other { code, .. } => *code,
            Error::Config(_) | Error::Protocol(_) => Code::Unknown,
        }
    }

    /// Whether trying again later may succeed (`Unavailable`). The client retries it, and a
    /// call cut off in flight ([`Error::is_transient`]), only when a retry cannot apply a
    /// write twice.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether the call may be sent again as it is, when a retry cannot apply a write twice:
    /// the service was unavailable, or the call was cut off in flight (`Cancelled`: the
    /// connection went away under it, a server restarting, say; nothing the caller did, as
    /// a caller who gives up drops the call and gets no error).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Cancelled { .. })
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::ResourceExhausted { retry_after, .. }
            | Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Each bad field and its rule, for `InvalidArgument` (empty otherwise).
    pub fn violations(&self) -> &[FieldViolation] {
        match self {
            Error::InvalidArgument { violations, .. } => violations,
            _ => &[],
        }
    }
}

/// Whether a status stands for a failed transport (a connection refused, reset or closed
/// mid-call): tonic reports those as `UNKNOWN` "transport error" with the cause as source.
/// The call may or may not have reached the server, so it is `UNAVAILABLE` to the caller:
/// retried like it when a retry cannot apply a write twice.
fn is_transport_failure(status: &tonic::Status) -> bool {
    if status.code() != Code::Unknown {
        return false;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A status's message with its causes (a transport error says little by itself).
fn with_causes(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        cause = e.source();
    }
    message
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        if is_transport_failure(&status) {
            return Error::Unavailable {
                message: with_causes(&status),
                retry_after: None,
            };
        }
        let message = status.message().to_owned();
        let details = status.get_error_details();
        let retry_after = details.retry_info().and_then(|r| r.retry_delay);
        let info = details.error_info();
        let meta = |key: &str| info.and_then(|i| i.metadata.get(key).cloned());
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument {
                message,
                violations: details
                    .bad_request()
                    .map(|bad| {
                        bad.field_violations
                            .iter()
                            .map(|v| FieldViolation {
                                field: v.field.clone(),
                                description: v.description.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Code::NotFound => Error::NotFound {
                message,
                kind: meta("kind"),
                id: meta("id"),
            },
            Code::AlreadyExists => Error::AlreadyExists { message },
            Code::FailedPrecondition => Error::FailedPrecondition { message },
            Code::PermissionDenied => Error::PermissionDenied { message },
            Code::Unauthenticated => Error::Unauthenticated { message },
            Code::ResourceExhausted => Error::ResourceExhausted {
                message,
                retry_after,
            },
            Code::Unavailable => Error::Unavailable {
                message,
                retry_after,
            },
            Code::DeadlineExceeded => Error::DeadlineExceeded { message },
            Code::Cancelled => Error::Cancelled { message },
            Code::OutOfRange => Error::OutOfRange { message },
            Code::Internal => Error::Internal { message },
            code => Error::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn rich_details_become_typed_fields() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("decisions[0].purpose_id", "must not be empty");
        let e = Error::from(tonic::Status::with_error_details(
            Code::InvalidArgument,
            "1 invalid field",
            details,
        ));
        assert_eq!(
            e.violations(),
            [FieldViolation {
                field: "decisions[0].purpose_id".into(),
                description: "must not be empty".into(),
            }]
        );
        let e = Error::from(tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "over its rate",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        ));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert!(!e.is_unavailable());
        let e = Error::from(tonic::Status::with_error_details(
            Code::NotFound,
            "purpose `x` not found",
            ErrorDetails::with_error_info(
                "NOT_FOUND",
                "consent.v1",
                [
                    ("kind".to_owned(), "purpose".to_owned()),
                    ("id".to_owned(), "x".to_owned()),
                ],
            ),
        ));
        assert!(
            matches!(e, Error::NotFound { kind: Some(k), id: Some(i), .. } if k == "purpose" && i == "x")
        );
        assert!(Error::from(tonic::Status::unavailable("down")).is_unavailable());
    }
}
