//! Conversions both backends share: JSON documents, digests, names, times, and the catalogue
//! assembled from its rows.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use consent_core::{
    Catalog, ConsentError, PolicyVersion, Purpose, Result, StateEntry, SubjectFlags, SubjectState,
    Timestamp, Vendor,
};

use crate::errors::{corrupt, db};

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ConsentError::Internal(format!("cannot encode: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

pub(crate) fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| corrupt(what, format!("{} bytes instead of 32", bytes.len())))
}

pub(crate) fn parse<T: FromStr>(text: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| corrupt(what, e))
}

/// An event id as stored in a UUID column. Event ids are UUIDv7 made by the service; one in
/// another spelling would not read back the same, and the hash chain covers it.
pub(crate) fn event_uuid(id: &str) -> Result<uuid::Uuid> {
    match uuid::Uuid::parse_str(id) {
        Ok(uuid) if uuid.hyphenated().to_string() == id => Ok(uuid),
        _ => Err(ConsentError::invalid(
            "event.id",
            format!("`{id}` must be a lowercase hyphenated UUID"),
        )),
    }
}

/// A time as PostgreSQL's `timestamptz` (microseconds, like [`Timestamp`]).
pub(crate) fn pg_time(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1000).map_err(|e| {
        ConsentError::invalid(
            "timestamp",
            format!("{t} cannot be stored: {e}; {}", Timestamp::RANGE),
        )
    })
}

/// A `timestamptz` read back.
pub(crate) fn from_pg_time(t: time::OffsetDateTime) -> Result<Timestamp> {
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map(Timestamp)
        .map_err(|e| corrupt("timestamp", e))
}

/// One state per subject of `subjects`, in the order asked (a subject without rows has an
/// empty state), from the rows of a batch state read: column 0 the tenant revision, column 8
/// the subject, column 9 the subject's flags (JSON) on the rows that carry them, and an entry
/// (or none, for the LEFT JOIN's empty row and flag rows) by `entry`.
pub(crate) fn states_in_order<R>(
    subjects: &[String],
    rows: &[R],
    entry: impl Fn(&R) -> Result<Option<StateEntry>>,
) -> Result<Vec<Arc<SubjectState>>>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database>,
{
    let mut revision = 0;
    let mut found: HashMap<String, Vec<StateEntry>> = HashMap::new();
    let mut flags: HashMap<String, SubjectFlags> = HashMap::new();
    for row in rows {
        revision = row.try_get(0).map_err(db)?;
        if let Some(entry) = entry(row)? {
            found
                .entry(row.try_get(8).map_err(db)?)
                .or_default()
                .push(entry);
        }
        if let Some(body) = row.try_get::<Option<String>, _>(9).map_err(db)? {
            flags.insert(
                row.try_get(8).map_err(db)?,
                from_json(&body, "subject_flags.body")?,
            );
        }
    }
    Ok(subjects
        .iter()
        .map(|subject| {
            Arc::new(SubjectState {
                // A subject asked twice gets its entries both times.
                entries: found.get(subject).cloned().unwrap_or_default(),
                revision,
                flags: flags.get(subject).cloned().unwrap_or_default(),
            })
        })
        .collect())
}

/// Locks a tenant's ledger head (creating the row on the tenant's first write) and returns
/// it: `$1` tenant, `$2` the genesis hash, `$3` now. `DO UPDATE` takes the row lock whether
/// the row was just inserted or already there, so every ledger write of the tenant (group
/// commit, ledger records) serialises on it. Columns: revision, head_hash.
pub(crate) const LOCK_HEAD: &str = "INSERT INTO tenants (tenant_id, revision, head_hash, created_at) \
     VALUES ($1, 0, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET revision = tenants.revision \
     RETURNING revision, head_hash";

/// Which table a catalogue row came from (the one-statement catalogue read tags each row).
pub(crate) const CATALOG_VERSION: &str = "version";
pub(crate) const CATALOG_PURPOSE: &str = "purpose";
pub(crate) const CATALOG_VENDOR: &str = "vendor";
pub(crate) const CATALOG_POLICY: &str = "policy";

/// Builds a catalogue from `(kind, text)` rows: the version, then JSON documents.
pub(crate) fn catalog_from_rows(
    rows: impl IntoIterator<Item = (String, String)>,
) -> Result<Catalog> {
    let mut catalog = Catalog::default();
    for (kind, text) in rows {
        match kind.as_str() {
            CATALOG_VERSION => catalog.version = parse(&text, "catalog version")?,
            CATALOG_PURPOSE => {
                let p: Purpose = from_json(&text, "purpose")?;
                catalog.purposes.insert(p.id.clone(), p);
            }
            CATALOG_VENDOR => {
                let v: Vendor = from_json(&text, "vendor")?;
                catalog.vendors.insert(v.id.clone(), v);
            }
            CATALOG_POLICY => catalog
                .policy_versions
                .push(from_json::<PolicyVersion>(&text, "policy version")?),
            other => return Err(corrupt("catalogue row", format!("unknown kind `{other}`"))),
        }
    }
    catalog
        .policy_versions
        .sort_by(|a, b| (a.published_at, &a.id).cmp(&(b.published_at, &b.id)));
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_are_event_ids() {
        let id = consent_core::commands::new_event_id();
        assert!(event_uuid(&id).is_ok());
        assert!(event_uuid(&id.to_uppercase()).is_err());
        assert!(event_uuid(&id.replace('-', "")).is_err());
        assert!(event_uuid("e1").is_err());
    }

    #[test]
    fn times_round_trip_through_timestamptz_across_the_whole_range() -> Result<()> {
        for micros in [
            Timestamp::MIN_SECONDS * Timestamp::MICROS_PER_SECOND,
            -1,
            0,
            1_700_000_000_123_456,
            Timestamp::MAX_SECONDS * Timestamp::MICROS_PER_SECOND + 999_999,
        ] {
            assert_eq!(
                from_pg_time(pg_time(Timestamp(micros))?)?,
                Timestamp(micros)
            );
        }
        Ok(())
    }
}
