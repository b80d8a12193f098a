//! A product service guarding a code path with one Check: records the call only when the
//! caller agreed to be recorded.
//!
//! ```sh
//! cargo run -p consent-client --example guard -- +32470000001
//! ```
//!
//! `CONSENT_URL` (default `http://127.0.0.1:50051`) and `CONSENT_API_KEY` (when the server
//! runs with `auth.mode = "api_key"`) say where and as whom.

use consent_client::ConsentClient;

#[tokio::main]
async fn main() -> Result<(), consent_client::Error> {
    let caller = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "+32470000001".into());
    let url = std::env::var("CONSENT_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key = std::env::var("CONSENT_API_KEY").unwrap_or_default();

    // The five lines a service needs.
    let consent = ConsentClient::builder(url).api_key(key).connect().await?;
    if consent.allowed(&caller, "call_recording").await? {
        println!("{caller}: recording the call");
    } else {
        println!("{caller}: not recording (no consent to call_recording)");
    }
    Ok(())
}
