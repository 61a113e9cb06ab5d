//! Full disk and failing fsyncs, through the fault-injecting file layer
//! (`spool_storage::faults`, feature `fault-injection`, which this crate's tests enable).
//!
//! What is guarded: a "no space" error (`ENOSPC`, `EDQUOT`) on reserving or writing refuses
//! the append with [`Error::DiskFull`] and leaves the log exactly as it was; everything
//! acknowledged stays readable; once space returns (`faults::clear`) appends resume at the
//! next offset with no reopen. A failed fsync poisons the log: writes are refused until it
//! is reopened, and nothing unsynced is ever reported durable.
//!
//! Fault rules are process-wide but keyed by directory, so each test uses its own temporary
//! directory and the tests of this binary run in parallel.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{SMALL_SEGMENT, assert_record, open, read_all, record_for, small_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_storage::faults::{self, Op};
use spool_storage::{Durability, Error, Log, LogConfig, ProducerStamp, Record};

const LOG: &str = "full/0";
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const EIO: i32 = 5;

/// Small segments and small reservation steps, so reservations and rolls happen often.
fn config(durability: Durability) -> LogConfig {
    LogConfig {
        preallocate_bytes: 4096,
        ..small_config(durability)
    }
}

/// Asserts that the log holds exactly `model` (record `i` at offset `i`).
fn assert_log_is(log: &Log, model: &[Record], when: &str) {
    assert_eq!(log.end_offset(), model.len() as u64, "end offset {when}");
    let got = read_all(log, 0);
    assert_eq!(got.len(), model.len(), "records {when}");
    for (i, (g, w)) in got.iter().zip(model).enumerate() {
        assert_record(g, i as u64, w);
    }
}

fn records(model_len: usize, n: usize, salt: u64) -> Vec<Record> {
    (0..n)
        .map(|i| record_for((model_len + i) as u64, salt, 1_000 + (model_len + i) as i64))
        .collect()
}

/// Appends until the first refusal; returns how many appends were refused out of `tries`.
fn append_through_faults(log: &Log, model: &mut Vec<Record>, tries: usize, salt: u64) -> usize {
    let mut refused = 0;
    for _ in 0..tries {
        let batch = records(model.len(), 3, salt);
        let before = log.end_offset();
        match log.append(&batch, ProducerStamp::default()) {
            Ok(a) => {
                assert_eq!(a.base_offset, model.len() as u64, "no gap, no reuse");
                model.extend(batch);
            }
            Err(e @ Error::DiskFull { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("disk full") && msg.contains("free space"),
                    "the message says what happened and what to do: {msg}"
                );
                assert_eq!(log.end_offset(), before, "a refused append leaves nothing");
                refused += 1;
            }
            Err(e) => panic!("expected DiskFull, got {e:?}"),
        }
    }
    refused
}

#[test]
fn enospc_on_allocate_refuses_appends_with_disk_full_and_they_resume_once_cleared() {
    for durability in [
        Durability::Always,
        Durability::Interval(Duration::from_secs(3600)),
        Durability::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (storage, log) = open(dir.path(), LOG, config(durability));
        let mut model = Vec::new();
        assert_eq!(append_through_faults(&log, &mut model, 50, 1), 0);

        faults::fail(dir.path(), Op::Allocate, u64::MAX, ENOSPC);
        let refused = append_through_faults(&log, &mut model, 100, 2);
        assert!(refused > 0, "{durability:?}: the reservation must run out");
        assert!(
            refused < 100,
            "{durability:?}: appends into space already reserved still succeed"
        );
        assert_log_is(&log, &model, "while the disk is full");
        assert_eq!(
            append_through_faults(&log, &mut model, 5, 3),
            5,
            "{durability:?}: still full, still refused"
        );

        faults::clear(dir.path());
        assert_eq!(
            append_through_faults(&log, &mut model, 400, 4),
            0,
            "{durability:?}: appends resume once space is freed, without a reopen"
        );
        assert!(log.segment_count() > 1, "the appends rolled segments");
        assert_log_is(&log, &model, "after space returned");
        log.close().unwrap();
        drop(log);
        drop(storage);
        let (_storage, log) = open(dir.path(), LOG, config(durability));
        assert_log_is(&log, &model, "after a reopen");
    }
}

#[test]
fn enospc_on_write_refuses_appends_and_leaves_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = open(dir.path(), LOG, config(Durability::Always));
    let mut model = Vec::new();
    append_through_faults(&log, &mut model, 20, 1);
    faults::fail(dir.path(), Op::Write, u64::MAX, ENOSPC);
    assert_eq!(append_through_faults(&log, &mut model, 10, 2), 10);
    assert_log_is(&log, &model, "while writes fail");
    faults::clear(dir.path());
    assert_eq!(append_through_faults(&log, &mut model, 10, 3), 0);
    assert_log_is(&log, &model, "after writes work again");
}

#[test]
fn a_full_disk_when_a_segment_rolls_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, log) = open(dir.path(), LOG, config(Durability::Always));
    let mut model = Vec::new();
    // Fill the first segment to within one batch of its end.
    while log.segment_count() == 1 {
        let batch = records(model.len(), 3, 1);
        let size: usize = batch.iter().map(|r| r.key.len() + r.value.len() + 80).sum();
        let pos = log.size_bytes();
        if pos + 2 * size as u64 > SMALL_SEGMENT {
            break;
        }
        log.append(&batch, ProducerStamp::default()).unwrap();
        model.extend(batch);
    }
    assert_eq!(log.segment_count(), 1);
    // The next appends must roll: the new segment cannot reserve its first bytes.
    faults::fail(dir.path(), Op::Allocate, u64::MAX, ENOSPC);
    let refused = append_through_faults(&log, &mut model, 10, 2);
    assert!(refused > 0, "the roll's reservation failed");
    assert_log_is(&log, &model, "after a refused roll");
    faults::clear(dir.path());
    assert_eq!(append_through_faults(&log, &mut model, 10, 3), 0);
    assert!(
        log.segment_count() >= 2,
        "the log rolled once space returned"
    );
    assert_log_is(&log, &model, "after the roll");
    log.close().unwrap();
    drop(log);
    drop(storage);
    let (_storage, log) = open(dir.path(), LOG, config(Durability::Always));
    assert_log_is(&log, &model, "after a reopen");
}

/// A seeded walk through appends with faults switched on and off at random (ENOSPC and
/// EDQUOT on reserve and on write, EIO on write), checked against a `Vec` after every step
/// and once more after a reopen.
#[test]
fn random_full_disk_episodes_never_lose_or_reorder_acknowledged_records() {
    let seed = common::seed("random_full_disk_episodes");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Durability::Always);
    let (storage, log) = open(dir.path(), LOG, cfg.clone());
    let mut model: Vec<Record> = Vec::new();
    let mut faulty: Option<(Op, i32)> = None;
    let (mut ok, mut refused) = (0, 0);
    for step in 0..1500 {
        if rng.random_bool(0.03) {
            faults::clear(dir.path());
            faulty = None;
            if rng.random_bool(0.5) {
                let op = if rng.random_bool(0.5) {
                    Op::Allocate
                } else {
                    Op::Write
                };
                let errno = match rng.random_range(0..4) {
                    0 | 1 => ENOSPC,
                    2 => EDQUOT,
                    _ if op == Op::Write => EIO,
                    _ => ENOSPC,
                };
                let times = if rng.random_bool(0.5) {
                    u64::MAX
                } else {
                    rng.random_range(1..4)
                };
                faults::fail(dir.path(), op, times, errno);
                faulty = Some((op, errno));
            }
        }
        let n = rng.random_range(1..6);
        let batch = records(model.len(), n, step);
        let before = log.end_offset();
        match log.append(&batch, ProducerStamp::default()) {
            Ok(a) => {
                assert_eq!(
                    a.base_offset,
                    model.len() as u64,
                    "step {step}: dense offsets"
                );
                assert!(
                    a.fsynced,
                    "step {step}: Always acknowledges durable appends"
                );
                model.extend(batch);
                ok += 1;
            }
            Err(e) => {
                let Some((_, errno)) = faulty else {
                    panic!("step {step}: append failed with no fault injected: {e}")
                };
                match (&e, errno) {
                    (Error::DiskFull { .. }, ENOSPC | EDQUOT) => {}
                    (Error::Io { op: "write", .. }, EIO) => {}
                    _ => panic!("step {step}: errno {errno} gave the wrong error: {e:?}"),
                }
                assert_eq!(log.end_offset(), before, "step {step}: nothing written");
                refused += 1;
            }
        }
        if step % 100 == 0 {
            assert_log_is(&log, &model, &format!("at step {step}"));
        }
    }
    faults::clear(dir.path());
    eprintln!(
        "{ok} appends, {refused} refused, {} segments",
        log.segment_count()
    );
    assert!(
        refused > 0 && ok > 0,
        "the walk exercised both outcomes (seed {seed})"
    );
    assert_log_is(&log, &model, "at the end");
    // No close: the reopen recovers as after a crash, and still finds every record.
    drop(log);
    drop(storage);
    let (_storage, log) = open(dir.path(), LOG, cfg);
    assert_log_is(&log, &model, "after a reopen");
}

fn expect_poisoned(r: Result<impl std::fmt::Debug, Error>, what: &str) {
    match r {
        Err(e @ Error::Poisoned { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fsync failure") && msg.contains("restart"),
                "{what}: the message says why and what to do: {msg}"
            );
        }
        other => panic!("{what}: expected Poisoned, got {other:?}"),
    }
}

fn sync_fails(dir: &Path) {
    faults::fail(dir, Op::Sync, 1, EIO);
}

#[test]
fn a_failed_fsync_poisons_the_log_until_reopen_and_reports_nothing_unsynced_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Durability::Always);
    let (storage, log) = open(dir.path(), LOG, cfg.clone());
    let mut model = Vec::new();
    append_through_faults(&log, &mut model, 30, 1);
    let durable = log.durable_offset();
    assert_eq!(durable, model.len() as u64);

    sync_fails(dir.path());
    let batch = records(model.len(), 3, 2);
    match log.append(&batch, ProducerStamp::default()) {
        Err(Error::Io { op: "fsync", .. }) => {}
        other => panic!("expected the fsync error, got {other:?}"),
    }
    assert_eq!(
        log.durable_offset(),
        durable,
        "the failed batch is not durable"
    );
    // Every later write is refused, even though the fault is gone.
    expect_poisoned(
        log.append(&records(model.len() + 3, 1, 3), ProducerStamp::default()),
        "append after a failed fsync",
    );
    expect_poisoned(log.sync(), "sync after a failed fsync");
    assert_eq!(log.durable_offset(), durable, "never moves once poisoned");
    // Reads keep working: the acknowledged records are all there.
    let got = read_all(&log, 0);
    for (i, w) in model.iter().enumerate() {
        assert_record(&got[i], i as u64, w);
    }

    drop(log);
    drop(storage);
    let (_storage, log) = open(dir.path(), LOG, cfg);
    let got = read_all(&log, 0);
    assert!(got.len() >= model.len(), "acknowledged records survive");
    for (i, w) in model.iter().enumerate() {
        assert_record(&got[i], i as u64, w);
    }
    let a = log
        .append(&records(got.len(), 1, 4), ProducerStamp::default())
        .expect("reopened, the log accepts writes");
    assert!(a.fsynced);
    assert_eq!(a.base_offset, got.len() as u64);
}

#[test]
fn a_failed_background_fsync_poisons_an_interval_log() {
    let dir = tempfile::tempdir().unwrap();
    // A long interval: the test calls `sync` itself, the flusher never does.
    let cfg = config(Durability::Interval(Duration::from_secs(3600)));
    let (_storage, log) = open(dir.path(), LOG, cfg);
    let first = records(0, 5, 1);
    let a = log.append(&first, ProducerStamp::default()).unwrap();
    assert!(!a.fsynced, "an Interval append is not durable on return");
    log.sync().unwrap();
    assert_eq!(log.durable_offset(), 5);
    let second = records(5, 5, 2);
    let a = log.append(&second, ProducerStamp::default()).unwrap();
    assert!(!a.fsynced);
    sync_fails(dir.path());
    assert!(matches!(log.sync(), Err(Error::Io { op: "fsync", .. })));
    assert_eq!(log.durable_offset(), 5, "the unsynced batch is not durable");
    expect_poisoned(
        log.append(&records(10, 1, 3), ProducerStamp::default()),
        "append after a failed background fsync",
    );
    expect_poisoned(log.sync(), "sync after a failed fsync");
    assert_eq!(log.durable_offset(), 5);
    assert_eq!(read_all(&log, 0).len(), 10, "reads keep working");
}

#[test]
fn a_failed_fsync_while_rolling_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Durability::Always);
    let (storage, log) = open(dir.path(), LOG, cfg.clone());
    let mut model = Vec::new();
    append_through_faults(&log, &mut model, 10, 1);
    let durable = log.durable_offset();
    // `append_unsynced` leaves the fsync to the caller, so the first fsync after this is
    // the one a roll does on the segment it closes.
    sync_fails(dir.path());
    let mut unsynced = Vec::new();
    let err = loop {
        assert_eq!(
            log.segment_count(),
            1,
            "the roll failed before a new segment"
        );
        let batch = records(model.len() + unsynced.len(), 3, 2);
        match log.append_unsynced(&batch, ProducerStamp::default()) {
            Ok(a) => {
                assert!(!a.fsynced);
                unsynced.extend(batch);
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::Io { op: "fsync", .. }),
        "the roll's fsync failed: {err:?}"
    );
    assert_eq!(
        log.durable_offset(),
        durable,
        "nothing unsynced became durable"
    );
    expect_poisoned(
        log.append(&records(model.len(), 1, 3), ProducerStamp::default()),
        "append after a failed roll fsync",
    );
    expect_poisoned(log.sync(), "sync after a failed roll fsync");
    assert_eq!(log.durable_offset(), durable);
    drop(log);
    drop(storage);
    let (_storage, log) = open(dir.path(), LOG, cfg);
    let got = read_all(&log, 0);
    assert!(got.len() >= model.len());
    for (i, w) in model.iter().enumerate() {
        assert_record(&got[i], i as u64, w);
    }
    log.append(&records(got.len(), 1, 4), ProducerStamp::default())
        .expect("reopened, the log accepts writes");
}
