//! Harnesses of Spool's fuzz targets, one module per target, each with a `run(&[u8])`.
//!
//! The harnesses live here rather than in `fuzz_targets/` so the storage crate's normal test
//! suite can replay crash inputs through exactly the same code
//! (`storage/tests/fuzz_regressions.rs` includes these files with `#[path]`). Hence they use
//! only what that suite has too: `spool_storage`, `bytes`, `crc32fast`, `tempfile`, and the
//! dependency-free byte [`input::Reader`] instead of `arbitrary`.
//!
//! # Layout
//! - [`input`]: turns fuzz bytes into numbers and byte strings, never failing.
//! - [`batch_decode`]: batch header, CRC and record decoding; encode/decode round trip.
//! - [`index_parse`]: offset and time index lookups and validation over arbitrary bytes.
//! - [`segment_recovery`]: a log directory of fuzzed segment files, opened, read, verified,
//!   appended to and reopened.

pub mod batch_decode;
pub mod index_parse;
pub mod input;
pub mod segment_recovery;
