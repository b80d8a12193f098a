//! `consentd`: see `consentd --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = consent_server::cli::Cli::parse();
    match consent_server::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("consentd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
