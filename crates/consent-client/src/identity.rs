//! Identities: the ids a product knows a person by, for requests that name the person by
//! one of them instead of a subject id ([`crate::Subject`]) and for
//! [`crate::ConsentClient::link_identity`]. The service normalises them (phone numbers to
//! E.164, emails to lower case) and stores phone numbers and emails only as keyed hashes.
//!
//! ```
//! use consent_client::{identity, pb};
//!
//! let phone = identity::phone("+32 470 12 34 56");
//! assert_eq!(phone.r#type(), pb::IdentityType::Phone);
//! assert_eq!(identity::cookie("ck_5f2a9c").value, "ck_5f2a9c");
//! ```

use consent_proto::v1 as pb;

fn of(kind: pb::IdentityType, value: impl Into<String>) -> pb::Identity {
    pb::Identity {
        r#type: kind.into(),
        value: value.into(),
    }
}

/// The product's account id (a logged-in person).
pub fn account(id: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::Account, id)
}

/// A browser cookie id.
pub fn cookie(id: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::Cookie, id)
}

/// A device or app installation id.
pub fn device(id: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::Device, id)
}

/// A phone number with its country code, written any usual way (`+32 470 12 34 56`,
/// `0032470123456`).
pub fn phone(number: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::Phone, number)
}

/// An email address (compared in lower case).
pub fn email(address: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::Email, address)
}

/// Another system's id for the person.
pub fn external(id: impl Into<String>) -> pb::Identity {
    of(pb::IdentityType::External, id)
}
