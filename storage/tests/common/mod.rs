//! Helpers shared by the storage integration tests: opening a log, deterministic record
//! contents, comparing what a log returns with what was appended, and counting the maps
//! and descriptors the process holds on a data directory.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use spool_storage::{
    Durability, Header, Log, LogConfig, ProducerStamp, Record, Storage, StorageConfig, StoredRecord,
};

/// The smallest segments the log accepts, so a few hundred KiB roll several times.
pub const SMALL_SEGMENT: u64 = 64 * 1024;

/// A config with small segments and dense indexes, so rolls and index lookups happen.
pub fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: SMALL_SEGMENT,
        index_interval_bytes: 512,
        preallocate_bytes: 16 * 1024,
        durability,
        ..LogConfig::default()
    }
}

/// Opens the storage at `dir` and the log `name` in it.
pub fn open(dir: &Path, name: &str, config: LogConfig) -> (Storage, Arc<Log>) {
    let storage = Storage::open(dir, StorageConfig::default()).expect("open storage");
    let log = storage.open_log(name, config).expect("open log");
    (storage, log)
}

/// A record whose every byte follows from `offset` and `salt`: key, value of a length
/// varying with the offset (zero-free, so a cut file never ends in "valid" zeros by
/// accident), two headers with a repeated key, and a timestamp.
pub fn record_for(offset: u64, salt: u64, timestamp_ms: i64) -> Record {
    let len = 20 + ((offset.wrapping_mul(7919) ^ salt) % 180) as usize;
    let value: Vec<u8> = (0..len)
        .map(|i| 1 + ((offset as usize + i * 31 + salt as usize) % 251) as u8)
        .collect();
    Record {
        key: Bytes::from(format!("key-{offset}-{salt}")),
        value: Bytes::from(value),
        headers: vec![
            Header {
                key: "h".into(),
                value: Bytes::from(offset.to_le_bytes().to_vec()),
            },
            Header {
                key: "h".into(),
                value: Bytes::from(salt.to_le_bytes().to_vec()),
            },
        ],
        timestamp_ms,
    }
}

/// Appends `count` records made by [`record_for`] as one batch; returns them.
pub fn append_batch(log: &Log, count: u64, salt: u64, timestamp_ms: i64) -> Vec<Record> {
    let base = log.end_offset();
    let records: Vec<Record> = (0..count)
        .map(|i| record_for(base + i, salt, timestamp_ms))
        .collect();
    let a = log
        .append(&records, ProducerStamp::default())
        .expect("append");
    assert_eq!(a.base_offset, base);
    assert_eq!(u64::from(a.record_count), count);
    assert!(!a.duplicate);
    records
}

/// Asserts that `got` holds exactly `want`, the records at offsets `first..`.
pub fn assert_records(got: &[StoredRecord], first: u64, want: &[Record]) {
    assert_eq!(
        got.len(),
        want.len(),
        "record count from offset {first}: got offsets {:?}",
        got.iter().map(|r| r.offset).collect::<Vec<_>>()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_record(g, first + i as u64, w);
    }
}

/// Asserts that one stored record is `want` at `offset`.
pub fn assert_record(got: &StoredRecord, offset: u64, want: &Record) {
    assert_eq!(got.offset, offset, "offset");
    assert_eq!(got.key, want.key, "key at offset {offset}");
    assert_eq!(got.value, want.value, "value at offset {offset}");
    assert_eq!(got.headers, want.headers, "headers at offset {offset}");
    assert_eq!(
        got.timestamp_ms, want.timestamp_ms,
        "timestamp at offset {offset}"
    );
}

/// Reads every record from `from` to the end offset.
pub fn read_all(log: &Log, from: u64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.end_offset() {
        let got = log
            .read(next, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("read at {next}: {e}"));
        assert!(!got.is_empty(), "empty read at {next} below the end");
        assert_eq!(got[0].offset, next, "read starts at the requested offset");
        next = got.last().expect("non-empty").offset + 1;
        out.extend(got);
    }
    out
}

/// Reads every record from `from` up to (not including) `until`, which must be readable.
pub fn read_all_until(log: &Log, from: u64, until: u64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = from;
    while next < until {
        let got = log
            .read(next, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("read at {next}: {e}"));
        assert!(!got.is_empty(), "empty read at {next} below {until}");
        assert_eq!(got[0].offset, next, "read starts at the requested offset");
        out.extend(got.into_iter().take_while(|r| r.offset < until));
        next = out.last().map_or(until, |r| r.offset + 1);
    }
    out
}

/// FNV-1a over a batch's keys and values: a checksum a child process reports and the
/// parent recomputes from what it reads back.
pub fn checksum<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in records {
        for part in [k, v] {
            for &b in (part.len() as u64).to_le_bytes().iter().chain(part) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// A temporary directory on a RAM file system when one with room for `need_bytes` exists
/// (`/dev/shm`), else the default temporary directory. For tests of recovery logic rather
/// than of the disk: they reopen logs thousands of times, every open fsyncs, and on a busy
/// disk those fsyncs alone take minutes.
pub fn ram_tempdir(need_bytes: u64) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if let Ok(st) = rustix::fs::statvfs(shm)
        && st.f_bavail.saturating_mul(st.f_frsize) >= need_bytes.saturating_mul(2)
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

/// Lines of `/proc/self/maps` naming a file under `dir`.
pub fn mapped_files_under(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains(needle.as_str()))
        .count()
}

/// Open descriptors of this process pointing under `dir`.
pub fn fds_under(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let Ok(entry) = entry else { continue };
        // A descriptor may close between listing and reading the link: skip it.
        if let Ok(target) = std::fs::read_link(entry.path())
            && target.starts_with(dir)
        {
            n += 1;
        }
    }
    n
}

/// Byte positions where each batch of a segment file starts, and the end of the last
/// whole batch, found by walking the headers (length field at bytes 8..12).
pub fn batch_starts(data: &[u8]) -> (Vec<usize>, usize) {
    let mut starts = Vec::new();
    let mut pos = 0;
    while let Ok(h) = spool_storage::batch::check(&data[pos..]) {
        starts.push(pos);
        pos += h.total_len;
    }
    (starts, pos)
}

/// A random seed, printed so a failure can be replayed with `SPOOL_TEST_SEED`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with SPOOL_TEST_SEED={seed})");
    seed
}

/// The `.log` files of the log `log` under `root`, in offset order.
pub fn segment_files(log: &str, root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(log))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}
