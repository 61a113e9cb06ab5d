//! Leases: expiry and redelivery, nack delays, extension, settling an ended lease, and
//! many workers sharing a queue.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use spool_broker::now_ms;
use spool_proto::v1::*;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn an_expired_lease_is_delivered_again_as_attempt_2_and_its_old_id_is_refused() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..1)).await;
    create_queue(&mut c, "jobs", "q", fast(200, 5)).await;
    let first = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!(first[0].attempt, 1);
    assert_eq!(value(first[0].record.as_ref().unwrap()), "r-0");
    // Not acked: after the lease (and the 1 ms backoff) it comes back.
    let second = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!((offset(&second[0]), second[0].attempt), (0, 2));
    assert_ne!(second[0].lease_id, first[0].lease_id);
    let late = settle(
        &mut c,
        "jobs",
        "q",
        vec![settlement(&first[0], SettleAction::Ack, None)],
    )
    .await;
    assert_eq!(late, vec![SettleResult::LeaseExpired]);
    let bogus = Settlement {
        lease_id: 12345,
        ..settlement(&second[0], SettleAction::Ack, None)
    };
    assert_eq!(
        settle(&mut c, "jobs", "q", vec![bogus]).await,
        vec![SettleResult::Unknown]
    );
    ack_all(&mut c, "jobs", "q", &second).await;
    // Acked: never again, and a second ack of it is UNKNOWN.
    assert!(receive(&mut c, "jobs", "q", 10, 500).await.is_empty());
    let twice = settle(
        &mut c,
        "jobs",
        "q",
        vec![settlement(&second[0], SettleAction::Ack, None)],
    )
    .await;
    assert_eq!(twice, vec![SettleResult::Unknown]);
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.acked_total, q.redelivered_total, q.leased), (1, 1, 0));
    assert_eq!(q.partitions[0].ack_floor, 1);
    let metrics = b.metrics();
    for line in [
        r#"spool_queue_acked_total{topic="jobs",queue="q"} 1"#,
        r#"spool_queue_redelivered_total{topic="jobs",queue="q"} 1"#,
        r#"spool_queue_leased{topic="jobs",queue="q"} 0"#,
        r#"spool_queue_paused{topic="jobs",queue="q"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_nack_with_a_delay_is_not_delivered_early_and_extend_keeps_a_lease() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..2)).await;
    create_queue(&mut c, "jobs", "q", fast(300, 5)).await;
    let ds = receive_n(&mut c, "jobs", "q", 2).await;
    let nacked = Instant::now();
    let r = settle(
        &mut c,
        "jobs",
        "q",
        vec![
            settlement(&ds[0], SettleAction::Nack, Some(700)),
            settlement(&ds[1], SettleAction::Extend, Some(60_000)),
        ],
    )
    .await;
    assert_eq!(r, vec![SettleResult::Ok, SettleResult::Ok]);
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.delayed, q.leased), (1, 1));
    let again = receive_n(&mut c, "jobs", "q", 1).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(700),
        "delivered after {:?}",
        nacked.elapsed()
    );
    assert_eq!((offset(&again[0]), again[0].attempt), (0, 2));
    // The extended lease outlived its 300 ms lease: still settles.
    ack_all(&mut c, "jobs", "q", &ds[1..]).await;
    ack_all(&mut c, "jobs", "q", &again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_workers_ack_every_record_exactly_once() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 4, FsyncPolicy::Always).await;
    const N: u32 = 2_000;
    for p in 0..4 {
        let batch: Vec<Record> = (0..N / 4).map(|i| rec(format!("{p}-{i}"))).collect();
        for chunk in batch.chunks(250) {
            append(&mut c, "jobs", p, chunk.to_vec()).await;
        }
    }
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let mut workers = Vec::new();
    for _ in 0..10 {
        let mut c = b.client().await;
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let ds = receive(&mut c, "jobs", "q", 50, 300).await;
                if ds.is_empty() {
                    return acked;
                }
                ack_all(&mut c, "jobs", "q", &ds).await;
                acked.extend(ds.iter().map(|d| value(d.record.as_ref().unwrap())));
            }
        }));
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    for w in workers {
        for v in w.await.unwrap() {
            *counts.entry(v).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), N as usize);
    assert!(counts.values().all(|n| *n == 1), "a record acked twice");
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.acked_total, u64::from(N));
    assert!(
        q.partitions.iter().all(|p| p.ack_floor == p.end_offset),
        "{:?}",
        q.partitions
    );
}

#[tokio::test]
async fn deliver_at_and_delivery_delay_hold_records_back_and_plain_reads_see_them_at_once() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    let at = now_ms() + 800;
    let later = Record {
        value: "later".into(),
        deliver_at_ms: at,
        ..Record::default()
    };
    append(&mut c, "jobs", 0, vec![later, rec("now")]).await;
    // A plain read sees both at once, with the delivery time.
    let read = read_to_end(&mut c, "jobs", 0, 0).await;
    assert_eq!(values(&read), vec!["later", "now"]);
    assert_eq!(read[0].deliver_at_ms, at);
    assert!(
        read[0].headers.is_empty(),
        "the stored delivery time is not a header: {:?}",
        read[0].headers
    );
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let first = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!(value(first[0].record.as_ref().unwrap()), "now");
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.delayed, 1);
    let second = receive_n(&mut c, "jobs", "q", 1).await;
    assert!(now_ms() >= at, "delivered {} ms early", at - now_ms());
    assert_eq!(value(second[0].record.as_ref().unwrap()), "later");
    // A queue-wide delay counts from each record's timestamp.
    let delayed = QueueConfig {
        delivery_delay_ms: 600,
        ..fast(30_000, 5)
    };
    let appended = now_ms();
    append(&mut c, "jobs", 0, vec![rec("third")]).await;
    create_queue(&mut c, "jobs", "slow", delayed).await;
    let ds = receive_n(&mut c, "jobs", "slow", 3).await;
    assert!(now_ms() - appended >= 600);
    assert_eq!(ds.len(), 3);
    // The reserved header cannot be sent as a header.
    let forged = Record {
        headers: vec![Header {
            key: "spool-deliver-at-ms".into(),
            value: vec![0; 8].into(),
        }],
        ..rec("x")
    };
    let r = c
        .append(AppendRequest {
            topic: "jobs".into(),
            partition: Some(0),
            records: vec![forged],
            ..AppendRequest::default()
        })
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn at_max_leased_delivery_pauses_and_says_why() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..5)).await;
    let config = QueueConfig {
        max_leased: 2,
        ..fast(60_000, 5)
    };
    create_queue(&mut c, "jobs", "q", config).await;
    let ds = receive(&mut c, "jobs", "q", 10, 1_000).await;
    assert_eq!(ds.len(), 2);
    assert!(receive(&mut c, "jobs", "q", 10, 0).await.is_empty());
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert!(q.paused.contains("max_leased"), "paused: {:?}", q.paused);
    assert_eq!(q.ready, 3);
    assert!(
        b.metrics()
            .lines()
            .any(|l| l == r#"spool_queue_paused{topic="jobs",queue="q"} 1"#)
    );
    ack_all(&mut c, "jobs", "q", &ds[..1]).await;
    let more = receive(&mut c, "jobs", "q", 10, 1_000).await;
    assert_eq!(more.iter().map(offset).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn key_ordering_leases_one_record_per_key_in_order_even_under_redelivery() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    let keyed = |k: &str, v: &str| Record {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Record::default()
    };
    append(
        &mut c,
        "jobs",
        0,
        vec![
            keyed("a", "a0"),
            keyed("b", "b0"),
            keyed("a", "a1"),
            rec("e0"),
            keyed("b", "b1"),
            keyed("a", "a2"),
            rec("e1"),
        ],
    )
    .await;
    let config = QueueConfig {
        ordering: QueueOrdering::Key as i32,
        ..fast(1_000, 5)
    };
    create_queue(&mut c, "jobs", "q", config).await;
    let vals = |ds: &[Delivery]| -> Vec<String> {
        ds.iter()
            .map(|d| value(d.record.as_ref().unwrap()))
            .collect()
    };
    let first = receive(&mut c, "jobs", "q", 10, 1_000).await;
    assert_eq!(vals(&first), vec!["a0", "b0", "e0", "e1"]);
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.blocked_keys, 2, "a1, a2 wait behind a0; b1 behind b0");
    // b0 acked: b1 flows (acked at once). a0 is left to expire: it comes back as attempt
    // 2, and a1 still waits.
    ack_all(&mut c, "jobs", "q", &first[1..]).await;
    let mut saw_b1 = false;
    let a0 = within("a0 again", async {
        loop {
            for d in receive(&mut c, "jobs", "q", 10, 1_000).await {
                match value(d.record.as_ref().unwrap()).as_str() {
                    "b1" => {
                        ack_all(&mut c, "jobs", "q", std::slice::from_ref(&d)).await;
                        saw_b1 = true;
                    }
                    "a0" => return d,
                    other => panic!("{other} delivered while a0 is unsettled"),
                }
            }
        }
    })
    .await;
    assert!(saw_b1);
    assert_eq!(a0.attempt, 2);
    // A nack with a delay keeps a's later records waiting until a0 is acked.
    let r = settle(
        &mut c,
        "jobs",
        "q",
        vec![settlement(&a0, SettleAction::Nack, Some(300))],
    )
    .await;
    assert_eq!(r, vec![SettleResult::Ok]);
    let again = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!(
        (vals(&again), again[0].attempt),
        (vec!["a0".to_string()], 3)
    );
    ack_all(&mut c, "jobs", "q", &again).await;
    let a1 = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!(vals(&a1), vec!["a1"]);
    ack_all(&mut c, "jobs", "q", &a1).await;
    let a2 = receive_n(&mut c, "jobs", "q", 1).await;
    assert_eq!(vals(&a2), vec!["a2"]);
    ack_all(&mut c, "jobs", "q", &a2).await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.blocked_keys, q.partitions[0].ack_floor), (0, 7));
}

#[tokio::test]
async fn a_receive_of_large_records_fits_the_default_4_mib_message_limit_of_a_stub() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "big", 1, FsyncPolicy::Always).await;
    let value = vec![b'x'; 900 * 1024];
    for _ in 0..8 {
        append(&mut c, "big", 0, vec![rec(value.clone())]).await;
    }
    create_queue(&mut c, "big", "q", fast(60_000, 5)).await;
    // A stub as generated, with gRPC's default 4 MiB limit on what it receives.
    let mut stub =
        spool_proto::v1::broker_client::BrokerClient::connect(format!("http://{}", b.addr))
            .await
            .expect("connect");
    let first = receive(&mut stub, "big", "q", 100, 1_000).await;
    let bytes: usize = first
        .iter()
        .map(|d| d.record.as_ref().unwrap().value.len())
        .sum();
    assert!(
        !first.is_empty() && first.len() < 8 && bytes < 4 << 20,
        "{} deliveries of {bytes} bytes",
        first.len()
    );
    let rest = receive_n(&mut stub, "big", "q", 8 - first.len()).await;
    let mut offsets: Vec<u64> = first.iter().chain(&rest).map(offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..8).collect::<Vec<u64>>());
}
