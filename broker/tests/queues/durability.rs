//! Queue state survives kill -9: acks, attempt counts and leases.

use spool_broker::now_ms;
use spool_proto::v1::*;

use crate::common::*;
use crate::*;

/// Queue jobs/q over records r-0..r-3, all four leased for a minute.
async fn four_leased(b: &Broker) -> (Client, Vec<Delivery>) {
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..4)).await;
    create_queue(&mut c, "jobs", "q", fast(60_000, 5)).await;
    let ds = receive_n(&mut c, "jobs", "q", 4).await;
    (c, ds)
}

#[tokio::test]
async fn acks_attempts_and_leases_survive_kill_9() {
    let mut b = Broker::start();
    let (mut c, ds) = four_leased(&b).await;
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

#[tokio::test]
async fn records_due_far_ahead_wait_on_disk_across_kill_9_and_come_no_earlier_than_their_time() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    let at = now_ms() + 6_000;
    let delayed: Vec<Record> = (0..200)
        .map(|i| Record {
            value: format!("later-{i}").into(),
            deliver_at_ms: at,
            ..Record::default()
        })
        .collect();
    append(&mut c, "jobs", 0, delayed).await;
    append(&mut c, "jobs", 0, recs("now", 0..3)).await;
    // max_leased 10: a partition tracks 20 records in memory, far fewer than are delayed.
    let config = QueueConfig {
        max_leased: 10,
        ..fast(60_000, 5)
    };
    create_queue(&mut c, "jobs", "q", config).await;
    let first = receive_n(&mut c, "jobs", "q", 3).await;
    let mut got: Vec<String> = first
        .iter()
        .map(|d| value(d.record.as_ref().unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["now-0", "now-1", "now-2"],
        "held up behind the delayed records"
    );
    ack_all(&mut c, "jobs", "q", &first).await;
    assert_eq!(describe_queue(&mut c, "jobs", "q").await.delayed, 200);
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    // Known as delayed before any look reads the log again.
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert!(now_ms() < at, "the restart took too long for this test");
    assert_eq!((q.delayed, q.ready), (200, 0));
    let mut seen = std::collections::BTreeSet::new();
    within("the delayed records", async {
        while seen.len() < 200 {
            let ds = receive(&mut c, "jobs", "q", 100, 1_000).await;
            for d in &ds {
                // Leased at lease_expires_ms − lease_ms, by the broker's clock.
                let leased_at = d.lease_expires_ms - 60_000;
                assert!(leased_at >= at, "delivered {} ms early", at - leased_at);
                assert_eq!(d.attempt, 1);
                assert!(
                    seen.insert(offset(d)),
                    "offset {} delivered twice",
                    offset(d)
                );
            }
            ack_all(&mut c, "jobs", "q", &ds).await;
        }
    })
    .await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(
        (q.delayed, q.acked_total, q.partitions[0].ack_floor),
        (0, 203, 203)
    );
}

#[tokio::test]
async fn a_redrive_resumes_after_kill_9_and_redrives_each_dead_letter_once() {
    let mut b = Broker::start();
    let (mut c, ds) = four_leased(&b).await;
    let rejects = ds[..3]
        .iter()
        .map(|d| settlement(d, SettleAction::Reject, None))
        .collect();
    settle(&mut c, "jobs", "q", rejects).await;
    ack_all(&mut c, "jobs", "q", &ds[3..]).await;
    wait_queue(&mut c, "jobs", "q", "dead-lettered", |q| {
        q.dead_lettered_total == 3
    })
    .await;
    let missing = c
        .redrive_queue(RedriveQueueRequest {
            topic: "jobs".into(),
            queue: "nope".into(),
            max_per_second: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
    // One record a second: the crash comes in the middle of the redrive.
    let r = redrive(&mut c, 1).await;
    assert_eq!((r.start_offset, r.end_offset), (0, 3));
    let q = wait_queue(&mut c, "jobs", "q", "one redriven", |q| {
        q.redriven_total >= 1
    })
    .await;
    assert!(q.redrive_remaining > 0, "{q:?}");
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    let q = wait_queue(&mut c, "jobs", "q", "redrive done", |q| {
        q.redrive_remaining == 0
    })
    .await;
    assert_eq!(q.redriven_total, 3, "each dead letter once");
    let again = receive_n(&mut c, "jobs", "q", 3).await;
    let mut got: Vec<(u64, u32)> = again.iter().map(|d| (offset(d), d.attempt)).collect();
    got.sort();
    assert_eq!(got, [(0, 1), (1, 1), (2, 1)], "attempts reset");
    assert!(receive(&mut c, "jobs", "q", 10, 200).await.is_empty());
    // A lease of a record's life before its dead letter does not match its new lease.
    let stale = settle(
        &mut c,
        "jobs",
        "q",
        vec![settlement(&ds[0], SettleAction::Ack, None)],
    )
    .await;
    assert_eq!(stale, vec![SettleResult::Unknown]);
    ack_all(&mut c, "jobs", "q", &again).await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.acked_total, q.partitions[0].ack_floor), (4, 4));
    assert_eq!(
        q.partitions[0].end_offset, 4,
        "the source topic got nothing new"
    );
    let letters = read_to_end(&mut c, "jobs.q.dlq", 0, 0).await;
    assert_eq!(letters.len(), 3, "the dead-letter topic keeps its copies");
    let r = redrive(&mut c, 0).await;
    assert_eq!(
        (r.start_offset, r.end_offset),
        (3, 3),
        "nothing new to redrive"
    );
    let metrics = b.metrics();
    for line in [
        r#"spool_queue_redriven_total{topic="jobs",queue="q"} 3"#,
        r#"spool_queue_redrive_remaining{topic="jobs",queue="q"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
}
