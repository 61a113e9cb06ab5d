//! Waiting for durability asynchronously costs no thread: ten thousand appends wait on one
//! stalled flush as futures while only its leader's thread exists, and one flush (or two)
//! then completes them all. (Alone in its binary, so the thread count is this test's.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use spool_storage::faults::{self, Op};
use spool_storage::{Durability, ProducerStamp, SyncWait};

const WAITERS: usize = 10_000;

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line[8..].trim().parse().unwrap()
}

#[test]
fn ten_thousand_waiting_appends_hold_no_threads_and_share_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    // Default (large) segments: no roll adds fsyncs of its own.
    let config = spool_storage::LogConfig {
        durability: Durability::Always,
        ..spool_storage::LogConfig::default()
    };
    let (_storage, log) = common::open(dir.path(), "l", config);
    // The first append leads; its flush stalls like a slow disk while the rest arrive.
    faults::stall(dir.path(), Op::Sync, 1, Duration::from_secs(2));
    let first = log
        .append_unsynced(&[common::record_for(0, 1, 0)], ProducerStamp::default())
        .unwrap();
    let SyncWait::Lead(leader) = log.sync_async(first.base_offset + 1) else {
        panic!("nothing was flushing: the first wait must lead");
    };
    let baseline = threads();
    let flushing = std::thread::spawn(move || leader.run());
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let mut waiting = Vec::with_capacity(WAITERS);
    for i in 0..WAITERS as u64 {
        let a = log
            .append_unsynced(&[common::record_for(i + 1, 1, 0)], ProducerStamp::default())
            .unwrap();
        match log.sync_async(a.base_offset + 1) {
            SyncWait::Follow(mut f) => {
                assert!(std::pin::Pin::new(&mut f).poll(&mut cx).is_pending());
                waiting.push(f);
            }
            SyncWait::Done(r) => panic!("durable before the stalled flush ended: {r:?}"),
            SyncWait::Lead(_) => panic!("a second leader while one is flushing"),
        }
    }
    assert!(
        threads() <= baseline + 1,
        "{WAITERS} waits took threads: {} now, {baseline} before the leader",
        threads()
    );
    flushing.join().unwrap().unwrap();
    // The leader kept flushing until every waiter registered during its flush was covered.
    assert_eq!(wakes.0.load(Ordering::Relaxed), WAITERS);
    for mut f in waiting {
        assert!(matches!(
            std::pin::Pin::new(&mut f).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }
    assert_eq!(log.durable_offset(), WAITERS as u64 + 1);
    assert!(
        log.fsync_count() <= 2,
        "{} flushes for {WAITERS} waits",
        log.fsync_count()
    );
}
