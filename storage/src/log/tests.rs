//! Unit tests of the log: roll, read, reopen, retention, time lookups, truncation.

use std::time::Duration;

use bytes::Bytes;

use crate::{Durability, LogConfig, ProducerStamp, Record, Storage, StorageConfig};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        preallocate_bytes: 16 * 1024,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

fn record(i: u64, ts: i64) -> Record {
    Record {
        key: Bytes::from(format!("k{i}")),
        value: Bytes::from(format!("value-{i}-{}", "x".repeat(100))),
        headers: vec![],
        timestamp_ms: ts,
    }
}

#[test]
fn appends_roll_segments_and_read_back_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    let mut next = 0;
    for b in 0..300u64 {
        let recs: Vec<_> = (0..5).map(|i| record(next + i, 1000 + b as i64)).collect();
        let a = log.append(&recs, ProducerStamp::default()).unwrap();
        assert_eq!(a.base_offset, next);
        next += 5;
    }
    assert!(log.segment_count() > 2, "segments: {}", log.segment_count());
    let all = log.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 1500);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.key, Bytes::from(format!("k{i}")));
    }
    let mid = log.read(777, 3, usize::MAX).unwrap();
    assert_eq!(
        mid.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![777, 778, 779]
    );
    assert_eq!(log.offset_for_timestamp(1000 + 150).unwrap(), 750);
    drop(log);
    drop(storage);
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    assert_eq!(log.end_offset(), 1500);
    assert_eq!(log.read(1234, 1, usize::MAX).unwrap()[0].offset, 1234);
    assert_eq!(log.offset_for_timestamp(1000 + 299).unwrap(), 1495);
    assert_eq!(log.offset_for_timestamp(5000).unwrap(), 1500);
    assert!(log.verify().unwrap().is_empty());
}

#[test]
fn retention_by_bytes_deletes_oldest_segments_and_moves_start() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let config = LogConfig {
        retention_bytes: Some(128 * 1024),
        retention: Some(Duration::from_secs(3600)),
        ..small_config()
    };
    let log = storage.open_log("t/0", config).unwrap();
    for i in 0..3000 {
        log.append(&[record(i, 1)], ProducerStamp::default())
            .unwrap();
    }
    let before = log.size_bytes();
    let deleted = log.enforce_retention(10).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() >= 128 * 1024 && log.size_bytes() < before);
    let start = log.start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 1, 1),
        Err(crate::Error::OffsetOutOfRange { start: s, .. }) if s == start
    ));
    assert_eq!(log.read(start, 1, 1).unwrap()[0].offset, start);
    // Every batch was appended more than an hour before "now" = 2 hours from now: all
    // closed segments go.
    log.enforce_retention(now_ms() + 2 * 3600 * 1000).unwrap();
    assert_eq!(log.segment_count(), 1);
}

fn now_ms() -> i64 {
    super::producers::wall_clock_ms()
}

#[test]
fn age_retention_measures_the_broker_append_time_not_client_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let config = LogConfig {
        retention: Some(Duration::from_secs(3600)),
        ..small_config()
    };
    let log = storage.open_log("t/0", config).unwrap();
    // Stamped 100 years ahead by their client, and 100 years back.
    let future = now_ms() + 100 * 365 * 24 * 3600 * 1000;
    for i in 0..1500 {
        let ts = if i % 2 == 0 { future } else { 1 };
        log.append(&[record(i, ts)], ProducerStamp::default())
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    // Appended just now: nothing is an hour old yet, however old the records claim to be.
    assert_eq!(log.enforce_retention(now_ms()).unwrap(), 0);
    // An hour and a bit later every closed segment goes, however new they claim to be.
    let later = now_ms() + 3600 * 1000 + 1000;
    assert!(log.enforce_retention(later).unwrap() > 0);
    assert_eq!(log.segment_count(), 1);
    // Reads and seeks still see the client timestamps.
    let start = log.start_offset();
    let first = &log.read(start, 1, 1 << 20).unwrap()[0];
    assert!(first.timestamp_ms == future || first.timestamp_ms == 1);
}

#[test]
fn truncate_then_append_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    for i in 0..2000 {
        log.append(&[record(i, 1)], ProducerStamp::default())
            .unwrap();
    }
    let view = log.read(1500, 1, 1).unwrap();
    log.truncate(1000).unwrap();
    assert_eq!(
        view[0].key,
        Bytes::from("k1500"),
        "live views keep their bytes"
    );
    assert_eq!(log.end_offset(), 1000);
    assert!(log.read(1000, 1, 1).unwrap().is_empty());
    log.append(&[record(9999, 1)], ProducerStamp::default())
        .unwrap();
    drop(log);
    drop(storage);
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    assert_eq!(log.end_offset(), 1001);
    assert_eq!(log.read(1000, 1, 1).unwrap()[0].key, Bytes::from("k9999"));
}

#[test]
fn second_process_lock_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    assert!(matches!(
        Storage::open(dir.path(), StorageConfig::default()),
        Err(crate::Error::Locked { .. })
    ));
}

#[test]
fn idempotent_retry_is_a_duplicate_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stamp = |s| ProducerStamp {
        producer_id: 42,
        producer_epoch: 0,
        sequence: s,
    };
    {
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let log = storage.open_log("t/0", small_config()).unwrap();
        for s in 0..1000 {
            log.append(&[record(s, 1)], stamp(s)).unwrap();
        }
    }
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    let again = log.append(&[record(999, 1)], stamp(999)).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, 999);
    assert_eq!(log.end_offset(), 1000);
    assert!(
        !log.append(&[record(1000, 1)], stamp(1000))
            .unwrap()
            .duplicate
    );
}

#[test]
fn reopen_checks_only_the_tail_and_keeps_producers_and_newest_timestamp() {
    const N: u64 = 12_000;
    // Each batch of `record` is at least this long.
    const MIN_BATCH: u64 = 180;
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 8 * 1024 * 1024,
        ..small_config()
    };
    let stamp = |s| ProducerStamp {
        producer_id: 9,
        producer_epoch: 0,
        sequence: s,
    };
    {
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let log = storage.open_log("t/0", config.clone()).unwrap();
        // Past index_persist_bytes, so index entries reach the files while running.
        for s in 0..N {
            // Flat timestamps except one early peak: the time index stays tiny.
            let ts = if s == 10 { 9_000 } else { 5 };
            log.append(&[record(s, ts)], stamp(s)).unwrap();
        }
        // No close(): as after a crash of the process.
    }
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", config.clone()).unwrap();
    let report = log.open_report().clone();
    let most_scanned = (config.index_persist_bytes + 512) / MIN_BATCH + 1;
    assert_eq!(report.end_offset, N);
    assert!(
        (report.scanned_batches as u64) < most_scanned,
        "recovery checked {} batches of {N}; only the tail after the last index entry on \
         disk (at most {most_scanned} batches of at least {MIN_BATCH} bytes) should be",
        report.scanned_batches
    );
    assert_eq!(log.offset_for_timestamp(9_000).unwrap(), 10);
    assert!(
        log.append(&[record(N - 1, 5)], stamp(N - 1))
            .unwrap()
            .duplicate
    );
    log.close().unwrap();
    drop(log);
    drop(storage);
    // After a clean close the snapshot sits at the end: nothing to replay.
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", config).unwrap();
    assert!(log.open_report().scanned_batches < 10);
    assert!(
        log.append(&[record(N - 1, 5)], stamp(N - 1))
            .unwrap()
            .duplicate
    );
    assert_eq!(
        log.append(&[record(N, 5)], stamp(N)).unwrap().base_offset,
        N
    );
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_they_resume_once_space_returns() {
    use crate::faults::{self, Op};
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let config = LogConfig {
        preallocate_bytes: 4096,
        ..small_config()
    };
    let log = storage.open_log("t/0", config).unwrap();
    for i in 0..20 {
        log.append(&[record(i, 1)], ProducerStamp::default())
            .unwrap();
    }
    faults::fail(dir.path(), Op::Allocate, u64::MAX, 28);
    let mut refused = 0;
    for i in 20..200 {
        match log.append(&[record(i, 1)], ProducerStamp::default()) {
            Ok(_) => {}
            Err(crate::Error::DiskFull { .. }) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(refused > 0, "the reservation must run out");
    let end = log.end_offset();
    let all = log.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(
        all.len() as u64,
        end,
        "reads keep working and see every acked record"
    );
    faults::clear(dir.path());
    let a = log
        .append(&[record(999, 1)], ProducerStamp::default())
        .unwrap();
    assert_eq!(
        a.base_offset, end,
        "appends resume without a restart, no gap"
    );
    // A failed write leaves nothing behind either.
    faults::fail(dir.path(), Op::Write, 1, 5);
    assert!(
        log.append(&[record(1000, 1)], ProducerStamp::default())
            .is_err()
    );
    assert_eq!(
        log.append(&[record(1001, 1)], ProducerStamp::default())
            .unwrap()
            .base_offset,
        end + 1
    );
    assert_eq!(
        log.read(end + 1, 1, 1).unwrap()[0].key,
        Bytes::from("k1001")
    );
}

#[test]
fn a_failed_fsync_stops_writes_until_reopen() {
    use crate::faults::{self, Op};
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let config = LogConfig {
        durability: Durability::Always,
        ..small_config()
    };
    let log = storage.open_log("t/0", config.clone()).unwrap();
    log.append(&[record(0, 1)], ProducerStamp::default())
        .unwrap();
    faults::fail(dir.path(), Op::Sync, 1, 5);
    assert!(
        log.append(&[record(1, 1)], ProducerStamp::default())
            .is_err()
    );
    assert!(matches!(
        log.append(&[record(2, 1)], ProducerStamp::default()),
        Err(crate::Error::Poisoned { .. })
    ));
    assert_eq!(
        log.durable_offset(),
        1,
        "nothing unsynced is reported durable"
    );
    drop(log);
    let log = storage.open_log("t/0", config).unwrap();
    let a = log
        .append(&[record(3, 1)], ProducerStamp::default())
        .unwrap();
    assert!(
        a.fsynced && a.base_offset >= 1,
        "reopened, the log accepts writes again"
    );
}

#[test]
fn a_closed_segment_that_cannot_be_opened_for_its_sync_stays_queued_and_not_durable() {
    use crate::faults::{self, Op};
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    let mut i = 0;
    while log.segment_count() < 2 {
        log.append(&[record(i, 1)], ProducerStamp::default())
            .unwrap();
        i += 1;
    }
    assert_eq!(
        log.durable_offset(),
        0,
        "Never: a roll syncs nothing itself"
    );
    // Out of descriptors when the sync opens the closed segment: the sync fails, nothing is
    // called durable, and the log is not poisoned (no data was lost).
    let log_dir = log.dir().to_path_buf();
    faults::fail(&log_dir, Op::Open, 1, 24);
    assert!(log.sync().is_err());
    assert_eq!(log.durable_offset(), 0);
    // The closed segment is still queued: the next sync opens it again (and fails again)...
    faults::fail(&log_dir, Op::Open, 1, 24);
    assert!(
        log.sync().is_err(),
        "a sync after a failed open must retry the closed segment, not skip it"
    );
    assert_eq!(log.durable_offset(), 0);
    // ...and once it can, everything becomes durable and appends go on.
    log.sync().unwrap();
    assert_eq!(log.durable_offset(), log.end_offset());
    log.append(&[record(i, 1)], ProducerStamp::default())
        .unwrap();
}

#[test]
fn an_idle_partition_reserves_kilobytes_and_a_busy_one_reserves_in_full_steps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024 * 1024,
        ..LogConfig::default()
    };
    let log = storage.open_log("t/0", config.clone()).unwrap();
    let path = log.dir().join(crate::segment::file_name(0, "log"));
    let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;
    log.append(&[record(0, 1)], ProducerStamp::default())
        .unwrap();
    assert!(
        allocated() <= 128 * 1024,
        "one record reserved {} bytes",
        allocated()
    );
    // A busy partition: the step doubles until it is `preallocate_bytes`.
    let big = Record {
        value: Bytes::from(vec![7u8; 256 * 1024]),
        ..record(1, 1)
    };
    let mut largest_step = 0;
    for _ in 0..40 {
        let before = allocated();
        log.append(std::slice::from_ref(&big), ProducerStamp::default())
            .unwrap();
        largest_step = largest_step.max(allocated() - before);
        let (written, reserved) = (log.size_bytes(), allocated());
        assert!(
            reserved >= written,
            "every written byte sits in reserved space"
        );
        assert!(
            reserved - written <= config.preallocate_bytes + 2 * big.value.len() as u64,
            "reserved {} bytes ahead of {written}",
            reserved - written
        );
    }
    assert!(
        largest_step >= config.preallocate_bytes,
        "a busy partition reserves in full steps, the largest was {largest_step} bytes"
    );
}

#[test]
fn a_reconfigured_log_applies_its_new_settings_from_the_next_append_on() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("t/0", small_config()).unwrap();
    let batch = |from: u64| -> Vec<Record> { (from..from + 50).map(|i| record(i, 1)).collect() };
    for b in 0..40 {
        log.append(&batch(b * 50), ProducerStamp::default())
            .unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 3);
    // A record limit below what was accepted: the next such append is refused.
    let limit = LogConfig {
        max_record_bytes: 50,
        ..small_config()
    };
    storage.reconfigure_log(&log, limit).unwrap();
    assert!(matches!(
        log.append(&batch(2_000), ProducerStamp::default()),
        Err(crate::Error::RecordTooLarge { max: 50, .. })
    ));
    // Retention by size and compression, durability by interval: retention deletes
    // at its next pass, new batches are compressed, the flusher makes them durable.
    let config = LogConfig {
        retention_bytes: Some(64 * 1024),
        compression: crate::config::Compression {
            codec: crate::config::Codec::Zstd,
            level: 1,
        },
        durability: Durability::Interval(Duration::from_millis(5)),
        ..small_config()
    };
    storage.reconfigure_log(&log, config).unwrap();
    assert!(log.enforce_retention(i64::MAX).unwrap() > 0);
    assert!(log.segment_count() < segments);
    let before = log.size_bytes();
    let a = log.append(&batch(2_000), ProducerStamp::default()).unwrap();
    assert!(
        log.size_bytes() - before < 1_000,
        "{} bytes",
        log.size_bytes() - before
    );
    let got = log.read(a.base_offset, 50, usize::MAX).unwrap();
    assert_eq!(got[49].value, batch(2_000)[49].value);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.durable_offset() < log.end_offset() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never synced"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let bad = LogConfig {
        segment_bytes: 1,
        ..small_config()
    };
    assert!(storage.reconfigure_log(&log, bad).is_err());
    assert_eq!(log.config().retention_bytes, Some(64 * 1024), "unchanged");
}

#[test]
fn an_aged_active_segment_closes_on_the_next_append_or_the_retention_pass() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let hour = Duration::from_secs(3600);
    let config = LogConfig {
        segment_age: Some(hour),
        ..small_config()
    };
    let log = storage.open_log("t/0", config.clone()).unwrap();
    // An empty active segment never ages.
    assert!(!log.roll_if_aged(i64::MAX).unwrap());
    log.append(&[record(0, 1)], ProducerStamp::default())
        .unwrap();
    assert!(!log.roll_if_aged(now_ms()).unwrap(), "not an hour old yet");
    let later = now_ms() + 3600 * 1000 + 1000;
    assert!(log.roll_if_aged(later).unwrap());
    assert_eq!(log.segment_count(), 2);
    assert!(!log.roll_if_aged(later).unwrap(), "the new one is empty");
    log.append(&[record(1, 1)], ProducerStamp::default())
        .unwrap();
    // After a restart the age comes from the first batch on disk.
    drop(log);
    let log = storage.open_log("t/0", config).unwrap();
    assert!(!log.roll_if_aged(now_ms()).unwrap());
    assert!(log.roll_if_aged(later + 3600 * 1000).unwrap());
    assert_eq!(log.segment_count(), 3);
    // On the append path: with an age of 1 ms, an append once the segment's first batch
    // is a millisecond old starts a new segment.
    let quick = LogConfig {
        segment_age: Some(Duration::from_millis(1)),
        ..small_config()
    };
    storage.reconfigure_log(&log, quick).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = 2;
    while log.segment_count() < 5 {
        assert!(std::time::Instant::now() < deadline, "never rolled by age");
        log.append(&[record(i, 1)], ProducerStamp::default())
            .unwrap();
        i += 1;
    }
    let all = log.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, i);
}
