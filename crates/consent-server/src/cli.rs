//! The `consentd` command line: `serve` (the default), `migrate`, `catalog apply FILE`, `verify`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consent_core::Timestamp;
use consent_core::access::{ApiKey, new_tenant, parse_scopes, scopes_to_text};
use consent_core::catalog_file::parse_catalog_file;
use consent_core::redact::redact_url;
use consent_store::{LedgerStore, verify_ledger};
use tokio::net::TcpListener;

use crate::config::{Config, FlagOverrides};
use crate::context::DEFAULT_TENANT;
use crate::ledger::new_api_key;
use crate::metrics::Metrics;
use crate::stack::StoreStack;
use crate::telemetry::MetricsPipeline;

/// consentd: the consent and retention ledger service.
#[derive(Debug, Parser)]
#[command(name = "consentd", version, about)]
pub struct Cli {
    /// Configuration file (default: ./consentd.toml when it exists).
    #[arg(long, global = true, env = "CONSENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (server.listen).
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Ledger URL: sqlite://PATH or postgres://... (store.url).
    #[arg(long, global = true)]
    pub store_url: Option<String>,
    /// Log filter, e.g. info or consent_server=debug (log.level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (migrates first when store.auto_migrate is on).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage the catalogue directly in the configured store.
    Catalog {
        /// Catalogue action.
        #[command(subcommand)]
        action: CatalogCommand,
    },
    /// Manage tenants directly in the configured store.
    Tenants {
        /// Tenant action.
        #[command(subcommand)]
        action: TenantCommand,
    },
    /// Manage API keys directly in the configured store (for bootstrap).
    Keys {
        /// Key action.
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Shared-cache maintenance.
    Cache {
        /// Cache action.
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Check the configuration (file, CONSENT__* and OTEL_* variables, flags) and print the
    /// settings in effect as JSON, credentials hidden; opens nothing. An unknown,
    /// contradictory or half-given setting exits 1 with what to set.
    Config,
    /// Recompute a tenant's hash chain; exits 2 if it does not verify.
    Verify {
        /// Tenant whose ledger to verify.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
}

/// Shared-cache actions.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Give the ledger a new cache namespace, so that no entry cached so far is read again.
    /// Run it after restoring the database from a backup, before starting the replicas
    /// (entries cached before the restore describe writes the restored ledger does not hold).
    RotateNamespace,
}

/// Catalogue actions.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Apply a TOML catalogue file (vendors, purposes, policy versions); idempotent.
    Apply {
        /// The catalogue file, e.g. examples/catalog/callnex.toml.
        file: PathBuf,
        /// Tenant to apply it to.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
}

/// Tenant actions.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; NAME is its id (1..=256 bytes).
    Create {
        /// The tenant id.
        name: String,
        /// A display name (default: the id).
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List tenants.
    List,
}

/// API key actions.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it once (only its hash is stored).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes: consent:read, consent:write, catalog:write,
        /// retention:read, retention:write, rights:read, rights:write, identity:read, identity:write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// What the key is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 90d or 12h; omitted means until revoked.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// List the keys of a tenant (never their secrets).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key id (the part after `ck_`).
        key_id: String,
    },
}

/// Runs the command line; the exit code is 0 on success.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let flags = FlagOverrides {
        listen: cli.listen,
        store_url: cli.store_url.clone(),
        log_level: cli.log_level.clone(),
    };
    let config = Config::load(cli.config.as_deref(), &flags)?;
    let otlp = crate::telemetry::OtlpSettings::from_env()?;
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config = command {
        let shown = serde_json::json!({ "config": config.redacted(), "otlp": otlp });
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let telemetry = crate::telemetry::init(&config.log, otlp)?;
    match command {
        Command::Config => {}
        Command::Serve => {
            let served = serve(&config, &telemetry.otlp).await;
            // The last spans go out even when serving failed (they may say why).
            telemetry.shutdown().await;
            served?;
        }
        Command::Migrate => {
            open_migrated(&config).await?;
            println!("migrations applied to {}", redact_url(&config.store.url));
        }
        Command::Catalog {
            action: CatalogCommand::Apply { file, tenant },
        } => apply_catalog(&config, &file, &tenant).await?,
        Command::Tenants { action } => tenants(&config, action).await?,
        Command::Keys { action } => keys(&config, action).await?,
        Command::Cache {
            action: CacheCommand::RotateNamespace,
        } => {
            // It changes an existing ledger: a mistyped path must not create a new one.
            if let Some(file) = consent_store_sql::sqlite_file(&config.store.url)
                && !std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() > 0)
            {
                anyhow::bail!(
                    "store.url: no SQLite ledger at {file}; rotate-namespace changes an existing ledger, check the path"
                );
            }
            let ledger = crate::stack::open_ledger(&config, false).await?;
            let was = ledger.cache_namespace().await?;
            let namespace = ledger.rotate_cache_namespace().await?;
            println!(
                "cache namespace of {} changed from {was} to {namespace}; start the servers now (a server that was running stops using the shared cache and must be restarted)",
                redact_url(&config.store.url)
            );
        }
        Command::Verify { tenant } => {
            let stack = crate::stack::open(&config, false).await?;
            let (report, head) = verify_ledger(&stack.ledger, &tenant).await?;
            println!(
                "tenant {tenant}: {} at revision {}, {} events checked{}",
                if report.ok { "ok" } else { "FAILED" },
                head.revision,
                report.events_checked,
                report
                    .detail
                    .map(|d| format!(
                        ", first bad event {}: {d}",
                        report.first_bad_event_id.unwrap_or_default()
                    ))
                    .unwrap_or_default()
            );
            if !report.ok {
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The configured stack, migrated (commands may run before the first `serve`).
async fn open_migrated(config: &Config) -> anyhow::Result<StoreStack> {
    crate::stack::open(config, true).await
}

async fn tenants(config: &Config, action: TenantCommand) -> anyhow::Result<()> {
    let store = open_migrated(config).await?.store;
    match action {
        TenantCommand::Create { name, display_name } => {
            let tenant = new_tenant(&name, &display_name, Timestamp::now())?;
            store.create_tenant(&tenant).await?;
            println!("created tenant {}", tenant.tenant_id);
        }
        TenantCommand::List => {
            for t in store.list_tenants().await? {
                // Escaped: a stored name must not steer the terminal or break the columns.
                println!(
                    "{}\t{}\tcreated {}",
                    t.tenant_id.escape_debug(),
                    t.name.escape_debug(),
                    t.created_at
                );
            }
        }
    }
    Ok(())
}

fn describe_key(k: &ApiKey) -> String {
    let state = match (k.revoked_at, k.expires_at) {
        (Some(t), _) => format!("revoked {t}"),
        (None, Some(t)) => format!("expires {t}"),
        (None, None) => "no expiry".to_owned(),
    };
    format!(
        "{}\t{}\t{}\t{}\tcreated {}\t{state}",
        k.key_id,
        k.tenant_id.escape_debug(),
        k.name.escape_debug(),
        scopes_to_text(&k.scopes),
        k.created_at
    )
}

async fn keys(config: &Config, action: KeyCommand) -> anyhow::Result<()> {
    let store = open_migrated(config).await?.store;
    match action {
        KeyCommand::Create {
            tenant,
            scopes,
            name,
            expires_in,
        } => {
            let scopes = parse_scopes("--scopes", &scopes)?;
            let expires_in = expires_in
                .map(|d| i64::try_from(d.as_secs()))
                .transpose()
                .map_err(|_| anyhow::anyhow!("--expires-in is too long"))?;
            let (key, token) = new_api_key(&tenant, &name, scopes, expires_in)?;
            store.create_api_key(&key).await?;
            eprintln!(
                "created {}; the key below is shown once, store it now:",
                describe_key(&key)
            );
            println!("{token}");
        }
        KeyCommand::List { tenant } => {
            for k in store.list_api_keys(&tenant).await? {
                println!("{}", describe_key(&k));
            }
        }
        KeyCommand::Revoke { key_id } => {
            let key = store
                .find_api_key(&key_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no API key `{key_id}`"))?;
            let key = store
                .revoke_api_key(&key.tenant_id, &key_id, Timestamp::now())
                .await?;
            println!("revoked {}", describe_key(&key));
        }
    }
    Ok(())
}

async fn apply_catalog(
    config: &Config,
    file: &std::path::Path,
    tenant: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let catalog =
        parse_catalog_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let store = open_migrated(config).await?.store;
    for vendor in &catalog.vendors {
        store.upsert_vendor(tenant, vendor).await?;
    }
    for purpose in &catalog.purposes {
        store.upsert_purpose(tenant, purpose).await?;
    }
    for policy in &catalog.policy_versions {
        store.publish_policy_version(tenant, policy).await?;
    }
    if !catalog.retention.is_empty() {
        store
            .apply_retention_defaults(tenant, &catalog.retention)
            .await?;
    }
    println!(
        "applied {} vendors, {} purposes, {} policy versions, {} retention defaults from {} to tenant {tenant}",
        catalog.vendors.len(),
        catalog.purposes.len(),
        catalog.policy_versions.len(),
        catalog.retention.len(),
        file.display()
    );
    Ok(())
}

/// SIGTERM and SIGINT, listened to from the moment this is made: made before the listeners
/// print their lines, so a signal sent as soon as they appear is a graceful stop, not the
/// default action (death by signal).
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignals {
                term: signal(SignalKind::terminate())
                    .map_err(|e| anyhow::anyhow!("cannot listen for SIGTERM: {e}"))?,
                int: signal(SignalKind::interrupt())
                    .map_err(|e| anyhow::anyhow!("cannot listen for SIGINT: {e}"))?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// Resolves on the first SIGTERM or SIGINT.
    async fn received(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received; draining in-flight RPCs");
    }
}

/// Registers the observable series of the store stack: cache reads by result, and pool
/// connections by state.
fn observe_stack(metrics: &Metrics, stack: &StoreStack) {
    use opentelemetry::KeyValue;
    if let Some(stats) = stack.cache_stats.clone() {
        metrics.observe_counter(
            "consent.cache.reads",
            "Subject state reads by cache result: hit, miss (read from the ledger), fallback (the cache failed; read from the ledger)",
            move || {
                let (hits, misses, fallbacks) = stats.snapshot();
                [("hit", hits), ("miss", misses), ("fallback", fallbacks)]
                    .into_iter()
                    .map(|(result, n)| (n, vec![KeyValue::new("result", result)]))
                    .collect()
            },
        );
    }
    let ledger = stack.ledger.clone();
    metrics.observe_gauge(
        "db.client.connection.count",
        "Connections of the ledger's pools, by state (used, idle)",
        "{connection}",
        move || {
            ledger
                .pool_usage()
                .into_iter()
                .flat_map(|(pool, used, idle)| {
                    [("used", used), ("idle", idle)].map(|(state, n)| {
                        (
                            i64::from(n),
                            vec![
                                KeyValue::new("db.client.connection.pool.name", pool),
                                KeyValue::new("db.client.connection.state", state),
                            ],
                        )
                    })
                })
                .collect()
        },
    );
}

async fn bind(setting: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({setting}): {e}"))
}

async fn serve(config: &Config, otlp: &crate::telemetry::OtlpSettings) -> anyhow::Result<()> {
    // TLS files are read first so a bad path fails before anything is opened or bound.
    let mut settings = crate::server::ServerSettings::from_config(config)?;
    let signals = ShutdownSignals::install()?;
    let pipeline = Arc::new(MetricsPipeline::start(
        otlp,
        config.telemetry.max_tenant_labels,
    )?);
    let metrics = Arc::clone(&pipeline.metrics);
    settings.metrics = Arc::clone(&metrics);
    // Without an exporter a request's span serves only log lines: made for callers that
    // sent a trace (their id is logged), not for the others (it would cost every call).
    settings.sampler = if otlp.traces {
        otlp.sampler
    } else {
        crate::telemetry::SamplerSettings::none()
    };
    let stack =
        crate::stack::open_observed(config, config.store.auto_migrate, Arc::clone(&metrics))
            .await?;
    observe_stack(&metrics, &stack);
    let http_listener = bind("http.listen", config.http.listen).await?;
    let http_addr = http_listener.local_addr()?;
    let listener = bind("server.listen", config.server.listen).await?;
    let addr = listener.local_addr()?;
    if config.cache_mode() == crate::config::CacheMode::Memory
        && !config.store.url.starts_with("sqlite:")
    {
        tracing::warn!(
            "cache.mode = memory with a shared database: each replica's cache sees only its own writes, so with several replicas one can answer from a choice another has changed; use cache.mode = redis (or auto) when running more than one"
        );
    }
    let effective = serde_json::to_string(&config.redacted())?;
    let exported = serde_json::to_string(otlp)?;
    tracing::info!(%addr, %http_addr, config = %effective, otlp = %exported, "consentd listening (effective configuration, credentials hidden)");
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let probes = Arc::new(crate::ops_http::Probes {
        readiness: Arc::clone(&settings.readiness),
        ledger: stack.ledger.clone(),
        redis: stack.redis.clone(),
        metrics: Arc::clone(&pipeline),
    });
    // Probes and metrics answer until the gRPC side has drained (`/readyz` says 503 then).
    let http = tokio::spawn(crate::ops_http::serve(http_listener, probes, async move {
        let _ = http_stopped.await;
    }));
    // Lines on stdout that scripts and tests can wait for (no sleeps needed); the gRPC line
    // comes last, when both listeners are up.
    println!("consentd http listening on {http_addr}");
    println!("consentd listening on {addr}");

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        signals.received().await;
        let _ = signalled_tx.send(());
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let drain_delay = settings.drain_delay;
    if settings.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plaintext on a non-loopback address: API keys cross the network in clear unless TLS terminates in front; set tls.cert and tls.key");
    }
    let server = crate::server::serve(settings, Arc::clone(&stack.store), listener, shutdown);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(drain_delay + grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight RPCs did not finish within the grace period");
        }
    }
    let _ = http_stop.send(());
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP listener failed"),
        Err(e) => tracing::warn!(error = %e, "the HTTP listener task failed"),
    }
    stack.ledger.close().await;
    if let Ok(pipeline) = Arc::try_unwrap(pipeline) {
        pipeline.shutdown().await;
    }
    tracing::info!("consentd stopped");
    Ok(())
}
