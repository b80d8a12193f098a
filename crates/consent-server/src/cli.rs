//! The `consentd` command line: `serve` (the default), `migrate`, `catalog apply FILE`, `verify`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consent_core::catalog_file::parse_catalog_file;
use consent_store::{CatalogStore, verify_ledger};
use consent_store_sql::{SqlOptions, SqlStore, redact};
use tokio::net::TcpListener;

use crate::config::{Config, FlagOverrides};
use crate::context::DEFAULT_TENANT;

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
    /// Recompute a tenant's hash chain; exits 2 if it does not verify.
    Verify {
        /// Tenant whose ledger to verify.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
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

/// Runs the command line; the exit code is 0 on success.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let flags = FlagOverrides {
        listen: cli.listen,
        store_url: cli.store_url.clone(),
        log_level: cli.log_level.clone(),
    };
    let config = Config::load(cli.config.as_deref(), &flags)?;
    crate::telemetry::init(&config.log)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&config).await?,
        Command::Migrate => {
            let store = open(&config).await?;
            store.migrate().await?;
            println!("migrations applied to {}", redact(&config.store.url));
        }
        Command::Catalog {
            action: CatalogCommand::Apply { file, tenant },
        } => apply_catalog(&config, &file, &tenant).await?,
        Command::Verify { tenant } => {
            let store = open(&config).await?;
            let (report, head) = verify_ledger(&store, &tenant).await?;
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

async fn open(config: &Config) -> anyhow::Result<SqlStore> {
    let options = SqlOptions {
        max_connections: config.store.max_connections,
        ..SqlOptions::default()
    };
    Ok(SqlStore::connect(&config.store.url, &options).await?)
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
    let store = open(config).await?;
    store.migrate().await?;
    for vendor in &catalog.vendors {
        store.upsert_vendor(tenant, vendor).await?;
    }
    for purpose in &catalog.purposes {
        store.upsert_purpose(tenant, purpose).await?;
    }
    for policy in &catalog.policy_versions {
        store.publish_policy_version(tenant, policy).await?;
    }
    println!(
        "applied {} vendors, {} purposes, {} policy versions from {} to tenant {tenant}",
        catalog.vendors.len(),
        catalog.purposes.len(),
        catalog.policy_versions.len(),
        file.display()
    );
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; draining in-flight RPCs");
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let store = open(config).await?;
    if config.store.auto_migrate {
        store.migrate().await?;
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = %redact(&config.store.url), "consentd listening");
    // A line on stdout that scripts and tests can wait for (no sleeps needed).
    println!("consentd listening on {addr}");

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(());
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let server = crate::server::serve(Arc::new(store.clone()), listener, shutdown);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight RPCs did not finish within the grace period");
        }
    }
    store.close().await;
    tracing::info!("consentd stopped");
    Ok(())
}
