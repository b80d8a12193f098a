//! Commit wake-ups. Every append publishes `(tenant, revision)` to an in-process broadcast
//! after it commits. On PostgreSQL the append also sends `pg_notify` inside its transaction,
//! and each store keeps one `LISTEN` connection (opened before `connect` returns) that
//! forwards other processes' commits into the same broadcast, so a watcher on one replica
//! wakes for a write on another.
//!
//! Wake-ups are hints: the ledger, read by revision, is the truth. A listener that loses its
//! connection reconnects; what it missed meanwhile is found by the watchers' periodic re-read.

use std::time::Duration;

use consent_core::{ConsentError, Result};
use consent_store::Commit;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};

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
}

impl CommitFeed {
    /// A feed of this process's commits only (SQLite: one process owns the file).
    pub(crate) fn local() -> CommitFeed {
        CommitFeed {
            sender: broadcast::channel(BUFFER).0,
            stop: watch::channel(false).0,
        }
    }

    /// A feed that also hears other processes' commits on the PostgreSQL at `url`; the
    /// `LISTEN` is active when this returns.
    pub(crate) async fn postgres(url: &str) -> Result<CommitFeed> {
        let feed = CommitFeed::local();
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

    /// Announces a local commit (nobody listening is fine).
    pub(crate) fn publish(&self, commit: Commit) {
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
