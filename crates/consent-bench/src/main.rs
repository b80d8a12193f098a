//! `consent-bench`: runs `consentd` in this process on a fresh SQLite file with the seed
//! catalogue and a generated dataset, drives it with its own tonic clients over several
//! HTTP/2 connections, and reports throughput and latency as **ratios against baselines
//! measured in the same run** (an empty RPC on the same server, the decision engine over an
//! in-memory map), because absolute figures on a shared 2-core machine are noise.
//!
//! `--smoke` (seconds; CI runs it to prove the benchmark runs), `--quick` (a few minutes),
//! default (longer). `--json PATH` writes the report. SQLite figures always; PostgreSQL
//! figures (a scratch database beside the one `CONSENT_BENCH_DATABASE_URL` names) and Redis
//! figures (`CONSENT_BENCH_REDIS_URL`; the run deletes the `consent:v1:*` cache keys there
//! (earlier runs' ledgers), which the service allows at any moment) only when those are set: otherwise the report
//! says they were skipped, never a made-up figure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use consent_client::pb;
use consent_client::pb::consent_service_client::ConsentServiceClient;
use consent_core::catalog_file::parse_catalog_file;
use consent_core::commands::new_event_id;
use consent_core::{
    Catalog, Channel, Decision, Evidence, NewEvent, StateEntry, SubjectState, Timestamp, decide,
};
use consent_server::config::{AuthMode, CacheMode, Config};
use consent_server::server::ServerSettings;
use consent_store::{CacheFence, Store};

mod telemetry_cost;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The seed catalogue every run loads.
const SEED_CATALOG: &str = include_str!("../../../examples/catalog/callnex.toml");
/// The tenant of `auth.mode = none`.
const TENANT: &str = "default";
/// Purposes the dataset records choices for (all consent-based in the seed catalogue).
const PURPOSES: &[&str] = &[
    "analytics",
    "call_recording",
    "ai_transcription",
    "marketing_communications",
];
/// Alternating rounds of the empty RPC and the cached Check (one window in all for each).
const ROUNDS: u32 = 3;
/// Rounds of the telemetry comparison: even, so each server goes first as often.
const TELEMETRY_ROUNDS: u32 = 4;

/// Checks per CheckBatch.
const BATCH: usize = 100;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Benchmark consentd; figures are ratios against baselines of the same run")]
struct Args {
    /// A run of a few seconds that only shows the benchmark works (CI).
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// A short run (about a minute here).
    #[arg(long)]
    quick: bool,
    /// Subjects in the generated dataset (default by mode).
    #[arg(long)]
    subjects: Option<usize>,
    /// Requests in flight in the closed-loop measurements.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests in flight in the write measurements (many callers record at once).
    #[arg(long, default_value_t = 64)]
    write_concurrency: usize,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Profile one phase: the bench writes `enable` to `--perf-control` when the phase
    /// starts and `disable` when it ends (phases: see `PHASES`, e.g. check_cached, batch,
    /// check_redis, record_pg_tenants_64).
    #[arg(long, requires = "perf_control")]
    profile_phase: Option<String>,
    /// The control FIFO of `perf record --control=fifo:PATH -D -1 -p <bench pid>`.
    #[arg(long, requires = "profile_phase")]
    perf_control: Option<PathBuf>,
    /// What the observed server of `check_observed` runs: everything `consentd` runs with an
    /// OTLP endpoint (the figure), or a part of it, to see what each part costs; `nothing`
    /// measures the method's own noise (two identical servers).
    #[arg(long, value_enum, default_value_t = telemetry_cost::Variant::All)]
    observed_with: telemetry_cost::Variant,
    /// The share of root spans the observed server exports (`all` only), in [0, 1].
    #[arg(long, default_value_t = telemetry_cost::SAMPLED, value_parser = share)]
    observed_sampling: f64,
}

/// A share in [0, 1].
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

/// The phases `--profile-phase` can name.
const PHASES: [&str; 13] = [
    "empty",
    "check_cached",
    "check_by_identity",
    "check_observed",
    "check_store",
    "record_sqlite",
    "batch",
    "check_redis",
    "check_redis_by_identity",
    "check_store_pg",
    "record_pg_tenants_1",
    "record_pg_tenants_8",
    "record_pg_tenants_64",
];

/// The phase to profile and perf's control FIFO (`--profile-phase`, `--perf-control`).
static PROFILED: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();

/// Runs `phase`, with perf recording around it when it is the profiled phase.
async fn phase<T>(name: &str, run: impl std::future::Future<Output = T>) -> T {
    let fifo = PROFILED
        .get()
        .filter(|(profiled, _)| profiled == name)
        .map(|(_, fifo)| fifo);
    let tell = |command: &str| {
        if let Some(fifo) = fifo {
            let told = std::fs::OpenOptions::new()
                .write(true)
                .open(fifo)
                .and_then(|mut f| std::io::Write::write_all(&mut f, command.as_bytes()));
            if let Err(e) = told {
                eprintln!("cannot tell perf to {}: {e}", command.trim());
            }
        }
    };
    tell("enable\n");
    let out = run.await;
    tell("disable\n");
    out
}

/// How big and how long a run is.
#[derive(Clone, Copy, Debug)]
struct Profile {
    subjects: usize,
    window: Duration,
}

/// A `consentd` serving on a loopback port until dropped.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    store: Arc<dyn Store>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the production assembly (configured store, cache, server) on `store_url`, without
/// authentication (tenant `default`).
async fn start(store_url: &str, cache: CacheMode) -> anyhow::Result<Server> {
    let mut config = Config::default();
    config.store.url = store_url.to_owned();
    config.cache.mode = cache;
    start_with(config, AuthMode::None).await
}

/// Starts the production assembly of `config` with `auth`.
async fn start_with(config: Config, auth: AuthMode) -> anyhow::Result<Server> {
    config.check()?;
    let stack = consent_server::stack::open(&config, true).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store = Arc::clone(&stack.store);
    tokio::spawn(consent_server::server::serve(
        ServerSettings::with_auth(auth),
        Arc::clone(&stack.store),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Server {
        addr,
        stop: Some(stop),
        store,
    })
}

/// A small deterministic generator (xorshift), so every run draws the same dataset.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

fn subject(i: usize) -> String {
    format!("subject-{i:08}")
}

/// Loads the seed catalogue and `subjects` subjects with one to three choices each into
/// the store directly (one transaction per 2,000 events); returns the catalogue and every
/// subject's state, for the in-memory baseline.
async fn load(
    store: &dyn Store,
    tenant: &str,
    subjects: usize,
) -> anyhow::Result<(Arc<Catalog>, HashMap<String, SubjectState>)> {
    let catalog = load_catalog(store, tenant).await?;
    let now = Timestamp::now().as_micros();
    let day = 86_400 * Timestamp::MICROS_PER_SECOND;
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let mut events = Vec::new();
    for i in 0..subjects {
        for (k, purpose) in PURPOSES.iter().enumerate().take(1 + draw.below(3)) {
            let decision = match draw.below(10) {
                0..=5 => Decision::Granted,
                6..=7 => Decision::Denied,
                _ => Decision::Withdrawn,
            };
            let age_days = i64::try_from(draw.below(150) + k).unwrap_or(0);
            events.push(NewEvent {
                id: new_event_id(),
                subject_id: subject(i),
                purpose_id: (*purpose).to_owned(),
                vendor_id: String::new(),
                decision,
                policy_version_id: "2025-05".into(),
                channel: Channel::Web,
                collected_at: Timestamp(now - age_days * day),
                expires_at: None,
                evidence: Evidence::default(),
                actor_key_id: String::new(),
            });
        }
    }
    let mut states: HashMap<String, SubjectState> = HashMap::new();
    let mut revision = 0;
    for chunk in events.chunks(2_000) {
        let outcome = store.append(tenant, chunk, None, CacheFence::None).await?;
        for e in &outcome.events {
            let state = states.entry(e.event.subject_id.clone()).or_default();
            state.entries.push(StateEntry::from_event(e));
        }
        revision = outcome.revision;
    }
    for state in states.values_mut() {
        state.revision = revision;
    }
    Ok((catalog, states))
}

/// Stores the seed catalogue for `tenant` and returns it.
async fn load_catalog(store: &dyn Store, tenant: &str) -> anyhow::Result<Arc<Catalog>> {
    let file = parse_catalog_file(SEED_CATALOG)?;
    for v in &file.vendors {
        store.upsert_vendor(tenant, v).await?;
    }
    for p in &file.purposes {
        store.upsert_purpose(tenant, p).await?;
    }
    for p in &file.policy_versions {
        store.publish_policy_version(tenant, p).await?;
    }
    Ok(store
        .catalog(tenant, consent_store::Consistency::Full)
        .await?)
}

/// What a measurement saw.
#[derive(Debug, Default)]
struct Sample {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Sample {
    /// Adds another measurement of the same thing to this one.
    fn absorb(&mut self, other: Sample) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
    }

    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&mut self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)]
    }
}

/// Runs `op` from `concurrency` workers for `window`, each worker on connection
/// `worker % connections`; every request is timed.
async fn closed_loop<F, Fut>(
    channels: &[GrpcChannel],
    concurrency: usize,
    window: Duration,
    op: F,
) -> Sample
where
    F: Fn(GrpcChannel, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let started = Instant::now();
    let deadline = started + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let op = op.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let mut i = (w as u64) << 32;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op(channel.clone(), i).await {
                        Ok(()) => {
                            sample.ops += 1;
                            sample
                                .latencies_us
                                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                        }
                        Err(_) => sample.errors += 1,
                    }
                    i += 1;
                }
                sample
            })
        })
        .collect();
    let mut total = Sample::default();
    for worker in workers {
        if let Ok(s) = worker.await {
            total.ops += s.ops;
            total.errors += s.errors;
            total.latencies_us.extend(s.latencies_us);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Sends `op` at a fixed `rate` for `window` whatever the answers' pace (open loop), and
/// times each request from when it was due, so a stall counts for every request it delays.
async fn open_loop<F, Fut>(channels: &[GrpcChannel], rate: f64, window: Duration, op: F) -> Sample
where
    F: Fn(GrpcChannel, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let count = (rate * window.as_secs_f64()).max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = tokio::time::Instant::now();
    let mut requests = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..count {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let channel = channels[usize::try_from(i).unwrap_or(0) % channels.len()].clone();
        let op = op.clone();
        requests.push(tokio::spawn(async move {
            let outcome = op(channel, i).await;
            (outcome.is_ok(), due.elapsed())
        }));
    }
    let mut sample = Sample::default();
    for request in requests {
        match request.await {
            Ok((true, latency)) => {
                sample.ops += 1;
                sample
                    .latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            _ => sample.errors += 1,
        }
    }
    sample.elapsed = started.elapsed();
    sample
}

/// The empty RPC: `grpc.health.v1.Health/Check` (every baseline).
async fn health(channel: GrpcChannel, _i: u64) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// A random check of the dataset, drawn from `i`.
fn check_of(subjects: usize, i: u64) -> pb::CheckRequest {
    drawn_check(subjects, i).1
}

/// The `i`-th check's subject index and request (a subject among `subjects`, a purpose).
fn drawn_check(subjects: usize, i: u64) -> (usize, pb::CheckRequest) {
    let mut draw = Draw(i.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let index = draw.below(subjects);
    let request = pb::CheckRequest {
        subject_id: subject(index),
        purpose_id: PURPOSES[draw.below(PURPOSES.len())].to_owned(),
        ..Default::default()
    };
    (index, request)
}

/// The report: flat figures, and ratios with their targets.
#[derive(Debug, Default)]
struct Report {
    figures: Vec<(String, f64)>,
    ratios: Vec<(String, f64, f64, bool)>,
    notes: Vec<String>,
}

impl Report {
    fn figure(&mut self, name: &str, value: f64) {
        self.figures.push((name.to_owned(), value));
    }

    fn has(&self, name: &str) -> bool {
        self.figures.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> f64 {
        self.figures
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    }

    /// `numerator / denominator`, which must be at least `target` (or at most, when
    /// `at_most`).
    fn ratio(
        &mut self,
        name: &str,
        numerator: &str,
        denominator: &str,
        target: f64,
        at_most: bool,
    ) {
        let value = self.value(numerator) / self.value(denominator).max(1e-9);
        let met = if at_most {
            value <= target
        } else {
            value >= target
        };
        self.ratios.push((name.to_owned(), value, target, met));
    }

    fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, value) in &self.figures {
            out.insert(name.clone(), serde_json::json!(value));
        }
        let ratios: serde_json::Map<String, serde_json::Value> = self
            .ratios
            .iter()
            .map(|(name, value, target, met)| {
                (
                    name.clone(),
                    serde_json::json!({"value": value, "target": target, "met": met}),
                )
            })
            .collect();
        out.insert("ratios".into(), serde_json::Value::Object(ratios));
        out.insert("notes".into(), serde_json::json!(self.notes));
        serde_json::Value::Object(out)
    }

    fn print(&self) {
        println!("{:<34} {:>14}", "figure", "value");
        for (name, value) in &self.figures {
            println!("{name:<34} {value:>14.1}");
        }
        println!();
        println!("{:<34} {:>8} {:>8}  met", "ratio", "value", "target");
        for (name, value, target, met) in &self.ratios {
            println!("{name:<34} {value:>8.2} {target:>8.2}  {met}");
        }
        for note in &self.notes {
            println!("note: {note}");
        }
    }
}

/// `op` on a plain server and an observed one in [`TELEMETRY_ROUNDS`] closed-loop rounds
/// sharing `window`, the observed ones as phase `observed_phase`. Each server goes first in
/// half of the rounds: the second of a pair ran measurably slower (two identical servers
/// gave 0.95 when the plain one always went first).
async fn alternating_rounds<F, Fut>(
    plain: &[GrpcChannel],
    observed: &[GrpcChannel],
    observed_phase: &str,
    concurrency: usize,
    window: Duration,
    op: F,
) -> (Sample, Sample)
where
    F: Fn(GrpcChannel, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let round = window / TELEMETRY_ROUNDS;
    let (mut plain_sample, mut observed_sample) = (Sample::default(), Sample::default());
    for r in 0..TELEMETRY_ROUNDS {
        let plain_round = closed_loop(plain, concurrency, round, op.clone());
        let observed_round = phase(
            observed_phase,
            closed_loop(observed, concurrency, round, op.clone()),
        );
        if r % 2 == 0 {
            plain_sample.absorb(plain_round.await);
            observed_sample.absorb(observed_round.await);
        } else {
            observed_sample.absorb(observed_round.await);
            plain_sample.absorb(plain_round.await);
        }
    }
    (plain_sample, observed_sample)
}

/// Checks every subject once (CheckBatch of [`BATCH`] subjects, `concurrency` in flight), so
/// the cache holds the whole dataset (up to its limit) before anything is measured.
async fn warm_every_subject(
    channels: &[GrpcChannel],
    subjects: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let batches = (0..subjects).step_by(BATCH).enumerate().map(|(n, first)| {
        let channel = channels[n % channels.len()].clone();
        let checks = (first..(first + BATCH).min(subjects))
            .map(|i| pb::CheckRequest {
                subject_id: subject(i),
                purpose_id: PURPOSES[i % PURPOSES.len()].to_owned(),
                ..Default::default()
            })
            .collect();
        async move {
            ConsentServiceClient::new(channel)
                .check_batch(pb::CheckBatchRequest {
                    checks,
                    consistency: None,
                })
                .await
        }
    });
    let mut answers = futures::stream::iter(batches).buffer_unordered(concurrency.max(1));
    while let Some(answer) = answers.next().await {
        answer.context("warming the cache")?;
    }
    Ok(())
}

/// Subjects given a linked phone number for the identity phase (the first ones).
const LINKED_SUBJECTS: usize = 5_000;

/// The phone number linked to subject `i` (`+32 4` and eight digits), written as a dialer
/// writes it.
fn phone(i: usize) -> String {
    format!("+32 4{i:08}")
}

/// Links a phone number to each of the first `n` subjects (LinkIdentity, `concurrency` in
/// flight).
async fn link_phones(channels: &[GrpcChannel], n: usize, concurrency: usize) -> anyhow::Result<()> {
    use consent_client::pb::identity_service_client::IdentityServiceClient;
    use futures::StreamExt;
    let links = (0..n).map(|i| {
        let channel = channels[i % channels.len()].clone();
        async move {
            IdentityServiceClient::new(channel)
                .link_identity(pb::LinkIdentityRequest {
                    subject_id: subject(i),
                    identity: Some(pb::Identity {
                        r#type: pb::IdentityType::Phone.into(),
                        value: phone(i),
                    }),
                    ..Default::default()
                })
                .await
        }
    });
    let mut answers = futures::stream::iter(links).buffer_unordered(concurrency.max(1));
    while let Some(answer) = answers.next().await {
        answer.context("linking phone numbers")?;
    }
    Ok(())
}

/// This process's resident memory in MiB (Linux `/proc/self/status`); `None` elsewhere.
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

async fn connect(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<GrpcChannel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        channels.push(
            Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(channels)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args();
    if argv.nth(1).as_deref() == Some(telemetry_cost::AS_CONSENTD) {
        telemetry_cost::run_as_consentd(argv.collect()).await?;
        return Ok(());
    }
    let args = Args::parse();
    if let (Some(name), Some(fifo)) = (&args.profile_phase, &args.perf_control) {
        anyhow::ensure!(
            PHASES.contains(&name.as_str()),
            "--profile-phase {name} is not a phase; one of: {}",
            PHASES.join(", ")
        );
        let _ = PROFILED.set((name.clone(), fifo.clone()));
    }
    let profile = match (args.smoke, args.quick) {
        (true, _) => Profile {
            subjects: 500,
            window: Duration::from_millis(300),
        },
        (false, true) => Profile {
            subjects: 20_000,
            window: Duration::from_secs(3),
        },
        (false, false) => Profile {
            subjects: 100_000,
            window: Duration::from_secs(10),
        },
    };
    let subjects = args.subjects.unwrap_or(profile.subjects);
    let window = profile.window;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let cached = start(&url, CacheMode::Memory).await?;
    let started = Instant::now();
    let (catalog, states) = load(cached.store.as_ref(), TENANT, subjects)
        .await
        .context("loading the dataset")?;
    eprintln!(
        "loaded {subjects} subjects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let uncached = start(&url, CacheMode::None).await?;
    let channels = connect(cached.addr, args.connections).await?;
    let store_channels = connect(uncached.addr, args.connections).await?;
    let c = args.concurrency;
    let mut report = Report::default();

    let check = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_of(subjects, i))
            .await
            .map(|_| ())
    };
    let batch = move |channel: GrpcChannel, i: u64| async move {
        let checks = (0..BATCH as u64)
            .map(|k| check_of(subjects, i * 1_000 + k))
            .collect();
        ConsentServiceClient::new(channel)
            .check_batch(pb::CheckBatchRequest {
                checks,
                consistency: None,
            })
            .await
            .map(|_| ())
    };
    let state = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .get_subject_state(pb::GetSubjectStateRequest {
                subject_id: check_of(subjects, i).subject_id,
                ..Default::default()
            })
            .await
            .map(|_| ())
    };
    let write = |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .record_consent(record_of(i))
            .await
            .map(|_| ())
    };

    // Warm the in-process cache, then measure. Resident memory before and after the warm-up
    // shows what the cached states cost (the bench's own copy of the dataset is in both).
    let rss_loaded = resident_mib();
    warm_every_subject(&channels, subjects, c).await?;
    closed_loop(&channels, c, window, check).await;
    if let (Some(loaded), Some(warm)) = (rss_loaded, resident_mib()) {
        report.figure("rss_loaded_mib", loaded);
        report.figure("rss_warm_mib", warm);
    }
    let mut errors = 0;
    // The empty RPC and the cached Check, the ratio that matters most, in alternating rounds:
    // a drift of the machine's speed during the run then weighs on both alike.
    let (mut empty, mut cached_checks) = (Sample::default(), Sample::default());
    for _ in 0..ROUNDS {
        let round = window / ROUNDS;
        empty.absorb(phase("empty", closed_loop(&channels, c, round, health)).await);
        cached_checks.absorb(phase("check_cached", closed_loop(&channels, c, round, check)).await);
    }
    for (name, sample) in [
        ("empty", empty),
        ("check_cached", cached_checks),
        (
            "check_store",
            phase(
                "check_store",
                closed_loop(&store_channels, c, window, check),
            )
            .await,
        ),
        (
            "record_sqlite",
            phase("record_sqlite", closed_loop(&channels, c, window, write)).await,
        ),
    ] {
        report.figure(&format!("{name}_rps"), sample.per_second());
        errors += sample.errors;
    }
    let batches = phase("batch", closed_loop(&channels, c, window, batch)).await;
    errors += batches.errors;
    report.figure("batch_decisions_per_s", batches.per_second() * BATCH as f64);

    // A Check by a linked phone number against the same Check by subject id, in alternating
    // rounds over the same subjects: what resolving the identity costs.
    let linked = subjects.min(LINKED_SUBJECTS);
    link_phones(&channels, linked, c).await?;
    let check_linked = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_of(linked, i))
            .await
            .map(|_| ())
    };
    let check_by_phone = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_by_phone_of(linked, i))
            .await
            .map(|_| ())
    };
    let (mut by_subject, mut by_identity) = (Sample::default(), Sample::default());
    for _ in 0..ROUNDS {
        let round = window / ROUNDS;
        by_subject.absorb(closed_loop(&channels, c, round, check_linked).await);
        by_identity.absorb(
            phase(
                "check_by_identity",
                closed_loop(&channels, c, round, check_by_phone),
            )
            .await,
        );
    }
    errors += by_subject.errors + by_identity.errors;
    report.figure("check_by_subject_rps", by_subject.per_second());
    report.figure("check_by_identity_rps", by_identity.per_second());

    // The same kind of decisions in this process over a HashMap of the same data.
    let keys: Vec<&String> = states.keys().collect();
    let purposes: Vec<_> = PURPOSES
        .iter()
        .filter_map(|p| catalog.purposes.get(*p))
        .collect();
    let now = Timestamp::now();
    let baseline_started = Instant::now();
    let mut decisions = 0u64;
    let mut allowed = 0u64;
    let mut draw = Draw(7);
    while baseline_started.elapsed() < window {
        for _ in 0..1_000 {
            let subject = keys[draw.below(keys.len())];
            let purpose = purposes[draw.below(purposes.len())];
            if let Some(state) = states.get(subject) {
                allowed += u64::from(decide(purpose, "", state, &catalog, now).allowed);
                decisions += 1;
            }
        }
    }
    report.figure(
        "hashmap_decisions_per_s",
        decisions as f64 / baseline_started.elapsed().as_secs_f64(),
    );

    // Latency at concurrency 1, every RPC against the same empty baseline.
    for (name, sample) in [
        ("empty", closed_loop(&channels, 1, window, health).await),
        ("check", closed_loop(&channels, 1, window, check).await),
        (
            "get_subject_state",
            closed_loop(&channels, 1, window, state).await,
        ),
        (
            "check_batch",
            closed_loop(&channels, 1, window, batch).await,
        ),
        (
            "record_consent",
            closed_loop(&channels, 1, window, write).await,
        ),
    ] {
        let mut sample = sample;
        errors += sample.errors;
        report.figure(
            &format!("{name}_c1_p50_us"),
            sample.percentile_us(0.5) as f64,
        );
        report.figure(
            &format!("{name}_c1_p99_us"),
            sample.percentile_us(0.99) as f64,
        );
    }
    // Latency at half the measured maximum load, open loop.
    for (name, rps, sample) in [
        (
            "empty",
            report.value("empty_rps"),
            open_loop(&channels, report.value("empty_rps") / 2.0, window, health).await,
        ),
        (
            "check_cached",
            report.value("check_cached_rps"),
            open_loop(
                &channels,
                report.value("check_cached_rps") / 2.0,
                window,
                check,
            )
            .await,
        ),
    ] {
        let mut sample = sample;
        errors += sample.errors;
        report.figure(&format!("{name}_p99_us"), sample.percentile_us(0.99) as f64);
        report.figure(&format!("{name}_half_load_rps"), rps / 2.0);
    }

    // What production telemetry costs the cached Check: the same server with and without
    // it, each on a runtime of its own, in alternating rounds.
    let telemetry = telemetry_cost::production(args.observed_with, args.observed_sampling).await?;
    let plain = telemetry_cost::start(&url, None).await?;
    let observed = telemetry_cost::start(&url, Some(&telemetry)).await?;
    let plain_channels = connect(plain.addr, args.connections).await?;
    let observed_channels = connect(observed.addr, args.connections).await?;
    warm_every_subject(&plain_channels, subjects, c).await?;
    warm_every_subject(&observed_channels, subjects, c).await?;
    let (unobserved, traced) = alternating_rounds(
        &plain_channels,
        &observed_channels,
        "check_observed",
        c,
        window,
        check,
    )
    .await;
    errors += unobserved.errors + traced.errors;
    report.figure("check_unobserved_rps", unobserved.per_second());
    report.figure("check_observed_rps", traced.per_second());
    drop((plain, observed));
    report.figure("spans_exported", telemetry.finish().await as f64);

    // The same comparison between two `consentd` processes (this binary, `as-consentd`):
    // each with its one global subscriber, as in production; both log and measure, one
    // exports spans.
    let (endpoint, process_spans, process_receiver) = telemetry_cost::receiver().await?;
    let (plain_process_child, plain_addr) =
        telemetry_cost::spawn_consentd(&url, dir.path(), None).await?;
    // `--observed-with nothing`: two plain processes, the method's own noise.
    let exports = (args.observed_with != telemetry_cost::Variant::Nothing)
        .then_some((endpoint.as_str(), args.observed_sampling));
    let (exporting_process_child, exporting_addr) =
        telemetry_cost::spawn_consentd(&url, dir.path(), exports).await?;
    let plain_channels = connect(plain_addr, args.connections).await?;
    let exporting_channels = connect(exporting_addr, args.connections).await?;
    warm_every_subject(&plain_channels, subjects, c).await?;
    warm_every_subject(&exporting_channels, subjects, c).await?;
    let (plain_process, exporting_process) = alternating_rounds(
        &plain_channels,
        &exporting_channels,
        "check_consentd_exporting",
        c,
        window,
        check,
    )
    .await;
    errors += plain_process.errors + exporting_process.errors;
    report.figure("check_consentd_rps", plain_process.per_second());
    report.figure(
        "check_consentd_exporting_rps",
        exporting_process.per_second(),
    );
    telemetry_cost::stop_consentd(plain_process_child).await?;
    telemetry_cost::stop_consentd(exporting_process_child).await?;
    process_receiver.abort();
    report.figure(
        "spans_exported_by_consentd",
        process_spans.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );

    match std::env::var(REDIS_VAR).ok().filter(|u| !u.is_empty()) {
        Some(redis_url) => {
            errors += redis_figures(&url, &redis_url, subjects, window, &args, &mut report)
                .await
                .context("Redis figures")?;
        }
        None => report.notes.push(format!(
            "{REDIS_VAR} is not set: the Redis figures (check_redis_rps) were skipped"
        )),
    }
    match std::env::var(DATABASE_VAR).ok().filter(|u| !u.is_empty()) {
        Some(admin_url) => {
            let redis_url = std::env::var(REDIS_VAR).ok().filter(|u| !u.is_empty());
            errors += postgres_figures(
                &admin_url,
                redis_url.as_deref(),
                subjects,
                window,
                &args,
                &mut report,
            )
            .await
            .context("PostgreSQL figures")?;
        }
        None => report.notes.push(format!(
            "{DATABASE_VAR} is not set: the PostgreSQL figures (check_store_pg_rps, record_rps_pg, insert_commit_rps_pg) were skipped"
        )),
    }

    report.figure("errors", errors as f64);
    report.figure("subjects", subjects as f64);

    report.ratio(
        "check_cached_vs_empty_rps",
        "check_cached_rps",
        "empty_rps",
        0.90,
        false,
    );
    report.ratio(
        "check_cached_vs_empty_p99_half_load",
        "check_cached_p99_us",
        "empty_p99_us",
        1.2,
        true,
    );
    report.ratio(
        "check_by_identity_vs_subject_rps",
        "check_by_identity_rps",
        "check_by_subject_rps",
        0.90,
        false,
    );
    if report.has("check_redis_rps") {
        report.ratio(
            "check_redis_vs_empty_rps",
            "check_redis_rps",
            "empty_beside_redis_rps",
            0.60,
            false,
        );
        report.ratio(
            "check_redis_by_identity_vs_subject_rps",
            "check_redis_by_identity_rps",
            "check_redis_by_subject_rps",
            0.90,
            false,
        );
    }
    if report.has("record_rps_pg") {
        report.ratio(
            "record_pg_vs_insert_commit",
            "record_rps_pg",
            "insert_commit_rps_pg",
            10.0,
            false,
        );
        report.ratio(
            "record_pg_one_tenant_vs_insert_commit",
            "record_rps_pg_one_tenant",
            "insert_commit_rps_pg",
            10.0,
            false,
        );
    }
    report.ratio(
        "check_observed_vs_unobserved_rps",
        "check_observed_rps",
        "check_unobserved_rps",
        0.95,
        false,
    );
    report.ratio(
        "check_consentd_exporting_vs_plain_rps",
        "check_consentd_exporting_rps",
        "check_consentd_rps",
        0.95,
        false,
    );
    report.notes.push(match args.observed_with {
        telemetry_cost::Variant::All if args.observed_sampling == telemetry_cost::SAMPLED => format!(
            "check_observed: logs, metrics and spans as consentd runs them with an OTLP endpoint, sampling {} % of root spans (the Helm chart's default)",
            telemetry_cost::SAMPLED * 100.0
        ),
        telemetry_cost::Variant::All => format!(
            "check_observed: sampling {} % of root spans (--observed-sampling), not the chart's default: not the figure",
            args.observed_sampling * 100.0
        ),
        variant => format!(
            "check_observed: only a part of the telemetry (--observed-with {variant:?}), not the figure"
        ),
    });
    report.ratio(
        "batch_vs_hashmap_decisions",
        "batch_decisions_per_s",
        "hashmap_decisions_per_s",
        0.30,
        false,
    );
    for rpc in [
        "check",
        "get_subject_state",
        "check_batch",
        "record_consent",
    ] {
        report.ratio(
            &format!("{rpc}_c1_p50_vs_empty"),
            &format!("{rpc}_c1_p50_us"),
            "empty_c1_p50_us",
            2.0,
            true,
        );
    }
    report.notes.push(format!(
        "{allowed} of {decisions} baseline decisions allowed (the dataset is a mix of grants, refusals and withdrawals)"
    ));
    if errors > 0 {
        report
            .notes
            .push(format!("{errors} requests failed during the run"));
    }
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(uncached);
    drop(cached);
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// Where PostgreSQL figures are measured (a scratch database beside this one).
const DATABASE_VAR: &str = "CONSENT_BENCH_DATABASE_URL";
/// Where Redis figures are measured.
const REDIS_VAR: &str = "CONSENT_BENCH_REDIS_URL";
/// Tenants the multi-tenant write figures spread over (1, 8 and this many).
const WRITE_TENANTS: usize = 64;

/// A grant for a fresh subject, drawn from `i`.
fn record_of(i: u64) -> pb::RecordConsentRequest {
    pb::RecordConsentRequest {
        subject_id: format!("written-{i}"),
        decisions: vec![pb::PurposeDecision {
            purpose_id: "call_recording".into(),
            vendor_id: String::new(),
            decision: pb::Decision::Granted.into(),
        }],
        channel: pb::Channel::Voice.into(),
        ..Default::default()
    }
}

/// `message` with `authorization: Bearer token`.
fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, tonic::Status> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::internal("the bench's token is not a header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Deletes the service's cache keys (`consent:v1:*`) from the Redis at `url`: entries of
/// earlier runs (other ledgers, other namespaces, never read by this one) would otherwise
/// fill the Redis run after run and make its memory differ between runs.
async fn clear_cache_keys(url: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut keys: Vec<String> = Vec::new();
    {
        let mut scan =
            redis::AsyncCommands::scan_match::<_, String>(&mut connection, "consent:v1:*").await?;
        while let Some(key) = futures::StreamExt::next(&mut scan).await {
            keys.push(key?);
        }
    }
    for chunk in keys.chunks(1_000) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(keys.len())
}

/// `check_redis_rps`: Checks with the Redis cache and no in-process cache, on the SQLite
/// ledger of the main run. Returns the failed requests.
/// The same subject and purpose as `check_of(linked, i)`, named by the phone number
/// `link_phones` linked to it.
fn check_by_phone_of(linked: usize, i: u64) -> pb::CheckRequest {
    let (subject_index, mut request) = drawn_check(linked, i);
    request.subject_id = String::new();
    request.identity = Some(pb::Identity {
        r#type: pb::IdentityType::Phone.into(),
        value: phone(subject_index),
    });
    request
}

async fn redis_figures(
    sqlite_url: &str,
    redis_url: &str,
    subjects: usize,
    window: Duration,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<u64> {
    let cleared = clear_cache_keys(redis_url).await?;
    let mut config = Config::default();
    config.store.url = sqlite_url.to_owned();
    config.cache.mode = CacheMode::Redis;
    config.cache.redis_url = redis_url.to_owned();
    let server = start_with(config, AuthMode::None).await?;
    let channels = connect(server.addr, args.connections).await?;
    let check = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_of(subjects, i))
            .await
            .map(|_| ())
    };
    // Warm Redis, then measure in alternating rounds with the empty RPC on the same server
    // (the baseline of the Redis ratio, measured beside it).
    closed_loop(&channels, args.concurrency, window, check).await;
    let (mut empty, mut checks) = (Sample::default(), Sample::default());
    for _ in 0..ROUNDS {
        let round = window / ROUNDS;
        empty.absorb(closed_loop(&channels, args.concurrency, round, health).await);
        checks.absorb(
            phase(
                "check_redis",
                closed_loop(&channels, args.concurrency, round, check),
            )
            .await,
        );
    }
    report.figure("check_redis_rps", checks.per_second());
    report.figure("empty_beside_redis_rps", empty.per_second());
    // By phone number against by subject id over the subjects given one (as for
    // check_by_identity_rps): with Redis, the resolution is one more cached entry.
    let linked = subjects.min(LINKED_SUBJECTS);
    let by_subject = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_of(linked, i))
            .await
            .map(|_| ())
    };
    let by_phone = move |channel: GrpcChannel, i: u64| async move {
        ConsentServiceClient::new(channel)
            .check(check_by_phone_of(linked, i))
            .await
            .map(|_| ())
    };
    closed_loop(&channels, args.concurrency, window / ROUNDS, by_phone).await;
    let (mut subject_checks, mut phone_checks) = (Sample::default(), Sample::default());
    for _ in 0..ROUNDS {
        let round = window / ROUNDS;
        subject_checks.absorb(closed_loop(&channels, args.concurrency, round, by_subject).await);
        phone_checks.absorb(
            phase(
                "check_redis_by_identity",
                closed_loop(&channels, args.concurrency, round, by_phone),
            )
            .await,
        );
    }
    report.figure("check_redis_by_subject_rps", subject_checks.per_second());
    report.figure("check_redis_by_identity_rps", phone_checks.per_second());
    report.notes.push(format!(
        "Redis: {cleared} stale cache keys deleted before the run; check_redis_rps after one warm-up window, in rounds alternating with the empty RPC (empty_beside_redis_rps)"
    ));
    Ok(checks.errors + empty.errors + subject_checks.errors + phone_checks.errors)
}

/// One connection inserting one row per transaction: the cost of a durable commit on this
/// database, the baseline of the write figures.
async fn insert_commit_rps(url: &str, window: Duration) -> anyhow::Result<f64> {
    use sqlx::{Connection, Executor};
    let mut connection = sqlx::PgConnection::connect(url).await?;
    connection
        .execute(
            "CREATE TABLE bench_commits (id BIGSERIAL PRIMARY KEY, \
             at TIMESTAMPTZ NOT NULL DEFAULT now(), payload TEXT NOT NULL)",
        )
        .await?;
    let started = Instant::now();
    let mut commits = 0u64;
    while started.elapsed() < window {
        sqlx::query("INSERT INTO bench_commits (payload) VALUES ($1)")
            .bind("call-recording granted")
            .execute(&mut connection)
            .await?;
        commits += 1;
    }
    let rate = commits as f64 / started.elapsed().as_secs_f64();
    connection.close().await?;
    Ok(rate)
}

/// The PostgreSQL figures, on a scratch database dropped afterwards. Returns the failed
/// requests.
async fn postgres_figures(
    admin_url: &str,
    redis_url: Option<&str>,
    subjects: usize,
    window: Duration,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<u64> {
    let (url, name) = consent_store_sql::testing::create_scratch_database(admin_url).await?;
    let measured = postgres_run(&url, redis_url, subjects, window, args, report).await;
    consent_store_sql::testing::drop_scratch_database(admin_url, &name).await?;
    measured
}

async fn postgres_run(
    url: &str,
    redis_url: Option<&str>,
    subjects: usize,
    window: Duration,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<u64> {
    report.figure(
        "insert_commit_rps_pg",
        insert_commit_rps(url, window).await?,
    );
    let mut config = Config::default();
    config.store.url = url.to_owned();
    config.cache.mode = CacheMode::None;
    let server = start_with(config, AuthMode::ApiKey).await?;
    let mut tokens = Vec::with_capacity(WRITE_TENANTS);
    for t in 0..WRITE_TENANTS {
        let tenant_id = format!("bench-{t:02}");
        server
            .store
            .create_tenant(&consent_core::access::new_tenant(
                &tenant_id,
                "",
                Timestamp::now(),
            )?)
            .await?;
        let (key, token) = consent_server::ledger::new_api_key(
            &tenant_id,
            "bench",
            vec![
                consent_core::access::Scope::ConsentRead,
                consent_core::access::Scope::ConsentWrite,
            ],
            None,
        )?;
        server.store.create_api_key(&key).await?;
        load_catalog(server.store.as_ref(), &tenant_id).await?;
        tokens.push(token);
    }
    let started = Instant::now();
    load(server.store.as_ref(), "bench-00", subjects).await?;
    eprintln!(
        "PostgreSQL: loaded {subjects} subjects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let channels = connect(server.addr, args.connections).await?;
    let tokens = Arc::new(tokens);
    let first = tokens[0].clone();
    let check = move |channel: GrpcChannel, i: u64| {
        let token = first.clone();
        async move {
            ConsentServiceClient::new(channel)
                .check(authorized(check_of(subjects, i), &token)?)
                .await
                .map(|_| ())
        }
    };
    let mut errors = 0;
    let sample = phase(
        "check_store_pg",
        closed_loop(&channels, args.concurrency, window, check),
    )
    .await;
    errors += sample.errors;
    report.figure("check_store_pg_rps", sample.per_second());

    // Worker w writes to tenant w % tenants (closed_loop numbers worker w's calls w << 32).
    let write_to = |tenants: usize| {
        let tokens = Arc::clone(&tokens);
        move |channel: GrpcChannel, i: u64| {
            let worker = usize::try_from(i >> 32).unwrap_or(0);
            let token = tokens[worker % tenants].clone();
            async move {
                ConsentServiceClient::new(channel)
                    .record_consent(authorized(record_of(i), &token)?)
                    .await
                    .map(|_| ())
            }
        }
    };
    for tenants in [1, 8, WRITE_TENANTS] {
        let sample = phase(
            &format!("record_pg_tenants_{tenants}"),
            closed_loop(&channels, args.write_concurrency, window, write_to(tenants)),
        )
        .await;
        errors += sample.errors;
        report.figure(
            &format!("record_rps_pg_tenants_{tenants}"),
            sample.per_second(),
        );
    }
    report.figure(
        "record_rps_pg",
        report.value(&format!("record_rps_pg_tenants_{WRITE_TENANTS}")),
    );
    report.figure(
        "record_rps_pg_one_tenant",
        report.value("record_rps_pg_tenants_1"),
    );
    let mut latency = closed_loop(&channels, 1, window, write_to(1)).await;
    errors += latency.errors;
    report.figure(
        "record_consent_pg_c1_p50_us",
        latency.percentile_us(0.5) as f64,
    );
    report.notes.push(format!(
        "PostgreSQL: cache off; RecordConsent at concurrency {} over 1, 8 and {WRITE_TENANTS} tenants; insert_commit_rps_pg is one connection inserting one row per transaction",
        args.write_concurrency
    ));
    // The same writes on a server with the Redis cache: pending markers and tombstones in
    // Redis, and the namespace check in each write transaction.
    if let Some(redis_url) = redis_url {
        let mut config = Config::default();
        config.store.url = url.to_owned();
        config.cache.mode = CacheMode::Redis;
        config.cache.redis_url = redis_url.to_owned();
        let cached = start_with(config, AuthMode::ApiKey).await?;
        let channels = connect(cached.addr, args.connections).await?;
        for tenants in [1, WRITE_TENANTS] {
            let sample =
                closed_loop(&channels, args.write_concurrency, window, write_to(tenants)).await;
            errors += sample.errors;
            report.figure(
                &format!("record_rps_pg_redis_tenants_{tenants}"),
                sample.per_second(),
            );
        }
    }
    Ok(errors)
}
