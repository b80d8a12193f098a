//! The one error type every layer returns, so each failure maps to one gRPC code in one place.

use std::fmt;

/// One rejected input field: which, and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field path as the caller wrote it, e.g. `decisions[2].purpose_id`.
    pub field: String,
    /// The rule, in words, e.g. `must be 1..=256 bytes, got 300`.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Every failure the ledger reports. The server maps each variant to exactly one gRPC code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// Bad input; never retry unchanged. Maps to `INVALID_ARGUMENT`.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A referenced entity does not exist in the caller's tenant. Maps to `NOT_FOUND`.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What was looked up (`purpose`, `vendor`, `policy version`).
        kind: &'static str,
        /// The id looked up.
        id: String,
    },
    /// A conflicting write with the same identity exists. Maps to `ALREADY_EXISTS`.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the ledger is not in a state to serve it. Maps to `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is authenticated but may not do this. Maps to `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit on concurrent use is reached (open streams, say); retry later or use less.
    /// Maps to `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent write changed what this one was planned against (the identity it names
    /// was linked, unlinked or merged meanwhile); retrying the whole request is safe. Maps
    /// to `ABORTED`.
    #[error("{0}")]
    Aborted(String),
    /// The store or cache cannot be reached; safe to retry. Maps to `UNAVAILABLE`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data; never a reason to answer "allowed". Maps to `INTERNAL`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ConsentError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> ConsentError {
        ConsentError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// A missing entity.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> ConsentError {
        ConsentError::NotFound {
            kind,
            id: id.into(),
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result with [`ConsentError`].
pub type Result<T, E = ConsentError> = std::result::Result<T, E>;
