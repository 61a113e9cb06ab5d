//! Resource bounds: 1,000 logs with several segments each, read everywhere (closed segments
//! included), stay within the map cache's capacity plus one map per active segment, and
//! three descriptors per log (the active segment's log, index and time index).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use spool_storage::{Durability, Log, LogConfig, ProducerStamp, Record, Storage, StorageConfig};

const LOGS: usize = 1_000;
const MAX_MAPPED: usize = 256;
/// Batches per log: 13 of about 16.5 KB make about 210 KiB, three closed 64 KiB segments
/// and an active one.
const BATCHES: u64 = 13;
const PER_BATCH: u64 = 16;
/// Maps and descriptors the process may hold on the data directory beyond the bounds.
const SLACK: usize = 16;

fn config() -> LogConfig {
    common::small_config(Durability::Never)
}

/// Raises the descriptor limit to `need` (the hard limit too where allowed, as for root in
/// CI); false when it cannot.
fn enough_descriptors(need: u64) -> bool {
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= need) {
        return true;
    }
    let hard = limit.maximum.map(|m| m.max(need));
    let raised = Rlimit {
        current: hard,
        maximum: hard,
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        // Not allowed to raise the hard limit: the soft one up to it may still do.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile)
        .current
        .is_none_or(|c| c >= need)
}

fn batch(log: usize, base: u64, value: &Bytes) -> Vec<Record> {
    (0..PER_BATCH)
        .map(|i| Record {
            key: Bytes::from(format!("{log}/{}", base + i)),
            value: value.clone(),
            headers: vec![],
            timestamp_ms: (base + i) as i64,
        })
        .collect()
}

fn check_bounds(storage: &Storage, root: &Path, logs: usize, when: &str) {
    let maps = common::mapped_files_under(root);
    let fds = common::fds_under(root);
    eprintln!(
        "{when}: {maps} maps, {fds} descriptors, {} cached maps",
        storage.cached_maps()
    );
    assert!(
        storage.cached_maps() <= MAX_MAPPED,
        "{when}: cache over capacity"
    );
    assert!(
        maps <= MAX_MAPPED + logs + SLACK,
        "{when}: {maps} maps over {MAX_MAPPED} + {logs} + {SLACK}"
    );
    assert!(
        fds <= 3 * logs + SLACK,
        "{when}: {fds} descriptors over 3 x {logs} + {SLACK}"
    );
}

/// Reads from a closed segment at the start, one in the middle, and the active segment's
/// last record, checking the keys.
fn read_everywhere(i: usize, log: &Log) {
    let end = log.end_offset();
    for at in [0, end / 3, end / 2, end - 1] {
        let got = log.read(at, 4, usize::MAX).unwrap();
        assert_eq!(got[0].offset, at);
        assert_eq!(got[0].key, Bytes::from(format!("{i}/{at}")));
    }
}

#[test]
fn a_thousand_logs_stay_within_map_and_descriptor_bounds() {
    if !enough_descriptors(3 * LOGS as u64 + 256) {
        let why = format!(
            "the descriptor limit cannot be raised to {}; raise `ulimit -Hn` to run this test",
            3 * LOGS + 256
        );
        // CI runs as root, which may raise the hard limit: there this must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: CI must run this test"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    let began = Instant::now();
    let dir = common::ram_tempdir(LOGS as u64 * 512 * 1024);
    let root = dir.path().canonicalize().unwrap();
    let storage_config = StorageConfig {
        max_mapped_files: MAX_MAPPED,
        ..StorageConfig::default()
    };
    let value = Bytes::from(vec![b'x'; 1000]);
    let end = BATCHES * PER_BATCH;
    let mut segments = Vec::with_capacity(LOGS);
    {
        let storage = Storage::open(&root, storage_config.clone()).unwrap();
        let logs: Vec<Arc<Log>> = (0..LOGS)
            .map(|i| {
                let log = storage.open_log(&format!("t/{i}"), config()).unwrap();
                for _ in 0..BATCHES {
                    let base = log.end_offset();
                    log.append(&batch(i, base, &value), ProducerStamp::default())
                        .unwrap();
                }
                assert!(
                    log.segment_count() >= 3,
                    "log {i}: {} segments",
                    log.segment_count()
                );
                log
            })
            .collect();
        eprintln!("wrote {LOGS} logs in {:?}", began.elapsed());
        check_bounds(&storage, &root, LOGS, "after writing");
        for (i, log) in logs.iter().enumerate() {
            read_everywhere(i, log);
        }
        check_bounds(&storage, &root, LOGS, "after reading every log");
        segments.extend(logs.iter().map(|l| l.segment_count()));
    }
    assert_eq!(
        common::fds_under(&root),
        0,
        "dropping the storage closes everything"
    );

    let reopened = Instant::now();
    let storage = Storage::open(&root, storage_config).unwrap();
    let logs: Vec<Arc<Log>> = (0..LOGS)
        .map(|i| storage.open_log(&format!("t/{i}"), config()).unwrap())
        .collect();
    let open_time = reopened.elapsed();
    let mut slowest = Duration::ZERO;
    for (i, log) in logs.iter().enumerate() {
        let report = log.open_report();
        assert_eq!(report.end_offset, end, "log {i}");
        assert_eq!(report.start_offset, 0, "log {i}");
        assert_eq!(report.segments, segments[i], "log {i}");
        assert_eq!(report.dropped_bytes, 0, "log {i}");
        // Only the last segment's tail is scanned, never the whole log.
        assert!(
            report.scanned_batches < BATCHES,
            "log {i}: scanned {} batches",
            report.scanned_batches
        );
        assert!(report.recovery_time <= open_time, "log {i}: {report:?}");
        slowest = slowest.max(report.recovery_time);
    }
    eprintln!("reopened {LOGS} logs in {open_time:?}; slowest recovery {slowest:?}");
    for (i, log) in logs.iter().enumerate() {
        read_everywhere(i, log);
    }
    check_bounds(&storage, &root, LOGS, "after reopening and reading");
    eprintln!("total {:?}", began.elapsed());
}
