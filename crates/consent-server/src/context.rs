//! Who is calling: the tenant and key every handler and store call is scoped by.
//!
//! [`crate::auth::AuthGate`] authenticates each request once and stores a [`Principal`] in
//! its extensions; handlers read it from there, never from request fields.

use consent_core::access::Scope;
use tonic::{Request, Status};

/// The tenant used when authentication is off (`auth.mode = none`).
pub const DEFAULT_TENANT: &str = "default";

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Every read and write is scoped to this tenant.
    pub tenant_id: String,
    /// The API key used (recorded on every event written), empty when auth is off.
    pub key_id: String,
    /// The key's scopes (every scope when auth is off): the gate checked the method's own;
    /// a handler checks more where a field asks for more (a merge moves choices).
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the caller holds `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The caller of a request, or `UNAUTHENTICATED` if no interceptor vouched for one.
#[allow(clippy::result_large_err)]
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}
