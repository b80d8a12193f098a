//! Compiles `proto/consent/v1/*.proto` with protox (pure Rust, no protoc) and writes the
//! file descriptor set that server reflection serves.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "consent/v1/types.proto",
        "consent/v1/catalog_service.proto",
        "consent/v1/consent_service.proto",
        "consent/v1/admin_service.proto",
        "consent/v1/retention_service.proto",
        "consent/v1/subject_rights_service.proto",
        "consent/v1/identity_service.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(files, [&root])?;
    // compile_fds ignores file_descriptor_set_path, so the descriptor is written here.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("consent_descriptor.bin"), fds.encode_to_vec())?;
    // The error detail types, for reflection only (tonic-types has the Rust side).
    let details = "google/rpc/error_details.proto";
    println!("cargo:rerun-if-changed={}", root.join(details).display());
    let details_fds = protox::compile([details], [&root])?;
    std::fs::write(
        out.join("error_details_descriptor.bin"),
        details_fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
