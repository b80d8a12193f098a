//! Arbitrary bytes decoded as each write request, converted to domain commands, validated
//! and planned against the seed catalogue: never a panic, and a plan exists only for input
//! that validated.

#![no_main]

use std::sync::OnceLock;

use consent_core::Timestamp;
use consent_core::catalog_file::parse_catalog_file;
use consent_core::validate::Violations;
use consent_core::{Catalog, ConsentError};
use consent_proto::v1 as pb;
use consent_server::convert;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let text = include_str!("../../examples/catalog/callnex.toml");
        parse_catalog_file(text)
            .unwrap_or_else(|e| panic!("seed catalogue: {e}"))
            .to_catalog()
    })
}

fn no_internal<T>(r: &Result<T, ConsentError>) {
    if let Err(ConsentError::Internal(e)) = r {
        panic!("validation produced an internal error: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Timestamp(1_800_000_000_000_000);
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            let Ok(request) = pb::RecordConsentRequest::decode(bytes) else {
                return;
            };
            let mut v = Violations::new();
            let command = convert::record_in(&mut v, request);
            let valid = v.finish().and_then(|()| command.validate(now));
            no_internal(&valid);
            if valid.is_ok() {
                let _ = command.idempotency();
                let planned = command.plan(catalog(), now, "fuzz");
                no_internal(&planned);
                if let Ok(events) = planned {
                    assert_eq!(events.len(), command.decisions.len());
                }
            }
        }
        1 => {
            let Ok(request) = pb::WithdrawConsentRequest::decode(bytes) else {
                return;
            };
            let mut v = Violations::new();
            let command = convert::withdraw_in(&mut v, request);
            let valid = v.finish().and_then(|()| command.validate(now));
            no_internal(&valid);
            if valid.is_ok() {
                no_internal(&command.plan(catalog(), now, "fuzz"));
            }
        }
        2 => {
            let Ok(request) = pb::UpsertPurposeRequest::decode(bytes) else {
                return;
            };
            let mut v = Violations::new();
            let _ = request
                .purpose
                .map(|p| convert::purpose_in(&mut v, "purpose", p));
            no_internal(&v.finish());
        }
        3 => {
            let Ok(request) = pb::UpsertVendorRequest::decode(bytes) else {
                return;
            };
            let mut v = Violations::new();
            let _ = request
                .vendor
                .map(|vendor| convert::vendor_in(&mut v, "vendor", vendor));
            no_internal(&v.finish());
        }
        _ => {
            let Ok(request) = pb::PublishPolicyVersionRequest::decode(bytes) else {
                return;
            };
            let mut v = Violations::new();
            let _ = request
                .policy_version
                .map(|p| convert::policy_in(&mut v, "policy_version", p, now));
            no_internal(&v.finish());
        }
    }
});
