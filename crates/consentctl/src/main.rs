//! `consentctl`: the operator CLI of `consentd`, over gRPC (never the store directly): the
//! catalogue, consent, subjects (state, export, erasure), snapshots, the change feed, the
//! ledger's verification, API keys and retention's due items. Tables for people,
//! `--output json` (the canonical protobuf JSON of each answer, one document per line) for
//! scripts. Exit codes are in [`EXIT_CODES`].

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use consent_client::{Check, ClientTls, ConsentClient, Error, Record, RetryPolicy, Withdraw, pb};
use futures::StreamExt;

use crate::output::{Out, Output};

/// What `consentctl` exits with.
const EXIT_CODES: &str = "\
Exit codes:
  0  done (for `consent check`: allowed)
  1  a negative answer: `consent check` not allowed, `verify` found the chain broken
  2  usage or configuration error (nothing was sent)
  3  the service refused the request (invalid, not found, not permitted, precondition...)
  4  the service is unavailable or did not answer in time: retry later
  5  any other failure (an internal error, an unreadable answer, a local file)";

/// Operate a consentd over gRPC.
#[derive(Debug, Parser)]
#[command(name = "consentctl", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The service's URL.
    #[arg(
        long,
        env = "CONSENT_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    url: String,
    /// The API key (`ck_...`), when the service runs with `auth.mode = "api_key"`.
    #[arg(long, env = "CONSENT_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// The CA certificate (PEM) that signed the service's certificate; needs an https URL.
    #[arg(long, env = "CONSENT_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// The name the service's certificate must carry (default: the URL's host).
    #[arg(long, env = "CONSENT_TLS_DOMAIN", global = true)]
    tls_domain: Option<String>,
    /// The deadline of each call, in seconds (streams are not bounded by it).
    #[arg(
        long,
        env = "CONSENT_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    timeout_secs: u64,
    /// Tables for people, or JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Purposes of the catalogue.
    #[command(subcommand)]
    Purposes(PurposesCommand),
    /// The catalogue as a whole.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Record, withdraw, check consent; a subject's history.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// One subject: state, export, erasure.
    #[command(subcommand)]
    Subject(SubjectCommand),
    /// Every subject's decisions at one revision (ExportSnapshot).
    Snapshot(SnapshotArgs),
    /// The change feed from a revision (Ctrl-C to stop, or --until-revision).
    Watch(WatchArgs),
    /// Recompute the tenant's hash chain.
    Verify,
    /// API keys of the tenant.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Data items of the retention schedule.
    #[command(subcommand)]
    Items(ItemsCommand),
    /// Identities (cookie, device, phone, email, account, external ids) linked to subjects.
    #[command(subcommand)]
    Identity(IdentityCommand),
}

/// An identity on the command line: `TYPE:VALUE`, e.g. `phone:+32 470 12 34 56`,
/// `cookie:ck_5f2a9c` (types: account, cookie, device, phone, email, external).
fn identity_arg(text: &str) -> Result<pb::Identity, String> {
    let (kind, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not TYPE:VALUE (e.g. phone:+32470123456)"))?;
    let kind = match kind {
        "account" => pb::IdentityType::Account,
        "cookie" => pb::IdentityType::Cookie,
        "device" => pb::IdentityType::Device,
        "phone" => pb::IdentityType::Phone,
        "email" => pb::IdentityType::Email,
        "external" => pb::IdentityType::External,
        other => {
            return Err(format!(
                "`{other}` is not an identity type: account, cookie, device, phone, email or external"
            ));
        }
    };
    Ok(pb::Identity {
        r#type: kind.into(),
        value: value.to_owned(),
    })
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Links an identity to a subject (a ledger record; a retry changes nothing).
    Link {
        /// The subject.
        subject: String,
        /// The identity, TYPE:VALUE (e.g. phone:+32470123456, cookie:ck_5f2a9c).
        #[arg(value_parser = identity_arg)]
        identity: pb::Identity,
        /// The call that proved the identity is the person's (evidence).
        #[arg(long)]
        call_id: Option<String>,
        /// If the identity is linked to another subject, merge that subject into this one
        /// (the same person: the later choice wins, no withdrawal is lost; the other
        /// subject is closed).
        #[arg(long)]
        merge: bool,
        /// If the identity is not linked yet, carry the choices it recorded on its own over
        /// to this subject.
        #[arg(long)]
        carry_choices: bool,
    },
    /// Unlinks an identity from a subject.
    Unlink {
        /// The subject.
        subject: String,
        /// The identity, TYPE:VALUE.
        #[arg(value_parser = identity_arg)]
        identity: pb::Identity,
    },
    /// The subject an identity stands for.
    Resolve {
        /// The identity, TYPE:VALUE.
        #[arg(value_parser = identity_arg)]
        identity: pb::Identity,
    },
    /// The identities linked to a subject.
    List {
        /// The subject.
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
enum PurposesCommand {
    /// Every purpose.
    List,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Upserts the vendors, purposes and policy versions of a catalogue file (TOML).
    Apply {
        /// The file, e.g. examples/catalog/callnex.toml.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChannelArg {
    Web,
    Mobile,
    Voice,
    Api,
    Import,
    Admin,
}

impl From<ChannelArg> for pb::Channel {
    fn from(c: ChannelArg) -> pb::Channel {
        match c {
            ChannelArg::Web => pb::Channel::Web,
            ChannelArg::Mobile => pb::Channel::Mobile,
            ChannelArg::Voice => pb::Channel::Voice,
            ChannelArg::Api => pb::Channel::Api,
            ChannelArg::Import => pb::Channel::Import,
            ChannelArg::Admin => pb::Channel::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Records decisions of one subject (at least one --grant or --deny).
    Record {
        /// The subject.
        subject: String,
        /// A purpose the person agrees to (repeatable).
        #[arg(long)]
        grant: Vec<String>,
        /// A purpose the person refuses (repeatable).
        #[arg(long)]
        deny: Vec<String>,
        /// Where the choice was made.
        #[arg(long, value_enum, default_value_t = ChannelArg::Admin)]
        channel: ChannelArg,
        /// The policy version the person saw (default: the latest published).
        #[arg(long)]
        policy_version: Option<String>,
        /// The call the choice was made in (evidence).
        #[arg(long)]
        call_id: Option<String>,
        /// An idempotency key (default: one per run, the same for every retry).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Withdraws some purposes (--purpose), or everything.
    Withdraw {
        /// The subject.
        subject: String,
        /// A purpose to withdraw (repeatable); none withdraws everything.
        #[arg(long)]
        purpose: Vec<String>,
        /// Where the withdrawal was made.
        #[arg(long, value_enum, default_value_t = ChannelArg::Admin)]
        channel: ChannelArg,
        /// An idempotency key (default: one per run).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// May this purpose be processed for this subject? Exit 0 if allowed, 1 if not.
    Check {
        /// The subject.
        subject: String,
        /// The purpose.
        purpose: String,
        /// The vendor that would receive the data.
        #[arg(long)]
        vendor: Option<String>,
    },
    /// Every event of a subject, in revision order.
    History {
        /// The subject.
        subject: String,
        /// Only this purpose (and withdrawals of everything).
        #[arg(long)]
        purpose: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SubjectCommand {
    /// The decision for every catalogued purpose, and the rights in force.
    State {
        /// The subject.
        subject: String,
    },
    /// Everything held about a subject (GDPR Art. 15), document by document.
    Export {
        /// The subject.
        subject: String,
    },
    /// Erases a subject (GDPR Art. 17): final.
    Erase {
        /// The subject.
        subject: String,
        /// Why (the request's reference).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    /// A purpose to decide (repeatable); none: every catalogued purpose.
    #[arg(long)]
    purpose: Vec<String>,
    /// The vendor that would receive the data.
    #[arg(long)]
    vendor: Option<String>,
    /// The revision to read at (default: the head).
    #[arg(long)]
    at_revision: Option<i64>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Changes after this revision (0: the whole ledger first).
    #[arg(long, default_value_t = 0)]
    from: i64,
    /// Only this subject.
    #[arg(long)]
    subject: Option<String>,
    /// Only this purpose (repeatable).
    #[arg(long)]
    purpose: Vec<String>,
    /// Stop once the feed has delivered this revision.
    #[arg(long)]
    until_revision: Option<i64>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Creates a key; its secret is printed once.
    Create {
        /// What the key is for, e.g. dialer-prod.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes (consent:read, consent:write, catalog:write, retention:read,
        /// retention:write, rights:read, rights:write, identity:read, identity:write, admin).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d or 12h; omitted: until revoked.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// The tenant's keys (without secrets).
    List,
    /// Revokes a key.
    Revoke {
        /// The key id (the part after `ck_`).
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ItemsCommand {
    /// Items due for deletion (every page).
    Due {
        /// Only overdue items.
        #[arg(long)]
        overdue: bool,
    },
    /// Attests that an item was deleted.
    Attest {
        /// The item.
        item_id: String,
        /// How: deleted or anonymised.
        #[arg(long, default_value = "deleted")]
        method: String,
        /// When it was deleted, RFC 3339 (default: now).
        #[arg(long)]
        deleted_at: Option<humantime::Timestamp>,
    },
}

/// Why a run failed, and its exit code.
#[derive(Debug)]
enum Failure {
    /// Bad settings or arguments: nothing was sent.
    Usage(String),
    /// The service answered with an error.
    Service(Error),
    /// Anything else.
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Service(e)
    }
}

impl Failure {
    fn report(&self) -> ExitCode {
        match self {
            Failure::Usage(m) => {
                eprintln!("consentctl: {m}");
                ExitCode::from(2)
            }
            Failure::Other(m) => {
                eprintln!("consentctl: {m}");
                ExitCode::from(5)
            }
            Failure::Service(e) => {
                eprintln!("consentctl: {e}");
                for v in e.violations() {
                    eprintln!("  {}: {}", v.field, v.description);
                }
                use tonic::Code::*;
                match e.code() {
                    InvalidArgument | NotFound | AlreadyExists | FailedPrecondition
                    | PermissionDenied | Unauthenticated | ResourceExhausted | OutOfRange => {
                        ExitCode::from(3)
                    }
                    Unavailable | DeadlineExceeded => ExitCode::from(4),
                    _ => ExitCode::from(5),
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// The client the settings describe, or why they cannot describe one.
async fn connect(cli: &Cli) -> Result<ConsentClient, Failure> {
    let https = cli.url.starts_with("https://");
    if !https && !cli.url.starts_with("http://") {
        return Err(Failure::Usage(format!(
            "--url (CONSENT_URL) `{}` must start with http:// or https://",
            cli.url
        )));
    }
    if !https && (cli.tls_ca.is_some() || cli.tls_domain.is_some()) {
        return Err(Failure::Usage(
            "--tls-ca / --tls-domain (CONSENT_TLS_CA / CONSENT_TLS_DOMAIN) need an https:// URL"
                .into(),
        ));
    }
    let mut builder = ConsentClient::builder(cli.url.clone())
        .timeout(Duration::from_secs(cli.timeout_secs.max(1)))
        .retry(RetryPolicy::default());
    if let Some(key) = &cli.api_key {
        builder = builder.api_key(key.clone());
    }
    if https {
        let Some(ca) = &cli.tls_ca else {
            return Err(Failure::Usage(
                "an https:// URL needs --tls-ca FILE (CONSENT_TLS_CA): the CA that signed the service's certificate".into(),
            ));
        };
        let pem = std::fs::read(ca)
            .map_err(|e| Failure::Usage(format!("--tls-ca {}: {e}", ca.display())))?;
        let mut tls = ClientTls::with_ca(pem);
        if let Some(domain) = &cli.tls_domain {
            tls = tls.domain(domain.clone());
        }
        builder = builder.tls(tls);
    }
    builder.connect_lazy().map_err(Failure::Service)
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let client = connect(&cli).await?;
    let out = Out::new(cli.output)?;
    match cli.command {
        Command::Purposes(PurposesCommand::List) => {
            let listed = client.list_purposes(pb::ListPurposesRequest {}).await?;
            out.purposes(&listed)?;
        }
        Command::Catalog(CatalogCommand::Apply { file }) => {
            catalog_apply(&client, &out, &file).await?;
        }
        Command::Consent(command) => return consent(&client, &out, command).await,
        Command::Subject(command) => subject(&client, &out, command).await?,
        Command::Snapshot(args) => snapshot(&client, &out, args).await?,
        Command::Watch(args) => watch(&client, &out, args).await?,
        Command::Verify => {
            let report = client.verify_ledger(pb::VerifyLedgerRequest {}).await?;
            out.verify(&report)?;
            if !report.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Keys(command) => keys(&client, &out, command).await?,
        Command::Items(command) => items(&client, &out, command).await?,
        Command::Identity(command) => identity(&client, &out, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn catalog_apply(client: &ConsentClient, out: &Out, file: &PathBuf) -> Result<(), Failure> {
    use consent_server::convert::{policy_out, purpose_out, vendor_out};
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let catalog = consent_core::catalog_file::parse_catalog_file(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let total = catalog.vendors.len() + catalog.purposes.len() + catalog.policy_versions.len();
    let progress = out.progress(Some(total as u64), "applying");
    // Vendors first (purposes name them), policy versions last (they name both).
    for v in &catalog.vendors {
        client
            .upsert_vendor(pb::UpsertVendorRequest {
                vendor: Some(vendor_out(v)),
            })
            .await?;
        progress.inc(1);
    }
    for p in &catalog.purposes {
        client
            .upsert_purpose(pb::UpsertPurposeRequest {
                purpose: Some(purpose_out(p)),
            })
            .await?;
        progress.inc(1);
    }
    for p in &catalog.policy_versions {
        client
            .publish_policy_version(pb::PublishPolicyVersionRequest {
                policy_version: Some(policy_out(p)),
            })
            .await?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    out.applied(
        catalog.vendors.len(),
        catalog.purposes.len(),
        catalog.policy_versions.len(),
        catalog.retention.len(),
    )
}

async fn consent(
    client: &ConsentClient,
    out: &Out,
    command: ConsentCommand,
) -> Result<ExitCode, Failure> {
    match command {
        ConsentCommand::Record {
            subject,
            grant,
            deny,
            channel,
            policy_version,
            call_id,
            idempotency_key,
        } => {
            if grant.is_empty() && deny.is_empty() {
                return Err(Failure::Usage(
                    "consent record needs at least one --grant or --deny".into(),
                ));
            }
            let mut record = Record::new(subject).channel(channel.into());
            for p in grant {
                record = record.grant(p);
            }
            for p in deny {
                record = record.deny(p);
            }
            if let Some(v) = policy_version {
                record = record.policy_version(v);
            }
            if let Some(call) = call_id {
                record = record.evidence(pb::Evidence {
                    call_id: call,
                    ..Default::default()
                });
            }
            if let Some(key) = idempotency_key {
                record = record.idempotency_key(key);
            }
            let written = client.record_consent(record).await?;
            out.events(
                "consent.v1.RecordConsentResponse",
                &written,
                &written.events,
            )?;
        }
        ConsentCommand::Withdraw {
            subject,
            purpose,
            channel,
            idempotency_key,
        } => {
            let mut withdraw = if purpose.is_empty() {
                Withdraw::all(subject)
            } else {
                Withdraw::purposes(subject, purpose)
            }
            .channel(channel.into());
            if let Some(key) = idempotency_key {
                withdraw = withdraw.idempotency_key(key);
            }
            let written = client.withdraw_consent(withdraw).await?;
            out.events(
                "consent.v1.WithdrawConsentResponse",
                &written,
                &written.events,
            )?;
        }
        ConsentCommand::Check {
            subject,
            purpose,
            vendor,
        } => {
            let mut check = Check::new(subject, purpose);
            if let Some(v) = vendor {
                check = check.vendor(v);
            }
            let answer = client.check(check).await?;
            out.check(&answer)?;
            if !answer.allowed {
                return Ok(ExitCode::from(1));
            }
        }
        ConsentCommand::History { subject, purpose } => {
            let mut page_token = String::new();
            let mut events = Vec::new();
            let mut records = Vec::new();
            // Bounded by the ledger: each page moves the token forward.
            loop {
                let page = client
                    .list_events(pb::ListEventsRequest {
                        subject_id: subject.clone(),
                        purpose_id: purpose.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await?;
                events.extend(page.events);
                records.extend(page.records);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let all = pb::ListEventsResponse {
                events,
                records,
                next_page_token: String::new(),
            };
            out.events("consent.v1.ListEventsResponse", &all, &all.events)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn identity(
    client: &ConsentClient,
    out: &Out,
    command: IdentityCommand,
) -> Result<(), Failure> {
    match command {
        IdentityCommand::Link {
            subject,
            identity,
            call_id,
            merge,
            carry_choices,
        } => {
            let linked = client
                .link_identity(pb::LinkIdentityRequest {
                    subject_id: subject,
                    identity: Some(identity),
                    evidence: call_id.map(|call_id| pb::Evidence {
                        call_id,
                        ..Default::default()
                    }),
                    merge,
                    carry_choices,
                })
                .await?;
            out.linked(&linked)
        }
        IdentityCommand::Unlink { subject, identity } => {
            let unlinked = client
                .unlink_identity(pb::UnlinkIdentityRequest {
                    subject_id: subject,
                    identity: Some(identity),
                    evidence: None,
                })
                .await?;
            out.unlinked(&unlinked)
        }
        IdentityCommand::Resolve { identity } => {
            let resolved = client
                .resolve_identity(pb::ResolveIdentityRequest {
                    identity: Some(identity),
                })
                .await?;
            out.resolved(&resolved)
        }
        IdentityCommand::List { subject } => {
            let listed = client
                .list_identities(pb::ListIdentitiesRequest {
                    subject_id: subject,
                })
                .await?;
            out.identities(&listed)
        }
    }
}

async fn subject(
    client: &ConsentClient,
    out: &Out,
    command: SubjectCommand,
) -> Result<(), Failure> {
    match command {
        SubjectCommand::State { subject } => {
            let state = client
                .get_subject_state(pb::GetSubjectStateRequest {
                    subject_id: subject,
                    ..Default::default()
                })
                .await?;
            out.state(&state)
        }
        SubjectCommand::Export { subject } => {
            let mut documents = client.export_subject(pb::ExportSubjectRequest {
                subject_id: subject,
                ..Default::default()
            });
            let progress = out.progress(None, "documents");
            while let Some(document) = documents.next().await {
                out.document(&document?)?;
                progress.inc(1);
            }
            progress.finish_and_clear();
            Ok(())
        }
        SubjectCommand::Erase { subject, reason } => {
            let erased = client
                .erase_subject(pb::EraseSubjectRequest {
                    subject_id: subject,
                    reason,
                    ..Default::default()
                })
                .await?;
            out.erased(&erased)
        }
    }
}

async fn snapshot(client: &ConsentClient, out: &Out, args: SnapshotArgs) -> Result<(), Failure> {
    let mut snapshot = client
        .snapshot(pb::ExportSnapshotRequest {
            purpose_ids: args.purpose,
            vendor_id: args.vendor.unwrap_or_default(),
            at_revision: args.at_revision.unwrap_or(0),
            after_subject_id: String::new(),
        })
        .await?;
    out.snapshot_header(&snapshot.header)?;
    let progress = out.progress(None, "subjects");
    let mut count = 0i64;
    while let Some(subject) = snapshot.subjects.next().await {
        out.snapshot_subject(&snapshot.header, &subject?)?;
        count += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    out.snapshot_end(count)
}

async fn watch(client: &ConsentClient, out: &Out, args: WatchArgs) -> Result<(), Failure> {
    let mut feed = client.watch(pb::WatchRequest {
        from_revision: args.from,
        subject_id: args.subject.unwrap_or_default(),
        purpose_ids: args.purpose,
    });
    while let Some(message) = feed.next().await {
        let message = message?;
        out.watched(&message)?;
        if args
            .until_revision
            .is_some_and(|until| message.revision >= until)
        {
            break;
        }
    }
    Ok(())
}

async fn keys(client: &ConsentClient, out: &Out, command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create {
            name,
            scopes,
            expires_in,
        } => {
            let expires_in = expires_in
                .map(|d| prost_types::Duration::try_from(Duration::from(d)))
                .transpose()
                .map_err(|e| Failure::Usage(format!("--expires-in: {e}")))?;
            let created = client
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant_id: String::new(),
                    name,
                    scopes,
                    expires_in,
                })
                .await?;
            out.key_created(&created)
        }
        KeysCommand::List => {
            let listed = client.list_api_keys(pb::ListApiKeysRequest {}).await?;
            out.keys(&listed)
        }
        KeysCommand::Revoke { key_id } => {
            let revoked = client
                .revoke_api_key(pb::RevokeApiKeyRequest { key_id })
                .await?;
            out.key_revoked(&revoked)
        }
    }
}

async fn items(client: &ConsentClient, out: &Out, command: ItemsCommand) -> Result<(), Failure> {
    match command {
        ItemsCommand::Due { overdue } => {
            let mut page_token = String::new();
            let mut items = Vec::new();
            loop {
                let page = client
                    .list_due_items(pb::ListDueItemsRequest {
                        overdue_only: overdue,
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await?;
                items.extend(page.items);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.items(&pb::ListDueItemsResponse {
                items,
                next_page_token: String::new(),
            })
        }
        ItemsCommand::Attest {
            item_id,
            method,
            deleted_at,
        } => {
            let deleted_at = deleted_at.map_or_else(std::time::SystemTime::now, Into::into);
            let attested = client
                .attest_deletion(pb::AttestDeletionRequest {
                    item_id,
                    method,
                    deleted_at: Some(consent_client::timestamp(deleted_at)),
                })
                .await?;
            out.attested(&attested)
        }
    }
}
