//! The gRPC transport: generated code, service implementations, and the
//! conversions between proto messages and domain types (`convert.rs`).
//!
//! Handlers decode and validate at the edge, call into `db/` with domain
//! values, and turn [`crate::error::Error`] into a `tonic::Status`. Nothing
//! below this module knows about tonic.

pub mod alerts;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod deadline;
pub mod decode_errors;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod ingest;
pub mod observe;
pub mod query;

/// Code generated from `proto/pulse/v1/`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("pulse.v1");

    /// The encoded descriptor set that server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pulse_descriptor");
}
