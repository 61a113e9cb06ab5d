//! Durability policies (`Always`, `Interval`, `Never`), the durable offset, and wake-ups of
//! readers waiting for new data.
//!
//! These run on the real temporary directory, not a RAM disk: fsync is what they are about.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_storage::{Durability, ProducerStamp, Record};

fn record(key: String) -> Record {
    Record {
        key: Bytes::from(key),
        value: Bytes::from(vec![b'v'; 300]),
        headers: vec![],
        timestamp_ms: 1,
    }
}

#[test]
fn always_append_returns_fsynced_with_durable_offset_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), "d/0", common::small_config(Durability::Always));
    // Enough to roll a segment, whose fsync path differs.
    for i in 0..300u64 {
        let records: Vec<Record> = (0..2).map(|j| record(format!("{i}-{j}"))).collect();
        let a = log.append(&records, ProducerStamp::default()).unwrap();
        assert!(a.fsynced, "append {i} returned before its fsync");
        assert_eq!(log.durable_offset(), log.end_offset(), "after append {i}");
        assert_eq!(log.end_offset(), a.base_offset + 2);
    }
    assert!(log.segment_count() > 1);
}

#[test]
fn concurrent_always_appends_all_succeed_and_are_durable() {
    const THREADS: usize = 4;
    const APPENDS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), "d/0", common::small_config(Durability::Always));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut got = Vec::new();
                for n in 0..APPENDS {
                    let count = 1 + (n % 3);
                    let records: Vec<Record> = (0..count)
                        .map(|j| record(format!("t{t}-{n}-{j}")))
                        .collect();
                    let a = log.append(&records, ProducerStamp::default()).unwrap();
                    let end = a.base_offset + count as u64;
                    assert!(a.fsynced);
                    assert!(
                        log.durable_offset() >= end,
                        "durable {} below the batch end {end} on return",
                        log.durable_offset()
                    );
                    got.push((a.base_offset, count, t, n));
                }
                got
            })
        })
        .collect();
    let mut batches: Vec<(u64, usize, usize, usize)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    batches.sort();
    // The batches tile the log without gaps or overlaps, and each holds its own records.
    let mut next = 0;
    for &(base, count, t, n) in &batches {
        assert_eq!(base, next, "batches tile the log");
        let got = log.read(base, count, usize::MAX).unwrap();
        let keys: Vec<Bytes> = got.iter().map(|r| r.key.clone()).collect();
        let want: Vec<Bytes> = (0..count)
            .map(|j| Bytes::from(format!("t{t}-{n}-{j}")))
            .collect();
        assert_eq!(keys, want, "batch at {base}");
        next = base + count as u64;
    }
    assert_eq!(batches.len(), THREADS * APPENDS);
    assert_eq!(log.end_offset(), next);
    assert_eq!(log.durable_offset(), next);
    let distinct: HashSet<Bytes> = common::read_all(&log, 0)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(distinct.len() as u64, next, "every record exactly once");
}

#[test]
fn interval_durability_catches_up_without_further_appends() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_config(Durability::Interval(Duration::from_millis(10)));
    let (_storage, log) = common::open(dir.path(), "d/0", config);
    for i in 0..50u64 {
        log.append(&[record(format!("{i}"))], ProducerStamp::default())
            .unwrap();
    }
    let end = log.end_offset();
    // A correctness check, not a timing test: the flusher must get there by itself. The
    // deadline is generous for a loaded machine; the interval is 10 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.durable_offset() < end {
        assert!(
            Instant::now() < deadline,
            "durable offset {} never reached the end {end}",
            log.durable_offset()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.durable_offset(), log.end_offset());
}

#[test]
fn never_appends_succeed_and_sync_brings_the_durable_offset_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), "d/0", common::small_config(Durability::Never));
    for i in 0..300u64 {
        let a = log
            .append(&[record(format!("{i}"))], ProducerStamp::default())
            .unwrap();
        assert_eq!(a.base_offset, i);
        // May lag, never lead.
        assert!(log.durable_offset() <= log.end_offset());
        assert_eq!(a.fsynced, log.durable_offset() > i);
    }
    log.sync().unwrap();
    assert_eq!(log.durable_offset(), log.end_offset());
}

#[test]
fn wait_for_wakes_a_blocked_reader_when_another_thread_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), "d/0", common::small_config(Durability::Never));
    log.append(&[record("first".into())], ProducerStamp::default())
        .unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            ready_tx.send(()).unwrap();
            let began = Instant::now();
            // Waits for something past offset 0, which already exists: returns at once.
            assert_eq!(log.wait_for(0, Duration::from_secs(60)), 1);
            let end = log.wait_for(1, Duration::from_secs(60));
            let read = log.read(1, 10, usize::MAX).unwrap();
            (end, began.elapsed(), read)
        })
    };
    ready_rx.recv().unwrap();
    // Give the reader time to block; the wake-up must come from the append, not a timeout.
    std::thread::sleep(Duration::from_millis(100));
    log.append(&[record("second".into())], ProducerStamp::default())
        .unwrap();
    let (end, waited, read) = reader.join().unwrap();
    assert_eq!(end, 2);
    assert!(waited < Duration::from_secs(30), "woken by the timeout");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].key, Bytes::from("second"));

    // With nothing appended, the wait ends at its timeout with the unchanged end.
    let began = Instant::now();
    assert_eq!(log.wait_for(1, Duration::from_millis(50)), 2);
    assert_eq!(log.wait_for(2, Duration::from_millis(50)), 2);
    assert!(began.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_failed_flush_fails_every_asynchronous_waiter_and_poisons_the_log() {
    use spool_storage::SyncWait;
    use spool_storage::faults::{self, Op};
    use std::task::{Context, Poll, Waker};

    let dir = tempfile::tempdir().unwrap();
    let (_storage, log) = common::open(dir.path(), "d/0", common::small_config(Durability::Always));
    // The first wait is handed the leader's duty; the followers register before it runs.
    let a = log
        .append_unsynced(&[record("lead".into())], ProducerStamp::default())
        .unwrap();
    let SyncWait::Lead(leader) = log.sync_async(a.base_offset + 1) else {
        panic!("the first wait leads");
    };
    let mut followers = Vec::new();
    for i in 0..10 {
        let b = log
            .append_unsynced(&[record(format!("f{i}"))], ProducerStamp::default())
            .unwrap();
        match log.sync_async(b.base_offset + 1) {
            SyncWait::Follow(f) => followers.push(f),
            _ => panic!("a flush is running: the wait must follow it"),
        }
    }
    faults::fail(dir.path(), Op::Sync, 1, 5);
    assert!(leader.run().is_err(), "the leader's flush failed (EIO)");
    let mut cx = Context::from_waker(Waker::noop());
    for mut f in followers {
        match std::pin::Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.to_string().contains("fsync"), "{e}"),
            other => panic!("a waiter was not failed: {other:?}"),
        }
    }
    assert!(log.failure().is_some());
    assert_eq!(log.durable_offset(), 0, "nothing became durable");
    assert!(matches!(log.sync_async(1), SyncWait::Done(Err(_))));
}
