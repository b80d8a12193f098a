//! Generated Rust types, clients and servers for the `consent.v1` gRPC API.
//!
//! The `.proto` files live in `proto/consent/v1/` at the workspace root; this crate only
//! compiles them (with protox, so no `protoc` is needed) and exposes
//! [`FILE_DESCRIPTOR_SET`] for server reflection.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

/// The `consent.v1` package.
pub mod v1 {
    tonic::include_proto!("consent.v1");
}

/// Encoded `FileDescriptorSet` of every consent.v1 file (and the well-known types they use).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/consent_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `google/rpc/error_details.proto`, served by reflection so
/// tools such as grpcurl can print the `BadRequest` and `ErrorInfo` details of errors.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/error_details_descriptor.bin"));
