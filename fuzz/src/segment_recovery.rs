//! Harness of the `segment_recovery` target: a log directory whose segment files
//! (`.log`, `.index`, `.timeindex`, `.producers`) are made from fuzz input is opened,
//! read whole, verified, searched by time, appended to, and reopened.
//!
//! Properties:
//! - nothing panics, and opening succeeds whatever the files hold (damage is recovered or
//!   reported, the log still opens);
//! - every record a read returns is a record of a batch that passes its CRC in the files as
//!   they were written (or the batch the harness appended), at the offset it claims;
//! - reads return consecutive offsets from the one asked for;
//! - `offset_for_timestamp` answers an offset inside the log;
//! - after an acknowledged append and a reopen, the end offset covers the append and the
//!   appended record reads back.
//!
//! Input (see [`Reader`]): flags, segment base choice, log config, then per segment its
//! `.log` (raw bytes, possibly CRC-fixed, or batches built by `batch::encode` and then
//! damaged), `.index`, `.timeindex` and `.producers` (absent, raw, or derived from the
//! built log and then damaged), then the queries and the appended record.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use spool_storage::batch::{self, Batch, MIN_HEADER_LEN};
use spool_storage::{
    Durability, Error, LogConfig, ProducerStamp, Record, Storage, StorageConfig, StoredRecord,
};

use crate::batch_decode::record;
use crate::input::Reader;

/// Every record of a CRC-valid batch found anywhere in the written files, by offset.
type Oracle = HashMap<u64, Vec<StoredRecord>>;

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let base = match r.u8() % 8 {
        0 => u64::MAX - u64::from(r.u16()),
        1 => u64::from(r.u32()),
        2 => 1 << 32,
        3 => u64::from(r.u8()),
        _ => 0,
    };
    let config = LogConfig {
        segment_bytes: spool_storage::config::MIN_SEGMENT_BYTES,
        index_interval_bytes: 1 + u32::from(r.u8()) * 8,
        preallocate_bytes: 4096,
        // Not `Always`: with it, an append judged a duplicate of offsets past the end (a
        // recovered producer entry from a damaged snapshot) hung in `Log::sync_to`
        // (`append_of_a_duplicate_past_the_end_does_not_hang`, fixed since). Reopening
        // in-process reads the page cache, so the append-then-reopen property holds under
        // `Never` too. Worth switching back to `Always` once a run with it is clean.
        durability: Durability::Never,
        ..LogConfig::default()
    };
    // An older, closed segment before the last one: read through the cache, and the source
    // of producer state when the last segment has no usable snapshot.
    let prev_base =
        (flags & 1 == 1 && base > 0).then(|| base.saturating_sub(1 + u64::from(r.u16())));

    let dir = tempdir();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).expect("create log dir");
    let mut oracle = Oracle::new();
    if let Some(prev) = prev_base {
        write_segment(&mut r, &log_dir, prev, &mut oracle);
    }
    write_segment(&mut r, &log_dir, base, &mut oracle);

    if base > u64::MAX - (1 << 40) || oracle.keys().any(|&o| o > u64::MAX - (1 << 40)) {
        // Logs near u64::MAX are skipped: two bugs up there (an overflow on append and one
        // in recovery before `segment::resync`) kept stopping the fuzzer. Both are fixed now
        // and replayed directly by `storage/tests/fuzz_regressions.rs`; this guard can go
        // once a run without it is clean.
        return;
    }
    let queries: Vec<i64> = (0..2)
        .map(|_| r.timestamp())
        .chain([i64::MIN, i64::MAX])
        .collect();
    let appended = record(&mut r, 64);
    let stamp = ProducerStamp {
        producer_id: u64::from(r.u8() % 3),
        producer_epoch: u16::from(r.u8() % 2),
        sequence: u64::from(r.u8() % 4),
    };

    // Open, read, verify, search, append.
    let acked = {
        let storage = Storage::open(dir.path(), StorageConfig::default()).expect("open storage");
        let log = storage
            .open_log("l", config.clone())
            .unwrap_or_else(|e| panic!("opening a damaged log must recover, got: {e}"));
        read_everything(&log, &oracle);
        log.verify()
            .expect("verify reports damage, it does not fail");
        for &ts in &queries {
            if let Ok(o) = log.offset_for_timestamp(ts) {
                assert!(
                    o >= log.start_offset() && o <= log.end_offset(),
                    "offset_for_timestamp({ts}) = {o} outside {}..={}",
                    log.start_offset(),
                    log.end_offset()
                );
            }
        }
        let end_before = log.end_offset();
        match log.append(std::slice::from_ref(&appended), stamp) {
            Ok(a) => {
                if !a.duplicate {
                    assert_eq!(a.base_offset, end_before, "an append lands at the end");
                    assert_eq!(a.record_count, 1);
                    oracle.insert(a.base_offset, vec![stored(&appended, a.base_offset)]);
                }
                Some(a)
            }
            Err(_) => None, // a producer sequence the recovered state refuses, a full log
        }
    };

    // Reopen: the acknowledged append is there.
    let storage = Storage::open(dir.path(), StorageConfig::default()).expect("reopen storage");
    let log = storage
        .open_log("l", config)
        .unwrap_or_else(|e| panic!("reopening must succeed, got: {e}"));
    // Only fresh appends: a duplicate used to be answered with offsets past the end
    // (`append_of_a_duplicate_past_the_end_does_not_hang`, input
    // `duplicate_of_offsets_past_the_end`, fixed since).
    if let Some(a) = acked.filter(|a| !a.duplicate) {
        let acked_end = a.base_offset + u64::from(a.record_count);
        assert!(
            log.end_offset() >= acked_end,
            "acknowledged offsets up to {acked_end} lost: end offset {} after reopen",
            log.end_offset()
        );
        let got = log
            .read(a.base_offset, 1, usize::MAX)
            .unwrap_or_else(|e| panic!("reading the acknowledged append: {e}"));
        assert_eq!(got.first(), Some(&stored(&appended, a.base_offset)));
    }
    read_everything(&log, &oracle);
    log.verify()
        .expect("verify reports damage, it does not fail");
}

/// A temporary directory, in memory when `/dev/shm` exists (fsyncs are then free).
fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn stored(r: &Record, offset: u64) -> StoredRecord {
    StoredRecord {
        offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r.headers.clone(),
    }
}

/// Reads from the start to the end offset, stepping over reported damage, and checks each
/// record against the oracle.
fn read_everything(log: &spool_storage::Log, oracle: &Oracle) {
    let (start, end) = (log.start_offset(), log.end_offset());
    assert!(start <= end, "start offset {start} past end offset {end}");
    let mut next = start;
    for _ in 0..10_000 {
        if next >= end {
            return;
        }
        match log.read(next, 64, 1 << 20) {
            Ok(records) => {
                assert!(
                    !records.is_empty(),
                    "an empty read at {next} below the end {end}"
                );
                for (i, rec) in records.iter().enumerate() {
                    assert_eq!(
                        rec.offset,
                        next + i as u64,
                        "reads return consecutive offsets"
                    );
                    assert!(
                        oracle.get(&rec.offset).is_some_and(|v| v.contains(rec)),
                        "read returned a record that is not the one stored at its offset (in a CRC-valid batch, or the acknowledged append): {rec:?}"
                    );
                }
                next += records.len() as u64;
            }
            Err(Error::Corrupt {
                offsets: Some(lost),
                ..
            }) if lost.end > next => next = lost.end,
            Err(Error::Corrupt { .. }) => return,
            Err(e) => panic!("read at {next} of {start}..{end}: {e}"),
        }
    }
}

/// Writes one segment's files, recording its CRC-valid batches in `oracle`.
fn write_segment(r: &mut Reader<'_>, dir: &Path, base: u64, oracle: &mut Oracle) {
    let name = |ext: &str| dir.join(format!("{base:020}.{ext}"));
    let (log, starts) = log_bytes(r, base);
    learn(&log, oracle);
    std::fs::write(name("log"), &log).expect("write .log");
    if let Some(b) = index_bytes(r, &log, base, &starts) {
        std::fs::write(name("index"), b).expect("write .index");
    }
    if let Some(b) = time_bytes(r, &log, base, &starts) {
        std::fs::write(name("timeindex"), b).expect("write .timeindex");
    }
    if let Some(b) = snapshot_bytes(r, &log, &starts) {
        std::fs::write(name("producers"), b).expect("write .producers");
    }
}

/// Every position of `data` where a CRC-valid batch with decodable records starts.
fn learn(data: &[u8], oracle: &mut Oracle) {
    let bytes = Bytes::copy_from_slice(data);
    for pos in 0..data.len().saturating_sub(MIN_HEADER_LEN - 1) {
        if data[pos + 12..pos + 16] != batch::MAGIC.to_le_bytes() {
            continue;
        }
        if let Ok(b) = Batch::parse(&bytes.slice(pos..))
            && let Ok(records) = b.records()
        {
            for rec in records {
                oracle.entry(rec.offset).or_default().push(rec);
            }
        }
    }
}

/// The `.log` bytes and the positions of the batches the harness built (empty for raw bytes).
fn log_bytes(r: &mut Reader<'_>, base: u64) -> (Vec<u8>, Vec<(usize, batch::BatchHeader)>) {
    let kind = r.u8();
    if kind.is_multiple_of(3) {
        let mut raw = r.bytes(8192).to_vec();
        if kind & 4 != 0 {
            fix_all_crcs(&mut raw);
        }
        return (raw, Vec::new());
    }
    let mut out = Vec::new();
    let mut starts = Vec::new();
    let mut expected = base;
    let mut buf = Vec::new();
    for _ in 0..1 + r.u8() % 8 {
        let count = 1 + r.u8() % 4;
        let records: Vec<Record> = (0..count).map(|_| record(r, 200)).collect();
        let stamp = ProducerStamp {
            producer_id: u64::from(r.u8() % 3),
            producer_epoch: u16::from(r.u8() % 2),
            sequence: u64::from(r.u8() % 8),
        };
        // Usually the offset continuity demands; sometimes a jump or a repeat.
        let at = match r.u8() % 8 {
            0 => expected.wrapping_add(u64::from(r.u8())),
            1 => expected.wrapping_sub(u64::from(r.u8())),
            _ => expected,
        };
        // The append time and the version follow from bytes already read, so inputs saved
        // before they existed still take the paths they found.
        let mut h = batch::encode(&mut buf, at, stamp, &records, at as i64);
        // Now and then a batch as format version 1 (no append time) wrote it.
        if (stamp.sequence + u64::from(count)) % 8 == 7 {
            buf = batch::as_version_1(&buf);
            h = batch::decode_header(&buf).expect("a version 1 batch decodes");
        }
        starts.push((out.len(), h));
        out.extend_from_slice(&buf);
        expected = at.wrapping_add(u64::from(count));
    }
    // Damage: flipped bytes, then maybe CRCs made right again (damage the CRC cannot see),
    // then maybe a cut, then maybe zeros as preallocation leaves them.
    for _ in 0..r.u8() % 4 {
        let at = usize::from(r.u16()) % out.len();
        out[at] ^= r.u8() | 1;
    }
    if kind & 4 != 0 {
        fix_all_crcs(&mut out);
    }
    if kind & 8 != 0 {
        let at = usize::from(r.u16()) % (out.len() + 1);
        out.truncate(at);
    }
    if kind & 16 != 0 {
        out.resize(out.len() + usize::from(r.u16() % 8192), 0);
    }
    (out, starts)
}

/// Walks `data` by the batches' length fields and gives each a correct CRC.
fn fix_all_crcs(data: &mut [u8]) {
    let mut pos = 0;
    while pos + MIN_HEADER_LEN <= data.len() {
        let length = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let total = length as usize + 12;
        if total < MIN_HEADER_LEN || pos + total > data.len() {
            return;
        }
        let crc = crc32fast::hash(&data[pos + 21..pos + total]);
        data[pos + 17..pos + 21].copy_from_slice(&crc.to_le_bytes());
        pos += total;
    }
}

/// Flips a few bytes of a derived file.
fn damage(r: &mut Reader<'_>, bytes: &mut Vec<u8>) {
    for _ in 0..r.u8() % 3 {
        if bytes.is_empty() {
            return;
        }
        let at = usize::from(r.u16()) % bytes.len();
        bytes[at] ^= r.u8() | 1;
    }
    if r.u8().is_multiple_of(4) {
        let at = usize::from(r.u16()) % (bytes.len() + 1);
        bytes.truncate(at);
    }
}

fn index_bytes(
    r: &mut Reader<'_>,
    _log: &[u8],
    base: u64,
    starts: &[(usize, batch::BatchHeader)],
) -> Option<Vec<u8>> {
    match r.u8() % 3 {
        0 => None,
        1 => Some(r.bytes(512).to_vec()),
        _ => {
            let every = 1 + usize::from(r.u8() % 3);
            let mut out = Vec::new();
            for (i, (pos, h)) in starts.iter().enumerate().skip(1) {
                if i % every == 0 {
                    let rel = h.base_offset.wrapping_sub(base) as u32;
                    out.extend_from_slice(&rel.to_le_bytes());
                    out.extend_from_slice(&(*pos as u32).to_le_bytes());
                }
            }
            damage(r, &mut out);
            Some(out)
        }
    }
}

fn time_bytes(
    r: &mut Reader<'_>,
    _log: &[u8],
    base: u64,
    starts: &[(usize, batch::BatchHeader)],
) -> Option<Vec<u8>> {
    match r.u8() % 3 {
        0 => None,
        1 => Some(r.bytes(512).to_vec()),
        _ => {
            let mut out = Vec::new();
            let mut max = i64::MIN;
            for (_, h) in starts {
                if h.max_timestamp_ms > max {
                    max = h.max_timestamp_ms;
                    let rel = h.base_offset.wrapping_sub(base) as u32;
                    out.extend_from_slice(&max.to_le_bytes());
                    out.extend_from_slice(&rel.to_le_bytes());
                }
            }
            damage(r, &mut out);
            Some(out)
        }
    }
}

/// A `.producers` snapshot (docs/format.md, "segment snapshot"), encoded here by hand since
/// the storage crate keeps its type private; with a correct CRC so recovery looks inside.
fn snapshot_bytes(
    r: &mut Reader<'_>,
    log: &[u8],
    starts: &[(usize, batch::BatchHeader)],
) -> Option<Vec<u8>> {
    let kind = r.u8() % 4;
    if kind == 0 {
        return None;
    }
    if kind == 1 {
        let mut raw = r.bytes(256).to_vec();
        if r.bool() {
            let crc = crc32fast::hash(&raw);
            raw.extend_from_slice(&crc.to_le_bytes());
        }
        return Some(raw);
    }
    // A boundary of the built log (or its end), or anywhere.
    let (position, next_offset) = if !starts.is_empty() && !r.u8().is_multiple_of(4) {
        let i = usize::from(r.u8()) % (starts.len() + 1);
        match starts.get(i) {
            Some((pos, h)) => (*pos as u64, h.base_offset),
            None => {
                let (pos, h) = starts[starts.len() - 1];
                (
                    (pos + h.total_len) as u64,
                    h.base_offset.wrapping_add(u64::from(h.record_count)),
                )
            }
        }
    } else {
        (u64::from(r.u32()) % (log.len() as u64 + 64), r.u64())
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"SPLP");
    out.push(2);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&r.timestamp().to_le_bytes());
    out.extend_from_slice(&u32::from(r.u8()).to_le_bytes());
    let producers = r.u8() % 3;
    out.extend_from_slice(&u32::from(producers).to_le_bytes());
    for id in 0..producers {
        out.extend_from_slice(&u64::from(id + 1).to_le_bytes());
        out.extend_from_slice(&u16::from(r.u8() % 2).to_le_bytes());
        let n = r.u8() % 10; // up to 9: one more than the format allows
        out.push(n);
        for _ in 0..n {
            out.extend_from_slice(&u64::from(r.u8() % 8).to_le_bytes());
            out.extend_from_slice(&r.u64().to_le_bytes());
            out.extend_from_slice(&u32::from(r.u8()).to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}
