//! The web console's server side, on the admin listener beside `/metrics`.
//!
//! - `api.rs`: the JSON API under `/api/v1/`, each endpoint a gRPC handler's call.
//! - `json.rs`: `spool.v1` messages to and from the proto3 JSON mapping.
//! - `guard.rs`: `Host` checking and the rules for calls that change state.
//! - `history.rs`: rings of append, read and lag samples behind the console's charts.
//! - `pages.rs`: the pages (`broker/console/`: HTML, CSS, one JavaScript module), embedded.

pub mod api;
pub mod guard;
pub mod history;
pub mod json;
pub mod pages;
