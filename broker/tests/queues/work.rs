//! The Work stream: deliveries pushed within the worker's credit, settlements answered in
//! order on the stream.

use spool_proto::v1::*;
use tokio_stream::StreamExt;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn work_pushes_up_to_max_outstanding_and_more_after_settling() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..10)).await;
    create_queue(&mut c, "jobs", "q", fast(60_000, 5)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Start(WorkStart {
            topic: "jobs".into(),
            queue: "q".into(),
            consumer: "w1".into(),
            max_outstanding: 3,
            lease_ms: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = within(
        "Work",
        c.work(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    let mut held = Vec::new();
    for _ in 0..3 {
        match next(&mut stream).await {
            work_response::Kind::Delivery(d) => held.push(d),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // At the credit limit: the broker holds the rest, as DescribeQueue shows.
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.leased, 3);
    assert_eq!(
        q.consumers
            .iter()
            .map(|c| c.consumer.as_str())
            .collect::<Vec<_>>(),
        vec!["w1"]
    );
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Settle(SettleRequest {
            topic: String::new(),
            queue: String::new(),
            settlements: held
                .iter()
                .take(2)
                .map(|d| settlement(d, SettleAction::Ack, None))
                .collect(),
        })),
    })
    .await
    .unwrap();
    let mut settled = None;
    let mut more = Vec::new();
    while settled.is_none() || more.len() < 2 {
        match next(&mut stream).await {
            work_response::Kind::Settled(s) => settled = Some(s),
            work_response::Kind::Delivery(d) => more.push(d),
        }
    }
    let outcomes: Vec<i32> = settled.unwrap().outcomes.iter().map(|o| o.result).collect();
    assert_eq!(outcomes, vec![SettleResult::Ok as i32; 2]);
    assert_eq!(more.iter().map(offset).collect::<Vec<_>>(), vec![3, 4]);
    // Still at the limit (1 + 2): nothing more arrives until the next settlement.
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.leased, q.acked_total), (3, 2));
    // Ending the stream keeps its leases.
    drop(tx);
    drop(stream);
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.leased, 3);
}

async fn next(stream: &mut tonic::Streaming<WorkResponse>) -> work_response::Kind {
    within("a Work message", stream.next())
        .await
        .expect("stream open")
        .expect("no error")
        .kind
        .expect("a message")
}

/// A worker holding more leases than the stream buffers answers (64) keeps being read: its
/// acks are answered and new deliveries follow. (The stream once stopped reading the
/// worker's requests while its answer buffer was full, until a timer a lease long.)
#[tokio::test]
async fn a_worker_with_more_credit_than_the_answer_buffer_drains_the_queue() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    for chunk in 0..4 {
        append(&mut c, "jobs", 0, recs("r", chunk * 100..(chunk + 1) * 100)).await;
    }
    // Leases of 12 hours: a stall would last a minute (the longest wait of the stream).
    create_queue(&mut c, "jobs", "q", fast(43_200_000, 5)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(512);
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Start(WorkStart {
            topic: "jobs".into(),
            queue: "q".into(),
            consumer: "w".into(),
            max_outstanding: 1_000,
            lease_ms: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = within(
        "Work",
        c.work(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    let mut acked = 0;
    let drained = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while acked < 400 {
            match next(&mut stream).await {
                work_response::Kind::Delivery(d) => {
                    let settle = SettleRequest {
                        topic: String::new(),
                        queue: String::new(),
                        settlements: vec![settlement(&d, SettleAction::Ack, None)],
                    };
                    tx.send(WorkRequest {
                        kind: Some(work_request::Kind::Settle(settle)),
                    })
                    .await
                    .unwrap();
                }
                work_response::Kind::Settled(s) => {
                    acked += s
                        .outcomes
                        .iter()
                        .filter(|o| o.result == SettleResult::Ok as i32)
                        .count();
                }
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "stalled after {acked} acks");
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.acked_total, q.partitions[0].ack_floor), (400, 400));
}

#[tokio::test]
async fn a_worker_that_ends_its_side_at_once_still_gets_the_leases_granted_to_it() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..5)).await;
    create_queue(&mut c, "jobs", "q", fast(60_000, 5)).await;
    // One WorkStart and the end of the worker's side, as a one-shot grpcurl sends.
    let start = WorkRequest {
        kind: Some(work_request::Kind::Start(WorkStart {
            topic: "jobs".into(),
            queue: "q".into(),
            consumer: "once".into(),
            max_outstanding: 10,
            lease_ms: 0,
        })),
    };
    let mut stream = within("Work", c.work(tokio_stream::iter([start])))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(msg) = within("a Work message", stream.next()).await {
        match msg.expect("no error").kind {
            Some(work_response::Kind::Delivery(d)) => got.push(offset(&d)),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // Whatever was leased to the stream was delivered on it: none is held unseen.
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert!(!got.is_empty(), "no delivery before the stream ended");
    assert_eq!(
        q.leased as usize,
        got.len(),
        "leased {} delivered {got:?}",
        q.leased
    );
}

#[tokio::test]
async fn settle_requests_that_arrive_together_are_each_checked_on_their_own() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    create_queue(&mut c, "jobs", "q", fast(60_000, 5)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let start = WorkStart {
        topic: "jobs".into(),
        queue: "q".into(),
        ..WorkStart::default()
    };
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Start(start)),
    })
    .await
    .unwrap();
    let mut stream = within(
        "Work",
        c.work(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    // Three requests at once, two of 6,000 settlements (each under the 10,000 limit, not
    // together): whichever the broker batches, each is answered, with UNKNOWN (no leases).
    let sizes = [1usize, 6_000, 6_000];
    for n in sizes {
        let settlements = (0..n as u64)
            .map(|o| Settlement {
                partition: 0,
                offset: o,
                lease_id: 1,
                action: SettleAction::Ack as i32,
                delay_ms: None,
                reason: String::new(),
            })
            .collect();
        let settle = SettleRequest {
            topic: String::new(),
            queue: String::new(),
            settlements,
        };
        tx.send(WorkRequest {
            kind: Some(work_request::Kind::Settle(settle)),
        })
        .await
        .unwrap();
    }
    for n in sizes {
        match next(&mut stream).await {
            work_response::Kind::Settled(s) => {
                assert_eq!(s.outcomes.len(), n);
                assert!(
                    s.outcomes
                        .iter()
                        .all(|o| o.result == SettleResult::Unknown as i32)
                );
            }
            other => panic!("expected a settle answer, got {other:?}"),
        }
    }
}
