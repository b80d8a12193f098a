//! Test support: where the Redis (and Redis Cluster) under test is, and a TCP relay a test
//! can cut to put a partition between a replica and its Redis or its database.

use std::sync::{Arc, Mutex};

use consent_store::conformance::service_from_env;

/// A standalone Redis for tests (`CONSENT_TEST_REDIS_URL`), or `None` after a notice;
/// required under `CI=true`.
pub fn redis_test_url() -> Option<String> {
    service_from_env("CONSENT_TEST_REDIS_URL")
}

/// The nodes of a Redis Cluster for tests (`CONSENT_TEST_REDIS_CLUSTER_NODES`,
/// comma-separated), or `None` after a notice; required under `CI=true`.
pub fn redis_cluster_test_nodes() -> Option<Vec<String>> {
    service_from_env("CONSENT_TEST_REDIS_CLUSTER_NODES").map(|list| {
        list.split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    })
}

/// A TCP relay on a loopback port to `127.0.0.1:upstream`, which a test can cut (every
/// relayed connection dropped, new ones refused), as a network partition would.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub port: u16,
    /// The accepting task and the relayed connections' tasks.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// The relayed connections' tasks only.
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    /// A relay on a free port.
    pub async fn to(upstream: u16) -> std::io::Result<Relay> {
        Relay::on(0, upstream).await
    }

    /// A relay on `port` (0: a free one), for instance the port of a relay that was cut.
    pub async fn on(port: u16, upstream: u16) -> std::io::Result<Relay> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let registry = Arc::clone(&tasks);
        let open = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut t) = registry.lock() {
                    t.push(relay.abort_handle());
                }
                if let Ok(mut t) = open.lock() {
                    t.push(relay.abort_handle());
                }
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(accept.abort_handle());
        }
        Ok(Relay {
            port,
            tasks,
            connections,
        })
    }

    /// Drops every relayed connection but keeps accepting: what is in flight is lost, a
    /// client that reconnects gets through.
    pub fn sever(&self) {
        if let Ok(mut connections) = self.connections.lock() {
            for task in connections.drain(..) {
                task.abort();
            }
        }
    }

    /// Drops every relayed connection and stops accepting: the path is cut.
    pub fn cut(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}
