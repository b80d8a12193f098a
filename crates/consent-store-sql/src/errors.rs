//! Maps sqlx errors to the ledger's error kinds by their real kind: the SQLSTATE class for
//! PostgreSQL, the primary result code for SQLite. Anything that a retry may cure
//! (connection, pool, lock contention, failover) is `Unavailable`; anything else is
//! `Internal`. Messages pass through [`redact`]: a driver error may quote a URL.

use consent_core::ConsentError;
use consent_core::redact::redact;
use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// SQLite primary result codes for a busy or locked database (the low byte of an extended
/// result code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// PostgreSQL SQLSTATE classes that mean "try again": connection exception, transaction
/// rollback (serialization, deadlock), insufficient resources, operator intervention.
const RETRYABLE_PG_CLASSES: [&str; 4] = ["08", "40", "53", "57"];

/// Whether a database's own error is worth a retry, judged by the driver that raised it.
/// A PostgreSQL error of severity FATAL or PANIC ends the session whatever its SQLSTATE: the
/// server refused or dropped the connection (`database is not currently accepting
/// connections` is 55000, a password rejected after a rotation 28P01), so the store is
/// unavailable, not broken.
fn retryable(d: &dyn DatabaseError) -> bool {
    if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
        use sqlx::postgres::PgSeverity;
        return matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)
            || RETRYABLE_PG_CLASSES
                .iter()
                .any(|class| pg.code().starts_with(class));
    }
    if d.try_downcast_ref::<SqliteError>().is_some() {
        return d
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
    }
    false
}

/// Reads the cache namespace (the same statement in both dialects).
pub(crate) const CACHE_NAMESPACE: &str = "SELECT cache_namespace FROM ledger_identity WHERE id = 1";

/// The answer to [`CACHE_NAMESPACE`]: the namespace, or what is wrong with the database.
pub(crate) fn cache_namespace_of(
    read: std::result::Result<Option<String>, sqlx::Error>,
) -> consent_core::Result<String> {
    match read {
        Ok(Some(namespace)) => Ok(namespace),
        Ok(None) => Err(ConsentError::Internal(
            "ledger_identity has no row: the migrations did not complete".into(),
        )),
        Err(e) if is_undefined_table(&e) => Err(ConsentError::FailedPrecondition(
            "the database is not migrated (no ledger_identity table): run `consentd migrate` or set store.auto_migrate = true".into(),
        )),
        Err(e) => Err(db(e)),
    }
}

/// Whether `e` says a table does not exist (a database the migrations have not reached).
pub(crate) fn is_undefined_table(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
        return pg.code() == "42P01";
    }
    d.try_downcast_ref::<SqliteError>().is_some() && d.message().starts_with("no such table")
}

pub(crate) fn db(e: sqlx::Error) -> ConsentError {
    match &e {
        sqlx::Error::Database(d) if retryable(d.as_ref()) => ConsentError::Unavailable(format!(
            "database busy or unavailable: {}",
            redact(&d.to_string())
        )),
        sqlx::Error::Database(d) => {
            ConsentError::Internal(format!("database error: {}", redact(&d.to_string())))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => {
            ConsentError::Unavailable(format!("database unavailable: {}", redact(&e.to_string())))
        }
        _ => ConsentError::Internal(format!("database error: {}", redact(&e.to_string()))),
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> ConsentError {
    ConsentError::Internal(format!("stored {what} cannot be read: {e}"))
}

/// The refusal of a write naming `subject_id`, closed by its merge into `into`.
pub(crate) fn merged_error(subject_id: &str, into: &str) -> ConsentError {
    ConsentError::FailedPrecondition(format!(
        "subject_id `{subject_id}` was merged into `{into}` (one person under two ids): it is closed, write to `{into}` instead"
    ))
}

/// The refusal of a write by identity whose identity no longer stands for the subject it
/// was resolved to (a link, unlink or merge committed since): resolve it again and retry.
pub(crate) fn identity_moved() -> ConsentError {
    ConsentError::Aborted(
        "the identity this write names was linked, unlinked or merged while it was written, and now stands for another subject; send the request again".into(),
    )
}
