//! Corruption tests against the real `spoold`: stop it, damage files on disk (seeded random
//! byte flips and truncations, the seed printed), restart it, and check what it serves.
//!
//! Guarded, for closed segments, indexes, topic metadata and the committed-offsets log:
//! the broker still starts (or, for unusable topic metadata, refuses with a message naming
//! the file and what to do); every record outside the damaged range reads back identical;
//! a read inside it answers `DATA_LOSS` naming the lost offsets (never garbage, never a
//! panic) and is counted in `spool_data_loss_errors_total`; and `spoold verify` (run with
//! the broker stopped) lists every damaged range and exits non-zero, and exits 0 on an
//! undamaged directory. Replay a failure with `SPOOL_TEST_SEED=<seed>`.
//!
//! Modules: `segments` (closed segments), `indexes`, `metadata` (topic metadata),
//! `offsets` (the committed-offsets log); the helpers they share are here.

#[path = "../common/mod.rs"]
mod common;
mod indexes;
mod metadata;
mod offsets;
mod segments;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tonic::Code;

const TOPIC: &str = "t";
/// The smallest segment the broker honours: a few hundred KiB make several segments.
const SEGMENT_BYTES: u64 = 64 * 1024;
/// Timestamp of offset 0; offset `o` has `BASE_TS + 10 * o`.
const BASE_TS: i64 = 1_700_000_000_000;

/// A random seed, printed so a failure can be replayed with `SPOOL_TEST_SEED`.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("SPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with SPOOL_TEST_SEED={seed})");
    seed
}

fn value_for(offset: u64) -> String {
    // Varying lengths, and never the batch magic "SPLB".
    format!(
        "record-{offset}-{}",
        "x".repeat((offset % 97) as usize + 50)
    )
}

fn ts_for(offset: u64) -> i64 {
    BASE_TS + 10 * offset as i64
}

/// Starts a broker and fills `partitions` partitions of [`TOPIC`] with `batches` batches of
/// 10 records each (64 KiB segments); stops it gracefully. Returns the stopped broker.
async fn filled_broker(partitions: u32, batches: u64) -> Broker {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    let req = CreateTopicRequest {
        name: TOPIC.into(),
        partitions,
        config: Some(TopicConfig {
            segment_bytes: SEGMENT_BYTES,
            fsync: FsyncPolicy::Never as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req)).await.unwrap();
    for p in 0..partitions {
        for b in 0..batches {
            let records = (b * 10..b * 10 + 10)
                .map(|o| rec_at(value_for(o), ts_for(o)))
                .collect();
            let a = append(&mut c, TOPIC, p, records).await;
            assert_eq!(a.base_offset, b * 10);
        }
    }
    broker.stop().await;
    broker
}

/// A partition's directory.
fn partition_dir(data: &Path, partition: u32) -> PathBuf {
    data.join("topics").join(TOPIC).join(partition.to_string())
}

/// Files of a log directory with extension `ext`, by base offset.
fn segment_files(dir: &Path, ext: &str) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            let base = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (base, p)
        })
        .collect();
    out.sort();
    out
}

/// A batch in a segment file: byte range and offsets (from the documented header layout:
/// base offset u64 at 0, length u32 at 8, record count u32 at 23).
#[derive(Clone, Debug)]
struct BatchAt {
    bytes: std::ops::Range<usize>,
    offsets: std::ops::Range<u64>,
}

fn batches(data: &[u8]) -> Vec<BatchAt> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 27 <= data.len() {
        let base = u64::from_le_bytes(data[pos..pos + 8].try_into().unwrap());
        let len = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(data[pos + 23..pos + 27].try_into().unwrap());
        if len == 0 || pos + 12 + len > data.len() {
            break;
        }
        out.push(BatchAt {
            bytes: pos..pos + 12 + len,
            offsets: base..base + u64::from(count),
        });
        pos += 12 + len;
    }
    out
}

/// Flips `n` random bytes of `path` within `range` (XOR with a non-zero byte); returns the
/// positions.
fn flip_bytes(
    rng: &mut StdRng,
    path: &Path,
    range: std::ops::Range<usize>,
    n: usize,
) -> Vec<usize> {
    let mut data = fs::read(path).unwrap();
    let mut at = Vec::new();
    for _ in 0..n {
        let p = rng.random_range(range.clone());
        data[p] ^= rng.random_range(1..=255u8);
        at.push(p);
    }
    fs::write(path, &data).unwrap();
    eprintln!("flipped bytes {at:?} of {}", path.display());
    at
}

fn truncate(path: &Path, len: usize) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len as u64)
        .unwrap();
    eprintln!("truncated {} to {len} bytes", path.display());
}

/// Runs `spoold verify --data-dir DIR`.
fn verify(data: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .env("SPOOL_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run spoold verify");
    eprintln!(
        "spoold verify: {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_verify_clean(data: &Path) {
    let out = verify(data);
    assert!(
        out.status.success(),
        "verify must exit 0 on an undamaged directory"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no damage found"));
}

/// `spoold verify` found damage: exit 1 and the `offsets a..b lost` ranges it listed.
fn verify_damage(data: &Path) -> (String, Vec<std::ops::Range<u64>>) {
    let out = verify(data);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify must exit 1 when it finds damage"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout.clone(), lost_ranges(&stdout))
}

/// Every `offsets A..B lost` in `text`.
fn lost_ranges(text: &str) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("offsets ") {
        let rest = &text[i + "offsets ".len()..];
        let Some((range, tail)) = rest.split_once(' ') else {
            continue;
        };
        if !tail.starts_with("lost") {
            continue;
        }
        if let Some((a, b)) = range.split_once("..")
            && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
        {
            out.push(a..b);
        }
    }
    out
}

fn data_loss_metric(broker: &Broker) -> u64 {
    let body = broker.metrics();
    body.lines()
        .find_map(|l| l.strip_prefix("spool_data_loss_errors_total "))
        .unwrap_or_else(|| panic!("no spool_data_loss_errors_total in\n{body}"))
        .trim()
        .parse()
        .expect("a counter value")
}

/// Reads a partition from 0 to its end, stepping over `DATA_LOSS` answers. Returns the
/// records read and the lost ranges the broker named. Asserts every error is `DATA_LOSS`
/// naming a range that holds the requested offset.
async fn read_around_damage(
    c: &mut Client,
    partition: u32,
) -> (BTreeMap<u64, Record>, Vec<std::ops::Range<u64>>) {
    let mut got = BTreeMap::new();
    let mut lost = Vec::new();
    let mut next = 0;
    loop {
        match read(c, TOPIC, partition, next, 0).await {
            Ok(r) => {
                for rec in &r.records {
                    assert!(got.insert(rec.offset, rec.clone()).is_none());
                }
                match r.records.last() {
                    Some(last) => next = last.offset + 1,
                    None => break,
                }
                if next >= r.end_offset {
                    break;
                }
            }
            Err(s) => {
                assert_eq!(s.code(), Code::DataLoss, "read at {next}: {}", s.message());
                let ranges = lost_ranges(s.message());
                assert_eq!(
                    ranges.len(),
                    1,
                    "DATA_LOSS names the lost offsets: {}",
                    s.message()
                );
                let range = ranges[0].clone();
                assert!(
                    range.contains(&next),
                    "lost range {range:?} holds the requested offset {next}"
                );
                next = range.end;
                lost.push(range);
            }
        }
    }
    (got, lost)
}

fn assert_record_intact(r: &Record, offset: u64) {
    assert_eq!(r.offset, offset);
    assert_eq!(value(r), value_for(offset), "value at offset {offset}");
    assert_eq!(
        r.timestamp_ms,
        ts_for(offset),
        "timestamp at offset {offset}"
    );
}

fn set_of(ranges: &[std::ops::Range<u64>]) -> BTreeSet<u64> {
    ranges.iter().flat_map(|r| r.clone()).collect()
}

/// The first offset a timestamp subscription starts at.
async fn first_offset_at(c: &mut Client, partition: u32, ts: i64) -> Result<u64, tonic::Status> {
    let req = SubscribeRequest {
        topic: TOPIC.into(),
        partitions: vec![partition],
        start: Some(StartPosition {
            kind: Kind::Timestamp as i32,
            timestamp_ms: ts,
            ..StartPosition::default()
        }),
        ..SubscribeRequest::default()
    };
    let mut stream = subscribe(c, req).await?;
    let msg = within("Subscribe message", stream.message()).await?;
    let msg = msg.expect("a message");
    Ok(msg.records[0].offset)
}
