//! The catalogue file parser never panics, and what it accepts is valid by the same rules
//! the API applies.

#![no_main]

use consent_core::catalog_file::parse_catalog_file;
use consent_core::validate::Violations;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(file) = parse_catalog_file(text) {
        let mut v = Violations::new();
        for (i, p) in file.purposes.iter().enumerate() {
            v.purpose(&format!("purposes[{i}]"), p);
        }
        for (i, vendor) in file.vendors.iter().enumerate() {
            v.vendor(&format!("vendors[{i}]"), vendor);
        }
        for (i, p) in file.policy_versions.iter().enumerate() {
            v.policy_version(&format!("policy_versions[{i}]"), p);
        }
        assert!(
            v.finish().is_ok(),
            "an accepted file must satisfy the API's rules"
        );
    }
});
