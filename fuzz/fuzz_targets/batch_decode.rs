//! Fuzz target `batch_decode`: the harness is `spool_fuzz::batch_decode` (see there for the input layout and
//! the properties checked), shared with the regression tests in
//! `storage/tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spool_fuzz::batch_decode::run(data));
