//! TLS and mTLS with certificates generated at test time (rcgen): the right clients connect,
//! the wrong ones are refused before any RPC runs.

use std::sync::Arc;

use consent_client::ConsentClient;
use consent_e2e::RawChecks;
use consent_server::config::{AuthMode, Config};
use consent_server::server::{ServerSettings, serve};
use consent_store_sql::{SqlOptions, SqlStore};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

/// A CA and PEM material it signed.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail("ca params", e));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap_or_else(|e| fail("ca key", e));
        Pki {
            ca: CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| fail("ca cert", e)),
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|e| fail("leaf params", e));
        let key = KeyPair::generate().unwrap_or_else(|e| fail("leaf key", e));
        let cert = params
            .signed_by(&key, &self.ca)
            .unwrap_or_else(|e| fail("sign leaf", e));
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes the server's PEM files and returns settings loaded through the real config path.
fn settings(dir: &std::path::Path, pki: &Pki, client_ca: Option<&Pki>) -> ServerSettings {
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| fail("write pem", e));
        path
    };
    let mut config = Config::default();
    config.tls.cert = Some(write("server.pem", &cert));
    config.tls.key = Some(write("server.key", &key));
    config.tls.client_ca = client_ca.map(|ca| write("client-ca.pem", &ca.ca.pem()));
    config.check().unwrap_or_else(|e| fail("config", e));
    let mut settings = ServerSettings::from_config(&config).unwrap_or_else(|e| fail("settings", e));
    settings.auth_mode = AuthMode::None;
    settings
}

/// Serves on a loopback port with `settings`; returns the address.
async fn start(settings: ServerSettings, dir: &std::path::Path) -> std::net::SocketAddr {
    let url = format!("sqlite://{}/consent.db", dir.display());
    let store = SqlStore::connect(&url, &SqlOptions::default())
        .await
        .unwrap_or_else(|e| fail("store", e));
    store.migrate().await.unwrap_or_else(|e| fail("migrate", e));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail("bind", e));
    let addr = listener.local_addr().unwrap_or_else(|e| fail("addr", e));
    tokio::spawn(serve(
        settings,
        Arc::new(store),
        listener,
        std::future::pending(),
    ));
    addr
}

/// The server has no catalogue: a call that reaches a handler answers NOT_FOUND. Any other
/// outcome (a handshake failure surfaces as UNAVAILABLE, CANCELLED, UNKNOWN...) is a refusal.
const ANSWERED: Result<tonic::Code, String> = Ok(tonic::Code::NotFound);

/// Connects over TLS trusting `ca`, optionally presenting `identity`; then makes one call.
async fn round_trip(
    addr: std::net::SocketAddr,
    ca: &Pki,
    identity: Option<(String, String)>,
) -> Result<tonic::Code, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let client = ConsentClient::from_channel(channel);
    match client.check_raw("s", "analytics").await {
        Ok(answer) => Err(format!("unexpected answer {answer:?}")),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(s.code()),
        Err(s) => Err(format!("{s:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let pki = Pki::new("consent test CA");
    let addr = start(settings(dir.path(), &pki, None), dir.path()).await;

    assert_eq!(round_trip(addr, &pki, None).await, ANSWERED);

    // A client that trusts another CA refuses the server.
    let stranger = Pki::new("another CA");
    assert_ne!(round_trip(addr, &stranger, None).await, ANSWERED);

    // Plaintext HTTP/2 to a TLS port reaches no handler.
    let plain = match ConsentClient::connect(format!("http://{addr}")).await {
        Ok(client) => client
            .check_raw("s", "analytics")
            .await
            .err()
            .map(|s| s.code()),
        Err(_) => None,
    };
    assert_ne!(plain, Some(tonic::Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let server_pki = Pki::new("server CA");
    let client_pki = Pki::new("client CA");
    let addr = start(
        settings(dir.path(), &server_pki, Some(&client_pki)),
        dir.path(),
    )
    .await;

    let dialer = client_pki.leaf(&["dialer.internal"]);
    assert_eq!(round_trip(addr, &server_pki, Some(dialer)).await, ANSWERED);
    assert_ne!(
        round_trip(addr, &server_pki, None).await,
        ANSWERED,
        "no client certificate"
    );
    let impostor = Pki::new("impostor CA").leaf(&["dialer.internal"]);
    assert_ne!(
        round_trip(addr, &server_pki, Some(impostor)).await,
        ANSWERED,
        "certificate from another CA"
    );
}

#[test]
fn missing_tls_files_are_named() {
    let mut config = Config::default();
    config.tls.cert = Some("/nonexistent/server.pem".into());
    config.tls.key = Some("/nonexistent/server.key".into());
    let err = ServerSettings::from_config(&config)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("tls.cert") && err.contains("/nonexistent/server.pem"),
        "{err}"
    );
}
