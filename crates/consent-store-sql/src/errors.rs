//! Maps sqlx errors to the ledger's error kinds: anything that a retry may cure (connection,
//! pool, lock contention, failover) is `Unavailable`; anything else is `Internal`.

use consent_core::ConsentError;

/// SQLite result codes for a busy or locked database (primary code in the low byte).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// PostgreSQL SQLSTATE classes that mean "try again": connection exception, transaction
/// rollback (serialization, deadlock), insufficient resources, operator intervention.
const RETRYABLE_PG_CLASSES: [&str; 4] = ["08", "40", "53", "57"];

pub(crate) fn db(e: sqlx::Error) -> ConsentError {
    match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            let sqlite_busy = code
                .parse::<i64>()
                .is_ok_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
            let pg_retryable = code.len() == 5
                && RETRYABLE_PG_CLASSES
                    .iter()
                    .any(|class| code.starts_with(class));
            if sqlite_busy || pg_retryable {
                ConsentError::Unavailable(format!("database busy or unavailable: {d}"))
            } else {
                ConsentError::Internal(format!("database error: {d}"))
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => {
            ConsentError::Unavailable(format!("database unavailable: {e}"))
        }
        _ => ConsentError::Internal(format!("database error: {e}")),
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> ConsentError {
    ConsentError::Internal(format!("stored {what} cannot be read: {e}"))
}
