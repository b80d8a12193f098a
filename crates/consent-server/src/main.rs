//! `consentd`: see `consentd --help`.

use std::time::Duration;

use clap::Parser;

/// How long blocking work still running at the end may delay the exit (an exporter waiting
/// on a collector that does not answer; its own flush is bounded in `telemetry`).
const EXIT_LIMIT: Duration = Duration::from_secs(1);

fn main() -> std::process::ExitCode {
    let cli = consent_server::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("consentd: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match consent_server::cli::run(cli).await {
            Ok(code) => code,
            Err(e) => {
                // Errors may quote a configured URL: never print its credentials.
                let message = consent_core::redact::redact(&format!("{e:#}"));
                eprintln!("consentd: error: {message}");
                std::process::ExitCode::FAILURE
            }
        }
    });
    runtime.shutdown_timeout(EXIT_LIMIT);
    code
}
