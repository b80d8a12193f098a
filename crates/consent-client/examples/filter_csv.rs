//! A pipeline step: reads a CSV of subject ids (first column; a `subject_id` header line is
//! skipped) and prints those whose data may be used for a purpose, in input order, with
//! one CheckStream and bounded memory whatever the file's size.
//!
//! ```sh
//! cargo run -p consent-client --example filter_csv -- subjects.csv analytics > allowed.txt
//! ```
//!
//! `CONSENT_URL` and `CONSENT_API_KEY` as for the `guard` example. Exits non-zero on an
//! error: the output is then incomplete and must not be used.

use consent_client::ConsentClient;
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio_stream::wrappers::LinesStream;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(purpose)) = (args.next(), args.next()) else {
        return Err("usage: filter_csv FILE.csv PURPOSE".into());
    };
    let url = std::env::var("CONSENT_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key = std::env::var("CONSENT_API_KEY").unwrap_or_default();
    let consent = ConsentClient::builder(url).api_key(key).connect().await?;

    let file = tokio::fs::File::open(&path).await?;
    let lines = LinesStream::new(tokio::io::BufReader::new(file).lines());
    // The first column of each line; an unreadable line ends the input (and is reported).
    let (broken, broken_seen) = tokio::sync::oneshot::channel::<std::io::Error>();
    let mut broken = Some(broken);
    let ids = lines
        .scan((), move |(), line| {
            let next = match line {
                Ok(line) => Some(line),
                Err(e) => {
                    if let Some(tell) = broken.take() {
                        let _ = tell.send(e);
                    }
                    None
                }
            };
            futures::future::ready(next)
        })
        .filter_map(|line| {
            let id = line.split(',').next().unwrap_or("").trim().to_owned();
            futures::future::ready((!id.is_empty() && id != "subject_id").then_some(id))
        });

    let mut allowed = consent.filter_allowed(ids, purpose);
    let mut count = 0u64;
    while let Some(id) = allowed.next().await {
        println!("{}", id?);
        count += 1;
    }
    if let Ok(e) = broken_seen.await {
        return Err(format!("reading {path}: {e}").into());
    }
    eprintln!("{count} allowed");
    Ok(())
}
