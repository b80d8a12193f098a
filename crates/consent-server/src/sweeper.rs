//! The retention sweeper, a task inside `consentd serve`: every `retention.sweep_interval_secs`
//! it tells `Watch` subscribers of each grant whose validity ended (a `CONSENT_EXPIRED`
//! ledger record per grant still current), and writes one `RETENTION_SWEEP` record per tenant
//! with items (items that became due since the last sweep, due and overdue counts).
//!
//! Every replica runs the task, at each slot boundary; exactly one acts per run: a run is a
//! *slot* (the time divided by the interval), and a replica acts only if it moves the store's
//! slot forward
//! (`RetentionStore::claim_sweep`, one conditional UPDATE), which one caller per slot does.
//! Item statuses never depend on the sweeper: they are computed on every read.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use consent_core::commands::new_event_id;
use consent_core::{Clock, NewRecord, RecordKind, Result, Revision, Timestamp};
use consent_store::{ExpiredGrant, RetentionCounts, Store};
use tokio::sync::{mpsc, watch};

/// Expiries read and recorded per transaction.
const EXPIRY_CHUNK: usize = 500;

/// The key id ledger records written by the sweeper carry (no API key wrote them).
pub const SWEEPER_ACTOR: &str = "consentd:sweeper";

/// What one tenant's sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantSweep {
    /// The tenant.
    pub tenant_id: String,
    /// Expiry records written.
    pub consents_expired: usize,
    /// The revision of the summary record, if one was written.
    pub summary_revision: Option<Revision>,
    /// Items due now, not held.
    pub items_due: i64,
    /// Items due for longer than the overdue grace, not held.
    pub items_overdue: i64,
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// The run's slot.
    pub slot: i64,
    /// Whether this replica acted (claimed the slot).
    pub acted: bool,
    /// Per tenant, when it acted.
    pub tenants: Vec<TenantSweep>,
}

/// Runs sweeps over a store.
#[derive(Clone)]
pub struct Sweeper {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    interval_secs: i64,
    overdue_grace_secs: i64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("interval_secs", &self.interval_secs)
            .field("overdue_grace_secs", &self.overdue_grace_secs)
            .finish_non_exhaustive()
    }
}

impl Sweeper {
    /// A sweeper running every `interval_secs` (at least 1) by `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        interval_secs: i64,
        overdue_grace_secs: i64,
    ) -> Sweeper {
        Sweeper {
            store,
            clock,
            interval_secs: interval_secs.max(1),
            overdue_grace_secs,
            metrics: Metrics::disabled(),
        }
    }

    /// Publishes each run's due and overdue counts in `metrics` (`consent.retention.items`).
    pub fn observed(mut self, metrics: Arc<Metrics>) -> Sweeper {
        self.metrics = metrics;
        self
    }

    /// The slot of `now`.
    fn slot(&self, now: Timestamp) -> i64 {
        now.as_micros().div_euclid(
            self.interval_secs
                .saturating_mul(Timestamp::MICROS_PER_SECOND),
        )
    }

    /// One run: acts if this replica claims the current slot, otherwise does nothing.
    pub async fn run_once(&self) -> Result<SweepReport> {
        let now = self.clock.now();
        let slot = self.slot(now);
        if !self.store.claim_sweep(slot, now).await? {
            return Ok(SweepReport {
                slot,
                acted: false,
                tenants: Vec::new(),
            });
        }
        let mut tenants = Vec::new();
        for tenant in self.store.ledger_tenants().await? {
            tenants.push(self.sweep_tenant(&tenant, now).await?);
        }
        Ok(SweepReport {
            slot,
            acted: true,
            tenants,
        })
    }

    async fn sweep_tenant(&self, tenant: &str, now: Timestamp) -> Result<TenantSweep> {
        let mut mark = self.store.sweep_mark(tenant).await?;
        let since = mark.swept_at;
        let mut consents_expired = 0;
        loop {
            let grants = self
                .store
                .expired_grants(tenant, &mark, now, EXPIRY_CHUNK)
                .await?;
            let Some(last) = grants.last() else { break };
            mark.expired_until = last.expires_at;
            mark.expired_revision = last.revision;
            let full = grants.len() == EXPIRY_CHUNK;
            consents_expired += grants.len();
            let records = grants.iter().map(expiry_record).collect();
            self.store.record_sweep(tenant, records, &mark).await?;
            if !full {
                break;
            }
        }
        let overdue_by = Timestamp(
            now.as_micros().saturating_sub(
                self.overdue_grace_secs
                    .saturating_mul(Timestamp::MICROS_PER_SECOND)
                    .saturating_add(1),
            ),
        );
        let became_due = self.store.mark_newly_due(tenant, now).await?;
        let counts = RetentionCounts {
            became_due,
            ..self.store.retention_counts(tenant, now, overdue_by).await?
        };
        mark.swept_at = Some(now);
        // A tenant without items or expiries gets no summary: the chain is not padded with
        // a record an hour saying nothing.
        let summary = (counts.items > 0 || consents_expired > 0).then(|| NewRecord {
            id: new_event_id(),
            kind: RecordKind::RetentionSweep,
            subject_id: String::new(),
            purpose_id: String::new(),
            at: now,
            detail: [
                ("items", counts.items.to_string()),
                ("items_became_due", counts.became_due.to_string()),
                ("items_due", counts.due.to_string()),
                ("items_overdue", counts.overdue.to_string()),
                ("consents_expired", consents_expired.to_string()),
                (
                    "swept_since",
                    since.map_or_else(|| "never".to_owned(), |t| t.to_string()),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            actor_key_id: SWEEPER_ACTOR.to_owned(),
        });
        let written = self
            .store
            .record_sweep(tenant, summary.into_iter().collect(), &mark)
            .await?;
        Ok(TenantSweep {
            tenant_id: tenant.to_owned(),
            consents_expired,
            summary_revision: written.last().map(|r| r.revision),
            items_due: counts.due,
            items_overdue: counts.overdue,
        })
    }

    /// Runs a sweep every interval, and whenever `requests` changes (tests ask for runs
    /// instead of waiting), until `shutdown` becomes `true`. Each run's result goes to
    /// `reports` when given; a failed run is logged and retried at the next interval.
    pub fn spawn(
        self,
        mut requests: Option<watch::Receiver<u64>>,
        reports: Option<mpsc::UnboundedSender<Result<SweepReport>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let period = Duration::from_secs(self.interval_secs.unsigned_abs());
        // Runs start on slot boundaries, so replicas started at different times (or restarted
        // more often than the interval) still run each slot.
        let period_micros = self
            .interval_secs
            .saturating_mul(Timestamp::MICROS_PER_SECOND);
        let into_slot = self.clock.now().as_micros().rem_euclid(period_micros);
        let first = Duration::from_micros((period_micros - into_slot).unsigned_abs());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    changed = async {
                        match requests.as_mut() {
                            Some(r) => r.changed().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if changed.is_err() {
                            requests = None;
                            continue;
                        }
                    }
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                }
                let run = self.run_once().await;
                if let Ok(report) = &run
                    && report.acted
                {
                    // Shown for one interval: the next run, on whichever replica claims it,
                    // publishes fresh counts (a replica's old ones must not outlive them).
                    self.metrics.retention_items(
                        report
                            .tenants
                            .iter()
                            .map(|t| (t.tenant_id.clone(), t.items_due, t.items_overdue)),
                        period,
                    );
                }
                match &run {
                    Ok(report) if report.acted => tracing::info!(
                        slot = report.slot,
                        tenants = report.tenants.len(),
                        consents_expired = report
                            .tenants
                            .iter()
                            .map(|t| t.consents_expired)
                            .sum::<usize>(),
                        "retention sweep done"
                    ),
                    Ok(_) => tracing::debug!("retention sweep: another replica has this run"),
                    Err(e) => {
                        tracing::warn!(error = %e, "retention sweep failed; retrying next interval")
                    }
                }
                if let Some(reports) = &reports {
                    let _ = reports.send(run);
                }
            }
        })
    }
}

fn expiry_record(grant: &ExpiredGrant) -> NewRecord {
    NewRecord {
        id: new_event_id(),
        kind: RecordKind::ConsentExpired,
        subject_id: grant.subject_id.clone(),
        purpose_id: grant.purpose_id.clone(),
        at: grant.expires_at,
        detail: [
            ("event_id".to_owned(), grant.event_id.clone()),
            ("vendor_id".to_owned(), grant.vendor_id.clone()),
        ]
        .into(),
        actor_key_id: SWEEPER_ACTOR.to_owned(),
    }
}
