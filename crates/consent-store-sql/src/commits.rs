//! Commit wake-ups. Every append publishes `(tenant, revision)` to an in-process broadcast
//! after it commits. On PostgreSQL the store also sends them to other processes with
//! `pg_notify`, **after** the commit and outside any write transaction (a transaction that
//! notifies takes a database-wide lock at commit, which would queue every tenant's commits
//! behind one another): an outbox coalesces them (the latest revision per tenant) and one
//! task sends whatever gathered in one statement. Each store keeps one `LISTEN` connection
//! (opened before `connect` returns) that forwards other processes' commits into the same
//! broadcast, so a watcher on one replica wakes for a write on another.
//!
//! Wake-ups are hints: the ledger, read by revision, is the truth. A listener that loses its
//! connection reconnects; what it missed meanwhile is found by the watchers' periodic re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consent_core::{ConsentError, Result};
use consent_store::Commit;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, watch};

/// The PostgreSQL notification channel.
pub(crate) const COMMIT_CHANNEL: &str = "consent_ledger_commits";

/// Wake-ups buffered per receiver; a slower receiver sees `Lagged` and re-reads the ledger.
const BUFFER: usize = 1024;

/// Longest pause between reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `"<revision> <tenant>"`: the tenant id may contain spaces, the revision cannot.
pub(crate) fn commit_payload(tenant: &str, revision: i64) -> String {
    format!("{revision} {tenant}")
}

fn parse_payload(payload: &str) -> Option<Commit> {
    let (revision, tenant) = payload.split_once(' ')?;
    Some(Commit {
        tenant_id: tenant.to_owned(),
        revision: revision.parse().ok()?,
    })
}

/// The broadcast of commits, fed by this process and, on PostgreSQL, by a listener.
#[derive(Clone, Debug)]
pub(crate) struct CommitFeed {
    sender: broadcast::Sender<Commit>,
    stop: watch::Sender<bool>,
    /// Commits waiting to be sent to other processes (PostgreSQL only).
    outbox: Option<Arc<Outbox>>,
}

/// The latest revision per tenant not yet notified, and a wake-up for the sender task.
#[derive(Debug, Default)]
struct Outbox {
    pending: Mutex<HashMap<String, i64>>,
    wake: Notify,
}

impl CommitFeed {
    /// A feed of this process's commits only (SQLite: one process owns the file).
    pub(crate) fn local() -> CommitFeed {
        CommitFeed {
            sender: broadcast::channel(BUFFER).0,
            stop: watch::channel(false).0,
            outbox: None,
        }
    }

    /// A feed that also hears other processes' commits on the PostgreSQL at `url`; the
    /// `LISTEN` is active when this returns.
    pub(crate) async fn postgres(url: &str, pool: PgPool) -> Result<CommitFeed> {
        let mut feed = CommitFeed::local();
        let outbox = Arc::new(Outbox::default());
        feed.outbox = Some(outbox.clone());
        tokio::spawn(send_notifications(pool, outbox, feed.stop.subscribe()));
        let listener = listen(url).await.map_err(|e| {
            ConsentError::Unavailable(format!("cannot LISTEN for ledger commits: {e}"))
        })?;
        tokio::spawn(forward(
            listener,
            url.to_owned(),
            feed.sender.clone(),
            feed.stop.subscribe(),
        ));
        Ok(feed)
    }

    /// Announces a commit of this process (nobody listening is fine); on PostgreSQL, queues
    /// it for the other processes too.
    pub(crate) fn publish(&self, commit: Commit) {
        if let Some(outbox) = &self.outbox {
            if let Ok(mut pending) = outbox.pending.lock() {
                let revision = pending.entry(commit.tenant_id.clone()).or_insert(0);
                *revision = (*revision).max(commit.revision);
            }
            outbox.wake.notify_one();
        }
        let _ = self.sender.send(commit);
    }

    /// A receiver of all commits from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Commit> {
        self.sender.subscribe()
    }

    /// Stops the listener.
    pub(crate) fn close(&self) {
        let _ = self.stop.send(true);
    }
}

/// Sends the outbox's wake-ups, one statement for whatever gathered since the last one.
async fn send_notifications(pool: PgPool, outbox: Arc<Outbox>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = outbox.wake.notified() => {}
        }
        let pending = match outbox.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return,
        };
        if pending.is_empty() {
            continue;
        }
        let payloads: Vec<String> = pending
            .iter()
            .map(|(tenant, revision)| commit_payload(tenant, *revision))
            .collect();
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(COMMIT_CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            // Wake-ups are hints: watchers re-read the ledger periodically anyway.
            tracing::warn!(error = %crate::errors::db(e), commits = payloads.len(), "cannot send ledger commit wake-ups to other replicas");
        }
    }
}

async fn listen(url: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(COMMIT_CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications until the store closes, reconnecting when the connection drops.
async fn forward(
    mut listener: PgListener,
    url: String,
    sender: broadcast::Sender<Commit>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            received = listener.recv() => received,
        };
        match received {
            Ok(notification) => {
                backoff = Duration::from_millis(100);
                if let Some(commit) = parse_payload(notification.payload()) {
                    let _ = sender.send(commit);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "ledger commit listener lost its connection; reconnecting");
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    match listen(&url).await {
                        Ok(fresh) => {
                            listener = fresh;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reconnect the ledger commit listener; retrying")
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_with_spaces_in_the_tenant() {
        let commit = parse_payload(&commit_payload("acme voice", 42));
        assert_eq!(
            commit,
            Some(Commit {
                tenant_id: "acme voice".into(),
                revision: 42
            })
        );
        assert_eq!(parse_payload("nonsense"), None);
    }
}
