//! Tenants, API keys and scopes: who may call, for which tenant, to do what.
//!
//! A key is `ck_<key id>_<secret>`. Only SHA-256 of the secret is stored (the secret is 256
//! random bits, so a fast hash is enough) and compared in constant time. Randomness comes
//! from the caller, so this module stays pure.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ConsentError, Result};
use crate::time::Timestamp;
use crate::validate::Violations;

/// What a key may do. Each RPC requires exactly one scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Check, read state and history, read the catalogue.
    ConsentRead,
    /// Record and withdraw consent.
    ConsentWrite,
    /// Change purposes, vendors and policy versions.
    CatalogWrite,
    /// Read retention flags and data items.
    RetentionRead,
    /// Change retention rules, holds and attestations.
    RetentionWrite,
    /// Act on data-subject rights (restriction, objection, erasure).
    RightsWrite,
    /// Export everything held about a subject (Art. 15/20).
    RightsRead,
    /// Link and unlink identities (cookies, phone numbers, accounts) to subjects.
    IdentityWrite,
    /// Resolve identities and list a subject's identities.
    IdentityRead,
    /// Manage API keys and verify the ledger of the key's tenant.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: &'static [Scope] = &[
        Scope::ConsentRead,
        Scope::ConsentWrite,
        Scope::CatalogWrite,
        Scope::RetentionRead,
        Scope::RetentionWrite,
        Scope::RightsWrite,
        Scope::RightsRead,
        Scope::IdentityWrite,
        Scope::IdentityRead,
        Scope::Admin,
    ];

    /// The name used in keys, flags and storage, e.g. `consent:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ConsentRead => "consent:read",
            Scope::ConsentWrite => "consent:write",
            Scope::CatalogWrite => "catalog:write",
            Scope::RetentionRead => "retention:read",
            Scope::RetentionWrite => "retention:write",
            Scope::RightsWrite => "rights:write",
            Scope::RightsRead => "rights:read",
            Scope::IdentityWrite => "identity:write",
            Scope::IdentityRead => "identity:read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope `{s}`; scopes are {}",
                    Scope::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Parses scope names (e.g. from `--scopes consent:read,consent:write`), naming `field`.
pub fn parse_scopes<S: AsRef<str>>(field: &str, names: &[S]) -> Result<Vec<Scope>> {
    let mut v = Violations::new();
    let mut scopes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match name.as_ref().trim().parse::<Scope>() {
            Ok(scope) if !scopes.contains(&scope) => scopes.push(scope),
            Ok(_) => {}
            Err(e) => v.add(format!("{field}[{i}]"), e),
        }
    }
    if names.is_empty() {
        v.add(field, "must name at least one scope");
    }
    v.finish()?;
    scopes.sort();
    Ok(scopes)
}

/// A customer account; every key and every ledger row belongs to one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Stable id (1..=256 bytes, no control characters).
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A stored API key: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id (the part after `ck_`).
    pub key_id: String,
    /// The tenant the key acts for.
    pub tenant_id: String,
    /// What the key is for, e.g. `dialer-prod`.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Creation time.
    pub created_at: Timestamp,
    /// When it stops working, if it does.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// Why a presented key is refused (all map to `UNAUTHENTICATED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    /// Not of the form `ck_<id>_<secret>`.
    #[error("the API key is malformed; expected `ck_<key id>_<secret>`")]
    Malformed,
    /// No key with that id, or the secret does not match (not told apart, on purpose).
    #[error("the API key is not valid")]
    Invalid,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// The key expired.
    #[error("the API key has expired")]
    Expired,
}

/// Bytes of randomness [`issue_key`] needs: 8 for the id, 32 for the secret.
pub const KEY_RANDOM_BYTES: usize = 40;

/// The parts of a presented key: `(key id, secret)`.
pub fn parse_key(token: &str) -> Result<(&str, &str), KeyRejection> {
    let rest = token.strip_prefix("ck_").ok_or(KeyRejection::Malformed)?;
    let (key_id, secret) = rest.split_once('_').ok_or(KeyRejection::Malformed)?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(key_id, 16) && hex(secret, 64) {
        Ok((key_id, secret))
    } else {
        Err(KeyRejection::Malformed)
    }
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key for `tenant_id` from `random` bytes; returns the record to store and the
/// `ck_...` token to hand to the caller once.
pub fn issue_key(
    tenant_id: &str,
    name: &str,
    scopes: Vec<Scope>,
    now: Timestamp,
    expires_in_secs: Option<i64>,
    random: &[u8; KEY_RANDOM_BYTES],
) -> Result<(ApiKey, String)> {
    let mut v = Violations::new();
    v.id("tenant_id", tenant_id);
    v.text("name", name);
    v.duration("expires_in", expires_in_secs);
    if scopes.is_empty() {
        v.add("scopes", "must name at least one scope");
    }
    v.finish()?;
    let key_id = hex::encode(&random[..8]);
    let secret = hex::encode(&random[8..]);
    let token = format!("ck_{key_id}_{secret}");
    let key = ApiKey {
        key_id,
        tenant_id: tenant_id.to_owned(),
        name: name.to_owned(),
        scopes,
        secret_sha256: secret_digest(&secret),
        created_at: now,
        expires_at: expires_in_secs
            .map(|s| now.saturating_add(s.saturating_mul(Timestamp::MICROS_PER_SECOND))),
        revoked_at: None,
    };
    Ok((key, token))
}

impl ApiKey {
    /// Checks a presented secret (constant time) and the key's lifecycle at `now`.
    pub fn verify(&self, secret: &str, now: Timestamp) -> Result<(), KeyRejection> {
        if !bool::from(secret_digest(secret).ct_eq(&self.secret_sha256)) {
            return Err(KeyRejection::Invalid);
        }
        self.usable_at(now)
    }

    /// Whether the key is neither revoked nor expired at `now` (for a caller whose secret
    /// was verified earlier, such as a long-lived stream).
    pub fn usable_at(&self, now: Timestamp) -> Result<(), KeyRejection> {
        if self.revoked_at.is_some_and(|t| t <= now) {
            return Err(KeyRejection::Revoked);
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(KeyRejection::Expired);
        }
        Ok(())
    }

    /// Whether the key holds `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Validates a new tenant.
pub fn new_tenant(tenant_id: &str, name: &str, now: Timestamp) -> Result<Tenant> {
    let mut v = Violations::new();
    v.id("tenant_id", tenant_id);
    v.text("name", name);
    v.finish()?;
    Ok(Tenant {
        tenant_id: tenant_id.to_owned(),
        name: if name.is_empty() {
            tenant_id.to_owned()
        } else {
            name.to_owned()
        },
        created_at: now,
    })
}

/// Space-separated scope names, as stored.
pub fn scopes_to_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Scopes from their stored text.
pub fn scopes_from_text(text: &str) -> Result<Vec<Scope>> {
    text.split_whitespace()
        .map(|s| {
            s.parse::<Scope>()
                .map_err(|e| ConsentError::Internal(format!("stored key scopes: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn issued(expires: Option<i64>) -> (ApiKey, String) {
        issue_key(
            "t1",
            "dialer",
            vec![Scope::ConsentRead],
            Timestamp(1_000_000),
            expires,
            &[7; KEY_RANDOM_BYTES],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn issued_keys_parse_and_verify() {
        let (key, token) = issued(None);
        assert!(token.starts_with(&format!("ck_{}_", key.key_id)));
        let (id, secret) = parse_key(&token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id, key.key_id);
        assert_eq!(key.verify(secret, Timestamp(2_000_000)), Ok(()));
        assert!(
            !token.contains(&hex::encode(key.secret_sha256)),
            "the token is not the stored hash"
        );
    }

    #[test]
    fn wrong_secret_revoked_and_expired_are_refused() {
        let (mut key, token) = issued(Some(60));
        let (_, secret) = parse_key(&token).unwrap_or_else(|e| panic!("{e}"));
        let other = "0".repeat(64);
        assert_eq!(key.verify(&other, Timestamp(1)), Err(KeyRejection::Invalid));
        assert_eq!(
            key.verify(secret, Timestamp(1_000_000 + 59_999_999)),
            Ok(())
        );
        assert_eq!(
            key.verify(secret, Timestamp(1_000_000 + 60_000_000)),
            Err(KeyRejection::Expired)
        );
        key.revoked_at = Some(Timestamp(1_500_000));
        assert_eq!(key.verify(secret, Timestamp(1_400_000)), Ok(()));
        assert_eq!(
            key.verify(secret, Timestamp(1_500_000)),
            Err(KeyRejection::Revoked)
        );
    }

    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            "ck_",
            "ck_abc_def",
            "Bearer ck_x",
            &format!("ck_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert_eq!(parse_key(bad), Err(KeyRejection::Malformed), "{bad}");
        }
    }

    #[test]
    fn scopes_parse_by_name_and_name_the_bad_one() {
        let scopes = parse_scopes("scopes", &["consent:write", "consent:read", "consent:read"]);
        assert_eq!(scopes, Ok(vec![Scope::ConsentRead, Scope::ConsentWrite]));
        match parse_scopes("scopes", &["consent:read", "everything"]) {
            Err(ConsentError::InvalidArgument(v)) => assert_eq!(v[0].field, "scopes[1]"),
            other => panic!("{other:?}"),
        }
        assert!(parse_scopes::<&str>("scopes", &[]).is_err());
        for s in Scope::ALL {
            assert_eq!(scopes_from_text(&scopes_to_text(&[*s])), Ok(vec![*s]));
        }
    }

    proptest! {
        #[test]
        fn parse_key_never_panics(s in ".*") {
            let _ = parse_key(&s);
        }

        #[test]
        fn only_the_issued_secret_verifies(random in prop::array::uniform32(any::<u8>()), other in "[0-9a-f]{64}") {
            let mut bytes = [0u8; KEY_RANDOM_BYTES];
            bytes[8..].copy_from_slice(&random);
            let (key, token) = issue_key("t", "", vec![Scope::Admin], Timestamp(0), None, &bytes)
                .unwrap_or_else(|e| panic!("{e}"));
            let (_, secret) = parse_key(&token).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(key.verify(secret, Timestamp(1)), Ok(()));
            if other != secret {
                prop_assert_eq!(key.verify(&other, Timestamp(1)), Err(KeyRejection::Invalid));
            }
        }
    }
}
