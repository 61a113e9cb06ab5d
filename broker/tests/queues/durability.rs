//! Queue state survives kill -9: acks, attempt counts and leases.

use spool_proto::v1::*;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn acks_attempts_and_leases_survive_kill_9() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..4)).await;
    create_queue(&mut c, "jobs", "q", fast(60_000, 5)).await;
    let ds = receive_n(&mut c, "jobs", "q", 4).await;
    // r-0 acked, r-1 nacked at once (attempt 1 used), r-2 and r-3 still leased.
    let r = settle(
        &mut c,
        "jobs",
        "q",
        vec![
            settlement(&ds[0], SettleAction::Ack, None),
            settlement(&ds[1], SettleAction::Nack, Some(0)),
        ],
    )
    .await;
    assert_eq!(r, vec![SettleResult::Ok, SettleResult::Ok]);
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    // The lease granted before the crash still settles, within its lease.
    ack_all(&mut c, "jobs", "q", &ds[2..3]).await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.acked_total, 2);
    assert_eq!(q.leased, 1, "r-3's lease outlived the restart");
    // Only r-1 is available, as its second attempt; r-0 never comes back.
    let again = receive(&mut c, "jobs", "q", 10, 1_000).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (value(again[0].record.as_ref().unwrap()), again[0].attempt),
        ("r-1".to_string(), 2)
    );
    ack_all(&mut c, "jobs", "q", &again).await;
    ack_all(&mut c, "jobs", "q", &ds[3..]).await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.acked_total, q.partitions[0].ack_floor), (4, 4));
}
