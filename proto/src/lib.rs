//! The `spool.v1` gRPC API of the Spool broker, as Rust types.
//!
//! The contract lives in `spool/v1/spool.proto` (one file, package
//! `spool.v1`); this crate compiles it at build time with `protox` (no system
//! `protoc` needed) and `tonic-prost-build`. The broker implements
//! [`v1::broker_server::Broker`]; clients use [`v1::broker_client::BrokerClient`].
//! Stubs in other languages are generated from the same proto file.
//!
//! # Layout
//!
//! - [`v1`]: the generated messages and enums, the `broker_server` module
//!   (the `Broker` trait and the `BrokerServer` tower service) and the
//!   `broker_client` module (`BrokerClient`). Every `bytes` field is a
//!   [`Bytes`], so the broker can hand out zero-copy views of its buffers.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set of the proto, with
//!   its comments, for gRPC server reflection.
//! - [`partitioning`]: the key-to-partition hash (FNV-1a 64) that every
//!   client must compute the same way as the broker.
//!
//! # Invariants
//!
//! - Names and field numbers in the proto are a public contract: they are
//!   only ever added to, never renamed or renumbered.
//! - [`partitioning::partition_for_key`] is the one definition of
//!   `AppendRequest.partition_key` routing; the broker calls it, and the
//!   proto comments document the same function for other languages.

pub mod partitioning;

pub use bytes::Bytes;

/// The `spool.v1` package: messages, enums, client and server, generated
/// from `spool/v1/spool.proto`.
///
/// The generated code is documented from the proto comments; lints that
/// would only flag the code generator's style are allowed here.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod v1 {
    tonic::include_proto!("spool.v1");
}

/// `spool.internal.v1`: the service nodes of a cluster speak to each other (Raft
/// messages, forwarded writes, pings), from `spool/internal/v1/peer.proto`. Not a
/// client API: it changes with the broker's version.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod internal {
    tonic::include_proto!("spool.internal.v1");
}

impl v1::Record {
    /// Payload bytes as size limits and batching count them: key, value, header keys and
    /// header values (no framing).
    pub fn payload_len(&self) -> usize {
        self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>()
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of `spool/v1/spool.proto`,
/// source comments included, for `tonic-reflection`:
/// `Builder::configure().register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/spool_descriptor.bin"));

/// The full gRPC service name of the broker, as used in paths, health checks
/// and reflection.
pub const BROKER_SERVICE_NAME: &str = v1::broker_server::SERVICE_NAME;
