//! `consentd`: see `consentd --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = consent_server::cli::Cli::parse();
    match consent_server::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Errors may quote a configured URL: never print its credentials.
            let message = consent_core::redact::redact(&format!("{e:#}"));
            eprintln!("consentd: error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
