//! Configuration, layered: defaults < `consentd.toml` (or `--config FILE`) < environment
//! (`CONSENT__SECTION__KEY`) < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Every setting of `consentd`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC server settings.
    pub server: ServerConfig,
    /// Ledger storage.
    pub store: StoreConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// TLS for the gRPC port.
    pub tls: TlsConfig,
    /// Limits on requests.
    pub limits: LimitsConfig,
    /// The read cache in front of the ledger.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// Retention tracking.
    pub retention: RetentionConfig,
    /// The HTTP listener for probes and metrics.
    pub http: HttpConfig,
    /// Metrics and traces.
    pub telemetry: TelemetryConfig,
}

/// `[http]`: the plain-HTTP listener operators and Kubernetes use: `/healthz`, `/readyz`,
/// `/metrics` (Prometheus text format). It serves no API call and needs no key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the probe and metrics listener (`CONSENT__HTTP__LISTEN`).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[telemetry]`: what metrics may be labelled with. Export itself is configured by the
/// standard OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Most tenants given their own series in per-tenant metrics (the ledger revision);
    /// tenants seen after that are left out, so a replica serving thousands of tenants does
    /// not flood the metrics backend. 0 labels none.
    pub max_tenant_labels: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            max_tenant_labels: 100,
        }
    }
}

/// `[retention]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// An item DUE for longer than this is *overdue* (`ListDueItems{overdue_only}`): the
    /// grace a nightly deletion job needs. 0 makes every due item overdue at once.
    pub overdue_grace_secs: u64,
    /// How often the sweeper runs (one replica acts per run): expiry records for grants whose
    /// validity ended, and a summary record per tenant with items. 0 turns it off.
    pub sweep_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            overdue_grace_secs: 3 * 24 * 3600,
            sweep_interval_secs: 3600,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to serve gRPC on (`CONSENT__SERVER__LISTEN`).
    pub listen: SocketAddr,
    /// Seconds to let in-flight RPCs finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Seconds between SIGTERM and the start of the drain, during which `/readyz` and
    /// `grpc.health.v1` already say not serving but calls are still answered: time for load
    /// balancers to stop sending new calls here. Spent before `shutdown_grace_secs`.
    pub drain_delay_secs: u64,
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...` (`CONSENT__STORE__URL`).
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// Apply migrations when `serve` starts.
    pub auto_migrate: bool,
    /// Longest wait for a pooled connection before a request answers `UNAVAILABLE`.
    pub acquire_timeout_ms: u64,
    /// How long an idempotency key replays its write (then it is purged and may be reused).
    pub idempotency_ttl_secs: u64,
}

/// How callers are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: one tenant, `default`. Allowed only on a loopback address.
    None,
    /// Every RPC needs `authorization: Bearer ck_...`; the key gives the tenant and scopes.
    ApiKey,
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `api_key` (`CONSENT__AUTH__MODE`).
    pub mode: AuthMode,
    /// How long a replica trusts a cached key before re-reading it (bounds how long a key
    /// revoked on another replica keeps working).
    pub key_cache_ttl_secs: u64,
}

/// `[tls]`: serve TLS (rustls) when `cert` and `key` are set; verify client certificates
/// against `client_ca` when it is set (mTLS).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (`CONSENT__TLS__CERT`).
    pub cert: Option<PathBuf>,
    /// PEM private key of the server (`CONSENT__TLS__KEY`).
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must chain to (`CONSENT__TLS__CLIENT_CA`).
    pub client_ca: Option<PathBuf>,
}

/// Which cache answers reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Chosen so replicas never disagree: `redis` when a Redis is configured (whatever the
    /// store); otherwise SQLite (one process owns the file) `memory`, PostgreSQL `none`.
    Auto,
    /// Every read goes to the ledger.
    None,
    /// In-process: coherent with writes through this process only, so for a single replica
    /// that owns its store (the SQLite default). Several replicas: use `redis`.
    Memory,
    /// Redis (standalone or cluster), shared and kept coherent by every replica's writes.
    Redis,
}

/// `[cache]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `auto` (default), `none`, `memory` or `redis` (`CONSENT__CACHE__MODE`).
    pub mode: CacheMode,
    /// Standalone Redis, e.g. `redis://127.0.0.1:6379` (`CONSENT__CACHE__REDIS_URL`).
    pub redis_url: String,
    /// Redis Cluster nodes, comma-separated; used instead of `redis_url` when set
    /// (`CONSENT__CACHE__REDIS_CLUSTER_NODES`).
    pub redis_cluster_nodes: String,
    /// Most subjects kept in the in-process cache.
    pub max_entries: u64,
    /// Longest life of a cache entry (memory use). Staleness does not depend on it: writes
    /// the shared cache could not be told of are fenced in the ledger (see consent-cache).
    pub ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Auto,
            redis_url: String::new(),
            redis_cluster_nodes: String::new(),
            max_entries: 1_000_000,
            ttl_secs: 300,
        }
    }
}

/// The smallest `limits.max_message_bytes`: the answer to any request the input limits
/// accept must fit in a message. The largest write answer (256 events without evidence,
/// every id at its limit) is about 0.4 MiB; the largest single event with its evidence
/// (ListEvents, which cuts pages by size) about 0.15 MiB. `tests` below prove both.
pub const MIN_MESSAGE_BYTES: usize = 1024 * 1024;

/// `[limits]`: bounds on what one request or one key may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request or response message; larger is `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// Largest total of request headers (metadata) per request.
    pub max_metadata_bytes: u32,
    /// Longest time one RPC may run before it is cancelled (`CANCELLED`/`DEADLINE_EXCEEDED`).
    pub request_timeout_secs: u64,
    /// Most concurrent RPCs on one HTTP/2 connection; more wait for a free slot.
    pub max_concurrent_streams: u32,
    /// Requests per minute each API key may make; 0 turns the limit off. Over it is
    /// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` delay.
    pub per_key_requests_per_minute: u32,
    /// Requests a key may make at once before the rate applies; 0 means a minute's worth.
    pub per_key_burst: u32,
    /// A Watch consumer that accepts nothing for this long has its stream closed (it
    /// resumes from its last revision); bounds what a slow consumer holds on the server.
    pub watch_stall_secs: u64,
    /// Most Watch streams open at once on this replica; past it `RESOURCE_EXHAUSTED`.
    pub max_watches: usize,
    /// Most Watch streams one tenant may hold open at once on this replica.
    pub max_watches_per_tenant: usize,
    /// Most connections open at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a new connection has to send its first bytes (HTTP/2 preface or TLS hello).
    pub handshake_timeout_secs: u64,
    /// Seconds between HTTP/2 keepalive pings on an idle connection.
    pub keepalive_interval_secs: u64,
    /// Seconds to wait for a ping's answer before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// Failed authentications each client address may make per minute; past it, requests
    /// from it that would need a key lookup are `RESOURCE_EXHAUSTED` (with a retry delay);
    /// keys verified lately still work. 0 turns the limit off.
    pub auth_failures_per_minute: u32,
    /// Store lookups per second of API key ids this replica has not seen lately, from all
    /// addresses together; past it such requests are `RESOURCE_EXHAUSTED` (keys verified
    /// lately keep working from memory). 0 turns the limit off.
    pub key_lookups_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 8 * 1024 * 1024,
            max_metadata_bytes: 16 * 1024,
            request_timeout_secs: 30,
            max_concurrent_streams: 256,
            per_key_requests_per_minute: 0,
            per_key_burst: 0,
            watch_stall_secs: 60,
            max_watches: 256,
            max_watches_per_tenant: 64,
            max_connections: 4096,
            handshake_timeout_secs: 10,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            auth_failures_per_minute: 30,
            key_lookups_per_second: 200,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Pretty in a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `consent_server=debug,info` (`CONSENT__LOG__LEVEL`).
    pub level: String,
    /// `auto`, `json` or `pretty` (`CONSENT__LOG__FORMAT`).
    pub format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace_secs: 20,
            drain_delay_secs: 0,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://./data/consent.db".into(),
            max_connections: 16,
            auto_migrate: true,
            acquire_timeout_ms: 1000,
            idempotency_ttl_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            key_cache_ttl_secs: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// Values given as command-line flags; `None` leaves the lower layers' value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--store-url`
    pub store_url: Option<String>,
    /// `--log-level`
    pub log_level: Option<String>,
}

/// The longest `server.shutdown_grace_secs` / `server.drain_delay_secs`: a replica that
/// cannot stop within an hour is stuck, and a typo (days in seconds) should not hide it.
pub const MAX_SHUTDOWN_SECS: u64 = 3600;

/// The file read when `--config` is not given (ignored if absent).
pub const DEFAULT_CONFIG_FILE: &str = "consentd.toml";

impl Config {
    /// The cache mode in effect: `auto` resolved from the store (see [`CacheMode::Auto`]).
    pub fn cache_mode(&self) -> CacheMode {
        let redis_configured =
            !self.cache.redis_url.is_empty() || !self.cache.redis_cluster_nodes.is_empty();
        match self.cache.mode {
            // A configured Redis is used whatever the store: servers sharing one SQLite
            // file would otherwise disagree behind their own in-process caches.
            CacheMode::Auto if redis_configured => CacheMode::Redis,
            CacheMode::Auto if self.store.url.starts_with("sqlite:") => CacheMode::Memory,
            CacheMode::Auto => CacheMode::None,
            explicit => explicit,
        }
    }

    /// This configuration with every credential hidden (URLs and node lists through
    /// [`consent_core::redact::redact`]), for logs.
    pub fn redacted(&self) -> Config {
        use consent_core::redact::redact_url;
        let mut shown = self.clone();
        shown.cache.mode = self.cache_mode();
        shown.store.url = redact_url(&shown.store.url);
        shown.cache.redis_url = redact_url(&shown.cache.redis_url);
        shown.cache.redis_cluster_nodes = shown
            .cache
            .redis_cluster_nodes
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
        shown
    }

    /// Every configured URL that can hold a credential (for [`consent_core::redact`]).
    fn credential_urls(&self) -> impl Iterator<Item = &str> {
        [self.store.url.as_str(), self.cache.redis_url.as_str()]
            .into_iter()
            .chain(self.cache.redis_cluster_nodes.split(','))
    }

    /// Loads the layers. `file` must exist when given explicitly.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Config> {
        Self::figment(file, flags, Env::prefixed("CONSENT__").split("__"))
    }

    fn figment(file: Option<&Path>, flags: &FlagOverrides, env: Env) -> anyhow::Result<Config> {
        let path: PathBuf = match file {
            Some(p) if !p.exists() => anyhow::bail!("config file {} does not exist", p.display()),
            Some(p) => p.to_owned(),
            None => PathBuf::from(DEFAULT_CONFIG_FILE),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(env);
        if let Some(listen) = flags.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(url) = &flags.store_url {
            figment = figment.merge(Serialized::default("store.url", url));
        }
        if let Some(level) = &flags.log_level {
            figment = figment.merge(Serialized::default("log.level", level));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // From here on no text this process prints shows these passwords.
        for url in config.credential_urls() {
            consent_core::redact::register_secrets_of(url);
        }
        config.check()?;
        Ok(config)
    }

    /// Rules across settings: without authentication, only a loopback address may be served.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.auth.mode == AuthMode::None && !self.server.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve {} with auth.mode = none: without authentication consentd only binds a \
                 loopback address (127.0.0.1 or ::1)",
                self.server.listen
            );
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                anyhow::bail!("tls.cert is set but tls.key is not: set both to serve TLS")
            }
            (None, Some(_)) => {
                anyhow::bail!("tls.key is set but tls.cert is not: set both to serve TLS")
            }
            (None, None) if self.tls.client_ca.is_some() => {
                anyhow::bail!(
                    "tls.client_ca needs tls.cert and tls.key: client certificates are verified over TLS"
                )
            }
            _ => {}
        }
        if self.http.listen == self.server.listen && self.server.listen.port() != 0 {
            anyhow::bail!(
                "http.listen and server.listen are both {}: give the probe and metrics listener its own port (default 127.0.0.1:9090)",
                self.server.listen
            );
        }
        for (name, value) in [
            (
                "server.shutdown_grace_secs",
                self.server.shutdown_grace_secs,
            ),
            ("server.drain_delay_secs", self.server.drain_delay_secs),
        ] {
            if value > MAX_SHUTDOWN_SECS {
                anyhow::bail!("{name} must be at most {MAX_SHUTDOWN_SECS} (one hour), got {value}");
            }
        }
        let max_grace = consent_core::validate::MAX_DURATION_SECS.unsigned_abs();
        if self.retention.sweep_interval_secs > max_grace {
            anyhow::bail!(
                "retention.sweep_interval_secs must be at most {max_grace} (100 years; 0 turns the sweeper off), got {}",
                self.retention.sweep_interval_secs
            );
        }
        if self.retention.overdue_grace_secs > max_grace {
            anyhow::bail!(
                "retention.overdue_grace_secs must be at most {max_grace} (100 years), got {}",
                self.retention.overdue_grace_secs
            );
        }
        if self.limits.max_message_bytes < MIN_MESSAGE_BYTES {
            anyhow::bail!(
                "limits.max_message_bytes must be at least {MIN_MESSAGE_BYTES} (1 MiB): the answer to any accepted request must fit"
            );
        }
        let limits = &self.limits;
        for (name, value) in [
            (
                "store.max_connections",
                u64::from(self.store.max_connections),
            ),
            ("store.acquire_timeout_ms", self.store.acquire_timeout_ms),
            (
                "store.idempotency_ttl_secs",
                self.store.idempotency_ttl_secs,
            ),
            ("limits.request_timeout_secs", limits.request_timeout_secs),
            (
                "limits.max_concurrent_streams",
                u64::from(limits.max_concurrent_streams),
            ),
            ("limits.watch_stall_secs", limits.watch_stall_secs),
            ("limits.max_watches", limits.max_watches as u64),
            (
                "limits.max_watches_per_tenant",
                limits.max_watches_per_tenant as u64,
            ),
            ("limits.max_connections", limits.max_connections as u64),
            (
                "limits.handshake_timeout_secs",
                limits.handshake_timeout_secs,
            ),
            (
                "limits.keepalive_interval_secs",
                limits.keepalive_interval_secs,
            ),
            (
                "limits.keepalive_timeout_secs",
                limits.keepalive_timeout_secs,
            ),
        ] {
            if value == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        if limits.max_watches_per_tenant > limits.max_watches {
            anyhow::bail!(
                "limits.max_watches_per_tenant ({}) is more than limits.max_watches ({}): lower it or raise limits.max_watches",
                limits.max_watches_per_tenant,
                limits.max_watches
            );
        }
        let cache = &self.cache;
        let (url, nodes) = (
            !cache.redis_url.is_empty(),
            !cache.redis_cluster_nodes.is_empty(),
        );
        if url && nodes {
            anyhow::bail!(
                "cache.redis_url and cache.redis_cluster_nodes are both set: set one (a standalone Redis, or the nodes of a cluster)"
            );
        }
        match cache.mode {
            CacheMode::Redis if !url && !nodes => {
                anyhow::bail!(
                    "cache.mode = redis needs cache.redis_url or cache.redis_cluster_nodes"
                )
            }
            CacheMode::None | CacheMode::Memory if url || nodes => anyhow::bail!(
                "cache.{} is set but cache.mode = {}: set cache.mode = redis (or auto) to use it, or remove the Redis setting",
                if url {
                    "redis_url"
                } else {
                    "redis_cluster_nodes"
                },
                if cache.mode == CacheMode::None {
                    "none"
                } else {
                    "memory"
                }
            ),
            _ => {}
        }
        if self.cache.ttl_secs == 0 {
            anyhow::bail!("cache.ttl_secs must be at least 1");
        }
        if self.cache.max_entries == 0 && self.cache_mode() == CacheMode::Memory {
            anyhow::bail!(
                "cache.max_entries must be at least 1 with the in-process cache; to read every state from the ledger set cache.mode = none"
            );
        }
        if self.store.max_connections == 0 {
            anyhow::bail!("store.max_connections must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() -> anyhow::Result<()> {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "consentd.toml",
                "[server]\nlisten = \"127.0.0.1:7000\"\n[store]\nurl = \"sqlite://file.db\"\n[log]\nlevel = \"debug\"\n",
            )?;
            jail.set_env("CONSENT__STORE__URL", "postgres://env@localhost/db");
            jail.set_env("CONSENT__LOG__LEVEL", "warn");
            let flags = FlagOverrides {
                log_level: Some("trace".into()),
                ..FlagOverrides::default()
            };
            let c = Config::load(None, &flags).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen.port(), 7000, "file beats defaults");
            assert_eq!(c.store.url, "postgres://env@localhost/db", "env beats file");
            assert_eq!(c.log.level, "trace", "flags beat env");
            assert_eq!(c.store.max_connections, 16, "defaults fill the rest");
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn defaults_serve_sqlite_on_loopback() -> anyhow::Result<()> {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None, &FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
            assert_eq!(c.store.url, "sqlite://./data/consent.db");
            Ok(())
        });
        Ok(())
    }

    #[test]
    fn an_in_process_cache_of_no_entries_is_refused() {
        let mut config = Config::default();
        config.cache.max_entries = 0;
        let err = config
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("cache.max_entries") && err.contains("cache.mode = none"),
            "{err}"
        );
        config.cache.mode = CacheMode::None;
        assert!(config.check().is_ok());
    }

    #[test]
    fn refuses_public_bind_without_auth() {
        let flags = FlagOverrides {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 50051))),
            ..FlagOverrides::default()
        };
        figment::Jail::expect_with(|_| {
            let err = Config::load(None, &flags)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("auth.mode = none"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_logged_configuration_hides_credentials() {
        let mut config = Config::default();
        config.store.url =
            "postgres://consent:pg-secret@db:5432/consent?sslpassword=key-secret".into();
        config.cache.redis_url = "redis://:redis-secret@cache:6379".into();
        config.cache.redis_cluster_nodes =
            "redis://u:node-secret@a:7101,redis://b:7102,redis://:sp ace#secret@c:7103".into();
        let shown = format!("{:?}", config.redacted());
        for secret in [
            "pg-secret",
            "key-secret",
            "redis-secret",
            "node-secret",
            "ace#secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("db:5432") && shown.contains("b:7102"));
    }

    #[test]
    fn the_default_cache_never_lets_replicas_disagree() {
        let with = |store: &str, mode: CacheMode, redis: &str| {
            let mut c = Config::default();
            c.store.url = store.into();
            c.cache.mode = mode;
            c.cache.redis_url = redis.into();
            c
        };
        let pg = "postgres://u@db/consent";
        let sqlite = "sqlite://./data/consent.db";
        assert_eq!(
            with(sqlite, CacheMode::Auto, "").cache_mode(),
            CacheMode::Memory
        );
        assert_eq!(
            with(sqlite, CacheMode::Auto, "redis://cache:6379").cache_mode(),
            CacheMode::Redis,
            "a configured Redis is never silently left unused"
        );
        assert_eq!(with(pg, CacheMode::Auto, "").cache_mode(), CacheMode::None);
        assert_eq!(
            with(pg, CacheMode::Auto, "redis://cache:6379").cache_mode(),
            CacheMode::Redis
        );
        assert_eq!(
            with(pg, CacheMode::Memory, "").cache_mode(),
            CacheMode::Memory
        );
        for (mode, redis) in [
            (CacheMode::Memory, "redis://cache:6379"),
            (CacheMode::None, "redis://cache:6379"),
            (CacheMode::Redis, ""),
        ] {
            let refused = with(pg, mode, redis).check().err().map(|e| e.to_string());
            assert!(
                refused.as_deref().is_some_and(|m| m.contains("cache.")),
                "{mode:?} {redis:?}: {refused:?}"
            );
        }
        let mut both = with(pg, CacheMode::Auto, "redis://a:6379");
        both.cache.redis_cluster_nodes = "redis://b:7000".into();
        assert!(both.check().is_err(), "two Redis settings");
        assert!(
            format!("{:?}", with(pg, CacheMode::Auto, "redis://c:1").redacted()).contains("Redis"),
            "the log shows the mode in effect"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("consentd.toml", "[server]\nlisten_addr = \"127.0.0.1:1\"\n")?;
            let err = Config::load(None, &FlagOverrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("listen_addr"), "{err}");
            Ok(())
        });
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tls_tests {
    use super::*;

    #[test]
    fn tls_settings_must_come_in_pairs() {
        let mut c = Config::default();
        c.tls.cert = Some("server.pem".into());
        assert!(
            c.check()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("tls.key")
        );
        let mut c = Config::default();
        c.tls.client_ca = Some("ca.pem".into());
        assert!(
            c.check()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("tls.client_ca")
        );
        let mut c = Config::default();
        c.tls.cert = Some("server.pem".into());
        c.tls.key = Some("server.key".into());
        assert!(c.check().is_ok());
    }
}
