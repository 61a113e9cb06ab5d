//! End-to-end tests of Subscribe: every start position, live tailing, batch limits and the
//! end of a stream when its topic is deleted.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::*;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tonic::Code;

/// Groups (partition, record) pairs into partition → values.
fn by_partition(records: &[(u32, Record)]) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (p, r) in records {
        out.entry(*p)
            .or_default()
            .push(String::from_utf8_lossy(&r.value).into_owned());
    }
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn subscribe_from_earliest_delivers_every_partition_then_tails_live_appends() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Always).await;
    for p in 0..3 {
        append(&mut c, "t", p, recs(&format!("p{p}"), 0..3)).await;
        append(&mut c, "t", p, recs(&format!("p{p}"), 3..5)).await;
    }

    // Unspecified start is earliest; no partitions means all of them.
    let mut all = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let got = take_records(&mut all, 15).await;
    let expected: BTreeMap<u32, Vec<String>> = (0..3)
        .map(|p| (p, (0..5).map(|i| format!("p{p}-{i}")).collect()))
        .collect();
    assert_eq!(by_partition(&got), expected);
    assert!(got.iter().all(|(_, r)| r.offset < 5));

    // Explicit KIND_EARLIEST on one partition.
    let mut one = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            partitions: vec![1],
            start: start(Kind::Earliest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let got = take_records(&mut one, 5).await;
    assert!(got.iter().all(|(p, _)| *p == 1));

    // Live: new appends reach both streams, each only for its partitions.
    append(&mut c, "t", 1, recs("live1", 0..2)).await;
    append(&mut c, "t", 2, recs("live2", 0..1)).await;
    let got = take_records(&mut all, 3).await;
    let live = by_partition(&got);
    assert_eq!(live[&1], strings(&["live1-0", "live1-1"]));
    assert_eq!(live[&2], strings(&["live2-0"]));
    let got = take_records(&mut one, 2).await;
    assert_eq!(
        got.iter().map(|(p, r)| (*p, r.offset)).collect::<Vec<_>>(),
        [(1, 5), (1, 6)]
    );
}

#[tokio::test]
async fn subscribe_tails_concurrent_appends_without_gaps() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Never).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            start: start(Kind::Latest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let mut producer = c.clone();
    let appends = tokio::spawn(async move {
        for i in 0..60u32 {
            let p = i % 3;
            append(
                &mut producer,
                "t",
                p,
                recs(&format!("p{p}-{i}"), 0..(i % 4 + 1)),
            )
            .await;
        }
    });
    let total: u32 = (0..60u32).map(|i| i % 4 + 1).sum();
    // take_records checks that each partition's offsets arrive consecutive.
    let got = take_records(&mut stream, total as usize).await;
    appends.await.unwrap();
    for p in 0..3u32 {
        let expected: Vec<String> = (0..60u32)
            .filter(|i| i % 3 == p)
            .flat_map(|i| (0..(i % 4 + 1)).map(move |j| format!("p{p}-{i}-{j}")))
            .collect();
        assert_eq!(
            by_partition(&got).remove(&p).unwrap_or_default(),
            expected,
            "partition {p}"
        );
    }
}

#[tokio::test]
async fn subscribe_from_latest_sees_only_new_records() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("old", 0..5)).await;
    append(&mut c, "t", 1, recs("old", 0..2)).await;
    // The start offsets are fixed before the call returns.
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            start: start(Kind::Latest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    append(&mut c, "t", 1, recs("new", 0..2)).await;
    append(&mut c, "t", 0, recs("new", 2..3)).await;
    let got = take_records(&mut stream, 3).await;
    let by = by_partition(&got);
    assert_eq!(by[&0], strings(&["new-2"]));
    assert_eq!(by[&1], strings(&["new-0", "new-1"]));
    let offsets: BTreeMap<u32, Vec<u64>> = got.iter().fold(BTreeMap::new(), |mut m, (p, r)| {
        m.entry(*p).or_default().push(r.offset);
        m
    });
    assert_eq!(offsets[&0], [5]);
    assert_eq!(offsets[&1], [2, 3]);
}

#[tokio::test]
async fn subscribe_from_an_offset_starts_exactly_there_even_inside_a_batch() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("a", 0..10)).await;
    append(&mut c, "t", 0, recs("b", 0..4)).await;
    let from = |offset: u64| SubscribeRequest {
        topic: "t".into(),
        partitions: vec![0],
        start: Some(StartPosition {
            kind: Kind::Offset as i32,
            offset,
            timestamp_ms: 0,
        }),
        ..SubscribeRequest::default()
    };
    let mut stream = subscribe(&mut c, from(4)).await.unwrap();
    let got = take_records(&mut stream, 10).await;
    assert_eq!(got[0].1.offset, 4);
    let vals: Vec<String> = got.iter().map(|(_, r)| value(r)).collect();
    assert_eq!(vals[..2], strings(&["a-4", "a-5"]));
    assert_eq!(vals[6..], strings(&["b-0", "b-1", "b-2", "b-3"]));

    // At the end offset: nothing until the next append.
    let mut at_end = subscribe(&mut c, from(14)).await.unwrap();
    append(&mut c, "t", 0, recs("c", 0..1)).await;
    let got = take_records(&mut at_end, 1).await;
    assert_eq!((got[0].1.offset, value(&got[0].1)), (14, "c-0".to_string()));
}

#[tokio::test]
async fn subscribe_from_a_timestamp_starts_at_the_first_record_at_or_after_it() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(
        &mut c,
        "t",
        0,
        vec![rec_at("r0", 1000), rec_at("r1", 2000), rec_at("r2", 3000)],
    )
    .await;
    append(
        &mut c,
        "t",
        0,
        vec![rec_at("r3", 4000), rec_at("r4", 5000), rec_at("r5", 6000)],
    )
    .await;
    let at = |timestamp_ms: i64| SubscribeRequest {
        topic: "t".into(),
        start: Some(StartPosition {
            kind: Kind::Timestamp as i32,
            offset: 0,
            timestamp_ms,
        }),
        ..SubscribeRequest::default()
    };
    // (timestamp, the first offset expected)
    for (ts, first) in [
        (0, 0),
        (1000, 0),
        (1001, 1),
        (2000, 1),
        (2500, 2),
        (3000, 2),
        (4000, 3),
        (5000, 4),
        (5999, 5),
        (6000, 5),
    ] {
        let mut stream = subscribe(&mut c, at(ts)).await.unwrap();
        let got = take_records(&mut stream, (6 - first) as usize).await;
        assert_eq!(got[0].1.offset, first, "timestamp {ts}");
        assert_eq!(value(&got[0].1), format!("r{first}"), "timestamp {ts}");
    }

    // Past every record: from the end, so the next append is the first record seen.
    let mut stream = subscribe(&mut c, at(6001)).await.unwrap();
    append(&mut c, "t", 0, vec![rec_at("r6", 100)]).await;
    let got = take_records(&mut stream, 1).await;
    assert_eq!(got[0].1.offset, 6);
}

#[tokio::test]
async fn subscribe_from_a_timestamp_finds_the_record_across_many_segments() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    let config = TopicConfig {
        segment_bytes: 65_536,
        fsync: FsyncPolicy::Never as i32,
        ..TopicConfig::default()
    };
    c.create_topic(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: Some(config),
        ..Default::default()
    })
    .await
    .unwrap();
    let pad = "x".repeat(1000);
    for b in 0..40u64 {
        let records = (0..10u64)
            .map(|i| {
                let offset = b * 10 + i;
                rec_at(format!("{offset}-{pad}"), 10_000 + offset as i64 * 10)
            })
            .collect();
        append(&mut c, "t", 0, records).await;
    }
    let segments = std::fs::read_dir(broker.data_dir().join("topics/t/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments > 3, "expected several segments, found {segments}");

    for target in [0u64, 237, 239, 240, 399] {
        let ts = 10_000 + target as i64 * 10 - 5;
        let mut stream = subscribe(
            &mut c,
            SubscribeRequest {
                topic: "t".into(),
                start: Some(StartPosition {
                    kind: Kind::Timestamp as i32,
                    offset: 0,
                    timestamp_ms: ts,
                }),
                max_batch_records: 5,
                ..SubscribeRequest::default()
            },
        )
        .await
        .unwrap();
        let first = within("first message", stream.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.records[0].offset, target, "timestamp {ts}");
        assert!(
            first.records[0]
                .value
                .starts_with(format!("{target}-").as_bytes())
        );
    }
}

#[tokio::test]
async fn subscribe_from_committed_uses_each_partitions_commit_or_earliest() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("p0", 0..5)).await;
    append(&mut c, "t", 1, recs("p1", 0..5)).await;
    commit(&mut c, "g", "t", 0, 3).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            start: start(Kind::Committed),
            group: "g".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let got = by_partition(&take_records(&mut stream, 7).await);
    assert_eq!(got[&0], strings(&["p0-3", "p0-4"]));
    assert_eq!(got[&1], strings(&["p1-0", "p1-1", "p1-2", "p1-3", "p1-4"]));

    // A commit at the end: only new records.
    commit(&mut c, "h", "t", 0, 5).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            partitions: vec![0],
            start: start(Kind::Committed),
            group: "h".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    append(&mut c, "t", 0, recs("next", 0..1)).await;
    let got = take_records(&mut stream, 1).await;
    assert_eq!(got[0].1.offset, 5);
    assert_eq!(got[0].1.value, Bytes::from_static(b"next-0"));
}

#[tokio::test]
async fn subscribe_honours_max_batch_records() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..20)).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            max_batch_records: 3,
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let mut seen = 0;
    while seen < 20 {
        let msg = within("message", stream.message()).await.unwrap().unwrap();
        assert!(
            (1..=3).contains(&msg.records.len()),
            "{} records in one message",
            msg.records.len()
        );
        assert_eq!(msg.records[0].offset, seen);
        assert!(msg.end_offset >= 20);
        seen += msg.records.len() as u64;
    }
    assert_eq!(seen, 20);
}

#[tokio::test]
async fn deleting_a_topic_ends_its_open_subscriptions_with_not_found() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "doomed", 2, FsyncPolicy::Never).await;
    append(&mut c, "doomed", 0, recs("r", 0..3)).await;
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "doomed".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    take_records(&mut stream, 3).await;
    c.delete_topic(DeleteTopicRequest {
        name: "doomed".into(),
    })
    .await
    .unwrap();
    let end = match within("the end of the stream", stream.message()).await {
        Ok(Some(msg)) => panic!("unexpected records after delete: {msg:?}"),
        Ok(None) => panic!("the stream ended with OK, not NOT_FOUND"),
        Err(status) => status,
    };
    assert_eq!(end.code(), Code::NotFound, "{end}");
}
