//! The `consentd` service: gRPC handlers over the ledger, configuration, logging, and the
//! command line. The flow of every RPC is one way:
//! [`service`] (convert, validate) -> [`ledger`] (plan, read, decide with `consent_core`) ->
//! `consent_store` (SQL). Errors become gRPC statuses in [`error`] only. Retention follows
//! the same path: [`retention_service`] -> [`retention`] -> `consent_store::RetentionStore`.

pub mod auth;
pub mod check_stream;
pub mod cli;
pub mod config;
pub mod context;
pub mod convert;
pub mod error;
pub mod export;
pub mod gate;
pub mod identities;
pub mod identity_service;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod observe;
pub mod ops_http;
pub mod request_bounds;
pub mod retention;
pub mod retention_service;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod stack;
pub mod store_observe;
pub mod subject_rights_service;
pub mod sweeper;
pub mod telemetry;
pub mod transport_status;
pub mod watch;
