//! How answers are printed: aligned tables for people, or the canonical protobuf JSON of
//! each answer (one document per line, as grpcurl prints them) for scripts. Progress bars
//! go to stderr, and only when it is a terminal.

use std::io::Write;
use std::time::SystemTime;

use clap::ValueEnum;
use consent_client::pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::Failure;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document per answer (or per streamed message), canonical protobuf JSON.
    Json,
}

/// Prints answers in one format.
pub struct Out {
    format: Output,
    pool: DescriptorPool,
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_micros(t).to_string())
        .unwrap_or_default()
}

fn reason(r: &pb::CheckResponse) -> String {
    r.reason()
        .as_str_name()
        .trim_start_matches("REASON_")
        .to_owned()
}

impl Out {
    /// Output in `format`.
    pub fn new(format: Output) -> Result<Out, Failure> {
        let pool = DescriptorPool::decode(consent_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| Failure::Other(format!("the API's descriptors do not load: {e}")))?;
        Ok(Out { format, pool })
    }

    fn json_mode(&self) -> bool {
        self.format == Output::Json
    }

    /// Prints `message` (of protobuf type `name`) as one line of canonical JSON.
    fn json<M: prost::Message>(&self, name: &str, message: &M) -> Result<(), Failure> {
        let descriptor = self
            .pool
            .get_message_by_name(name)
            .ok_or_else(|| Failure::Other(format!("no descriptor for {name}")))?;
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .map_err(|e| Failure::Other(format!("cannot read a {name}: {e}")))?;
        let text = serde_json::to_string(&dynamic)
            .map_err(|e| Failure::Other(format!("cannot print a {name}: {e}")))?;
        line(&text)
    }

    /// Prints rows under headers, each column as wide as its widest cell.
    fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: Vec<String>| {
            let last = cells.len().saturating_sub(1);
            cells
                .into_iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| if i == last { c } else { format!("{c:<w$}") })
                .collect::<Vec<_>>()
                .join("  ")
        };
        line(&render(headers.iter().map(|h| (*h).to_owned()).collect()))?;
        for row in rows {
            line(&render(row.clone()))?;
        }
        Ok(())
    }

    /// A progress bar on stderr (hidden when stderr is not a terminal or output is JSON).
    pub fn progress(&self, total: Option<u64>, what: &str) -> ProgressBar {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{bar:40} {pos}/{len} {msg}"
        } else {
            "{spinner} {pos} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar
    }

    pub fn purposes(&self, listed: &pb::ListPurposesResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ListPurposesResponse", listed);
        }
        let rows: Vec<Vec<String>> = listed
            .purposes
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.category()
                        .as_str_name()
                        .trim_start_matches("PURPOSE_CATEGORY_")
                        .to_owned(),
                    p.legal_basis()
                        .as_str_name()
                        .trim_start_matches("LEGAL_BASIS_")
                        .to_owned(),
                    p.vendor_ids.join(","),
                    p.validity
                        .map(|d| format!("{}d", d.seconds / 86_400))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        self.table(
            &["PURPOSE", "CATEGORY", "BASIS", "VENDORS", "VALIDITY"],
            &rows,
        )
    }

    pub fn applied(
        &self,
        vendors: usize,
        purposes: usize,
        policies: usize,
        retention: usize,
    ) -> Result<(), Failure> {
        if retention > 0 {
            // Said, not silently skipped: no RPC sets them (they are the operator's).
            eprintln!(
                "consentctl: note: the file's {retention} retention defaults were not applied: no RPC sets them; run `consentd catalog apply` against the store"
            );
        }
        if self.json_mode() {
            return line(
                &serde_json::json!({
                    "vendors": vendors, "purposes": purposes, "policyVersions": policies,
                    "retentionDefaultsSkipped": retention,
                })
                .to_string(),
            );
        }
        line(&format!(
            "applied {vendors} vendors, {purposes} purposes, {policies} policy versions"
        ))
    }

    pub fn events<M: prost::Message>(
        &self,
        name: &str,
        answer: &M,
        events: &[pb::ConsentEvent],
    ) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json(name, answer);
        }
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.revision.to_string(),
                    time(e.collected_at.as_ref()),
                    e.subject_id.clone(),
                    if e.purpose_id.is_empty() {
                        "*".into()
                    } else {
                        e.purpose_id.clone()
                    },
                    e.vendor_id.clone(),
                    e.decision()
                        .as_str_name()
                        .trim_start_matches("DECISION_")
                        .to_owned(),
                    e.channel()
                        .as_str_name()
                        .trim_start_matches("CHANNEL_")
                        .to_owned(),
                    e.id.clone(),
                ]
            })
            .collect();
        self.table(
            &[
                "REVISION",
                "COLLECTED",
                "SUBJECT",
                "PURPOSE",
                "VENDOR",
                "DECISION",
                "CHANNEL",
                "EVENT",
            ],
            &rows,
        )
    }

    pub fn check(&self, answer: &pb::CheckResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.CheckResponse", answer);
        }
        self.table(
            &["ALLOWED", "REASON", "BASIS", "EVENT", "EXPIRES", "REVISION"],
            &[vec![
                answer.allowed.to_string(),
                reason(answer),
                answer
                    .legal_basis()
                    .as_str_name()
                    .trim_start_matches("LEGAL_BASIS_")
                    .to_owned(),
                answer.event_id.clone(),
                time(answer.expires_at.as_ref()),
                answer.revision.to_string(),
            ]],
        )
    }

    pub fn state(&self, state: &pb::GetSubjectStateResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.GetSubjectStateResponse", state);
        }
        let rows: Vec<Vec<String>> = state
            .purposes
            .iter()
            .map(|p| {
                vec![
                    p.purpose_id.clone(),
                    p.allowed.to_string(),
                    reason(p),
                    time(p.expires_at.as_ref()),
                ]
            })
            .collect();
        self.table(&["PURPOSE", "ALLOWED", "REASON", "EXPIRES"], &rows)?;
        line(&format!("revision {}", state.revision))
    }

    pub fn document(&self, document: &pb::ExportSubjectResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ExportSubjectResponse", document);
        }
        line(&format!("{}  {}", document.document_type, document.json))
    }

    pub fn erased(&self, erased: &pb::EraseSubjectResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.EraseSubjectResponse", erased);
        }
        self.table(
            &[
                "ERASED ID",
                "ALREADY",
                "ENTRIES",
                "ITEMS DUE",
                "KEPT BY LAW",
                "REVISION",
            ],
            &[vec![
                erased.erased_id.clone(),
                erased.already_erased.to_string(),
                erased.entries_erased.to_string(),
                erased.items_due.to_string(),
                erased.items_kept_by_law.to_string(),
                erased.revision.to_string(),
            ]],
        )
    }

    pub fn snapshot_header(&self, header: &pb::SnapshotHeader) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.SnapshotHeader", header);
        }
        line(&format!(
            "revision {}  evaluated at {}",
            header.revision,
            time(header.evaluated_at.as_ref())
        ))?;
        line(&format!("SUBJECT  {}", header.purpose_ids.join("  ")))
    }

    pub fn snapshot_subject(
        &self,
        header: &pb::SnapshotHeader,
        subject: &pb::SubjectDecisions,
    ) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.SubjectDecisions", subject);
        }
        let cells: Vec<String> = subject
            .decisions
            .iter()
            .zip(&header.purpose_ids)
            .map(|(d, _)| {
                if d.allowed {
                    "allowed".into()
                } else {
                    reason(d).to_lowercase()
                }
            })
            .collect();
        line(&format!("{}  {}", subject.subject_id, cells.join("  ")))
    }

    pub fn snapshot_end(&self, subjects: i64) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.SnapshotEnd", &pb::SnapshotEnd { subjects });
        }
        line(&format!("{subjects} subjects"))
    }

    pub fn watched(&self, message: &pb::WatchResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.WatchResponse", message);
        }
        for e in &message.events {
            line(&format!(
                "{}  {}  {}  {}  {}",
                e.revision,
                e.subject_id,
                if e.purpose_id.is_empty() {
                    "*"
                } else {
                    &e.purpose_id
                },
                e.decision().as_str_name().trim_start_matches("DECISION_"),
                e.id
            ))?;
        }
        for r in &message.records {
            line(&format!(
                "{}  {}  {}  {}",
                r.revision,
                r.subject_id,
                r.kind()
                    .as_str_name()
                    .trim_start_matches("LEDGER_RECORD_KIND_"),
                r.id
            ))?;
        }
        Ok(())
    }

    pub fn verify(&self, report: &pb::VerifyLedgerResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.VerifyLedgerResponse", report);
        }
        self.table(
            &["OK", "ENTRIES", "REVISION", "FIRST BAD", "DETAIL"],
            &[vec![
                report.ok.to_string(),
                report.events_checked.to_string(),
                report.revision.to_string(),
                report.first_bad_event_id.clone(),
                report.detail.clone(),
            ]],
        )
    }

    fn key_rows(keys: &[pb::ApiKey]) -> Vec<Vec<String>> {
        keys.iter()
            .map(|k| {
                vec![
                    k.key_id.clone(),
                    k.name.clone(),
                    k.scopes.join(","),
                    time(k.created_at.as_ref()),
                    time(k.expires_at.as_ref()),
                    time(k.revoked_at.as_ref()),
                ]
            })
            .collect()
    }

    const KEY_HEADERS: [&'static str; 6] =
        ["KEY ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "REVOKED"];

    pub fn key_created(&self, created: &pb::CreateApiKeyResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.CreateApiKeyResponse", created);
        }
        line(&created.key)?;
        eprintln!("consentctl: the key above is shown once: only its hash is stored");
        self.table(
            &Self::KEY_HEADERS,
            &Self::key_rows(created.api_key.as_slice()),
        )
    }

    pub fn keys(&self, listed: &pb::ListApiKeysResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ListApiKeysResponse", listed);
        }
        self.table(&Self::KEY_HEADERS, &Self::key_rows(&listed.api_keys))
    }

    pub fn key_revoked(&self, revoked: &pb::RevokeApiKeyResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.RevokeApiKeyResponse", revoked);
        }
        self.table(
            &Self::KEY_HEADERS,
            &Self::key_rows(revoked.api_key.as_slice()),
        )
    }

    const IDENTITY_HEADERS: [&'static str; 5] = ["TYPE", "VALUE", "SUBJECT", "REVISION", "ALIAS"];

    fn identity_rows(identities: &[pb::LinkedIdentity]) -> Vec<Vec<String>> {
        identities
            .iter()
            .map(|i| {
                let kind = i.r#type().as_str_name();
                vec![
                    kind.trim_start_matches("IDENTITY_TYPE_").to_lowercase(),
                    if i.value.is_empty() {
                        "(keyed hash only)".to_owned()
                    } else {
                        i.value.clone()
                    },
                    i.subject_id.clone(),
                    i.revision.to_string(),
                    i.alias_sha256.clone(),
                ]
            })
            .collect()
    }

    pub fn linked(&self, linked: &pb::LinkIdentityResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.LinkIdentityResponse", linked);
        }
        if linked.already_linked {
            line("already linked: nothing written")?;
        }
        if !linked.merged_subject_id.is_empty() {
            line(&format!(
                "merged subject {} into {} (it is closed from now on)",
                linked.merged_subject_id,
                linked
                    .identity
                    .as_ref()
                    .map_or("", |i| i.subject_id.as_str())
            ))?;
        }
        self.table(
            &Self::IDENTITY_HEADERS,
            &Self::identity_rows(linked.identity.as_slice()),
        )
    }

    pub fn unlinked(&self, unlinked: &pb::UnlinkIdentityResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.UnlinkIdentityResponse", unlinked);
        }
        line(&format!("unlinked at revision {}", unlinked.revision))?;
        self.table(
            &Self::IDENTITY_HEADERS,
            &Self::identity_rows(unlinked.identity.as_slice()),
        )
    }

    pub fn resolved(&self, resolved: &pb::ResolveIdentityResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ResolveIdentityResponse", resolved);
        }
        let how = if resolved.linked {
            "linked"
        } else {
            "not linked: its own subject"
        };
        line(&format!("{}  ({how})", resolved.subject_id))
    }

    pub fn identities(&self, listed: &pb::ListIdentitiesResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ListIdentitiesResponse", listed);
        }
        self.table(
            &Self::IDENTITY_HEADERS,
            &Self::identity_rows(&listed.identities),
        )
    }

    pub fn items(&self, listed: &pb::ListDueItemsResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.ListDueItemsResponse", listed);
        }
        let rows: Vec<Vec<String>> = listed
            .items
            .iter()
            .map(|i| {
                vec![
                    i.item_id.clone(),
                    i.subject_id.clone(),
                    i.data_category.clone(),
                    i.campaign_id.clone(),
                    time(i.delete_after.as_ref()),
                    if i.overdue {
                        "overdue".into()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        self.table(
            &[
                "ITEM",
                "SUBJECT",
                "CATEGORY",
                "CAMPAIGN",
                "DELETE AFTER",
                "",
            ],
            &rows,
        )
    }

    pub fn attested(&self, attested: &pb::AttestDeletionResponse) -> Result<(), Failure> {
        if self.json_mode() {
            return self.json("consent.v1.AttestDeletionResponse", attested);
        }
        let item = attested.item.clone().unwrap_or_default();
        self.table(
            &["ITEM", "STATUS", "DELETED", "REVISION", "REPLAYED"],
            &[vec![
                item.item_id.clone(),
                item.status()
                    .as_str_name()
                    .trim_start_matches("DATA_ITEM_STATUS_")
                    .to_owned(),
                time(item.deleted_at.as_ref()),
                attested.revision.to_string(),
                attested.replayed.to_string(),
            ]],
        )
    }
}

/// Writes one line to stdout; a closed stdout (`| head`) is an error to stop on, not a panic.
fn line(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(|e| Failure::Other(format!("stdout: {e}")))
}
