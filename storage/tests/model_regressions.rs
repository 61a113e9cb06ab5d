//! Regression tests found by the model test (`model.rs`), each reduced to its minimal case.

mod common;

use bytes::Bytes;
use spool_storage::{Durability, LogConfig, ProducerStamp, Record};

fn record(value_len: usize, timestamp_ms: i64) -> Record {
    Record {
        key: Bytes::new(),
        value: Bytes::from(vec![7u8; value_len]),
        headers: vec![],
        timestamp_ms,
    }
}

/// Found by `log_agrees_with_vec_model_when_batch_timestamps_go_backwards`.
///
/// Batches (one record each) with timestamps 1000, 1_527_748 (1 KB value), 1001, 1_527_749
/// and `index_interval_bytes` 700. The time index gets entries for batches 0 and 3 only
/// (batch 1 raises the running maximum but is within the interval of batch 0's entry); the
/// offset index has one entry, at batch 2. Recovery scans from batch 2, keeps the time entry
/// of batch 0 (ts 1000) and seeds its running maximum from it, so the rebuilt index claims
/// that everything up to batch 2 is older than 1002. The first record at or after 1002 is
/// offset 1; after a reopen the log answered 3.
#[test]
fn offset_for_timestamp_after_reopen_sees_unindexed_older_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 700,
        ..common::small_config(Durability::Never)
    };
    let batches = [(0, 1000), (1000, 1_527_748), (0, 1001), (0, 1_527_749)];
    {
        let (_storage, log) = common::open(dir.path(), "t/0", config.clone());
        for (len, ts) in batches {
            log.append(&[record(len, ts)], ProducerStamp::default())
                .unwrap();
        }
        assert_eq!(log.offset_for_timestamp(1002).unwrap(), 1, "before reopen");
    }
    let (_storage, log) = common::open(dir.path(), "t/0", config);
    assert_eq!(log.offset_for_timestamp(1002).unwrap(), 1, "after reopen");
}
