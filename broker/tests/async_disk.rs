//! The async runtime never waits on the disk: with every file operation of an append
//! stalled like a slow disk, a broker on a single-threaded runtime keeps running its other
//! tasks. (If the append ran its `pwrite` on the runtime's thread, nothing else would run
//! until the stall ended.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use spool_broker::testing::TempBroker;
use spool_proto::v1::FsyncPolicy;
use spool_storage::faults::{self, Op};

const STALL: Duration = Duration::from_millis(1500);

/// Runs one append to a fresh topic while its disk operation `op` stalls, and counts the
/// ticks a 10 ms timer on the same (only) runtime thread managed meanwhile.
async fn ticks_during_stalled(op: Op, fsync: FsyncPolicy) -> u64 {
    let broker = TempBroker::start().await;
    let mut c = Client::connect(broker.endpoint()).await.unwrap();
    create_topic(&mut c, "slow", 1, fsync).await;
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = Arc::clone(&ticks);
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    faults::stall(broker.data_dir(), op, 1, STALL);
    let started = std::time::Instant::now();
    let before = ticks.load(Ordering::Relaxed);
    let answer = append(&mut c, "slow", 0, vec![rec("late")]).await;
    let during = ticks.load(Ordering::Relaxed) - before;
    assert!(
        started.elapsed() >= STALL,
        "the stall must have happened (the append took {:?})",
        started.elapsed()
    );
    assert_eq!(answer.base_offset, 0);
    faults::clear(broker.data_dir());
    ticker.abort();
    during
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_write_does_not_stall_the_runtime() {
    let ticks = ticks_during_stalled(Op::Write, FsyncPolicy::Never).await;
    // 1.5 s of 10 ms ticks is 150; a blocked thread manages none. Half is plenty of margin
    // for a loaded machine.
    assert!(
        ticks >= 50,
        "only {ticks} timer ticks ran during a 1.5 s stalled write"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_fsync_does_not_stall_the_runtime() {
    let ticks = ticks_during_stalled(Op::Sync, FsyncPolicy::Always).await;
    assert!(
        ticks >= 50,
        "only {ticks} timer ticks ran during a 1.5 s stalled fsync"
    );
}

/// With a blocking pool of two threads, twenty durable appends wait on one stalled fsync
/// while another topic is still written and read: the waits hold no thread (if each parked
/// a blocking thread, as a condition-variable wait does, the pool would be exhausted and
/// nothing else could touch the disk until the stall ended).
#[test]
fn appends_waiting_on_a_stalled_fsync_leave_the_blocking_pool_free() {
    const WAITING: u64 = 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = TempBroker::start().await;
        let mut c = Client::connect(broker.endpoint()).await.unwrap();
        create_topic(&mut c, "slow", 1, FsyncPolicy::Always).await;
        create_topic(&mut c, "fast", 1, FsyncPolicy::Never).await;
        faults::stall(
            &broker.data_dir().join("topics/slow"),
            Op::Sync,
            1,
            Duration::from_secs(5),
        );
        let finished = Arc::new(AtomicU64::new(0));
        for i in 0..WAITING {
            let mut c = c.clone();
            let finished = Arc::clone(&finished);
            tokio::spawn(async move {
                append(&mut c, "slow", 0, vec![rec(format!("s{i}"))]).await;
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        within("every slow append to be written", async {
            while describe(&mut c, "slow").await.partition_info[0].end_offset < WAITING {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        append(&mut c, "fast", 0, vec![rec("quick")]).await;
        assert_eq!(values(&read_to_end(&mut c, "fast", 0, 0).await), ["quick"]);
        assert_eq!(
            finished.load(Ordering::Relaxed),
            0,
            "the other topic was served while the stalled fsync held every slow append"
        );
        within("the slow appends once the stall ends", async {
            while finished.load(Ordering::Relaxed) < WAITING {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        faults::clear(broker.data_dir());
    });
}
