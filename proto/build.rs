//! Compiles `spool/v1/spool.proto` into Rust at build time.
//!
//! The proto is parsed by `protox`, a protobuf compiler written in Rust, so a
//! fresh machine with only the Rust toolchain can build Spool: no system
//! `protoc` is needed. The resulting `FileDescriptorSet` feeds
//! `tonic-prost-build` (messages, client and server) and is also written to
//! `OUT_DIR/spool_descriptor.bin` for gRPC server reflection.

use std::path::PathBuf;
use std::{env, fs};

use protox::prost::Message as _;

/// The proto file, relative to the crate root.
const PROTO: &str = "spool/v1/spool.proto";
/// The nodes' own service (Raft messages, forwarded writes, pings): not a client API.
const PEER_PROTO: &str = "spool/internal/v1/peer.proto";
/// The include root: imports and file names are relative to it.
const INCLUDE: &str = ".";
/// The descriptor set file name in `OUT_DIR`, read by `FILE_DESCRIPTOR_SET`.
const DESCRIPTOR_FILE: &str = "spool_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={PEER_PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    // Source info (comments) is kept: it becomes rustdoc on the generated
    // types, and reflection clients such as `grpcurl describe` show it.
    // Reflection shows the client API only, never the nodes' own service.
    let public = protox::compile([PROTO], [INCLUDE])?;
    fs::write(out_dir.join(DESCRIPTOR_FILE), public.encode_to_vec())?;
    let fds = protox::compile([PROTO, PEER_PROTO], [INCLUDE])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every `bytes` field becomes `bytes::Bytes`, so the broker can hand
        // out zero-copy views of its buffers instead of copying into `Vec`s.
        .bytes(".")
        // `cargo:rerun-if-changed` is emitted above for the file we compile;
        // the builder's own directives would point at the include root too.
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    Ok(())
}
