//! Subject identities: the typed ids (account, cookie, device, phone number, email, another
//! system's id) by which products know one person, and the keyed hashes they are found by.
//!
//! An identity is normalised first ([`Identity::parse`]): a phone number to E.164
//! (`+32 470 12 34 56` and `0032470123456` are both `+32470123456`), an email to lower case,
//! the other types kept as sent. It is then found by its *alias key*, `HMAC-SHA256(identity
//! key, type || 0 || value)` ([`IdentityKey::alias_key`]), where the identity key is derived
//! from the tenant's subject key ([`IdentityKey::of`]), which never leaves the service. Phone
//! numbers and emails are stored only as alias keys, so the ledger never holds them in
//! clear; the other types are opaque ids like subject ids and are kept in clear beside their
//! key, so `ListIdentities` can show them.
//!
//! An identity linked to a subject resolves to it. One never linked resolves to its
//! *implicit subject*, `alias:` followed by the hex alias key ([`implicit_subject_id`]): a
//! choice recorded by a cookie id before any account exists is kept there, and linking the
//! cookie to an account later can carry it over. Callers cannot make such an id for an
//! identity of theirs without the key, so it never meets one of their own subject ids.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::chain::ChainKey;
use crate::model::IdentityType;
use crate::validate::{MAX_ID_BYTES, is_invisible};

/// What an implicit subject id starts with (see the module doc).
pub const IMPLICIT_SUBJECT_PREFIX: &str = "alias:";

/// Fewest digits of a phone number, country code included (E.164 numbers of the smallest
/// plans, such as Niue's, have 7).
pub const MIN_PHONE_DIGITS: usize = 7;
/// Most digits of a phone number, country code included (E.164).
pub const MAX_PHONE_DIGITS: usize = 15;
/// Longest email address, in bytes (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// A normalised identity: a type and the value it is compared by.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The type.
    pub kind: IdentityType,
    /// The normalised value (E.164 for a phone, lower case for an email).
    value: String,
}

impl std::fmt::Debug for Identity {
    /// Phone numbers and emails are personal data kept out of logs: shown as `[redacted]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("kind", &self.kind)
            .field("value", &self.stored_value().unwrap_or("[redacted]"))
            .finish()
    }
}

impl Identity {
    /// Normalises `raw` as an identity of type `kind`; the error says which rule it breaks
    /// (for an `INVALID_ARGUMENT` naming the field) without repeating the value.
    pub fn parse(kind: IdentityType, raw: &str) -> Result<Identity, String> {
        // Checked as sent, before any trimming: the bound and the characters hold for the
        // whole value (half a megabyte of spaces around an address, or a line break after a
        // number, is refused, not cut away).
        if raw.len() > MAX_ID_BYTES {
            return Err(format!(
                "must be at most {MAX_ID_BYTES} bytes as sent, got {}",
                raw.len()
            ));
        }
        if raw.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(
                "must not contain control characters or characters that show nothing (spaces other than the ASCII space among them)".into(),
            );
        }
        let value = match kind {
            IdentityType::Phone => normalise_phone(raw)?,
            IdentityType::Email => normalise_email(raw)?,
            IdentityType::Account
            | IdentityType::Cookie
            | IdentityType::Device
            | IdentityType::External => opaque_id(raw)?,
        };
        Ok(Identity { kind, value })
    }

    /// Whether the value is personal data kept only as its keyed hash (phones, emails).
    pub fn is_hashed_only(&self) -> bool {
        matches!(self.kind, IdentityType::Phone | IdentityType::Email)
    }

    /// The value as it may be stored and shown: `None` for the types kept only as a hash.
    pub fn stored_value(&self) -> Option<&str> {
        (!self.is_hashed_only()).then_some(self.value.as_str())
    }

    /// The normalised value, for hashing (never store or log it for a hashed-only type).
    pub fn normalised_value(&self) -> &str {
        &self.value
    }
}

/// An id of an opaque type: as a subject id (1..256 bytes, nothing invisible), kept as sent.
fn opaque_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(format!(
            "must be at most {MAX_ID_BYTES} bytes, got {}",
            raw.len()
        ));
    }
    if raw.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err("must not contain control characters or characters that show nothing".into());
    }
    Ok(raw.to_owned())
}

const PHONE_CHARACTERS: &str =
    "a phone number may hold only ASCII digits, a leading + or 00, spaces and - . / ( )";

/// A phone number in E.164 (`+` and 7..15 digits, the first not 0). Accepts the usual ways
/// of writing one with its country code: `+32 470 12 34 56`, `0032 470/12.34.56`,
/// `+44 (0)20 7946 0958` (the national trunk `(0)` is dropped), `+1-212-555-0100`. A number
/// without its country code (`0470 12 34 56`) is refused: which country it belongs to is a
/// guess this service does not make.
pub fn normalise_phone(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("must not be empty: a phone number with its country code".into());
    }
    if trimmed.len() > 64 {
        return Err(format!(
            "a phone number must be at most 64 bytes as written, got {}",
            trimmed.len()
        ));
    }
    // The characters first: a full-width plus or another script's digits is refused as
    // such, not as a number without a country code.
    let allowed = |(i, c): (usize, char)| {
        c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '/' | '(' | ')') || (c == '+' && i == 0)
    };
    if !trimmed.char_indices().all(allowed) {
        return Err(PHONE_CHARACTERS.into());
    }
    let international = if let Some(rest) = trimmed.strip_prefix('+') {
        rest
    } else if let Some(rest) = trimmed.strip_prefix("00") {
        rest
    } else {
        return Err(
            "a phone number needs its country code: +44 20 7946 0958 or 0044 20 7946 0958 (E.164)"
                .into(),
        );
    };
    let international = international.replacen("(0)", "", 1);
    let mut digits = String::with_capacity(MAX_PHONE_DIGITS + 1);
    digits.push('+');
    for c in international.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '/' | '(' | ')' => {}
            _ => return Err(PHONE_CHARACTERS.into()),
        }
    }
    let count = digits.len() - 1;
    if !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&count) {
        return Err(format!(
            "a phone number has {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits with its country code (E.164), got {count}"
        ));
    }
    if digits.as_bytes()[1] == b'0' {
        return Err("a country code does not start with 0 (E.164)".into());
    }
    Ok(digits)
}

/// An email address, trimmed, lower-cased whole (products compare them so; the local
/// part's case is not kept) and in Unicode NFC (so `é` typed as one character or as `e` and
/// an accent is one address): one `@` between a non-empty local part and a domain, at most
/// 254 bytes as sent, no spaces or invisible characters.
pub fn normalise_email(raw: &str) -> Result<String, String> {
    use unicode_normalization::UnicodeNormalization as _;
    let trimmed = raw.trim();
    if trimmed.len() > MAX_EMAIL_BYTES {
        return Err(format!(
            "an email address must be at most {MAX_EMAIL_BYTES} bytes, got {}",
            trimmed.len()
        ));
    }
    let email: String = trimmed.to_lowercase().nfc().collect();
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
    {
        return Err("an email address must not contain spaces or invisible characters".into());
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(email)
        }
        _ => Err("an email address is local-part@domain, with one @".into()),
    }
}

/// The key identities of one tenant are hashed with, derived from its subject key.
/// Its `Debug` form does not show the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey([u8; 32]);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey([redacted])")
    }
}

/// The label the identity key is derived under (so it is never the subject key itself).
const IDENTITY_KEY_LABEL: &[u8] = b"consent-identity-key/v1";

impl IdentityKey {
    /// The identity key of a tenant whose chain key is `chain`: `None` before the tenant's
    /// first ledger write (it can have no linked identity yet).
    pub fn of(chain: &ChainKey) -> Option<IdentityKey> {
        let subject_key = chain.subject_key?;
        Some(IdentityKey(hmac(&subject_key, &[IDENTITY_KEY_LABEL])))
    }

    /// The alias key `identity` is stored and found by.
    pub fn alias_key(&self, identity: &Identity) -> AliasKey {
        AliasKey(hmac(
            &self.0,
            &[
                identity.kind.as_str().as_bytes(),
                &[0],
                identity.value.as_bytes(),
            ],
        ))
    }
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: a 32-byte key cannot be refused.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The keyed hash an identity is stored and found by (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasKey(pub [u8; 32]);

impl AliasKey {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for AliasKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AliasKey({})", self.to_hex())
    }
}

/// How a request names the person: by subject id, or by one of their identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectRef {
    /// A subject id, used as is.
    Id(String),
    /// An identity: the subject it is linked to, or its implicit subject.
    Identity(Identity),
}

/// The subject an identity never linked resolves to: `alias:` and the hex alias key.
pub fn implicit_subject_id(alias: &AliasKey) -> String {
    format!("{IMPLICIT_SUBJECT_PREFIX}{}", alias.to_hex())
}

/// The alias key whose implicit subject `subject_id` is, if it is one
/// ([`implicit_subject_id`] read back).
pub fn implicit_alias(subject_id: &str) -> Option<AliasKey> {
    let hex = subject_id.strip_prefix(IMPLICIT_SUBJECT_PREFIX)?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex, &mut key).ok()?;
    // Only the spelling `implicit_subject_id` makes (lower case) is that subject.
    (hex.bytes().all(|b| !b.is_ascii_uppercase())).then_some(AliasKey(key))
}

#[cfg(test)]
mod implicit_tests {
    use super::*;

    #[test]
    fn an_implicit_subject_id_reads_back_to_its_alias_key() {
        let alias = AliasKey([0xab; 32]);
        assert_eq!(implicit_alias(&implicit_subject_id(&alias)), Some(alias));
        assert_eq!(implicit_alias("acct-1"), None);
        assert_eq!(implicit_alias("alias:abcd"), None);
        assert_eq!(implicit_alias(&format!("alias:{}", "AB".repeat(32))), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_from(byte: u8) -> IdentityKey {
        let chain = ChainKey {
            subject_key: Some([byte; 32]),
            keyed_from: 1,
        };
        IdentityKey::of(&chain).unwrap_or_else(|| panic!("no identity key from a subject key"))
    }

    fn key() -> IdentityKey {
        key_from(7)
    }

    fn parsed(kind: IdentityType, value: &str) -> Identity {
        Identity::parse(kind, value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    /// Found by an outside attack: the bound and the characters were checked after trimming,
    /// so half a megabyte of spaces around an email, or a line break after a phone number,
    /// was accepted.
    #[test]
    fn values_are_checked_as_sent_before_they_are_trimmed() {
        let padded = format!("{}a@example.com", " ".repeat(500_000));
        for (kind, value) in [
            (IdentityType::Email, padded.as_str()),
            (IdentityType::Email, "a@example.com\n"),
            (IdentityType::Phone, "+32 470 12 34 56\t"),
            (IdentityType::Phone, "\r+32 470 12 34 56"),
            (IdentityType::Phone, "+32 470 12 34 56\u{2028}"),
            (IdentityType::Phone, "+32 470 12 34 56\u{85}"),
            (IdentityType::Cookie, "ck\u{200b}"),
        ] {
            assert!(Identity::parse(kind, value).is_err(), "{kind:?} {value:?}");
        }
        assert_eq!(
            parsed(IdentityType::Email, " A@Example.com ").normalised_value(),
            "a@example.com"
        );
    }

    #[test]
    fn the_usual_ways_of_writing_a_phone_number_are_one_number() {
        for written in [
            "+32 470 12 34 56",
            "0032470123456",
            "+32470123456",
            " +32 (0)470 12.34.56 ",
            "0032 470/12-34-56",
        ] {
            assert_eq!(
                normalise_phone(written).as_deref(),
                Ok("+32470123456"),
                "{written}"
            );
        }
        let a = parsed(IdentityType::Phone, "+32 470 12 34 56");
        let b = parsed(IdentityType::Phone, "0032470123456");
        assert_eq!(key().alias_key(&a), key().alias_key(&b));
    }

    #[test]
    fn a_phone_number_without_country_code_or_with_letters_is_refused() {
        for (written, rule) in [
            ("0470 12 34 56", "country code"),
            ("470123456", "country code"),
            ("+32 470 CALL ME", "only ASCII digits"),
            ("+0 470 12 34 56", "does not start with 0"),
            ("+32 47", "7 to 15 digits"),
            ("+32 470 12 34 56 78 90 12", "7 to 15 digits"),
            ("", "must not be empty"),
            ("\u{FF0B}32470123456", "only ASCII digits"),
            ("\u{200B}+32 470 12 34 56", "only ASCII digits"),
            (
                "\u{0660}\u{0660}\u{0663}\u{0662}470123456",
                "only ASCII digits",
            ),
            ("32+470123456", "only ASCII digits"),
        ] {
            let Err(error) = normalise_phone(written) else {
                panic!("{written} was accepted");
            };
            assert!(error.contains(rule), "{written}: {error}");
            assert!(
                !error.contains("470"),
                "the error repeats the number: {error}"
            );
        }
    }

    #[test]
    fn emails_are_compared_in_lower_case_and_checked_for_one_at() {
        assert_eq!(
            normalise_email("  Alice.Smith@Example.COM ").as_deref(),
            Ok("alice.smith@example.com")
        );
        assert_eq!(
            normalise_email("e\u{0301}@example.be"),
            normalise_email("\u{00E9}@example.be")
        );
        for bad in [
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@x.com",
            "a@.com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn opaque_ids_are_kept_as_sent_and_checked_like_subject_ids() {
        let cookie = parsed(IdentityType::Cookie, "Ab-12");
        assert_eq!(cookie.stored_value(), Some("Ab-12"));
        assert!(Identity::parse(IdentityType::Cookie, "").is_err());
        assert!(Identity::parse(IdentityType::Device, "a\u{200B}b").is_err());
        assert!(Identity::parse(IdentityType::Account, &"x".repeat(257)).is_err());
    }

    #[test]
    fn phones_and_emails_are_never_shown_or_stored_in_clear() {
        let phone = parsed(IdentityType::Phone, "+32 470 12 34 56");
        let email = parsed(IdentityType::Email, "a@b.be");
        for identity in [&phone, &email] {
            assert!(identity.is_hashed_only());
            assert_eq!(identity.stored_value(), None);
            let shown = format!("{identity:?}");
            assert!(!shown.contains("470") && !shown.contains("a@b"), "{shown}");
        }
        let implicit = implicit_subject_id(&key().alias_key(&phone));
        assert!(implicit.starts_with(IMPLICIT_SUBJECT_PREFIX) && !implicit.contains("470123456"));
        assert_eq!(implicit.len(), IMPLICIT_SUBJECT_PREFIX.len() + 64);
    }

    #[test]
    fn alias_keys_depend_on_the_type_the_value_and_the_tenant_key() {
        let cookie = parsed(IdentityType::Cookie, "abc");
        let device = parsed(IdentityType::Device, "abc");
        assert_ne!(key().alias_key(&cookie), key().alias_key(&device));
        let other = key_from(8);
        assert_ne!(key().alias_key(&cookie), other.alias_key(&cookie));
        assert_eq!(IdentityKey::of(&ChainKey::NONE), None);
        assert!(!format!("{:?}", key()).contains("07"));
    }

    proptest! {
        #[test]
        fn phone_normalisation_is_idempotent_and_separators_do_not_matter(
            digits in "[1-9][0-9]{6,14}",
            separators in proptest::collection::vec(prop_oneof![Just(" "), Just("-"), Just("."), Just("")], 15),
        ) {
            let mut written = String::from("00");
            for (i, d) in digits.chars().enumerate() {
                written.push(d);
                written.push_str(separators[i % separators.len()]);
            }
            let normal = normalise_phone(&written).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&normal, &format!("+{digits}"));
            prop_assert_eq!(normalise_phone(&normal).map_err(TestCaseError::fail)?, normal);
        }

        #[test]
        fn email_normalisation_is_idempotent(local in "[A-Za-z0-9._%+-]{1,20}", domain in "[A-Za-z0-9-]{1,20}\\.[A-Za-z]{2,6}") {
            let normal = normalise_email(&format!("{local}@{domain}")).map_err(TestCaseError::fail)?;
            prop_assert_eq!(normalise_email(&normal).map_err(TestCaseError::fail)?, normal.clone());
            prop_assert_eq!(normal.to_lowercase(), normal);
        }
    }
}
