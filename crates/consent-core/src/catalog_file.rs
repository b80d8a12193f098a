//! The declarative catalogue file (`consentd catalog apply FILE`): TOML with vendors,
//! purposes, policy versions and the operator's retention defaults (`[retention.<category>]`,
//! with an optional legal `bound`). See `examples/catalog/callnex.toml`.
//!
//! Durations are human-readable (`13months`, `30m`, `1year`, as `humantime` parses them);
//! times are RFC 3339.

use serde::Deserialize;

use crate::error::{ConsentError, Result};
use crate::model::{Catalog, Cookie, LegalBasis, PolicyVersion, Purpose, PurposeCategory, Vendor};
use crate::retention::{
    RetentionAction, RetentionAnchor, RetentionBound, RetentionDefault, RetentionRule,
};
use crate::time::Timestamp;
use crate::validate::Violations;

/// A parsed, validated catalogue file, in the order it must be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogFile {
    /// Vendors (applied first: purposes reference them).
    pub vendors: Vec<Vendor>,
    /// Purposes.
    pub purposes: Vec<Purpose>,
    /// Policy versions (applied last: they reference both).
    pub policy_versions: Vec<PolicyVersion>,
    /// The operator's retention default per data category, ordered by category.
    pub retention: Vec<RetentionDefault>,
}

impl CatalogFile {
    /// The catalogue this file describes on its own (as an empty tenant would have it after
    /// `consentd catalog apply`).
    pub fn to_catalog(&self) -> Catalog {
        let mut policy_versions = self.policy_versions.clone();
        policy_versions.sort_by(|a, b| (a.published_at, &a.id).cmp(&(b.published_at, &b.id)));
        Catalog {
            purposes: self
                .purposes
                .iter()
                .map(|p| (p.id.clone(), p.clone()))
                .collect(),
            vendors: self
                .vendors
                .iter()
                .map(|v| (v.id.clone(), v.clone()))
                .collect(),
            policy_versions,
            version: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    vendors: Vec<RawVendor>,
    #[serde(default)]
    purposes: Vec<RawPurpose>,
    #[serde(default)]
    policy_versions: Vec<RawPolicyVersion>,
    #[serde(default)]
    retention: std::collections::BTreeMap<String, RawRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    period: String,
    #[serde(default = "created")]
    anchor: RetentionAnchor,
    action: RetentionAction,
    legal_basis: String,
    #[serde(default)]
    bound: RetentionBound,
}

fn created() -> RetentionAnchor {
    RetentionAnchor::Created
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVendor {
    id: String,
    name: String,
    #[serde(default)]
    cookies: Vec<RawCookie>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: String,
    #[serde(default)]
    domain: String,
    /// Absent for a session cookie.
    duration: Option<String>,
    #[serde(default)]
    purpose: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    category: PurposeCategory,
    legal_basis: LegalBasis,
    #[serde(default)]
    vendors: Vec<String>,
    validity: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyVersion {
    id: String,
    published_at: String,
    /// Absent means every purpose in the file.
    purposes: Option<Vec<String>>,
    /// Absent means every vendor in the file.
    vendors: Option<Vec<String>>,
    #[serde(default)]
    material: bool,
    #[serde(default)]
    changed_purposes: Vec<String>,
    #[serde(default)]
    text_sha256: String,
}

fn duration_secs(v: &mut Violations, field: &str, text: Option<&str>) -> Option<i64> {
    let text = text?;
    match humantime::parse_duration(text) {
        Ok(d) => match i64::try_from(d.as_secs()) {
            Ok(secs) if secs > 0 => Some(secs),
            _ => {
                v.add(field, format!("`{text}` must be a positive duration"));
                None
            }
        },
        Err(e) => {
            v.add(
                field,
                format!("`{text}` is not a duration ({e}); write e.g. `13months`, `30m`, `1year`"),
            );
            None
        }
    }
}

fn timestamp(v: &mut Violations, field: &str, text: &str) -> Timestamp {
    match humantime::parse_rfc3339_weak(text) {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(_) => {
                v.add(field, "must not be before 1970");
                Timestamp(0)
            }
        },
        Err(e) => {
            v.add(field, format!("`{text}` is not an RFC 3339 time ({e})"));
            Timestamp(0)
        }
    }
}

/// Parses and validates a catalogue file, including that every reference resolves inside it.
pub fn parse_catalog_file(text: &str) -> Result<CatalogFile> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        ConsentError::invalid("catalog file", e.message().to_owned() + &location(text, &e))
    })?;
    let mut v = Violations::new();
    let vendors: Vec<Vendor> = raw
        .vendors
        .into_iter()
        .enumerate()
        .map(|(i, r)| Vendor {
            cookies: r
                .cookies
                .into_iter()
                .enumerate()
                .map(|(j, c)| Cookie {
                    duration_secs: duration_secs(
                        &mut v,
                        &format!("vendors[{i}].cookies[{j}].duration"),
                        c.duration.as_deref(),
                    ),
                    name: c.name,
                    domain: c.domain,
                    purpose_id: c.purpose,
                })
                .collect(),
            id: r.id,
            name: r.name,
        })
        .collect();
    let purposes: Vec<Purpose> = raw
        .purposes
        .into_iter()
        .enumerate()
        .map(|(i, r)| Purpose {
            validity_secs: duration_secs(
                &mut v,
                &format!("purposes[{i}].validity"),
                r.validity.as_deref(),
            ),
            id: r.id,
            name: r.name,
            description: r.description,
            category: r.category,
            legal_basis: r.legal_basis,
            vendor_ids: r.vendors,
        })
        .collect();
    let all_purposes: Vec<String> = purposes.iter().map(|p| p.id.clone()).collect();
    let all_vendors: Vec<String> = vendors.iter().map(|p| p.id.clone()).collect();
    let policy_versions: Vec<PolicyVersion> = raw
        .policy_versions
        .into_iter()
        .enumerate()
        .map(|(i, r)| PolicyVersion {
            published_at: timestamp(
                &mut v,
                &format!("policy_versions[{i}].published_at"),
                &r.published_at,
            ),
            id: r.id,
            purpose_ids: r.purposes.unwrap_or_else(|| all_purposes.clone()),
            vendor_ids: r.vendors.unwrap_or_else(|| all_vendors.clone()),
            material: r.material,
            changed_purpose_ids: r.changed_purposes,
            text_sha256: r.text_sha256,
        })
        .collect();

    for (i, vendor) in vendors.iter().enumerate() {
        v.vendor(&format!("vendors[{i}]"), vendor);
        for (j, c) in vendor.cookies.iter().enumerate() {
            if !c.purpose_id.is_empty() && !all_purposes.contains(&c.purpose_id) {
                v.add(
                    format!("vendors[{i}].cookies[{j}].purpose"),
                    format!("unknown purpose `{}`", c.purpose_id),
                );
            }
        }
    }
    for (i, p) in purposes.iter().enumerate() {
        v.purpose(&format!("purposes[{i}]"), p);
        for vendor in &p.vendor_ids {
            if !all_vendors.contains(vendor) {
                v.add(
                    format!("purposes[{i}].vendors"),
                    format!("unknown vendor `{vendor}`"),
                );
            }
        }
    }
    for (i, p) in policy_versions.iter().enumerate() {
        v.policy_version(&format!("policy_versions[{i}]"), p);
        for id in p.purpose_ids.iter().filter(|id| !all_purposes.contains(id)) {
            v.add(
                format!("policy_versions[{i}].purposes"),
                format!("unknown purpose `{id}`"),
            );
        }
        for id in p.vendor_ids.iter().filter(|id| !all_vendors.contains(id)) {
            v.add(
                format!("policy_versions[{i}].vendors"),
                format!("unknown vendor `{id}`"),
            );
        }
    }
    let retention: Vec<RetentionDefault> = raw
        .retention
        .into_iter()
        .map(|(category, r)| {
            let field = format!("retention.{category}");
            let period_secs =
                duration_secs(&mut v, &format!("{field}.period"), Some(&r.period)).unwrap_or(0);
            let rule = RetentionRule {
                data_category: category,
                campaign_id: String::new(),
                period_secs,
                anchor: r.anchor,
                action: r.action,
                legal_basis: r.legal_basis,
            };
            if period_secs > 0 {
                v.retention_rule(&field, &rule);
            }
            RetentionDefault {
                rule,
                bound: r.bound,
            }
        })
        .collect();
    duplicates(&mut v, "vendors", vendors.iter().map(|x| &x.id));
    duplicates(&mut v, "purposes", purposes.iter().map(|x| &x.id));
    duplicates(
        &mut v,
        "policy_versions",
        policy_versions.iter().map(|x| &x.id),
    );
    v.finish()?;
    Ok(CatalogFile {
        vendors,
        purposes,
        policy_versions,
        retention,
    })
}

fn duplicates<'a>(v: &mut Violations, field: &str, ids: impl Iterator<Item = &'a String>) {
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.enumerate() {
        if !seen.insert(id) {
            v.add(format!("{field}[{i}].id"), format!("duplicates `{id}`"));
        }
    }
}

fn location(text: &str, e: &toml::de::Error) -> String {
    e.span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
        [[vendors]]
        id = "ga4"
        name = "Google Analytics 4"
        cookies = [{ name = "_ga", domain = ".example.com", duration = "13months", purpose = "analytics" }]

        [[purposes]]
        id = "analytics"
        name = "Analytics"
        category = "analytics"
        legal_basis = "consent"
        vendors = ["ga4"]
        validity = "6months"

        [[policy_versions]]
        id = "2026-01"
        published_at = "2026-01-01T00:00:00Z"
    "#;

    #[test]
    fn parses_durations_and_defaults_lists() {
        let f = parse_catalog_file(SMALL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.vendors[0].cookies[0].duration_secs, Some(13 * 2_630_016));
        assert_eq!(f.purposes[0].validity_secs, Some(6 * 2_630_016));
        assert_eq!(f.policy_versions[0].purpose_ids, ["analytics"]);
        assert_eq!(f.policy_versions[0].vendor_ids, ["ga4"]);
        assert_eq!(
            f.policy_versions[0].published_at,
            Timestamp(1_767_225_600_000_000)
        );
    }

    #[test]
    fn reports_bad_references_and_values_by_field() {
        let bad = SMALL
            .replace("vendors = [\"ga4\"]", "vendors = [\"nope\"]")
            .replace("6months", "soon");
        match parse_catalog_file(&bad) {
            Err(ConsentError::InvalidArgument(v)) => {
                let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
                assert!(fields.contains(&"purposes[0].validity"), "{fields:?}");
                assert!(fields.contains(&"purposes[0].vendors"), "{fields:?}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn retention_defaults_parse_with_their_bounds() {
        let text = format!(
            "{SMALL}\n[retention.call_recording]\nperiod = \"90days\"\naction = \"delete\"\nlegal_basis = \"privacy policy 5\"\nbound = \"maximum\"\n\n[retention.support_ticket]\nperiod = \"2years\"\nanchor = \"ticket_closed\"\naction = \"anonymise\"\nlegal_basis = \"support\"\n"
        );
        let f = parse_catalog_file(&text).unwrap_or_else(|e| panic!("{e}"));
        let recording = &f.retention[0];
        assert_eq!(recording.rule.data_category, "call_recording");
        assert_eq!(recording.rule.period_secs, 90 * 86_400);
        assert_eq!(recording.rule.anchor, RetentionAnchor::Created);
        assert_eq!(recording.bound, RetentionBound::Maximum);
        let ticket = &f.retention[1];
        assert_eq!(ticket.rule.anchor, RetentionAnchor::TicketClosed);
        assert_eq!(ticket.rule.action, RetentionAction::Anonymise);
        assert_eq!(ticket.bound, RetentionBound::None);

        let bad = text
            .replace("90days", "soon")
            .replace("\"support\"", "\"\"");
        match parse_catalog_file(&bad) {
            Err(ConsentError::InvalidArgument(v)) => {
                let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
                assert!(
                    fields.contains(&"retention.call_recording.period"),
                    "{fields:?}"
                );
                assert!(
                    fields.contains(&"retention.support_ticket.legal_basis"),
                    "{fields:?}"
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        let unknown = text.replace("bound = \"maximum\"", "bound = \"maximal\"");
        assert!(parse_catalog_file(&unknown).is_err());
    }

    /// Every seed default (privacy policy section 5, and our two documented additions): the
    /// period, its anchor, its bound, its action.
    #[test]
    fn the_seed_catalogue_carries_every_retention_default() {
        let seed = include_str!("../../../examples/catalog/callnex.toml");
        let f = parse_catalog_file(seed).unwrap_or_else(|e| panic!("{e}"));
        const DAY: i64 = 86_400;
        const YEAR: i64 = 31_557_600;
        use RetentionAnchor::{AccountClosed, Created, TicketClosed};
        use RetentionBound::{Maximum, Minimum, None as Unbound};
        let expected = [
            (
                "account",
                30 * DAY,
                AccountClosed,
                Maximum,
                RetentionAction::Delete,
            ),
            (
                "ai_transcript",
                90 * DAY,
                Created,
                Maximum,
                RetentionAction::Delete,
            ),
            (
                "billing",
                7 * YEAR,
                Created,
                Minimum,
                RetentionAction::Delete,
            ),
            (
                "call_recording",
                90 * DAY,
                Created,
                Maximum,
                RetentionAction::Delete,
            ),
            (
                "consent_proof",
                5 * YEAR,
                Created,
                Minimum,
                RetentionAction::Delete,
            ),
            (
                "security_log",
                30 * DAY,
                Created,
                Maximum,
                RetentionAction::Delete,
            ),
            (
                "support_ticket",
                730 * DAY,
                TicketClosed,
                Maximum,
                RetentionAction::Delete,
            ),
            // humantime months are 30.44 days.
            (
                "usage_log",
                13 * 2_630_016,
                Created,
                Unbound,
                RetentionAction::Anonymise,
            ),
        ];
        let got: Vec<_> = f
            .retention
            .iter()
            .map(|d| {
                (
                    d.rule.data_category.as_str(),
                    d.rule.period_secs,
                    d.rule.anchor,
                    d.bound,
                    d.rule.action,
                )
            })
            .collect();
        assert_eq!(got, expected);
        assert!(f.retention.iter().all(|d| !d.rule.legal_basis.is_empty()));
    }

    #[test]
    fn syntax_errors_say_where() {
        match parse_catalog_file("[[purposes]]\nid = \n") {
            Err(ConsentError::InvalidArgument(v)) => {
                assert!(v[0].description.contains("line 2"), "{v:?}")
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        assert!(parse_catalog_file("[[purposes]]\nid = \"x\"\nname = \"x\"\ncategory = \"bogus\"\nlegal_basis = \"consent\"").is_err());
    }
}
