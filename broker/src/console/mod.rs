//! The web console's server side, on the admin listener beside `/metrics`.
//!
//! - `api.rs`: the JSON API under `/api/v1/`, each endpoint a gRPC handler's call.
//! - `json.rs`: `spool.v1` messages to and from the proto3 JSON mapping.
//! - `guard.rs`: `Host` checking and the rules for calls that change state.
//! - `pages.rs`: the pages (`broker/console/`: HTML, CSS, one JavaScript module), embedded.

pub mod api;
pub mod guard;
pub mod json;
pub mod pages;
