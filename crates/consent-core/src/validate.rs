//! Input limits and the checks that enforce them. Every rejection names the field and the rule.

use std::collections::{BTreeMap, HashSet};

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{ConsentError, FieldViolation, Result};
use crate::model::{Cookie, Evidence, PolicyVersion, Purpose, Vendor};
use crate::time::Timestamp;

/// Longest id (subject, purpose, vendor, policy version, idempotency key), in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest name, description or evidence field, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most decisions in one RecordConsent.
pub const MAX_DECISIONS: usize = 256;
/// Most purposes in one WithdrawConsent.
pub const MAX_WITHDRAW_PURPOSES: usize = 256;
/// Most checks in one CheckBatch.
pub const MAX_BATCH_CHECKS: usize = 10_000;
/// Most evidence attributes.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most entries in a catalogue list (vendor ids, cookies, purpose ids).
pub const MAX_LIST_ENTRIES: usize = 1024;
/// How far in the future a `collected_at` may be (clock skew), in seconds.
pub const MAX_FUTURE_SKEW_SECS: i64 = 300;
/// Longest duration (consent validity, cookie lifetime, key lifetime): 100 years.
pub const MAX_DURATION_SECS: i64 = 100 * 31_557_600;
/// Largest ListEvents page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// ListEvents page when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Whether `c` shows nothing (or only a blank) where it stands, so two ids differing by it
/// look the same: format characters (Cf: zero-width spaces and joiners, bidi controls, the
/// byte order mark), line and paragraph separators, spaces other than the ASCII space,
/// unassigned code points and noncharacters, and the default-ignorable or blank characters
/// of other categories (variation selectors, the combining grapheme joiner, Hangul fillers,
/// Khmer inherent vowels, Mongolian variation selectors, the braille blank).
/// Look-alike letters of different scripts (Latin `a`, Cyrillic `а`) are not caught here:
/// ids are compared byte for byte, and callers normalise them.
pub fn is_invisible(c: char) -> bool {
    // No ASCII character is (the ASCII space is allowed, controls are refused as such):
    // ids are mostly ASCII, and the category lookup was a tenth of a CheckBatch's CPU.
    !c.is_ascii() && is_invisible_by_category(c)
}

fn is_invisible_by_category(c: char) -> bool {
    use GeneralCategory::{
        Format, LineSeparator, ParagraphSeparator, SpaceSeparator, Surrogate, Unassigned,
    };
    match c.general_category() {
        Format | LineSeparator | ParagraphSeparator | Unassigned | Surrogate => true,
        SpaceSeparator => c != ' ',
        _ => matches!(
            c,
            '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0100}'..='\u{E01EF}'
        ),
    }
}

/// Collects violations so one response can name every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collector.
    pub fn new() -> Violations {
        Violations::default()
    }

    /// How many violations were recorded so far (to tell whether one check added any).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// A required id: 1..=256 bytes, no control or format characters.
    pub fn id(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.add(field, "must not be empty");
        } else {
            self.optional_id(field, value);
        }
    }

    /// A required subject id: an id as [`Violations::id`] that does not start with
    /// [`crate::chain::ERASED_PREFIX`], which names erased subjects in the ledger.
    pub fn subject_id(&mut self, field: &str, value: &str) {
        self.id(field, value);
        self.not_erased(field, value);
    }

    /// An optional subject id: empty, or as [`Violations::subject_id`].
    pub fn optional_subject_id(&mut self, field: &str, value: &str) {
        self.optional_id(field, value);
        self.not_erased(field, value);
    }

    /// A subject id a caller may write to or link to: not an implicit subject
    /// ([`crate::identity::IMPLICIT_SUBJECT_PREFIX`]), which only its identity names (a write
    /// by that id after the identity is linked elsewhere would reach nobody's checks).
    pub fn not_implicit(&mut self, field: &str, value: &str) {
        if value.starts_with(crate::identity::IMPLICIT_SUBJECT_PREFIX) {
            self.add(
                field,
                format!(
                    "must not start with `{}`: such ids stand for identities not linked to a subject; name the person by `identity` instead",
                    crate::identity::IMPLICIT_SUBJECT_PREFIX
                ),
            );
        }
    }

    fn not_erased(&mut self, field: &str, value: &str) {
        if value.starts_with(crate::chain::ERASED_PREFIX) {
            self.add(
                field,
                format!(
                    "must not start with `{}`: the ledger names erased subjects so",
                    crate::chain::ERASED_PREFIX
                ),
            );
        }
    }

    /// An optional id: empty, or as [`Violations::id`]. Ids are opaque and compared byte
    /// for byte, so characters that show nothing would make ids that look the same: they
    /// are refused like control characters (see [`is_invisible`]).
    pub fn optional_id(&mut self, field: &str, value: &str) {
        if value.len() > MAX_ID_BYTES {
            self.add(
                field,
                format!("must be at most {MAX_ID_BYTES} bytes, got {}", value.len()),
            );
        } else if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        } else if let Some(c) = value.chars().find(|c| is_invisible(*c)) {
            self.add(
                field,
                format!(
                    "must not contain invisible or blank characters (format characters, separators, spaces other than U+0020, variation selectors, fillers), found U+{:04X}; ids are compared byte for byte, normalise them before sending",
                    u32::from(c)
                ),
            );
        }
    }

    /// Free text up to [`MAX_TEXT_BYTES`], with no control characters but tab and newline
    /// (a NUL cannot be stored by PostgreSQL; escape sequences would reach terminals).
    pub fn text(&mut self, field: &str, value: &str) {
        if value.len() > MAX_TEXT_BYTES {
            self.add(
                field,
                format!(
                    "must be at most {MAX_TEXT_BYTES} bytes, got {}",
                    value.len()
                ),
            );
        } else if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.add(
                field,
                "must not contain control characters other than tab and newline",
            );
        }
    }

    /// Empty, or 64 lower-case hex characters.
    pub fn sha256_hex(&mut self, field: &str, value: &str) {
        if !value.is_empty()
            && (value.len() != 64
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            self.add(
                field,
                "must be empty or 64 lower-case hex characters (a SHA-256)",
            );
        }
    }

    /// A list of at most [`MAX_LIST_ENTRIES`] distinct ids.
    pub fn id_list(&mut self, field: &str, values: &[String]) {
        if values.len() > MAX_LIST_ENTRIES {
            self.add(
                field,
                format!(
                    "must have at most {MAX_LIST_ENTRIES} entries, got {}",
                    values.len()
                ),
            );
            return;
        }
        let mut seen = HashSet::new();
        for (i, v) in values.iter().enumerate() {
            self.id(&format!("{field}[{i}]"), v);
            if !seen.insert(v) {
                self.add(format!("{field}[{i}]"), format!("duplicates `{v}`"));
            }
        }
    }

    /// A set enum; `None` means unspecified or unknown on the wire.
    pub fn required<T>(&mut self, field: &str, value: Option<T>, allowed: &str) {
        if value.is_none() {
            self.add(field, format!("must be one of {allowed}"));
        }
    }

    /// A positive duration in seconds, at most [`MAX_DURATION_SECS`] (100 years).
    pub fn duration(&mut self, field: &str, secs: Option<i64>) {
        match secs {
            Some(s) if s <= 0 => self.add(field, "must be positive"),
            Some(s) if s > MAX_DURATION_SECS => self.add(
                field,
                format!("must be at most 100 years ({MAX_DURATION_SECS} seconds), got {s} seconds"),
            ),
            _ => {}
        }
    }

    /// A time no later than `now` plus the allowed clock skew.
    pub fn not_future(&mut self, field: &str, value: Option<Timestamp>, now: Timestamp) {
        let limit = now.saturating_add(MAX_FUTURE_SKEW_SECS * Timestamp::MICROS_PER_SECOND);
        if value.is_some_and(|t| t > limit) {
            self.add(
                field,
                format!("must not be more than {MAX_FUTURE_SKEW_SECS} seconds in the future"),
            );
        }
    }

    /// Evidence fields and attributes within their limits.
    pub fn evidence(&mut self, field: &str, e: &Evidence) {
        self.optional_id(&format!("{field}.call_id"), &e.call_id);
        self.optional_id(&format!("{field}.recording_id"), &e.recording_id);
        self.sha256_hex(&format!("{field}.transcript_sha256"), &e.transcript_sha256);
        self.sha256_hex(
            &format!("{field}.notice_text_sha256"),
            &e.notice_text_sha256,
        );
        self.optional_id(&format!("{field}.ip_address"), &e.ip_address);
        self.text(&format!("{field}.user_agent"), &e.user_agent);
        self.attributes(&format!("{field}.attributes"), &e.attributes);
    }

    fn attributes(&mut self, field: &str, attributes: &BTreeMap<String, String>) {
        if attributes.len() > MAX_ATTRIBUTES {
            self.add(
                field,
                format!(
                    "must have at most {MAX_ATTRIBUTES} entries, got {}",
                    attributes.len()
                ),
            );
            return;
        }
        for (k, v) in attributes {
            self.id(&format!("{field}[{k:?}].key"), k);
            self.text(&format!("{field}[{k:?}]"), v);
        }
    }

    /// A purpose's own fields (references are checked against the catalogue elsewhere).
    pub fn purpose(&mut self, field: &str, p: &Purpose) {
        self.id(&format!("{field}.id"), &p.id);
        self.text(&format!("{field}.name"), &p.name);
        self.text(&format!("{field}.description"), &p.description);
        self.id_list(&format!("{field}.vendor_ids"), &p.vendor_ids);
        self.duration(&format!("{field}.validity"), p.validity_secs);
    }

    /// A vendor's own fields.
    pub fn vendor(&mut self, field: &str, v: &Vendor) {
        self.id(&format!("{field}.id"), &v.id);
        self.text(&format!("{field}.name"), &v.name);
        if v.cookies.len() > MAX_LIST_ENTRIES {
            self.add(
                format!("{field}.cookies"),
                format!("must have at most {MAX_LIST_ENTRIES} entries"),
            );
            return;
        }
        for (i, c) in v.cookies.iter().enumerate() {
            self.cookie(&format!("{field}.cookies[{i}]"), c);
        }
    }

    fn cookie(&mut self, field: &str, c: &Cookie) {
        self.id(&format!("{field}.name"), &c.name);
        self.optional_id(&format!("{field}.domain"), &c.domain);
        self.duration(&format!("{field}.duration"), c.duration_secs);
        self.optional_id(&format!("{field}.purpose_id"), &c.purpose_id);
    }

    /// A policy version's own fields.
    pub fn policy_version(&mut self, field: &str, p: &PolicyVersion) {
        self.id(&format!("{field}.id"), &p.id);
        self.id_list(&format!("{field}.purpose_ids"), &p.purpose_ids);
        self.id_list(&format!("{field}.vendor_ids"), &p.vendor_ids);
        self.id_list(
            &format!("{field}.changed_purpose_ids"),
            &p.changed_purpose_ids,
        );
        self.sha256_hex(&format!("{field}.text_sha256"), &p.text_sha256);
        if p.material && p.changed_purpose_ids.is_empty() {
            self.add(
                format!("{field}.changed_purpose_ids"),
                "must name the purposes a material change affects",
            );
        }
        for (i, id) in p.changed_purpose_ids.iter().enumerate() {
            if !p.purpose_ids.contains(id) {
                self.add(
                    format!("{field}.changed_purpose_ids[{i}]"),
                    format!("`{id}` must also be listed in purpose_ids"),
                );
            }
        }
    }

    /// A page size as requests send it: 0 means [`DEFAULT_PAGE_SIZE`], 1..=[`MAX_PAGE_SIZE`]
    /// as given; anything else is a violation (and the default is returned).
    pub fn page_size(&mut self, field: &str, size: i32) -> usize {
        match usize::try_from(size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) if n <= MAX_PAGE_SIZE => n,
            _ => {
                self.add(field, format!("must be 0..={MAX_PAGE_SIZE}, got {size}"));
                DEFAULT_PAGE_SIZE
            }
        }
    }

    /// A retention rule: a category id, an optional campaign id, a period of 1 second to
    /// 100 years, and a legal basis in words (required: it is what people and auditors see).
    pub fn retention_rule(&mut self, field: &str, r: &crate::retention::RetentionRule) {
        let at = |name: &str| {
            if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            }
        };
        self.id(&at("data_category"), &r.data_category);
        self.optional_id(&at("campaign_id"), &r.campaign_id);
        if r.period_secs <= 0 {
            self.add(at("period"), "must be positive");
        } else {
            self.duration(&at("period"), Some(r.period_secs));
        }
        if r.legal_basis.trim().is_empty() {
            self.add(
                at("legal_basis"),
                "must not be empty: say why the data may be kept that long",
            );
        } else {
            self.text(&at("legal_basis"), &r.legal_basis);
        }
    }

    /// `Err(InvalidArgument)` naming every violation, or `Ok` when there is none.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConsentError::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ascii_character_is_invisible_by_its_category() {
        for c in (0u8..=0x7f).map(char::from) {
            assert!(!is_invisible_by_category(c), "U+{:04X}", u32::from(c));
        }
        assert!(is_invisible('\u{200B}') && is_invisible('\u{00A0}'));
    }

    fn violations(f: impl FnOnce(&mut Violations)) -> Vec<FieldViolation> {
        let mut v = Violations::new();
        f(&mut v);
        match v.finish() {
            Ok(()) => vec![],
            Err(ConsentError::InvalidArgument(list)) => list,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn subject_ids_may_not_take_the_erased_prefix() {
        let v = violations(|v| {
            v.subject_id("subject_id", "erased:00");
            v.optional_subject_id("s", "");
            v.optional_subject_id("s", "alice");
            v.subject_id("t", "");
        });
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].description.contains("erased:"));
        assert_eq!(v[1], FieldViolation::new("t", "must not be empty"));
    }

    #[test]
    fn ids_name_the_field_and_the_rule() {
        let long = "x".repeat(257);
        let v = violations(|v| {
            v.id("subject_id", "");
            v.id("purpose_id", &long);
            v.id("vendor_id", "a\nb");
            v.id("ok", &"y".repeat(256));
        });
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], FieldViolation::new("subject_id", "must not be empty"));
        assert_eq!(v[1].field, "purpose_id");
        assert!(v[1].description.contains("at most 256 bytes, got 257"));
        assert!(v[2].description.contains("control"));
    }

    #[test]
    fn ids_refuse_invisible_characters_and_texts_refuse_controls() {
        let v = violations(|v| {
            v.id("zero_width", "alice\u{200B}");
            v.id("bidi", "\u{202E}ecila");
            v.id("bom", "\u{FEFF}alice");
            v.id("soft_hyphen", "al\u{AD}ice");
            v.id("hangul_filler", "alice\u{3164}");
            v.id("braille_blank", "alice\u{2800}");
            v.id("grapheme_joiner", "alice\u{34F}");
            v.id("variation_selector", "alice\u{FE0F}");
            v.id("ideographic_variation", "alice\u{E0100}");
            v.id("nbsp", "alice\u{A0}");
            v.id("line_separator", "alice\u{2028}");
            v.id("noncharacter", "alice\u{FFFF}");
            v.id("fine", "Zoë-Ærøskøbing_+32 470 00 00 01 日本 😀");
            v.text("nul", "a\0b");
            v.text("escape", "\u{1b}[31mred");
            v.text("multiline", "line one\n\tline two");
        });
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "zero_width",
                "bidi",
                "bom",
                "soft_hyphen",
                "hangul_filler",
                "braille_blank",
                "grapheme_joiner",
                "variation_selector",
                "ideographic_variation",
                "nbsp",
                "line_separator",
                "noncharacter",
                "nul",
                "escape"
            ]
        );
        assert!(v[0].description.contains("U+200B"));
    }

    #[test]
    fn durations_are_bounded() {
        let v = violations(|v| {
            v.duration("zero", Some(0));
            v.duration("century", Some(MAX_DURATION_SECS));
            v.duration("longer", Some(MAX_DURATION_SECS + 1));
            v.duration("none", None);
        });
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["zero", "longer"]);
    }

    #[test]
    fn future_times_beyond_skew_are_rejected() {
        let now = Timestamp(1_000_000_000);
        let v = violations(|v| {
            v.not_future("a", Some(now.saturating_add(300 * 1_000_000)), now);
            v.not_future("b", Some(now.saturating_add(300 * 1_000_000 + 1)), now);
            v.not_future("c", None, now);
        });
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "b");
    }

    #[test]
    fn sha256_must_be_lower_hex() {
        let good = "a".repeat(64);
        let v = violations(|v| {
            v.sha256_hex("a", &good);
            v.sha256_hex("b", "");
            v.sha256_hex("c", &"A".repeat(64));
            v.sha256_hex("d", "abc");
        });
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["c", "d"]);
    }
}
