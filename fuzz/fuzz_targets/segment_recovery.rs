//! Fuzz target `segment_recovery`: the harness is `spool_fuzz::segment_recovery` (see there for the input layout and
//! the properties checked), shared with the regression tests in
//! `storage/tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spool_fuzz::segment_recovery::run(data));
