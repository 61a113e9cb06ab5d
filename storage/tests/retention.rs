//! Retention deletes files without the writer lock: appends go on while its unlinks and
//! directory fsync wait on the disk.

mod common;

use std::time::{Duration, Instant};

use spool_storage::faults::{self, Op};
use spool_storage::{Durability, LogConfig};

#[test]
fn appends_complete_while_retention_is_stalled_unlinking() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(common::SMALL_SEGMENT),
        ..common::small_config(Durability::Never)
    };
    let (_storage, log) = common::open(dir.path(), "t/0", config);
    while log.segment_count() < 5 {
        common::append_batch(&log, 20, 1, 1);
    }
    // The first unlink retention makes blocks for a long time, like a slow disk.
    faults::stall(dir.path(), Op::Remove, 1, Duration::from_secs(3));
    let retention = {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || log.enforce_retention(i64::MAX))
    };
    let began = Instant::now();
    while faults::stalled() == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "retention never unlinked"
        );
        assert!(
            !retention.is_finished(),
            "retention ended without unlinking"
        );
        std::thread::yield_now();
    }
    // Retention is inside an unlink: an append must not wait for it.
    let end = log.end_offset();
    common::append_batch(&log, 3, 2, 1);
    assert_eq!(log.end_offset(), end + 3);
    assert!(
        !retention.is_finished() && faults::stalled() == 1,
        "the append waited for retention's unlink"
    );
    assert!(
        log.start_offset() > 0,
        "the deleted segments are already unreachable"
    );
    faults::clear(dir.path());
    let deleted = retention.join().unwrap().unwrap();
    assert!(deleted >= 1);
}
