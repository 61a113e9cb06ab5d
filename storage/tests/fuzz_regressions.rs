//! Regression tests found by fuzzing (`fuzz/`, see docs/reliability.md, "Fuzzing").
//!
//! Each crash input is kept under `fuzz/regressions/<target>/` and replayed here through the
//! very harness the fuzz target runs: the harness modules are included from `fuzz/src/` by
//! path (they use only what this crate's tests have: `bytes`, `crc32fast`, `tempfile`).

// The harnesses, shared with the fuzz targets. Not every helper is used by every replay.
#[allow(dead_code)]
#[path = "../../fuzz/src/batch_decode.rs"]
mod batch_decode;
#[allow(dead_code)]
#[path = "../../fuzz/src/index_parse.rs"]
mod index_parse;
#[allow(dead_code)]
#[path = "../../fuzz/src/input.rs"]
mod input;
#[allow(dead_code)]
#[path = "../../fuzz/src/segment_recovery.rs"]
mod segment_recovery;

use bytes::Bytes;
use spool_storage::batch::{self, Batch, BatchError};
use spool_storage::{LogConfig, ProducerStamp, Record, Storage, StorageConfig};

/// Found by `batch_decode` (round-trip mode, base offset `u64::MAX`, one record): the decoder
/// accepted a header whose offsets run past `u64::MAX`, so `BatchHeader::next_offset` and
/// `Batch::records` overflowed (a panic in debug builds, wrapped offsets in release).
/// Fixed in `batch::decode_header`, which now refuses such a header.
#[test]
fn batch_decode_refuses_offsets_past_u64_max() {
    batch_decode::run(include_bytes!(
        "../../fuzz/regressions/batch_decode/offsets_past_u64_max"
    ));

    let record = Record {
        value: Bytes::from_static(b"v"),
        ..Record::default()
    };
    let mut buf = Vec::new();
    batch::encode(
        &mut buf,
        u64::MAX - 1,
        ProducerStamp::default(),
        &[record.clone(), record],
        0,
    );
    assert_eq!(
        Batch::parse(&Bytes::from(buf)).err(),
        Some(BatchError::BadRecord("offsets run past u64::MAX"))
    );
}

/// Found by `segment_recovery`: two segments, the last without a `.producers` snapshot, the
/// previous one with an empty `.log` and a valid (CRC-correct) snapshot whose `position` is
/// past the end of that log. `recovery::producers_after` called `segment::hop` at that
/// position, which sliced `data[pos..]` out of range: "range start index 18 out of range
/// for slice of length 0" at segment.rs `hop`. Opening the log panicked. Fixed in
/// `segment::hop`, which now answers `Truncated` for a position past the data.
///
/// The input's last segment is named `u64::MAX`, which the harness now skips (logs near
/// `u64::MAX`), so the same files are also written directly here with small bases.
#[test]
fn recovery_ignores_snapshot_positioned_past_previous_segment() {
    segment_recovery::run(include_bytes!(
        "../../fuzz/regressions/segment_recovery/snapshot_position_past_previous_segment"
    ));

    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join(format!("{:020}.log", 0)), b"").unwrap();
    std::fs::write(
        log_dir.join(format!("{:020}.producers", 0)),
        snapshot(18, 0),
    )
    .unwrap();
    std::fs::write(log_dir.join(format!("{:020}.log", 1)), b"").unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), 1);
}

/// A `.producers` snapshot with no producers (docs/format.md, "segment snapshot").
fn snapshot(position: u64, next_offset: u64) -> Vec<u8> {
    let mut out = b"SPLP".to_vec();
    out.push(2);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&i64::MIN.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Found by `segment_recovery`: two segments, bases `u64::MAX - 379` and `u64::MAX - 378`;
/// the closed one holds a single CRC-valid batch of two records (offsets `MAX-379` and
/// `MAX-378`), so its last record overlaps the next segment's first offset. After an
/// append of one record at `MAX-378` to the last segment, `Log::read(MAX-379, ..)` returned
/// the closed segment's stale record at `MAX-378` instead of the acknowledged one: the read
/// loop only stopped at the log's end offset, not at the segment's end. Fixed in
/// `Log::read`, which now stops each batch at its segment's end and moves to the next
/// segment. (The large bases are incidental; any overlapping batch did it.)
///
/// The harness now skips logs near `u64::MAX`, so the case is also built directly with
/// bases 0 and 1.
#[test]
fn read_does_not_serve_a_batch_past_its_segment_end() {
    segment_recovery::run(include_bytes!(
        "../../fuzz/regressions/segment_recovery/batch_running_past_its_segment_end"
    ));

    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    let stale = Record {
        value: Bytes::from_static(b"stale"),
        ..Record::default()
    };
    let mut buf = Vec::new();
    batch::encode(
        &mut buf,
        0,
        ProducerStamp::default(),
        &[stale.clone(), stale],
        0,
    );
    std::fs::write(log_dir.join(format!("{:020}.log", 0)), &buf).unwrap();
    std::fs::write(log_dir.join(format!("{:020}.log", 1)), b"").unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    let a = log
        .append(&[one_record()], ProducerStamp::default())
        .unwrap();
    assert_eq!(a.base_offset, 1);
    let got = log.read(0, 10, usize::MAX).unwrap();
    let values: Vec<&[u8]> = got.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [&b"stale"[..], &b"v"[..]],
        "offset 1 is the appended record"
    );
}

/// Found by `segment_recovery`: a single segment named `18446744073709551615.log` (base
/// `u64::MAX`) with a raw `.index` holding an entry `rel = 1, pos = 0`. Recovery computed
/// `base + rel` for the scan start ("attempt to add with overflow" at recovery.rs
/// `recover_tail`, step 1). Fixed there by skipping an entry whose offset would pass
/// `u64::MAX`; `Segment::locate` and `Segment::time_start` got the same `checked_add`.
///
/// The harness now skips logs at base `u64::MAX`, so the case is also built directly: a
/// segment at `u64::MAX - 10` holding one batch, and an index entry `rel = 100, pos = 0`.
#[test]
fn recovery_skips_index_entry_past_u64_max() {
    segment_recovery::run(include_bytes!(
        "../../fuzz/regressions/segment_recovery/index_entry_past_u64_max"
    ));

    let base = u64::MAX - 10;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut buf = Vec::new();
    batch::encode(&mut buf, base, ProducerStamp::default(), &[one_record()], 0);
    std::fs::write(log_dir.join(format!("{base:020}.log")), &buf).unwrap();
    let mut index = 100u32.to_le_bytes().to_vec();
    index.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(log_dir.join(format!("{base:020}.index")), index).unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), base + 1);
    assert_eq!(log.read(base, 10, usize::MAX).unwrap().len(), 1);
}

fn one_record() -> Record {
    Record {
        value: Bytes::from_static(b"v"),
        ..Record::default()
    }
}

/// Found by `segment_recovery` against work in progress on recovery (resuming the scan after
/// damage inside the last segment): a segment whose valid batches end at offset `u64::MAX`
/// followed by bytes that are not a batch made `recover_tail` compute `expected + 1` for
/// `segment::resync` ("attempt to add with overflow", recovery.rs); opening the log
/// panicked. Fixed outside this file (`saturating_add`). The harness skips logs near
/// `u64::MAX`; the input is kept at
/// `fuzz/regressions/segment_recovery/recovery_resync_at_u64_max_end`.
#[test]
fn recovery_of_a_log_ending_at_u64_max_with_a_damaged_tail_does_not_panic() {
    let base = u64::MAX - 1;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut buf = Vec::new();
    batch::encode(&mut buf, base, ProducerStamp::default(), &[one_record()], 0);
    buf.extend_from_slice(b"not a batch");
    std::fs::write(log_dir.join(format!("{base:020}.log")), &buf).unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), u64::MAX);
}

/// Found by `segment_recovery` (an out-of-memory, not a panic): a CRC-valid batch whose
/// header claims 83,886,081 records in a few dozen bytes. `Batch::records` reserved
/// `record_count` entries up front, an 8.7 GB allocation, before finding the records
/// missing. Fixed in `Batch::records`, which bounds the reservation by the batch's bytes.
/// Replayed through the harness, and directly with `record_count = u32::MAX` (a ~450 GB
/// reservation, which aborts the test process without the fix).
#[test]
fn records_of_a_batch_claiming_billions_do_not_allocate_for_them() {
    segment_recovery::run(include_bytes!(
        "../../fuzz/regressions/segment_recovery/huge_record_count_allocates_gib"
    ));

    let record = Record {
        value: Bytes::from_static(b"v"),
        ..Record::default()
    };
    let mut buf = Vec::new();
    batch::encode(&mut buf, 0, ProducerStamp::default(), &[record], 0);
    buf[23..27].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32fast::hash(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_le_bytes());
    let batch = Batch::parse(&Bytes::from(buf)).expect("the header and CRC are valid");
    assert!(batch.records().is_err());
}

/// Found by `segment_recovery` with the empty input: a log whose only segment is named
/// `18446744073709551615.log` (base offset `u64::MAX`) opens with end offset `u64::MAX`, and
/// an append then overflows computing `next_offset` in `Log::write_batch` ("attempt to add
/// with overflow"; in release the end offset would wrap to 0). Fixed outside this file:
/// `Log::append` now answers `Error::LogFull`. The input is kept at
/// `fuzz/regressions/segment_recovery/append_at_u64_max_end`; the harness skips logs that
/// reach `u64::MAX` (for the recovery bug below), so the case is built directly here.
#[test]
fn append_whose_offsets_pass_u64_max_fails_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join(format!("{:020}.log", u64::MAX)), b"").unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    assert_eq!(log.end_offset(), u64::MAX);
    let record = Record {
        value: Bytes::from_static(b"v"),
        ..Record::default()
    };
    assert!(log.append(&[record], ProducerStamp::default()).is_err());
    assert_eq!(log.end_offset(), u64::MAX);
}

/// Found by `segment_recovery` (a hang, so libFuzzer kept no input; these files reproduce
/// it): a CRC-valid `.producers` snapshot of an empty last segment that remembers producer 1
/// with sequence 0 at offsets `1000..1001`, past the log's end. A retry of sequence 0 is
/// judged a duplicate of those offsets, and `Log::append` (durability `Always`) then calls
/// `sync_to(1001)`, which loops for ever: the durable offset never passes the end offset 0.
/// Beyond the hang, the append is acknowledged as a duplicate of records that do not exist.
/// Needs a decision (check snapshot producer entries against the log on recovery, and/or
/// never answer a duplicate beyond the end), so it is left open.
#[test]
fn append_of_a_duplicate_past_the_end_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join(format!("{:020}.log", 0)), b"").unwrap();
    let mut snap = b"SPLP".to_vec();
    snap.push(2);
    snap.extend_from_slice(&0u64.to_le_bytes()); // position
    snap.extend_from_slice(&0u64.to_le_bytes()); // next_offset
    snap.extend_from_slice(&i64::MIN.to_le_bytes()); // max_timestamp
    snap.extend_from_slice(&0u32.to_le_bytes()); // max_relative_offset
    snap.extend_from_slice(&1u32.to_le_bytes()); // producer_count
    snap.extend_from_slice(&1u64.to_le_bytes()); // producer_id
    snap.extend_from_slice(&0u16.to_le_bytes()); // producer_epoch
    snap.push(1); // n
    snap.extend_from_slice(&0u64.to_le_bytes()); // sequence
    snap.extend_from_slice(&1000u64.to_le_bytes()); // base_offset
    snap.extend_from_slice(&1u32.to_le_bytes()); // record_count
    let crc = crc32fast::hash(&snap);
    snap.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(log_dir.join(format!("{:020}.producers", 0)), snap).unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stamp = ProducerStamp {
        producer_id: 1,
        producer_epoch: 0,
        sequence: 0,
    };
    // The append runs on its own thread so a hang fails the test instead of stalling it.
    std::thread::spawn(move || {
        let _ = tx.send(log.append(&[one_record()], stamp).map(|a| a.base_offset));
    });
    let answer = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("append did not return within 10 s");
    assert!(
        !matches!(answer, Ok(base) if base >= 1000),
        "acknowledged as a duplicate of offsets past the end: {answer:?}"
    );
}

/// Found by `segment_recovery`: an acknowledged append lost on reopen. Segment 0's `.log`
/// holds one CRC-valid batch at position 0 whose base offset is 195, and its `.index` an
/// entry `rel = 195, pos = 0`. The first open trusts the entry (the batch there has the
/// offset it claims), so the log ends at 196 and an append lands at 196. The second open
/// (the `.index` and `.timeindex` now as the first open rewrote them) scans the segment from
/// its start, where offset 0 is expected, finds 195, and cuts the whole file: end offset 0,
/// the acknowledged record gone. Recovery accepted a log through the index that a scan from
/// the start rejects (an entry at position 0 must have `rel = 0`; more generally nothing
/// checks the batches before the entry chain up to it when the scan starts at position 0).
/// No longer reproduces with the index write changes made meanwhile in `log.rs` (not by
/// this test's author); the first open still accepts a segment whose first batch does not
/// carry the segment's base offset. Input kept at
/// `fuzz/regressions/segment_recovery/index_entry_at_start_with_wrong_offset`.
#[test]
fn acknowledged_append_survives_reopen_after_index_claims_a_wrong_first_offset() {
    segment_recovery::run(include_bytes!(
        "../../fuzz/regressions/segment_recovery/index_entry_at_start_with_wrong_offset"
    ));

    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("l");
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut buf = Vec::new();
    batch::encode(&mut buf, 195, ProducerStamp::default(), &[one_record()], 0);
    std::fs::write(log_dir.join(format!("{:020}.log", 0)), &buf).unwrap();
    let mut index = 195u32.to_le_bytes().to_vec();
    index.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(log_dir.join(format!("{:020}.index", 0)), index).unwrap();
    let acked = {
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let log = storage.open_log("l", LogConfig::default()).unwrap();
        let a = log
            .append(&[one_record()], ProducerStamp::default())
            .unwrap();
        a.base_offset + u64::from(a.record_count)
    };
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_log("l", LogConfig::default()).unwrap();
    assert!(
        log.end_offset() >= acked,
        "acknowledged offsets up to {acked} lost: end offset {} after reopen",
        log.end_offset()
    );
}

/// The `index_parse` harness runs in the normal suite too (no crash input so far), so it
/// keeps compiling against the storage crate.
#[test]
fn index_parse_harness_runs_on_a_sample() {
    let mut sample = vec![0u8; 2];
    sample.extend_from_slice(&[0; 4 * 4 + 4 * 9]);
    for (rel, pos) in [(0u32, 0u32), (3, 100), (9, 250)] {
        sample.extend_from_slice(&rel.to_le_bytes());
        sample.extend_from_slice(&pos.to_le_bytes());
    }
    index_parse::run(&sample);
    index_parse::run(&[]);
}
