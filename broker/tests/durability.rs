//! End-to-end tests of what survives a restart: topics, records, committed offsets and
//! idempotent producer state, after a graceful stop (SIGTERM, exit 0) and after `kill -9`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// (partition, start, end) of every partition, and the config, of every topic.
async fn topic_summary(c: &mut Client) -> Vec<(String, Option<TopicConfig>, Vec<(u32, u64, u64)>)> {
    let listed = within("ListTopics", c.list_topics(ListTopicsRequest {}))
        .await
        .unwrap()
        .into_inner();
    listed
        .topics
        .into_iter()
        .map(|t| {
            let parts = t
                .partition_info
                .iter()
                .map(|p| (p.partition, p.start_offset, p.end_offset))
                .collect();
            (t.name, t.config, parts)
        })
        .collect()
}

#[tokio::test]
async fn graceful_restart_keeps_topics_records_and_committed_offsets() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "configured".into(),
        partitions: 2,
        config: Some(TopicConfig {
            segment_bytes: 65_536,
            fsync: FsyncPolicy::Never as i32,
            max_record_bytes: 4096,
            retention_ms: 86_400_000,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    create_topic(&mut c, "plain", 3, FsyncPolicy::Unspecified).await;
    // Enough data in "configured" to roll several segments.
    let pad = "p".repeat(3000);
    for b in 0..30u32 {
        let records = (0..10)
            .map(|i| Record {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(format!("c-{b}-{i}-{pad}")),
                headers: vec![Header {
                    key: "batch".into(),
                    value: Bytes::from(b.to_string()),
                }],
                timestamp_ms: 0,
                offset: 0,
                deliver_at_ms: 0,
            })
            .collect();
        append(&mut c, "configured", b % 2, records).await;
    }
    for p in 0..3 {
        append(
            &mut c,
            "plain",
            p,
            recs(&format!("plain{p}"), 0..(p + 1) * 4),
        )
        .await;
    }
    commit(&mut c, "g1", "plain", 0, 2).await;
    commit(&mut c, "g1", "plain", 2, 12).await;
    commit(&mut c, "g2", "configured", 1, 100).await;

    let before = topic_summary(&mut c).await;
    let mut data_before = BTreeMap::new();
    for (name, _, parts) in &before {
        for (p, _, _) in parts {
            data_before.insert((name.clone(), *p), read_to_end(&mut c, name, *p, 0).await);
        }
    }
    let offsets_before = (
        get_offsets(&mut c, "g1", "plain").await,
        get_offsets(&mut c, "g2", "configured").await,
    );
    drop(c);

    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;

    assert_eq!(topic_summary(&mut c).await, before);
    for ((name, p), records) in &data_before {
        let after = read_to_end(&mut c, name, *p, 0).await;
        assert_eq!(&after, records, "{name}/{p}");
    }
    let offsets_after = (
        get_offsets(&mut c, "g1", "plain").await,
        get_offsets(&mut c, "g2", "configured").await,
    );
    assert_eq!(offsets_after, offsets_before);
    assert_eq!(offsets_after.0[0].committed, Some(2));
    assert_eq!(offsets_after.0[1].committed, None);
    assert_eq!(offsets_after.1[1].committed, Some(100));

    // Appends carry on where the logs ended.
    let r = append(&mut c, "plain", 1, recs("again", 0..1)).await;
    assert_eq!(r.base_offset, 8);
    broker.stop().await;
}

#[tokio::test]
async fn sigterm_with_open_streams_exits_zero_and_ends_them_unavailable() {
    // Open: a subscription, a long poll and an idle AppendStream.
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    append(&mut c, "t", 0, recs("r", 0..2)).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    take_records(&mut stream, 2).await;
    let mut poller = c.clone();
    let poll = tokio::spawn(async move {
        poller
            .read(ReadRequest {
                topic: "t".into(),
                partition: 0,
                offset: 2,
                max_wait_ms: 30_000,
                ..ReadRequest::default()
            })
            .await
    });
    // An AppendStream that answered once and is now idle, its request side still open.
    create_topic(&mut c, "a", 1, FsyncPolicy::Always).await;
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    let mut appends = c
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("opening an AppendStream")
        .into_inner();
    requests
        .send(AppendRequest {
            topic: "a".into(),
            partition: Some(0),
            records: recs("s", 0..1),
            ..AppendRequest::default()
        })
        .await
        .expect("sending one append");
    within("the append's answer", appends.message())
        .await
        .expect("answered")
        .expect("one answer");
    tokio::time::sleep(Duration::from_millis(200)).await;

    broker.stop().await;
    assert!(
        !broker.log().contains("did not finish"),
        "open streams held the shutdown up until its grace period ran out:\n{}",
        broker.log()
    );

    let end = within("the end of the idle append stream", appends.message()).await;
    let status = end.expect_err("the append stream must end with an error, not OK");
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    drop(requests);
    let end = within("the end of the stream", stream.message()).await;
    let status = end.expect_err("the stream must end with an error, not OK");
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    let polled = within("long poll", poll).await.unwrap();
    let status = polled.expect_err("the long poll cannot succeed without records");
    assert_eq!(status.code(), Code::Unavailable, "{status}");
}

/// Acknowledged appends: (partition, offset) → value.
type Acked = Arc<Mutex<BTreeMap<(u32, u64), Bytes>>>;

/// Appends in a loop until `stop` is set or the broker goes away, recording every
/// acknowledged record. Odd workers use AppendStream with several requests in flight, even
/// ones unary Append.
async fn producer(
    mut c: Client,
    worker: u32,
    partitions: u32,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let batch = |n: u32| -> (u32, Vec<Record>) {
        let partition = (worker + n) % partitions;
        let records = (0..(n % 4 + 1))
            .map(|j| rec(format!("w{worker}-n{n}-j{j}")))
            .collect();
        (partition, records)
    };
    let note = |resp: &AppendResponse, records: &[Record]| {
        assert_eq!(resp.durability, Durability::Fsynced as i32);
        assert_eq!(resp.record_count as usize, records.len());
        let mut acked = acked.lock().unwrap();
        for (i, r) in records.iter().enumerate() {
            let key = (resp.partition, resp.base_offset + i as u64);
            let old = acked.insert(key, r.value.clone());
            assert!(old.is_none(), "offset {key:?} acknowledged twice");
        }
    };
    if worker.is_multiple_of(2) {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let (partition, records) = batch(n);
            let req = AppendRequest {
                topic: "crash".into(),
                partition: Some(partition),
                records: records.clone(),
                ..AppendRequest::default()
            };
            match c.append(req).await {
                Ok(resp) => note(&resp.into_inner(), &records),
                Err(_) => return, // the broker died
            }
            n += 1;
        }
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<AppendRequest>(64);
        let Ok(resp) = c
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            return;
        };
        let mut responses = resp.into_inner();
        let mut sent: std::collections::VecDeque<Vec<Record>> = Default::default();
        let mut n = 0;
        loop {
            // Keep up to 16 requests in flight.
            while sent.len() < 16 && !stop.load(Ordering::Relaxed) {
                let (partition, records) = batch(n);
                let req = AppendRequest {
                    topic: "crash".into(),
                    partition: Some(partition),
                    records: records.clone(),
                    request_id: u64::from(n),
                    ..AppendRequest::default()
                };
                if tx.send(req).await.is_err() {
                    return;
                }
                sent.push_back(records);
                n += 1;
            }
            if sent.is_empty() {
                return;
            }
            match responses.next().await {
                Some(Ok(resp)) => {
                    let records = sent.pop_front().unwrap();
                    note(&resp, &records);
                }
                _ => return, // the broker died
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_appends_loses_no_acknowledged_record() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    const PARTITIONS: u32 = 3;
    create_topic(&mut c, "crash", PARTITIONS, FsyncPolicy::Always).await;
    commit(&mut c, "g", "crash", 0, 0).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        // Separate connections, so the producers do not share one HTTP/2 stream window.
        let client = broker.client().await;
        workers.push(tokio::spawn(producer(
            client,
            w,
            PARTITIONS,
            Arc::clone(&acked),
            Arc::clone(&stop),
        )));
    }
    // Kill at a random point once plenty has been acknowledged, while the producers are
    // still going.
    let target = rand::random_range(200..1200usize);
    within("enough acknowledged records", async {
        loop {
            if acked.lock().unwrap().len() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    broker.kill().await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        within("producer to notice the crash", w).await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= target);

    broker.restart();
    let mut c = broker.client().await;
    let mut stored = BTreeMap::new();
    for p in 0..PARTITIONS {
        let records = read_to_end(&mut c, "crash", p, 0).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "partition {p} has a hole");
            stored.insert((p, r.offset), r.value.clone());
        }
    }
    let mut lost = Vec::new();
    for (key, value) in &acked {
        match stored.get(key) {
            Some(v) if v == value => {}
            other => lost.push(format!("{key:?}: acked {value:?}, stored {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost or changed after kill -9, e.g. {:?}\n{}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)],
        broker.log()
    );
    // Every stored record is one some producer sent, and none is stored twice.
    let mut seen = std::collections::HashSet::new();
    for v in stored.values() {
        assert!(v.starts_with(b"w"), "{v:?}");
        assert!(seen.insert(v.clone()), "{v:?} stored twice");
    }
    // The commit made before the crash is still there, and the topic takes appends.
    assert_eq!(
        get_offsets(&mut c, "g", "crash").await[0].committed,
        Some(0)
    );
    let end = stored.keys().filter(|(p, _)| *p == 0).count() as u64;
    assert_eq!(
        append(&mut c, "crash", 0, recs("after", 0..1))
            .await
            .base_offset,
        end
    );
    broker.stop().await;
}

#[tokio::test]
async fn committed_offsets_survive_kill_9() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    append(&mut c, "t", 0, recs("r", 0..10)).await;
    append(&mut c, "t", 1, recs("r", 0..10)).await;
    for offset in 1..=7 {
        commit(&mut c, "g", "t", 0, offset).await;
    }
    commit(&mut c, "g", "t", 1, 10).await;
    commit(&mut c, "other", "t", 1, 4).await;
    broker.kill().await;
    broker.restart();
    let mut c = broker.client().await;
    let g: Vec<_> = get_offsets(&mut c, "g", "t")
        .await
        .iter()
        .map(|p| (p.committed, p.lag))
        .collect();
    assert_eq!(g, [(Some(7), 3), (Some(10), 0)]);
    assert_eq!(
        get_offsets(&mut c, "other", "t").await[1].committed,
        Some(4)
    );

    // KIND_COMMITTED picks the recovered offsets up.
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            partitions: vec![0],
            start: start(Kind::Committed),
            group: "g".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let got = take_records(&mut stream, 3).await;
    assert_eq!(got[0].1.offset, 7);
}

/// An idempotent append of `records` as (producer, sequence) to partition `partition`.
fn idempotent(
    partition: u32,
    producer_id: u64,
    sequence: u64,
    records: Vec<Record>,
) -> AppendRequest {
    AppendRequest {
        topic: "idem".into(),
        partition: Some(partition),
        records,
        producer_id,
        sequence,
        ..AppendRequest::default()
    }
}

#[tokio::test]
async fn idempotent_retry_after_kill_9_returns_the_original_offsets_and_appends_nothing() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "idem", 2, FsyncPolicy::Always).await;
    const P: u64 = 0x5eed_cafe;

    let a = c
        .append(idempotent(0, P, 0, recs("s0", 0..3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.base_offset, a.record_count, a.duplicate), (0, 3, false));
    let b = c
        .append(idempotent(0, P, 1, recs("s1", 0..2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.base_offset, b.record_count, b.duplicate), (3, 2, false));
    // A non-idempotent append in between, and the same producer on another partition,
    // where its sequences start again at 0.
    append(&mut c, "idem", 0, recs("plain", 0..1)).await;
    let other = c
        .append(idempotent(1, P, 0, recs("o0", 0..1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (other.partition, other.base_offset, other.duplicate),
        (1, 0, false)
    );

    // A retry before the restart.
    let dup = c
        .append(idempotent(0, P, 1, recs("s1", 0..2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dup.base_offset, dup.record_count, dup.duplicate),
        (3, 2, true)
    );

    broker.kill().await;
    broker.restart();
    let mut c = broker.client().await;
    let end_before = describe(&mut c, "idem").await.partition_info[0].end_offset;
    assert_eq!(end_before, 6);

    for (seq, values, base, count) in [(1, recs("s1", 0..2), 3, 2), (0, recs("s0", 0..3), 0, 3)] {
        let r = c
            .append(idempotent(0, P, seq, values))
            .await
            .unwrap()
            .into_inner();
        assert!(r.duplicate, "sequence {seq} after restart");
        assert_eq!(
            (r.partition, r.base_offset, r.record_count),
            (0, base, count)
        );
    }
    let r = c
        .append(idempotent(1, P, 0, recs("o0", 0..1)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.duplicate && r.base_offset == 0 && r.partition == 1);
    assert_eq!(
        describe(&mut c, "idem").await.partition_info[0].end_offset,
        6
    );

    // A gap is refused and appends nothing; the next sequence goes on.
    let gap = c.append(idempotent(0, P, 3, recs("s3", 0..1))).await;
    assert_eq!(code(gap), Code::FailedPrecondition);
    let fresh = c.append(idempotent(0, 0xdead, 5, recs("x", 0..1))).await;
    assert_eq!(
        code(fresh),
        Code::FailedPrecondition,
        "a new producer starts at 0"
    );
    assert_eq!(
        describe(&mut c, "idem").await.partition_info[0].end_offset,
        6
    );
    let next = c
        .append(idempotent(0, P, 2, recs("s2", 0..1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((next.base_offset, next.duplicate), (6, false));

    let stored = read_to_end(&mut c, "idem", 0, 0).await;
    assert_eq!(
        values(&stored),
        ["s0-0", "s0-1", "s0-2", "s1-0", "s1-1", "plain-0", "s2-0"]
    );
    broker.stop().await;
}

#[tokio::test]
async fn idempotent_state_spanning_segments_is_rebuilt_after_a_restart() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "idem".into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 65_536,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    const P: u64 = 7;
    let big = |seq: u64| -> Vec<Record> {
        (0..3)
            .map(|i| rec(format!("{seq}-{i}-{}", "z".repeat(10_000))))
            .collect()
    };
    let mut bases = Vec::new();
    for seq in 0..12u64 {
        let r = c
            .append(idempotent(0, P, seq, big(seq)))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.duplicate);
        bases.push(r.base_offset);
    }
    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    // The most recent batches, spread over several segments, are still recognised.
    for seq in [11u64, 10, 9, 8] {
        let r = c
            .append(idempotent(0, P, seq, big(seq)))
            .await
            .unwrap()
            .into_inner();
        assert!(r.duplicate, "sequence {seq}");
        assert_eq!((r.base_offset, r.record_count), (bases[seq as usize], 3));
    }
    // The first batch is older than the few the broker must remember: it may be refused
    // or recognised, but never appended again.
    match c.append(idempotent(0, P, 0, big(0))).await {
        Ok(r) => {
            let r = r.into_inner();
            assert!(r.duplicate, "sequence 0 appended again: {r:?}");
            assert_eq!(r.base_offset, 0);
        }
        Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s}"),
    }
    assert_eq!(
        describe(&mut c, "idem").await.partition_info[0].end_offset,
        36
    );
}

#[tokio::test]
async fn timestamp_and_offset_lookups_work_after_kill_9() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 65_536,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let pad = "q".repeat(2000);
    for b in 0..20i64 {
        let records = (0..5i64)
            .map(|i| rec_at(format!("{}-{pad}", b * 5 + i), 1_000 + (b * 5 + i) * 10))
            .collect();
        append(&mut c, "t", 0, records).await;
    }
    broker.kill().await;
    broker.restart();
    let mut c = broker.client().await;
    for target in [0u64, 42, 99] {
        let mut stream = subscribe(
            &mut c,
            SubscribeRequest {
                topic: "t".into(),
                start: Some(StartPosition {
                    kind: Kind::Timestamp as i32,
                    offset: 0,
                    timestamp_ms: 1_000 + target as i64 * 10,
                }),
                ..SubscribeRequest::default()
            },
        )
        .await
        .unwrap();
        let got = take_records(&mut stream, 100 - target as usize).await;
        assert_eq!(got[0].1.offset, target);
        let r = read(&mut c, "t", 0, target, 1).await.unwrap();
        assert!(
            r.records[0]
                .value
                .starts_with(format!("{target}-").as_bytes())
        );
    }
}
