//! The consent ledger's domain, with no I/O: what a consent event is, how a person's choices
//! become an allow/deny answer ([`decide()`]), how writes are validated and planned
//! ([`commands`]), how the per-tenant hash chain links events ([`chain`]), the catalogue
//! file format ([`catalog_file`]), and retention: which rule keeps an item, until when, and
//! its status at a time ([`retention`]), and the typed identities (cookie, phone, account...)
//! a subject is found by ([`identity`]), and merged groups read as of a past time
//! ([`merges`]).
//!
//! Storage lives in `consent-store*`, gRPC in `consent-server`; both call into this crate and
//! never the other way round.

pub mod access;
pub mod catalog_file;
pub mod chain;
pub mod commands;
pub mod decide;
pub mod error;
pub mod identity;
pub mod merges;
pub mod model;
pub mod redact;
pub mod retention;
pub mod time;
pub mod validate;

pub use decide::{Verdict, decide};
pub use error::{ConsentError, FieldViolation, Result};
pub use model::*;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
