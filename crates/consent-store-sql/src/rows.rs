//! Conversions both backends share: JSON documents, digests, names, times, and the catalogue
//! assembled from its rows.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use consent_core::chain::ChainKey;
use consent_core::{
    Catalog, ConsentError, PolicyVersion, Purpose, Result, StateEntry, SubjectFlags, SubjectState,
    Timestamp, Vendor,
};

use consent_store::LedgerHead;

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
/// the subject, column 9 the subject's flags (JSON) on the rows that carry them, column 10
/// the tenant's erasure count (returned beside the states), and an entry
/// (or none, for the LEFT JOIN's empty row and flag rows) by `entry`.
pub(crate) fn states_in_order<R>(
    subjects: &[String],
    rows: &[R],
    entry: impl Fn(&R) -> Result<Option<StateEntry>>,
) -> Result<(Vec<Arc<SubjectState>>, i64)>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database>,
{
    let mut revision = 0;
    let mut erasures = 0;
    let mut found: HashMap<String, Vec<StateEntry>> = HashMap::new();
    let mut flags: HashMap<String, SubjectFlags> = HashMap::new();
    for row in rows {
        revision = row.try_get(0).map_err(db)?;
        erasures = row.try_get(10).map_err(db)?;
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
    let states = subjects
        .iter()
        .map(|subject| {
            Arc::new(SubjectState {
                // A subject asked twice gets its entries both times.
                entries: found.get(subject).cloned().unwrap_or_default(),
                revision,
                flags: flags.get(subject).cloned().unwrap_or_default(),
            })
        })
        .collect();
    Ok((states, erasures))
}

/// Locks a tenant's ledger head (creating the row on the tenant's first write) and returns
/// it: `$1` tenant, `$2` the genesis hash, `$3` now, `$4` a fresh random subject key. `DO
/// UPDATE` takes the row lock whether the row was just inserted or already there, so every
/// ledger write of the tenant (group commit, ledger records, erasure) serialises on it. A
/// ledger without a subject key (written before keys existed, or created by a catalogue
/// write) takes `$4` here and is keyed from its next revision on. Columns: revision,
/// head_hash, subject_key, keyed_from, erasures, merges (see [`locked_head`]).
pub(crate) const LOCK_HEAD: &str = "INSERT INTO tenants (tenant_id, revision, head_hash, created_at, subject_key, keyed_from) \
     VALUES ($1, 0, $2, $3, $4, 1) ON CONFLICT (tenant_id) DO UPDATE SET revision = tenants.revision, \
     subject_key = COALESCE(tenants.subject_key, excluded.subject_key), \
     keyed_from = COALESCE(tenants.keyed_from, tenants.revision + 1) \
     RETURNING revision, head_hash, subject_key, keyed_from, erasures, merges";

/// The tenant's key as stored: `$1` tenant. Columns: subject_key, keyed_from.
pub(crate) const CHAIN_KEY: &str =
    "SELECT subject_key, keyed_from FROM tenants WHERE tenant_id = $1";

/// A fresh random subject key for [`LOCK_HEAD`]'s `$4`.
pub(crate) fn new_subject_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| ConsentError::Unavailable(format!("no randomness for a subject key: {e}")))?;
    Ok(key)
}

/// A locked ledger head, with what writes need besides the head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockedHead {
    pub(crate) head: LedgerHead,
    pub(crate) key: ChainKey,
    /// How many merges the tenant made: none, and no write needs to look for a closed
    /// subject.
    pub(crate) merges: i64,
}

impl LockedHead {
    /// The erased id of `subject_id` if the tenant erased any subject (else no lookup is
    /// needed).
    pub(crate) fn erased_lookup(&self, subject_id: &str) -> Option<String> {
        // No erasure yet: no write needs to look for one.
        (self.head.erasures > 0)
            .then(|| self.key.erased_subject_id(subject_id))
            .flatten()
    }
}

/// A [`ChainKey`] from its two columns starting at `first` (a row without a key: none).
pub(crate) fn chain_key_from<R>(row: &R, first: usize) -> Result<ChainKey>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let key: Option<Vec<u8>> = row.try_get(first).map_err(db)?;
    let keyed_from: Option<i64> = row.try_get(first + 1).map_err(db)?;
    Ok(match (key, keyed_from) {
        (Some(key), Some(keyed_from)) => ChainKey {
            subject_key: Some(hash32(&key, "tenants.subject_key")?),
            keyed_from,
        },
        (None, _) => ChainKey::NONE,
        (Some(_), None) => {
            return Err(corrupt(
                "tenants.keyed_from",
                "a subject key without the revision it is used from",
            ));
        }
    })
}

/// The row [`LOCK_HEAD`] returned.
pub(crate) fn locked_head<R>(row: &R) -> Result<LockedHead>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let key = chain_key_from(row, 2)?;
    if key.subject_key.is_none() {
        return Err(corrupt(
            "tenants.subject_key",
            "missing after the head lock",
        ));
    }
    Ok(LockedHead {
        head: LedgerHead {
            revision: row.try_get(0).map_err(db)?,
            hash: hash32(&row.try_get::<Vec<u8>, _>(1).map_err(db)?, "head_hash")?,
            erasures: row.try_get(4).map_err(db)?,
        },
        key,
        merges: row.try_get(5).map_err(db)?,
    })
}

/// Tenants' subject keys, once read: a key never changes once set, so it is cached for the
/// process's life (a tenant without one yet is asked again next time).
#[derive(Clone, Debug, Default)]
pub(crate) struct SubjectKeys(Arc<std::sync::RwLock<HashMap<String, ChainKey>>>);

impl SubjectKeys {
    pub(crate) fn get(&self, tenant: &str) -> Option<ChainKey> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
    }

    /// Remembers `key` if it is one.
    pub(crate) fn remember(&self, tenant: &str, key: ChainKey) -> ChainKey {
        if key.subject_key.is_some() {
            self.0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(tenant.to_owned(), key);
        }
        key
    }
}

/// For each subject, the id its erasure marker would have (empty without a key).
pub(crate) fn erased_ids(key: &ChainKey, subjects: &[String]) -> Vec<String> {
    subjects
        .iter()
        .map(|s| key.erased_subject_id(s).unwrap_or_default())
        .collect()
}

/// Replaces the states of erased subjects by their markers (`markers[i]`: the state read
/// under `subjects[i]`'s erased id, whose flags are the marker if it was erased).
pub(crate) fn apply_markers(states: &mut [Arc<SubjectState>], markers: &[Arc<SubjectState>]) {
    for (state, marker) in states.iter_mut().zip(markers) {
        if marker.flags.erased_since.is_some() {
            *state = Arc::new(SubjectState {
                entries: Vec::new(),
                revision: state.revision,
                flags: marker.flags.clone(),
            });
        }
    }
}

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
