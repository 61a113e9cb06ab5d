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

mod common;

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

// ---------------------------------------------------------------------------------------
// (a) Closed segments
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn damaged_closed_segments_answer_data_loss_and_serve_everything_else() {
    let seed = seed("damaged_closed_segments");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(1, 300).await;
    let total = 3000;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    assert_verify_clean(&data);

    let logs = segment_files(&dir, "log");
    assert!(logs.len() >= 4, "several segments: {logs:?}");
    let closed = &logs[..logs.len() - 1];
    // Flip bytes in one closed segment, truncate another (possibly the same one).
    let mut expected_lost = BTreeSet::new();
    let (_, flip_path) = &closed[rng.random_range(0..closed.len())];
    let original = fs::read(flip_path).unwrap();
    let layout = batches(&original);
    let n = rng.random_range(1..=3);
    for p in flip_bytes(&mut rng, flip_path, 0..original.len(), n) {
        let b = layout.iter().find(|b| b.bytes.contains(&p)).unwrap();
        expected_lost.extend(b.offsets.clone());
    }
    let (_, cut_path) = &closed[rng.random_range(0..closed.len())];
    let cut_data = fs::read(cut_path).unwrap();
    let cut_layout = batches(&original_or(&cut_data, cut_path, flip_path, &original));
    let cut = rng.random_range(0..cut_data.len());
    truncate(cut_path, cut);
    for b in cut_layout.iter().filter(|b| b.bytes.end > cut) {
        expected_lost.extend(b.offsets.clone());
    }
    eprintln!("expected lost offsets: {:?}", ranges_of(&expected_lost));

    let (listing, verified) = verify_damage(&data);
    assert_eq!(
        set_of(&verified),
        expected_lost,
        "verify lists exactly the damaged ranges:\n{listing}"
    );
    for p in [flip_path, cut_path] {
        assert!(
            listing.contains(&*p.to_string_lossy()),
            "verify names {}",
            p.display()
        );
    }

    broker.restart();
    let mut c = broker.client().await;
    let (got, lost) = read_around_damage(&mut c, 0).await;
    for o in 0..total {
        if expected_lost.contains(&o) {
            assert!(
                !got.contains_key(&o),
                "offset {o} is damaged but was served"
            );
        } else {
            let r = got
                .get(&o)
                .unwrap_or_else(|| panic!("intact offset {o} was not served"));
            assert_record_intact(r, o);
        }
    }
    assert_eq!(
        set_of(&lost),
        expected_lost,
        "DATA_LOSS named every lost offset"
    );
    let mut data_loss = lost.len() as u64;

    // Point reads: inside every lost range, and at the intact neighbours of each.
    for range in ranges_of(&expected_lost) {
        let inside = rng.random_range(range.clone());
        let s = status(read(&mut c, TOPIC, 0, inside, 1).await);
        assert_eq!(s.code(), Code::DataLoss, "{}", s.message());
        let named = lost_ranges(s.message());
        assert!(
            named.len() == 1 && named[0].contains(&inside) && named[0].end <= range.end,
            "{inside}: {}",
            s.message()
        );
        data_loss += 1;
        for o in [range.start.checked_sub(1), Some(range.end)]
            .into_iter()
            .flatten()
            .filter(|o| *o < total)
        {
            let r = read(&mut c, TOPIC, 0, o, 1).await.unwrap();
            assert_record_intact(&r.records[0], o);
        }
    }
    assert_eq!(
        data_loss_metric(&broker),
        data_loss,
        "every DATA_LOSS is counted"
    );
    assert!(
        broker.log().contains("corrupt batch"),
        "the damage is logged:\n{}",
        broker.log()
    );

    // A subscriber gets every record up to the first damage, then DATA_LOSS.
    let first_lost = *expected_lost.first().unwrap();
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: TOPIC.into(),
            start: start(Kind::Earliest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let mut next = 0;
    let err = loop {
        match within("Subscribe message", stream.message()).await {
            Ok(Some(m)) => {
                for r in m.records {
                    assert_eq!(r.offset, next);
                    assert_record_intact(&r, next);
                    next += 1;
                }
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(s) => break s,
        }
    };
    assert_eq!(next, first_lost, "delivered everything before the damage");
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());

    // The partition keeps taking appends.
    let a = append(
        &mut c,
        TOPIC,
        0,
        vec![rec_at(value_for(total), ts_for(total))],
    )
    .await;
    assert_eq!(a.base_offset, total);
    let r = read(&mut c, TOPIC, 0, total, 1).await.unwrap();
    assert_record_intact(&r.records[0], total);

    // The broker never silently drops the damaged bytes: verify still reports them.
    broker.stop().await;
    let (_, again) = verify_damage(&data);
    assert_eq!(set_of(&again), expected_lost);
}

/// The layout of the truncated file before any damage (the flip may have hit it too).
fn original_or(current: &[u8], path: &Path, flipped: &Path, original: &[u8]) -> Vec<u8> {
    if path == flipped {
        original.to_vec()
    } else {
        current.to_vec()
    }
}

fn ranges_of(set: &BTreeSet<u64>) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &o in set {
        match out.last_mut() {
            Some(r) if r.end == o => r.end += 1,
            _ => out.push(o..o + 1),
        }
    }
    out
}

#[tokio::test]
async fn a_closed_segment_cut_to_nothing_is_data_loss_for_its_whole_range() {
    let mut broker = filled_broker(1, 200).await;
    let data = broker.data_dir().to_path_buf();
    let logs = segment_files(&partition_dir(&data, 0), "log");
    let (base, path) = &logs[1];
    let next = logs[2].0;
    truncate(path, 0);
    let (listing, ranges) = verify_damage(&data);
    assert_eq!(ranges, vec![*base..next], "{listing}");
    broker.restart();
    let mut c = broker.client().await;
    let (got, lost) = read_around_damage(&mut c, 0).await;
    assert_eq!(lost, vec![*base..next]);
    assert_eq!(got.len() as u64, 2000 - (next - base));
    for (o, r) in &got {
        assert_record_intact(r, *o);
    }
    assert_eq!(data_loss_metric(&broker), 1);
}

#[tokio::test]
async fn a_timestamp_subscription_over_damage_names_the_lost_offsets_and_is_counted() {
    let mut broker = filled_broker(1, 150).await;
    let data = broker.data_dir().to_path_buf();
    let logs = segment_files(&partition_dir(&data, 0), "log");
    let (base, path) = &logs[1];
    let layout = batches(&fs::read(path).unwrap());
    // Damage the segment's third batch (a CRC-covered byte), then look up a time after it.
    let victim = layout[2].clone();
    let mut bytes = fs::read(path).unwrap();
    bytes[victim.bytes.start + 40] ^= 0xff;
    fs::write(path, &bytes).unwrap();
    broker.restart();
    let mut c = broker.client().await;
    let target = victim.offsets.end + 5;
    assert!(*base < victim.offsets.start);
    let r = first_offset_at(&mut c, 0, ts_for(target)).await;
    match r {
        Ok(o) => assert_eq!(o, target, "the lookup resumes after the damage"),
        Err(s) => {
            assert_eq!(s.code(), Code::DataLoss);
            assert_eq!(
                lost_ranges(s.message()),
                vec![victim.offsets.clone()],
                "the message names the lost offsets: {}",
                s.message()
            );
            assert_eq!(data_loss_metric(&broker), 1, "counted");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (b) Indexes
// ---------------------------------------------------------------------------------------

/// Damages every `.index` file of the partition at random (flips or a truncation each) and
/// truncates every `.timeindex` at random; returns the damaged files. (A flip that leaves
/// a time index well formed but wrong is the ignored bug test further down.)
fn damage_indexes(rng: &mut StdRng, dir: &Path) -> Vec<PathBuf> {
    let mut damaged = Vec::new();
    for ext in ["index", "timeindex"] {
        for (_, path) in segment_files(dir, ext) {
            let len = fs::metadata(&path).unwrap().len() as usize;
            if len == 0 {
                continue;
            }
            if ext == "index" && rng.random_bool(0.5) {
                let n = rng.random_range(1..=4);
                flip_bytes(rng, &path, 0..len, n);
            } else {
                truncate(&path, rng.random_range(0..len));
            }
            damaged.push(path);
        }
    }
    damaged
}

#[tokio::test]
async fn damaged_indexes_lose_nothing_and_lookups_stay_exact() {
    let seed = seed("damaged_indexes");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(1, 300).await;
    let total = 3000u64;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    assert_verify_clean(&data);
    let damaged = damage_indexes(&mut rng, &dir);
    assert!(damaged.len() >= 6, "{damaged:?}");

    broker.restart();
    let mut c = broker.client().await;
    let all = read_to_end(&mut c, TOPIC, 0, 0).await;
    assert_eq!(all.len() as u64, total, "every record is served");
    for (o, r) in all.iter().enumerate() {
        assert_record_intact(r, o as u64);
    }
    // Point reads at random offsets, and timestamp lookups (each exact, not a batch start).
    for _ in 0..100 {
        let o = rng.random_range(0..total);
        let r = read(&mut c, TOPIC, 0, o, 1).await.unwrap();
        assert_record_intact(&r.records[0], o);
    }
    for _ in 0..40 {
        let o = rng.random_range(0..total);
        let ts = ts_for(o) - rng.random_range(0..10);
        assert_eq!(first_offset_at(&mut c, 0, ts).await.unwrap(), o, "ts {ts}");
    }
    assert_eq!(
        data_loss_metric(&broker),
        0,
        "derived data is never data loss"
    );
    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    assert_eq!(read_to_end(&mut c, TOPIC, 0, 0).await.len() as u64, total);
}

#[test]
fn verify_reports_damaged_index_files() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(filled_broker(1, 150));
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    // Truncate the first closed segment's index mid-entry and flip a byte of its time index.
    let (_, index) = &segment_files(&dir, "index")[0];
    let len = fs::metadata(index).unwrap().len() as usize;
    truncate(index, len - 3);
    let (_, time) = &segment_files(&dir, "timeindex")[0];
    let mut bytes = fs::read(time).unwrap();
    bytes[3] ^= 0x40;
    fs::write(time, &bytes).unwrap();
    let out = verify(&data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "verify reports damaged indexes");
    assert!(stdout.contains(&*index.to_string_lossy()), "{stdout}");
    assert!(stdout.contains(&*time.to_string_lossy()), "{stdout}");
}

#[tokio::test]
async fn a_flipped_bit_in_a_time_index_never_makes_a_timestamp_lookup_skip_records() {
    let mut broker = filled_broker(1, 150).await;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    let logs = segment_files(&dir, "log");
    let (base, log_path) = &logs[0];
    let (next_base, _) = logs[1];
    let (_, time_path) = &segment_files(&dir, "timeindex")[0];
    let mut idx = fs::read(time_path).unwrap();
    assert!(
        idx.len() >= 24 && idx.len() % 12 == 0,
        "{} bytes",
        idx.len()
    );
    let last = idx.len() - 12;
    let ts = i64::from_le_bytes(idx[last..last + 8].try_into().unwrap());
    let prev = i64::from_le_bytes(idx[last - 12..last - 4].try_into().unwrap());
    assert_eq!(
        ts,
        ts_for(next_base - 1),
        "the last entry holds the segment maximum"
    );
    // Clear one set bit: the entry stays increasing (well formed) but understates the max.
    let bit = (0..63)
        .find(|b| ts & (1 << b) != 0 && ts - (1 << b) > prev)
        .expect("a bit to clear");
    idx[last + bit / 8] ^= 1 << (bit % 8);
    fs::write(time_path, &idx).unwrap();
    eprintln!(
        "{}: last time entry {ts} -> {}",
        log_path.display(),
        ts - (1 << bit)
    );
    assert!(*base < next_base - 1);

    broker.restart();
    let mut c = broker.client().await;
    let want = next_base - 1;
    let got = first_offset_at(&mut c, 0, ts_for(want)).await.unwrap();
    assert_eq!(
        got, want,
        "the first record at or after ts_for({want}) is offset {want}"
    );
}

// ---------------------------------------------------------------------------------------
// (c) Topic metadata
// ---------------------------------------------------------------------------------------

/// Runs `spoold` on `data` expecting it to refuse to start; returns (exit code, stderr).
fn start_refused(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("SPOOL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoold");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spoold started on damaged metadata instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("spoold exited with {status}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "refusing is not panicking:\n{stderr}"
    );
    (status.code(), stderr)
}

fn assert_refused_naming(data: &Path, meta: &Path) {
    let (code, stderr) = start_refused(data);
    assert_eq!(code, Some(1), "spoold exits 1:\n{stderr}");
    assert!(
        stderr.contains(&*meta.to_string_lossy()),
        "the message names {}:\n{stderr}",
        meta.display()
    );
    assert!(
        stderr.contains("restore the file from a backup")
            && stderr.contains("delete the topic's directory"),
        "the message says what to do:\n{stderr}"
    );
}

#[tokio::test]
async fn damaged_topic_metadata_refuses_to_start_naming_the_file_and_the_fix() {
    let seed = seed("damaged_topic_metadata");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(2, 30).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let pristine = fs::read(&meta).unwrap();
    assert_verify_clean(&data);
    for round in 0..6 {
        // Truncations, and flips that leave the file unparseable. (A flip that leaves
        // valid JSON is the subject of the test below.)
        let damaged = loop {
            let mut d = pristine.clone();
            if round % 2 == 0 {
                d.truncate(rng.random_range(0..d.len()));
            } else {
                for _ in 0..rng.random_range(1..=3) {
                    let p = rng.random_range(0..d.len());
                    d[p] ^= rng.random_range(1..=255u8);
                }
            }
            if serde_json::from_slice::<serde_json::Value>(&d).is_err() {
                break d;
            }
        };
        fs::write(&meta, &damaged).unwrap();
        eprintln!(
            "round {round}: topic.json is now {:?}",
            String::from_utf8_lossy(&damaged)
        );
        assert_refused_naming(&data, &meta);
        let out = verify(&data);
        assert_eq!(out.status.code(), Some(1), "verify flags the metadata");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&*meta.to_string_lossy()));
        // Refusing changed nothing: the logs are all still there.
        assert!(partition_dir(&data, 1).is_dir());
    }
    fs::write(&meta, &pristine).unwrap();
    assert_verify_clean(&data);
    broker.restart();
    let mut c = broker.client().await;
    for p in 0..2 {
        let all = read_to_end(&mut c, TOPIC, p, 0).await;
        assert_eq!(all.len(), 300);
        for (o, r) in all.iter().enumerate() {
            assert_record_intact(r, o as u64);
        }
    }
}

#[tokio::test]
async fn topic_metadata_with_a_damaged_name_or_version_says_what_to_do() {
    let broker = filled_broker(1, 3).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let pristine = String::from_utf8(fs::read(&meta).unwrap()).unwrap();
    let version = pristine.replacen("\"version\": 1", "\"version\": 3", 1);
    let name = pristine.replacen("\"name\": \"t\"", "\"name\": \"u\"", 1);
    for damaged in [version, name] {
        assert_ne!(damaged, pristine);
        fs::write(&meta, &damaged).unwrap();
        assert_refused_naming(&data, &meta);
    }
}

#[tokio::test]
async fn a_bit_flip_in_a_topic_metadata_value_is_never_accepted_silently() {
    let mut broker = filled_broker(3, 3).await;
    let data = broker.data_dir().to_path_buf();
    let meta = data.join("topics").join(TOPIC).join("topic.json");
    let mut bytes = fs::read(&meta).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"partitions\": 3").expect("pretty JSON") + "\"partitions\": ".len();
    bytes[at] ^= 0x02; // '3' (0x33) -> '1' (0x31)
    fs::write(&meta, &bytes).unwrap();
    let out = verify(&data);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify notices partitions 1 and 2 that topic.json no longer lists"
    );
    // Either refused, or all three partitions still served.
    let (code, stderr) = start_refused_or_serving(&data);
    if code.is_some() {
        assert!(stderr.contains(&*meta.to_string_lossy()), "{stderr}");
    } else {
        broker.restart();
        let mut c = broker.client().await;
        let info = describe(&mut c, TOPIC).await;
        assert_eq!(info.partitions, 3, "a bit flip changed the partition count");
    }
}

/// Like [`start_refused`] but a broker that serves is stopped and reported as `None`.
fn start_refused_or_serving(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoold");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut text = String::new();
    let mut served = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let Ok(line) = line else { break };
        text.push_str(&line);
        text.push('\n');
        if line.contains("serving") {
            served = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for spoold");
    (if served { None } else { status.code() }, text)
}

// ---------------------------------------------------------------------------------------
// (d) The committed-offsets log
// ---------------------------------------------------------------------------------------

const GROUPS: u32 = 4;
const OFFSET_PARTITIONS: u32 = 3;
const ROUNDS: u64 = 12;

/// Fills a topic and commits `ROUNDS` rounds for every (group, partition); one commit is
/// one batch of the offsets log. Returns the stopped broker and, per key, its commits in
/// order as (offsets-log offset, committed value).
async fn committed_broker() -> (Broker, BTreeMap<(u32, u32), Vec<(u64, u64)>>) {
    let mut broker = filled_broker(OFFSET_PARTITIONS, 20).await;
    broker.restart();
    let mut c = broker.client().await;
    let mut history: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    let mut seq = 0;
    for round in 1..=ROUNDS {
        for g in 0..GROUPS {
            for p in 0..OFFSET_PARTITIONS {
                let value = round * 10 + u64::from(g);
                commit(&mut c, &format!("g{g}"), TOPIC, p, value).await;
                history.entry((g, p)).or_default().push((seq, value));
                seq += 1;
            }
        }
    }
    broker.stop().await;
    (broker, history)
}

fn offsets_log(data: &Path) -> PathBuf {
    let logs = segment_files(&data.join("internal/offsets"), "log");
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs[0].1.clone()
}

/// Checks committed offsets after damage to the offsets-log records `lost`: a key whose
/// newest commit is intact has it; otherwise its newest intact older commit; never nothing
/// when some commit of the key is intact.
async fn assert_commits_after_damage(
    broker: &Broker,
    history: &BTreeMap<(u32, u32), Vec<(u64, u64)>>,
    lost: &BTreeSet<u64>,
) {
    let mut c = broker.client().await;
    for g in 0..GROUPS {
        let got: BTreeMap<u32, u64> = get_offsets(&mut c, &format!("g{g}"), TOPIC)
            .await
            .into_iter()
            .filter_map(|p| Some((p.partition, p.committed?)))
            .collect();
        for p in 0..OFFSET_PARTITIONS {
            let want = history[&(g, p)]
                .iter()
                .rev()
                .find(|(seq, _)| !lost.contains(seq))
                .map(|(_, v)| *v);
            assert_eq!(
                got.get(&p).copied(),
                want,
                "group g{g} partition {p}: newest intact commit (history {:?})",
                history[&(g, p)]
            );
        }
    }
}

#[tokio::test]
async fn a_truncated_offsets_log_keeps_every_commit_before_the_cut() {
    let seed = seed("truncated_offsets_log");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut broker, history) = committed_broker().await;
    let data = broker.data_dir().to_path_buf();
    assert_verify_clean(&data);
    let path = offsets_log(&data);
    let bytes = fs::read(&path).unwrap();
    let layout = batches(&bytes);
    assert_eq!(
        layout.len() as u64,
        ROUNDS * u64::from(GROUPS * OFFSET_PARTITIONS)
    );
    // Cut inside a batch (a cut on a batch boundary is indistinguishable from a shorter log).
    let victim = layout[rng.random_range(layout.len() / 4..layout.len())].clone();
    let cut = rng.random_range(victim.bytes.start + 1..victim.bytes.end);
    truncate(&path, cut);
    let lost: BTreeSet<u64> = layout
        .iter()
        .filter(|b| b.bytes.end > cut)
        .flat_map(|b| b.offsets.clone())
        .collect();
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1), "verify reports the torn tail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("internal/offsets")
            && stdout.contains(&format!("after offset {}", victim.offsets.start)),
        "verify names the log and where the damage starts:\n{stdout}"
    );
    broker.restart();
    assert_commits_after_damage(&broker, &history, &lost).await;
}

/// Position of the offsets log's last index entry: recovery scans (and checks) only the
/// batches from there on.
fn last_index_position(data: &Path) -> usize {
    let idx = fs::read(offsets_log(data).with_extension("index")).unwrap();
    assert!(idx.len() >= 8, "the offsets log has index entries");
    u32::from_le_bytes(idx[idx.len() - 4..].try_into().unwrap()) as usize
}

/// Flips bytes in one commit batch chosen by `pick` among the offsets log's batches and
/// checks that only that batch's commits are lost.
async fn flip_one_commit_batch(test: &str, pick: fn(&[BatchAt], usize, &mut StdRng) -> usize) {
    let seed = seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut broker, history) = committed_broker().await;
    let data = broker.data_dir().to_path_buf();
    let path = offsets_log(&data);
    let bytes = fs::read(&path).unwrap();
    let layout = batches(&bytes);
    let victim = layout[pick(&layout, last_index_position(&data), &mut rng)].clone();
    let at = flip_bytes(&mut rng, &path, victim.bytes.clone(), 2);
    let lost: BTreeSet<u64> = at
        .iter()
        .flat_map(|p| {
            layout
                .iter()
                .find(|b| b.bytes.contains(p))
                .unwrap()
                .offsets
                .clone()
        })
        .collect();
    let (listing, ranges) = verify_damage(&data);
    let end = layout.last().unwrap().bytes.end as u64;
    assert!(
        fs::metadata(&path).unwrap().len() >= end,
        "verify does not cut intact commits off the log:\n{listing}"
    );
    assert_eq!(set_of(&ranges), lost, "verify lists the damaged commits");
    broker.restart();
    assert!(
        broker.log().contains("committed offsets log is damaged"),
        "the damage is logged:\n{}",
        broker.log()
    );
    assert_commits_after_damage(&broker, &history, &lost).await;
}

#[tokio::test]
async fn flipped_bytes_in_the_offsets_log_lose_only_the_damaged_commits() {
    flip_one_commit_batch("flipped_offsets_log", |layout, indexed, rng| {
        // A batch before the last index entry.
        let n = layout.iter().filter(|b| b.bytes.end <= indexed).count();
        rng.random_range(0..n)
    })
    .await;
}

#[tokio::test]
async fn flipped_bytes_in_the_offsets_log_tail_lose_only_the_damaged_commits() {
    flip_one_commit_batch("flipped_offsets_log_tail", |layout, indexed, rng| {
        // A batch after the last index entry, not the last one: later commits are intact.
        let first = layout
            .iter()
            .position(|b| b.bytes.start >= indexed)
            .unwrap();
        assert!(first + 1 < layout.len());
        rng.random_range(first..layout.len() - 1)
    })
    .await;
}
