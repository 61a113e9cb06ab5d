//! Model test: random sequences of appends, reads, reads by time, reopens, truncations and
//! retention agree with a plain `Vec` of records.
//!
//! Segments are the smallest the log accepts (64 KiB) and the offset index is dense, so a
//! sequence rolls several segments and reads cross segment and index boundaries. Set
//! `PROPTEST_CASES` to run more cases than the default.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use spool_storage::{
    Durability, Error, Header, Log, LogConfig, ProducerStamp, Record, Storage, StorageConfig,
};

const LOG: &str = "model/0";
const RETENTION_BYTES: u64 = 96 * 1024;

fn config() -> LogConfig {
    LogConfig {
        index_interval_bytes: 700,
        retention_bytes: Some(RETENTION_BYTES),
        ..common::small_config(Durability::Never)
    }
}

/// A record described compactly, so proptest generates and shrinks it cheaply; its bytes
/// are filled from `seed`.
#[derive(Clone, Debug)]
struct RecordSpec {
    key_len: usize,
    value_len: usize,
    headers: Vec<(String, usize)>,
    timestamp_ms: i64,
    seed: u8,
}

impl RecordSpec {
    fn build(&self) -> Record {
        let fill = |len: usize, salt: u8| -> Bytes {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(self.seed ^ salt))
                .collect::<Vec<u8>>()
                .into()
        };
        Record {
            key: fill(self.key_len, 0x5a),
            value: fill(self.value_len, 0),
            headers: self
                .headers
                .iter()
                .enumerate()
                .map(|(i, (k, len))| Header {
                    key: k.clone(),
                    value: fill(*len, i as u8),
                })
                .collect(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Where a read or a truncation points, relative to the log's current range.
#[derive(Clone, Copy, Debug)]
enum Position {
    /// `start + fraction * (end - start)`, end included.
    Inside(u16),
    /// Past the end by this much (at least 1).
    PastEnd(u8),
    /// Below the start (only meaningful once retention moved it).
    BelowStart,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<RecordSpec>),
    /// `append_at` the end offset, or, when `wrong`, at an offset that is not the end.
    AppendAt {
        records: Vec<RecordSpec>,
        wrong: bool,
    },
    Read {
        at: Position,
        max_records: usize,
        max_bytes: usize,
    },
    ReadByTime {
        /// Pick a stored record's timestamp (plus `delta`) when there is one.
        pick: u16,
        delta: i64,
        random: Option<i64>,
    },
    Reopen,
    /// Truncate to the start of a batch picked by `pick`, or inside it when `inside`.
    Truncate {
        pick: u16,
        inside: bool,
    },
    Retention,
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 1_000i64..1_200,
        1 => -5_000i64..5_000_000,
    ]
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        0usize..20,
        prop_oneof![0usize..64, 1_000usize..6_000],
        proptest::collection::vec(("[ab]{0,2}", 0usize..8), 0..3),
        timestamp(),
        any::<u8>(),
    )
        .prop_map(
            |(key_len, value_len, headers, timestamp_ms, seed)| RecordSpec {
                key_len,
                value_len,
                headers,
                timestamp_ms,
                seed,
            },
        )
}

fn records() -> impl Strategy<Value = Vec<RecordSpec>> {
    proptest::collection::vec(record_spec(), 1..8)
}

fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        8 => any::<u16>().prop_map(Position::Inside),
        1 => (1u8..4).prop_map(Position::PastEnd),
        1 => Just(Position::BelowStart),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => records().prop_map(Op::Append),
        2 => (records(), proptest::bool::weighted(0.3))
            .prop_map(|(records, wrong)| Op::AppendAt { records, wrong }),
        6 => (
            position(),
            prop_oneof![Just(usize::MAX), 1usize..20],
            prop_oneof![Just(usize::MAX), 0usize..20_000],
        )
            .prop_map(|(at, max_records, max_bytes)| Op::Read {
                at,
                max_records,
                max_bytes,
            }),
        3 => (any::<u16>(), -1i64..=1, proptest::option::weighted(0.2, timestamp()))
            .prop_map(|(pick, delta, random)| Op::ReadByTime { pick, delta, random }),
        2 => Just(Op::Reopen),
        2 => (any::<u16>(), proptest::bool::weighted(0.2))
            .prop_map(|(pick, inside)| Op::Truncate { pick, inside }),
        1 => Just(Op::Retention),
    ]
}

/// The model: every record ever appended at its offset, the start offset, and the batches.
#[derive(Default)]
struct Model {
    records: Vec<Record>,
    start: u64,
    /// `(base_offset, record_count)` of each batch at or after `start`.
    batches: Vec<(u64, u64)>,
}

impl Model {
    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    fn append(&mut self, records: Vec<Record>) -> u64 {
        let base = self.end();
        self.batches.push((base, records.len() as u64));
        self.records.extend(records);
        base
    }

    fn resolve(&self, at: Position) -> u64 {
        match at {
            Position::Inside(f) => {
                self.start + (self.end() - self.start) * u64::from(f) / u64::from(u16::MAX)
            }
            Position::PastEnd(n) => self.end() + u64::from(n),
            Position::BelowStart => self.start.saturating_sub(1),
        }
    }

    /// What `read(offset, max_records, max_bytes)` must return: records from `offset`, at
    /// most `max_records`, payload within `max_bytes` except that the first always comes.
    fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Vec<(u64, &Record)> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for o in offset..self.end() {
            let r = &self.records[o as usize];
            let n = payload_len(r);
            if !out.is_empty() && (out.len() >= max_records.max(1) || bytes + n > max_bytes) {
                break;
            }
            bytes += n;
            out.push((o, r));
        }
        out
    }

    fn offset_for_timestamp(&self, ts: i64) -> u64 {
        (self.start..self.end())
            .find(|&o| self.records[o as usize].timestamp_ms >= ts)
            .unwrap_or(self.end())
    }

    fn truncate(&mut self, offset: u64) {
        self.records.truncate(offset as usize);
        self.batches.retain(|&(base, _)| base < offset);
    }
}

fn payload_len(r: &Record) -> usize {
    r.key.len()
        + r.value.len()
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

fn open(dir: &Path) -> (Storage, Arc<Log>) {
    let storage = Storage::open(dir, StorageConfig::default()).expect("open storage");
    let log = storage.open_log(LOG, config()).expect("open log");
    (storage, log)
}

fn check_range(log: &Log, model: &Model) {
    assert_eq!(log.end_offset(), model.end(), "end offset");
    assert_eq!(log.start_offset(), model.start, "start offset");
}

fn check_read(log: &Log, model: &Model, offset: u64, max_records: usize, max_bytes: usize) {
    let got = log.read(offset, max_records, max_bytes);
    if offset < model.start || offset > model.end() {
        match got {
            Err(Error::OffsetOutOfRange {
                requested,
                start,
                end,
            }) => assert_eq!(
                (requested, start, end),
                (offset, model.start, model.end()),
                "out of range error carries the valid range"
            ),
            other => panic!("read at {offset} outside the log: {other:?}"),
        }
        return;
    }
    let got = got.unwrap_or_else(|e| panic!("read({offset}, {max_records}, {max_bytes}): {e}"));
    let want = model.read(offset, max_records, max_bytes);
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        want.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        "offsets of read({offset}, {max_records}, {max_bytes})"
    );
    if offset < model.end() {
        assert_eq!(got[0].offset, offset, "a read starts exactly at its offset");
    }
    for (g, (o, w)) in got.iter().zip(&want) {
        common::assert_record(g, *o, w);
    }
}

/// How the timestamps of successive batches relate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Times {
    /// As generated: a batch may be older than the ones before it.
    Any,
    /// Each batch's newest record is at least the newest before it (records within a batch
    /// stay in any order).
    BatchMaxNonDecreasing,
}

/// Builds a batch's records, shifting their timestamps as `times` demands.
fn build(specs: &[RecordSpec], times: Times, model: &Model) -> Vec<Record> {
    let mut records: Vec<Record> = specs.iter().map(RecordSpec::build).collect();
    if times == Times::BatchMaxNonDecreasing {
        let newest = model.records.iter().map(|r| r.timestamp_ms).max();
        let batch_max = records.iter().map(|r| r.timestamp_ms).max();
        if let (Some(newest), Some(batch_max)) = (newest, batch_max)
            && batch_max < newest
        {
            for r in &mut records {
                r.timestamp_ms += newest - batch_max;
            }
        }
    }
    records
}

fn run(ops: Vec<Op>, times: Times) {
    let dir = common::ram_tempdir(8 * 1024 * 1024);
    let (mut storage, mut log) = open(dir.path());
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append(specs) => {
                let records = build(&specs, times, &model);
                let a = log
                    .append(&records, ProducerStamp::default())
                    .expect("append");
                let base = model.append(records);
                assert_eq!((a.base_offset, a.duplicate), (base, false));
                assert_eq!(u64::from(a.record_count), model.batches.last().unwrap().1);
            }
            Op::AppendAt { records, wrong } => {
                let records = build(&records, times, &model);
                if wrong {
                    let at = model.end() + 1;
                    match log.append_at(at, &records, ProducerStamp::default()) {
                        Err(Error::OffsetMismatch { expected, got }) => {
                            assert_eq!((expected, got), (model.end(), at));
                        }
                        other => panic!("append_at a wrong offset: {other:?}"),
                    }
                } else {
                    let a = log
                        .append_at(model.end(), &records, ProducerStamp::default())
                        .expect("append_at the end");
                    assert_eq!(a.base_offset, model.append(records));
                }
            }
            Op::Read {
                at,
                max_records,
                max_bytes,
            } => check_read(&log, &model, model.resolve(at), max_records, max_bytes),
            Op::ReadByTime {
                pick,
                delta,
                random,
            } => {
                let live = model.end() - model.start;
                let ts = match random {
                    Some(ts) => ts,
                    None if live == 0 => 1_000,
                    None => {
                        let o = model.start + u64::from(pick) % live;
                        model.records[o as usize].timestamp_ms + delta
                    }
                };
                let got = log
                    .offset_for_timestamp(ts)
                    .unwrap_or_else(|e| panic!("offset_for_timestamp({ts}): {e}"));
                assert_eq!(got, model.offset_for_timestamp(ts), "offset for time {ts}");
            }
            Op::Reopen => {
                drop(log);
                drop(storage);
                (storage, log) = open(dir.path());
                let report = log.open_report().clone();
                assert_eq!(report.end_offset, model.end(), "report end");
                assert_eq!(report.start_offset, model.start, "report start");
                assert_eq!(report.dropped_bytes, 0, "a clean reopen drops nothing");
                assert_eq!(report.segments, log.segment_count());
            }
            Op::Truncate { pick, inside } => {
                let multi: Vec<(u64, u64)> = model
                    .batches
                    .iter()
                    .copied()
                    .filter(|&(_, n)| n > 1)
                    .collect();
                if inside && !multi.is_empty() {
                    let (base, n) = multi[usize::from(pick) % multi.len()];
                    match log.truncate(base + 1) {
                        Err(Error::NotBatchBoundary {
                            offset,
                            batch_start,
                            batch_end,
                        }) => {
                            assert_eq!((offset, batch_start, batch_end), (base + 1, base, base + n))
                        }
                        other => panic!("truncate inside a batch: {other:?}"),
                    }
                } else {
                    // A batch start, or the end itself (a no-op).
                    let k = usize::from(pick) % (model.batches.len() + 1);
                    let to = model.batches.get(k).map_or(model.end(), |b| b.0);
                    log.truncate(to)
                        .unwrap_or_else(|e| panic!("truncate({to}): {e}"));
                    model.truncate(to);
                }
            }
            Op::Retention => {
                let before = log.size_bytes();
                let deleted = log.enforce_retention(0).expect("retention");
                let start = log.start_offset();
                if deleted == 0 {
                    assert_eq!(start, model.start, "no deletion, no start move");
                } else {
                    assert!(start > model.start, "deletion moves the start");
                    let size = log.size_bytes();
                    assert!(
                        size >= RETENTION_BYTES && size < before,
                        "retention keeps at least its bytes: {before} -> {size}"
                    );
                    assert!(
                        model.batches.iter().any(|&(base, _)| base == start),
                        "the new start {start} is a batch boundary"
                    );
                    model.start = start;
                    model.batches.retain(|&(base, _)| base >= start);
                }
            }
        }
        check_range(&log, &model);
    }
    // Whatever the history, the whole log reads back and verifies clean.
    check_read(&log, &model, model.start, usize::MAX, usize::MAX);
    assert!(log.verify().expect("verify").is_empty(), "verify");
    drop(log);
    drop(storage);
    let (_storage, log) = open(dir.path());
    check_range(&log, &model);
    check_read(&log, &model, model.start, usize::MAX, usize::MAX);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// The main model test. Batch timestamps never go backwards here; out-of-order batches
    /// are covered by the test below.
    #[test]
    fn log_agrees_with_vec_model_across_appends_reads_reopens_and_truncations(
        ops in proptest::collection::vec(op(), 10..120)
    ) {
        run(ops, Times::BatchMaxNonDecreasing);
    }

    /// The same with batches older than earlier ones (producer-supplied timestamps).
    /// See `model_regressions.rs` for the minimal case.
    #[test]
    fn log_agrees_with_vec_model_when_batch_timestamps_go_backwards(
        ops in proptest::collection::vec(op(), 10..120)
    ) {
        run(ops, Times::Any);
    }
}
