//! Compressed logs end to end: what is appended reads back byte-identical, before and after
//! a reopen, from any offset; the bytes on disk shrink; a batch of a newer format is
//! refused rather than cut; damage inside a compressed chunk is found by reads and verify;
//! and inflated chunks stay within the storage's decompression budget.

mod common;

use std::fs;

use bytes::Bytes;
use spool_storage::batch::{
    self, COMPRESSED_HEADER_LEN, COMPRESSED_VERSION, CRC_START, SPARSE_VERSION,
};
use spool_storage::config::{Codec, Compression};
use spool_storage::{Durability, Error, LogConfig, ProducerStamp, Record, Storage, StorageConfig};

const LOG: &str = "events/0";

fn config(codec: Codec) -> LogConfig {
    LogConfig {
        compression: Compression { codec, level: 0 },
        ..common::small_config(Durability::Never)
    }
}

/// JSON events: realistic, compressible, every one different.
fn events(base: u64, n: u64) -> Vec<Record> {
    (base..base + n)
        .map(|i| Record {
            key: Bytes::from(format!("user-{}", i % 97)),
            value: Bytes::from(format!(
                r#"{{"event":"page_view","user":"user-{}","session":"{:016x}","path":"/products/{}","referrer":"https://example.com/search?q=item{}","ts":{}}}"#,
                i % 97,
                i.wrapping_mul(0x9e37_79b9),
                i % 1_000,
                i % 37,
                1_765_000_000_000u64 + i
            )),
            headers: vec![spool_storage::Header {
                key: "content-type".into(),
                value: Bytes::from_static(b"application/json"),
            }],
            timestamp_ms: 1_765_000_000_000 + i as i64,
        })
        .collect()
}

/// Appends `batches` batches of `per` events; returns everything appended.
fn fill(log: &spool_storage::Log, batches: u64, per: u64) -> Vec<Record> {
    let mut all = Vec::new();
    for _ in 0..batches {
        let records = events(log.end_offset(), per);
        log.append(&records, ProducerStamp::default()).unwrap();
        all.extend(records);
    }
    all
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    common::segment_files(LOG, dir)
        .iter()
        .map(|f| {
            let data = fs::read(f).unwrap();
            common::batch_starts(&data).1 as u64
        })
        .sum()
}

#[test]
fn compressed_logs_read_back_every_record_from_any_offset_across_reopens() {
    let plain_dir = tempfile::tempdir().unwrap();
    let (_s, plain) = common::open(plain_dir.path(), LOG, config(Codec::None));
    let want = fill(&plain, 100, 100);
    for codec in [Codec::Lz4, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_s, log) = common::open(dir.path(), LOG, config(codec));
            assert_eq!(fill(&log, 100, 100), want);
            common::assert_records(&common::read_all(&log, 0), 0, &want);
            assert!(log.segment_count() > 1, "rolls happened");
        }
        let (_s, log) = common::open(dir.path(), LOG, config(codec));
        assert_eq!(log.end_offset(), 10_000);
        common::assert_records(&common::read_all(&log, 0), 0, &want);
        for from in [1, 99, 100, 7_777, 9_999] {
            let got = log.read(from, 3, usize::MAX).unwrap();
            let until = (from as usize + 3).min(want.len());
            common::assert_records(&got, from, &want[from as usize..until]);
        }
        assert!(log.verify().unwrap().is_empty());
        let (small, big) = (disk_bytes(dir.path()), disk_bytes(plain_dir.path()));
        assert!(
            small * 2 < big,
            "{codec:?}: {small} bytes on disk, {big} uncompressed"
        );
    }
}

#[test]
fn a_batch_of_a_newer_format_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_s, log) = common::open(dir.path(), LOG, config(Codec::Zstd));
        fill(&log, 3, 20);
    }
    let file = common::segment_files(LOG, dir.path()).pop().unwrap();
    let mut data = fs::read(&file).unwrap();
    let (starts, _) = common::batch_starts(&data);
    let last = *starts.last().unwrap();
    let end = last + batch::decode_header(&data[last..]).unwrap().total_len;
    data[last + 16] = SPARSE_VERSION + 1;
    // A newer build's batch differs inside the CRC too (attributes it alone knows).
    data[last + 22] = 0x80;
    let crc = crc32fast::hash(&data[last + CRC_START..end]);
    data[last + 17..last + 21].copy_from_slice(&crc.to_le_bytes());
    fs::write(&file, &data).unwrap();
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    let e = storage
        .open_log(LOG, config(Codec::Zstd))
        .err()
        .expect("refused");
    assert!(matches!(e, Error::NewerFormat { version: 5, .. }), "{e}");
    assert_eq!(fs::read(&file).unwrap(), data, "nothing was cut");
}

#[test]
fn a_chunk_that_does_not_inflate_is_damage_to_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let want = {
        let (_s, log) = common::open(dir.path(), LOG, config(Codec::Lz4));
        fill(&log, 6, 20)
    };
    let file = common::segment_files(LOG, dir.path())[0].clone();
    let mut data = fs::read(&file).unwrap();
    let (starts, _) = common::batch_starts(&data);
    // Scramble the stored bytes of the second batch's chunk, then fix its CRC, as a bug
    // in a compressor (not the disk) would leave it.
    let at = starts[1];
    let h = batch::check(&data[at..]).unwrap();
    assert_eq!(h.version, COMPRESSED_VERSION);
    for b in &mut data[at + COMPRESSED_HEADER_LEN + 12..at + h.total_len] {
        *b = b.rotate_left(3);
    }
    let crc = crc32fast::hash(&data[at + CRC_START..at + h.total_len]);
    data[at + 17..at + 21].copy_from_slice(&crc.to_le_bytes());
    fs::write(&file, &data).unwrap();

    let (_s, log) = common::open(dir.path(), LOG, config(Codec::Lz4));
    let e = log.read(h.base_offset, 1, usize::MAX).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { offsets: Some(o), .. } if *o == (20..40)),
        "{e}"
    );
    let got = log.read(0, usize::MAX, usize::MAX).unwrap();
    common::assert_records(&got, 0, &want[..20]);
    let damage = log.verify().unwrap();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].offsets, 20..40);
    assert!(
        damage[0].reason.contains("do not decode"),
        "{}",
        damage[0].reason
    );
}

#[test]
fn reads_stay_within_the_decompression_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 64 * 1024;
    let storage = Storage::open(
        dir.path(),
        StorageConfig {
            decompress_budget_bytes: budget,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    let log = storage.open_log(LOG, config(Codec::Zstd)).unwrap();
    // Batches of ~40 KiB raw: one fits the budget, two do not.
    let want = fill(&log, 8, 200);
    let first = log.read(0, usize::MAX, usize::MAX).unwrap();
    assert_eq!(first.len(), 200, "a read returns what the budget held");
    common::assert_records(&first, 0, &want[..200]);
    let e = log.read(200, 1, usize::MAX).unwrap_err();
    assert!(
        matches!(e, Error::DecompressBudget { limit, .. } if limit == budget),
        "{e}"
    );
    drop(first);
    // Reading on while dropping what was read never runs out.
    let mut next = 0;
    while next < log.end_offset() {
        let got = log.read(next, usize::MAX, usize::MAX).unwrap();
        common::assert_records(&got, next, &want[next as usize..next as usize + got.len()]);
        next += got.len() as u64;
    }
}
