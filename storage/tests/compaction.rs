//! Compaction of a log: the newest record of each key stays at its offset, keyless records
//! and the log's last record stay, tombstones delete their key and go after their
//! retention, a bounded key map cleans over several passes, compressed logs stay
//! compressed, and a failure at each step of a segment's rewrite, followed by a reopen
//! (the crash), leaves the old segment or the new one, never a mix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use spool_storage::config::{Codec, Compression};
use spool_storage::faults::{self, Op};
use spool_storage::{
    CompactOptions, Durability, Header, Log, LogConfig, ProducerStamp, Record, StoredRecord,
    TOMBSTONE_HEADER,
};

const LOG: &str = "compact/0";

fn config(codec: Codec) -> LogConfig {
    LogConfig {
        compression: Compression { codec, level: 0 },
        ..common::small_config(Durability::Never)
    }
}

fn opts(now_ms: i64) -> CompactOptions {
    CompactOptions {
        now_ms,
        delete_retention_ms: 60_000,
        max_keys: 1 << 20,
        bytes_per_sec: 0,
    }
}

/// A record of `key` whose value names its offset, so a read proves offsets never move.
fn keyed(key: &str, offset: u64) -> Record {
    Record {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(format!("{key}@{offset}:{}", "v".repeat(150))),
        headers: vec![],
        timestamp_ms: 1_000 + offset as i64,
    }
}

fn tombstone(key: &str) -> Record {
    Record {
        key: Bytes::from(key.to_string()),
        value: Bytes::new(),
        headers: vec![Header {
            key: TOMBSTONE_HEADER.into(),
            value: Bytes::new(),
        }],
        timestamp_ms: 0,
    }
}

/// Appends `rounds` values of each of `keys` keys, one record per append, and a keyless
/// record every 10th append. Returns what was appended, by offset.
fn fill(log: &Log, keys: usize, rounds: usize) -> BTreeMap<u64, Record> {
    let mut all = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..keys {
            let offset = log.end_offset();
            let r = if (round * keys + k) % 10 == 9 {
                Record {
                    key: Bytes::new(),
                    ..keyed("", offset)
                }
            } else {
                keyed(&format!("key-{k}"), offset)
            };
            log.append(std::slice::from_ref(&r), ProducerStamp::default())
                .unwrap();
            all.insert(offset, r);
        }
    }
    all
}

fn read_all(log: &Log) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    while next < log.end_offset() {
        let got = log.read(next, 1000, 1 << 20).unwrap();
        assert!(!got.is_empty(), "a read below the end returns a record");
        next = got.last().unwrap().offset + 1;
        out.extend(got);
    }
    out
}

/// Every record read is the one appended at its offset, in increasing offset order, the
/// newest of each key (by offset) is present, and every keyless record is.
fn check_consistent(log: &Log, appended: &BTreeMap<u64, Record>) -> Vec<StoredRecord> {
    let got = read_all(log);
    assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
    for r in &got {
        let want = &appended[&r.offset];
        assert_eq!(
            (&r.key, &r.value),
            (&want.key, &want.value),
            "offset {}",
            r.offset
        );
    }
    let mut newest: BTreeMap<&Bytes, u64> = BTreeMap::new();
    for (o, r) in appended {
        if !r.key.is_empty() {
            newest.insert(&r.key, *o);
        }
    }
    let present: std::collections::HashSet<u64> = got.iter().map(|r| r.offset).collect();
    for (key, o) in newest {
        let tomb = appended[&o].value.is_empty();
        assert!(
            tomb || present.contains(&o),
            "newest {key:?} at {o} is missing"
        );
    }
    for (o, r) in appended {
        assert!(
            !r.key.is_empty() || present.contains(o),
            "keyless {o} is missing"
        );
    }
    got
}

/// How many records of each key lie in the closed segments (below the active one).
fn closed_counts(got: &[StoredRecord], active_base: u64) -> BTreeMap<Bytes, usize> {
    let mut counts = BTreeMap::new();
    for r in got
        .iter()
        .filter(|r| r.offset < active_base && !r.key.is_empty())
    {
        *counts.entry(r.key.clone()).or_default() += 1;
    }
    counts
}

fn active_base(dir: &Path) -> u64 {
    let files = common::segment_files(LOG, dir);
    let name = files
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    name.parse().unwrap()
}

#[test]
fn compaction_keeps_the_newest_record_of_each_key_at_its_offset() {
    for codec in [Codec::None, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let (storage, log) = common::open(dir.path(), LOG, config(codec));
        let appended = fill(&log, 50, 60);
        assert!(log.segment_count() > 3, "{} segments", log.segment_count());
        assert!(log.dirty_ratio() > 0.99);
        let (end, size) = (log.end_offset(), log.size_bytes());
        let report = log.compact(&opts(0)).unwrap();
        assert!(report.records_removed > 1_000, "{report:?}");
        assert!(report.bytes_after < report.bytes_before / 4, "{report:?}");
        assert_eq!(log.dirty_ratio(), 0.0);
        assert!(log.size_bytes() < size);
        assert_eq!(
            (log.start_offset(), log.end_offset()),
            (0, end),
            "offsets never move"
        );
        let got = check_consistent(&log, &appended);
        let base = active_base(dir.path());
        for (key, n) in closed_counts(&got, base) {
            assert_eq!(n, 1, "{key:?} in the closed segments ({codec:?})");
        }
        // A read from inside a gap gets the next record after it.
        let gap = (1..end)
            .find(|o| got.binary_search_by_key(o, |r| r.offset).is_err())
            .unwrap();
        let after = log.read(gap, 1, 1 << 20).unwrap();
        assert!(after[0].offset > gap);
        // Nothing left to do; and the same after a reopen.
        assert_eq!(log.compact(&opts(0)).unwrap().segments, 0);
        drop(log);
        drop(storage);
        let (_storage, log) = common::open(dir.path(), LOG, config(codec));
        assert_eq!(log.dirty_ratio(), 0.0, "the checkpoint survives a reopen");
        assert_eq!(check_consistent(&log, &appended).len(), got.len());
        let report = log.verify();
        assert!(report.is_ok(), "{report:?}");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Records of `key` in the closed segments.
fn closed_of<'a>(got: &'a [StoredRecord], key: &Bytes, base: u64) -> Vec<&'a StoredRecord> {
    got.iter()
        .filter(|r| r.key == *key && r.offset < base)
        .collect()
}

#[test]
fn tombstones_delete_their_key_and_go_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), LOG, config(Codec::None));
    fill(&log, 20, 20);
    let deleted: Vec<Bytes> = (0..5).map(|k| Bytes::from(format!("key-{k}"))).collect();
    for key in &deleted {
        let t = tombstone(std::str::from_utf8(key).unwrap());
        log.append(std::slice::from_ref(&t), ProducerStamp::default())
            .unwrap();
    }
    // Keyless records after them, so the tombstones lie in closed segments.
    while active_base(dir.path()) < log.end_offset() - 100 || log.segment_count() < 6 {
        let filler = Record {
            key: Bytes::new(),
            ..keyed("", 0)
        };
        log.append(&[filler], ProducerStamp::default()).unwrap();
    }
    let base = active_base(dir.path());
    // Within their retention the tombstones stay, alone: their keys' values are gone.
    let now = now_ms();
    log.compact(&opts(now)).unwrap();
    let got = read_all(&log);
    for key in &deleted {
        let left = closed_of(&got, key, base);
        assert_eq!(left.len(), 1, "{key:?}: {} records", left.len());
        assert!(left[0].value.is_empty(), "{key:?}: the tombstone");
    }
    let kept = Bytes::from_static(b"key-8");
    assert_eq!(
        closed_of(&got, &kept, base).len(),
        1,
        "other keys keep their newest"
    );
    // Past it, they go too; other keys stay.
    let report = log.compact(&opts(now + 61_000)).unwrap();
    assert_eq!(report.records_removed, 5, "{report:?}");
    let got = read_all(&log);
    for key in &deleted {
        assert!(closed_of(&got, key, base).is_empty(), "{key:?}");
    }
    assert_eq!(closed_of(&got, &kept, base).len(), 1);
}

#[test]
fn a_small_key_map_cleans_over_several_passes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), LOG, config(Codec::Lz4));
    let appended = fill(&log, 200, 10);
    let small = CompactOptions {
        max_keys: 30,
        ..opts(0)
    };
    let mut passes = 0;
    while log.dirty_ratio() > 0.0 {
        passes += 1;
        assert!(passes < 200, "passes never finish");
        log.compact(&small).unwrap();
    }
    assert!(passes > 3, "{passes} passes");
    let got = check_consistent(&log, &appended);
    for (key, n) in closed_counts(&got, active_base(dir.path())) {
        assert_eq!(n, 1, "{key:?}");
    }
}

#[test]
fn the_last_record_of_the_log_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_age: Some(std::time::Duration::from_secs(3600)),
        ..config(Codec::None)
    };
    let (_storage, log) = common::open(dir.path(), LOG, config);
    fill(&log, 10, 30);
    let end = log.end_offset();
    // A value of key-3 and its tombstone end the log, the active segment is then closed
    // empty, and the tombstone's retention passes: the tombstone stays all the same.
    log.append(&[keyed("key-3", end)], ProducerStamp::default())
        .unwrap();
    log.append(&[tombstone("key-3")], ProducerStamp::default())
        .unwrap();
    assert!(log.roll_if_aged(i64::MAX).unwrap());
    log.compact(&opts(i64::MAX / 2)).unwrap();
    let got = read_all(&log);
    let last = got.last().unwrap();
    assert_eq!((last.offset, last.value.len()), (end + 1, 0));
    assert!(got.iter().all(|r| r.key != "key-3" || r.offset == end + 1));
    assert_eq!(log.end_offset(), end + 2);
}

/// Fails one step of a segment's rewrite (`op` on files under `at`, relative to the log's
/// directory, or on any file of the log), then reopens the log as after a crash there:
/// reads are consistent, and later passes finish the job.
fn crash_at(op: Op, at: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join(LOG);
    let appended = {
        let (_storage, log) = common::open(dir.path(), LOG, config(Codec::None));
        let appended = fill(&log, 30, 30);
        let target = at.map_or(log_dir.clone(), |f| log_dir.join(f));
        faults::fail(&target, op, 1, 5);
        let r = log.compact(&opts(0));
        faults::clear(&target);
        assert!(r.is_err(), "{op:?} {at:?}: the pass failed");
        check_consistent(&log, &appended);
        appended
    };
    let (_storage, log) = common::open(dir.path(), LOG, config(Codec::None));
    check_consistent(&log, &appended);
    let damage = log.verify().unwrap();
    assert!(damage.is_empty(), "{damage:?}");
    while log.dirty_ratio() > 0.0 {
        log.compact(&opts(0)).unwrap();
    }
    let got = check_consistent(&log, &appended);
    for (key, n) in closed_counts(&got, active_base(dir.path())) {
        assert_eq!(n, 1, "{op:?} {at:?}: {key:?}");
    }
}

#[test]
fn a_crash_while_writing_the_cleaned_segment_leaves_the_old_one() {
    crash_at(Op::Write, None);
}

#[test]
fn a_crash_before_the_cleaned_segment_is_synced_leaves_the_old_one() {
    crash_at(Op::Sync, None);
}

#[test]
fn a_crash_at_the_swap_leaves_the_old_segment_and_after_it_the_new_one() {
    // The log's rename is the commit point; a crash before its index's leaves the new
    // segment with the old index files, which readers find out and rebuild.
    crash_at(Op::Rename, Some("00000000000000000000.log"));
    crash_at(Op::Rename, Some("00000000000000000000.index"));
}
