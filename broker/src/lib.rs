//! The Spool broker: the `spool.v1` gRPC API over the storage engine.
//!
//! # Layout
//! - `config`: flags, environment and TOML configuration.
//! - `auth`: authentication (tokens, client certificates) and ACL authorization.
//! - `quota`: per-principal byte rates.
//! - `registry`: topics, their settings on disk and their partitions' logs.
//! - `offsets`: committed offsets, durable on an internal log.
//! - `groups`: consumer group membership and assignment.
//! - `cluster/`: the nodes, and who leads and holds each partition (one node today).
//! - `service/`: the RPC handlers, one file per family; `service/status.rs` maps errors to
//!   gRPC codes in one place.
//! - `health`: the `spool.v1.Partitions` health service, NOT_SERVING while a partition failed.
//! - `metrics`: Prometheus metrics at `/metrics`.
//! - `console/`: the web console's JSON API under `/api/v1/` on the same listener.
//! - `rpc_metrics`: the tower layer counting requests and errors by RPC and code.
//! - `server`: start-up, serving, retention, graceful shutdown.
//! - `compaction`: the compactor of compacted topics (passes of `Log::compact`).
//! - `verify`: `spoold verify`, the offline integrity check of a data directory.
//! - `error`: the broker's error enum.
//! - `testing`: an in-process broker on a temporary directory, for examples and tests.
//!
//! # Invariants
//! - An append is answered only after its batch reached the topic's durability.
//! - No lock is held across an `.await`; blocking file work runs on the blocking pool.
//! - Every stream queue is bounded: a slow client costs bounded memory.

pub mod auth;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod console;
pub mod error;
pub mod groups;
pub mod health;
pub mod mailbox;
pub mod metrics;
pub mod offsets;
pub mod queue;
pub mod quota;
pub mod registry;
pub mod rpc_metrics;
pub mod server;
pub mod service;
pub mod settings;
pub mod testing;
pub mod verify;

pub use config::BrokerConfig;
pub use error::{Error, Result};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
