//! What `consentd` measures, as OpenTelemetry instruments: read on `/metrics` in the
//! Prometheus text format (always) and pushed over OTLP when the standard
//! `OTEL_EXPORTER_OTLP_*` variables ask for it (see [`crate::telemetry`]).
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`rpc.server.duration`, `db.client.operation.duration`, `db.client.connection.count`);
//! the rest are `consent.*`. Label values come from closed sets (method paths the server
//! serves, reasons, causes) so a caller cannot create series; the only open one, the tenant,
//! is capped by `telemetry.max_tenant_labels`. `docs/operations.md` lists every series.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};

/// Bucket bounds of `rpc.server.duration` (milliseconds): a cached Check answers in tens of
/// microseconds, a snapshot stream lasts minutes.
const RPC_MS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0, 10000.0, 30000.0,
];

/// Bucket bounds of `db.client.operation.duration` (seconds).
const DB_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The instruments, and the per-tenant values observed on collection.
pub struct Metrics {
    meter: Meter,
    rpc_duration: Histogram<f64>,
    decisions: Counter<u64>,
    auth_failures: Counter<u64>,
    store_duration: Histogram<f64>,
    revisions: Arc<TenantRevisions>,
    retention: Arc<RetentionGauge>,
    /// Observable instruments live as long as this (their callbacks run on collection).
    observers: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Due and overdue items per tenant from this replica's last sweep, for at most `cap`
/// tenants, shown until `until` (one sweep interval).
#[derive(Debug, Default)]
struct RetentionGauge {
    cap: usize,
    last: Mutex<LastSweep>,
}

/// `(tenant, due, overdue)` of a sweep, and until when they are shown.
type LastSweep = (Vec<(String, i64, i64)>, Option<std::time::Instant>);

impl RetentionGauge {
    fn values(&self) -> Vec<(String, i64, i64)> {
        match self.last.lock() {
            Ok(last)
                if last
                    .1
                    .is_some_and(|until| std::time::Instant::now() < until) =>
            {
                last.0.clone()
            }
            _ => Vec::new(),
        }
    }
}

/// The highest ledger revision this replica wrote per tenant, for at most `cap` tenants.
#[derive(Debug)]
struct TenantRevisions {
    cap: usize,
    latest: Mutex<HashMap<String, i64>>,
}

impl TenantRevisions {
    fn note(&self, tenant: &str, revision: i64) {
        let Ok(mut latest) = self.latest.lock() else {
            return;
        };
        let room = latest.len() < self.cap;
        match latest.get_mut(tenant) {
            Some(seen) => *seen = (*seen).max(revision),
            None if room => {
                latest.insert(tenant.to_owned(), revision);
            }
            None => {}
        }
    }

    fn values(&self) -> Vec<(String, i64)> {
        self.latest
            .lock()
            .map(|l| l.iter().map(|(t, r)| (t.clone(), *r)).collect())
            .unwrap_or_default()
    }
}

impl Metrics {
    /// Instruments from `provider`, labelling at most `max_tenant_labels` tenants.
    pub fn new(provider: &dyn MeterProvider, max_tenant_labels: usize) -> Arc<Metrics> {
        let meter = provider.meter("consentd");
        let revisions = Arc::new(TenantRevisions {
            cap: max_tenant_labels,
            latest: Mutex::new(HashMap::new()),
        });
        let retention = Arc::new(RetentionGauge {
            cap: max_tenant_labels,
            last: Mutex::default(),
        });
        let metrics = Metrics {
            rpc_duration: meter
                .f64_histogram("rpc.server.duration")
                .with_description(
                    "Duration of RPCs served, from the request's arrival to the end of its answer (streams: their lifetime)",
                )
                .with_unit("ms")
                .with_boundaries(RPC_MS_BUCKETS.to_vec())
                .build(),
            decisions: meter
                .u64_counter("consent.check.decisions")
                .with_description("Check answers (Check, CheckBatch, CheckStream) by outcome and reason")
                .build(),
            auth_failures: meter
                .u64_counter("consent.auth.failures")
                .with_description("Requests refused before any handler, by cause")
                .build(),
            store_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_description("Duration of ledger store operations, by operation")
                .with_unit("s")
                .with_boundaries(DB_SECONDS_BUCKETS.to_vec())
                .build(),
            observers: Mutex::new(Vec::new()),
            meter,
            revisions: Arc::clone(&revisions),
            retention: Arc::clone(&retention),
        };
        let gauge = metrics
            .meter
            .i64_observable_gauge("consent.ledger.revision")
            .with_description(
                "Highest ledger revision this replica wrote, per tenant (the first telemetry.max_tenant_labels tenants)",
            )
            .with_callback(move |observer| {
                for (tenant, revision) in revisions.values() {
                    observer.observe(revision, &[KeyValue::new("tenant", tenant)]);
                }
            })
            .build();
        metrics.keep(gauge);
        let items = metrics
            .meter
            .i64_observable_gauge("consent.retention.items")
            .with_description(
                "Data items due for deletion (state=due) and due for longer than retention.overdue_grace_secs (state=overdue), not held, per tenant, from the last sweep this replica ran (shown for one sweep interval)",
            )
            .with_unit("{item}")
            .with_callback(move |observer| {
                for (tenant, due, overdue) in retention.values() {
                    for (state, n) in [("due", due), ("overdue", overdue)] {
                        observer.observe(
                            n,
                            &[
                                KeyValue::new("tenant", tenant.clone()),
                                KeyValue::new("state", state),
                            ],
                        );
                    }
                }
            })
            .build();
        metrics.keep(items);
        Arc::new(metrics)
    }

    /// Instruments that record nothing (in-process servers of tests and benchmarks that do
    /// not measure).
    pub fn disabled() -> Arc<Metrics> {
        Metrics::new(&opentelemetry::metrics::NoopMeterProvider::new(), 0)
    }

    fn keep(&self, instrument: impl std::any::Any + Send + Sync) {
        if let Ok(mut observers) = self.observers.lock() {
            observers.push(Box::new(instrument));
        }
    }

    /// One RPC finished: `path` is `/package.Service/Method`, `code` its gRPC status code.
    pub fn rpc_finished(&self, route: &Route, code: i32, elapsed: Duration) {
        self.rpc_duration.record(
            elapsed.as_secs_f64() * 1000.0,
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", route.service),
                KeyValue::new("rpc.method", route.method),
                KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            ],
        );
    }

    /// Counts check answers, given as `(allowed, reason)`: one addition per distinct pair,
    /// so a 10,000-check batch costs a handful.
    pub fn decisions(&self, answers: impl Iterator<Item = (bool, &'static str)>) {
        let mut tally: Vec<((bool, &'static str), u64)> = Vec::new();
        for answer in answers {
            match tally.iter_mut().find(|(seen, _)| *seen == answer) {
                Some((_, n)) => *n += 1,
                None => tally.push((answer, 1)),
            }
        }
        for ((allowed, reason), n) in tally {
            self.decisions.add(
                n,
                &[
                    KeyValue::new("decision", if allowed { "allowed" } else { "denied" }),
                    KeyValue::new("reason", reason),
                ],
            );
        }
    }

    /// A request refused before its handler; `cause` is one of [`AuthFailure`]'s names.
    pub fn auth_failure(&self, cause: AuthFailure) {
        self.auth_failures
            .add(1, &[KeyValue::new("cause", cause.as_str())]);
    }

    /// One store operation finished.
    pub fn store_operation(
        &self,
        system: &'static str,
        operation: &'static str,
        elapsed: Duration,
        failure: Option<&'static str>,
    ) {
        let mut attributes = vec![
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", operation),
        ];
        if let Some(kind) = failure {
            attributes.push(KeyValue::new("error.type", kind));
        }
        self.store_duration
            .record(elapsed.as_secs_f64(), &attributes);
    }

    /// A sweep's counts per tenant `(tenant, due, overdue)`, shown for `valid_for`.
    pub fn retention_items(
        &self,
        counts: impl Iterator<Item = (String, i64, i64)>,
        valid_for: Duration,
    ) {
        let counts: Vec<_> = counts.take(self.retention.cap).collect();
        if let Ok(mut last) = self.retention.last.lock() {
            *last = (counts, Some(std::time::Instant::now() + valid_for));
        }
    }

    /// A write of `tenant` committed at `revision` on this replica.
    pub fn ledger_revision(&self, tenant: &str, revision: i64) {
        self.revisions.note(tenant, revision);
    }

    /// Registers an observable counter read from `read` at each collection, one series per
    /// returned `(value, labels)`.
    pub fn observe_counter(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> Vec<(u64, Vec<KeyValue>)> + Send + Sync + 'static,
    ) {
        let counter = self
            .meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (value, labels) in read() {
                    observer.observe(value, &labels);
                }
            })
            .build();
        self.keep(counter);
    }

    /// Registers an observable gauge read from `read` at each collection.
    pub fn observe_gauge(
        &self,
        name: &'static str,
        description: &'static str,
        unit: &'static str,
        read: impl Fn() -> Vec<(i64, Vec<KeyValue>)> + Send + Sync + 'static,
    ) {
        let gauge = self
            .meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer| {
                for (value, labels) in read() {
                    observer.observe(value, &labels);
                }
            })
            .build();
        self.keep(gauge);
    }
}

/// Why a request was refused before its handler (the `cause` label of
/// `consent.auth.failures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization` header.
    MissingKey,
    /// Not `Bearer ck_<id>_<secret>`.
    MalformedKey,
    /// Unknown key id or wrong secret (not told apart, as for the caller).
    InvalidKey,
    /// The key was revoked.
    RevokedKey,
    /// The key expired.
    ExpiredKey,
    /// The key lacks the method's scope.
    MissingScope,
    /// The key is over its request rate.
    KeyRateLimited,
    /// The client address is over its failed-authentication rate, or the replica over its
    /// key lookup rate.
    LookupLimited,
    /// The metadata is over `limits.max_metadata_bytes`.
    MetadataTooLarge,
}

impl AuthFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingKey => "missing_key",
            AuthFailure::MalformedKey => "malformed_key",
            AuthFailure::InvalidKey => "invalid_key",
            AuthFailure::RevokedKey => "revoked_key",
            AuthFailure::ExpiredKey => "expired_key",
            AuthFailure::MissingScope => "missing_scope",
            AuthFailure::KeyRateLimited => "key_rate_limited",
            AuthFailure::LookupLimited => "lookup_limited",
            AuthFailure::MetadataTooLarge => "metadata_too_large",
        }
    }
}

/// The service and method of a request path, as labels: known paths as they are, anything
/// else `unknown` (a caller must not be able to create series by calling made-up paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// `consent.v1.ConsentService/Check` (the span name), or `unknown`.
    pub name: &'static str,
    /// `consent.v1.ConsentService`, or `unknown`.
    pub service: &'static str,
    /// `Check`, or `unknown`.
    pub method: &'static str,
}

/// Methods served besides the API's (which [`crate::auth::METHOD_SCOPES`] lists).
const PUBLIC_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

impl Route {
    /// The route of `path` (a map lookup: it runs for every request).
    pub fn of(path: &str) -> Route {
        static ROUTES: std::sync::LazyLock<HashMap<&'static str, Route>> =
            std::sync::LazyLock::new(|| {
                crate::auth::METHOD_SCOPES
                    .iter()
                    .map(|(p, _)| *p)
                    .chain(PUBLIC_METHODS.iter().copied())
                    .filter_map(|path| {
                        let name = path.strip_prefix('/')?;
                        let (service, method) = name.split_once('/')?;
                        Some((
                            path,
                            Route {
                                name,
                                service,
                                method,
                            },
                        ))
                    })
                    .collect()
            });
        ROUTES.get(path).copied().unwrap_or(Route {
            name: "unknown",
            service: "unknown",
            method: "unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            Route::of("/consent.v1.ConsentService/Check"),
            Route {
                name: "consent.v1.ConsentService/Check",
                service: "consent.v1.ConsentService",
                method: "Check"
            }
        );
        assert_eq!(Route::of("/grpc.health.v1.Health/Check").method, "Check");
        for made_up in ["/consent.v1.ConsentService/Nope", "/x/y", "", "/", "//"] {
            assert_eq!(Route::of(made_up).service, "unknown", "{made_up}");
        }
    }

    #[test]
    fn retention_counts_last_one_interval_for_the_first_tenants() {
        let metrics = Metrics::new(&opentelemetry::metrics::NoopMeterProvider::new(), 1);
        let counts = || vec![("a".to_owned(), 3, 1), ("b".to_owned(), 2, 0)].into_iter();
        metrics.retention_items(counts(), Duration::from_secs(3600));
        assert_eq!(metrics.retention.values(), vec![("a".to_owned(), 3, 1)]);
        metrics.retention_items(counts(), Duration::ZERO);
        assert!(
            metrics.retention.values().is_empty(),
            "an expired sweep's counts are not shown"
        );
    }

    #[test]
    fn tenants_past_the_cap_get_no_series() {
        let revisions = TenantRevisions {
            cap: 2,
            latest: Mutex::new(HashMap::new()),
        };
        revisions.note("a", 5);
        revisions.note("b", 1);
        revisions.note("c", 9);
        revisions.note("a", 3);
        let mut values = revisions.values();
        values.sort();
        assert_eq!(values, vec![("a".to_owned(), 5), ("b".to_owned(), 1)]);
    }
}
