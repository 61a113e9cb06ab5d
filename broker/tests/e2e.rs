//! End-to-end tests of the topic, append, read and offset RPCs, plus the health service,
//! reflection and `/metrics`, against a real `spoold` process.
//!
//! Subscribe lives in `subscribe.rs`, restarts and crashes in `durability.rs`, error codes
//! in `validation.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use spool_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn topics_are_created_listed_described_and_deleted_with_their_files() {
    let broker = Broker::start();
    let mut c = broker.client().await;

    let req = CreateTopicRequest {
        name: "orders".into(),
        partitions: 3,
        config: Some(TopicConfig {
            segment_bytes: 70_000,
            fsync: FsyncPolicy::Never as i32,
            max_record_bytes: 2048,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    let orders = c
        .create_topic(req)
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(orders.name, "orders");
    assert_eq!(orders.partitions, 3);
    let config = orders.config.unwrap();
    assert_eq!(config.fsync, FsyncPolicy::Never as i32);
    assert_eq!(config.segment_bytes, 70_000);
    assert_eq!(config.max_record_bytes, 2048);
    assert_ne!(
        config.fsync_interval_ms, 0,
        "effective config shows the default"
    );
    let parts: Vec<_> = orders
        .partition_info
        .iter()
        .map(|p| (p.partition, p.start_offset, p.end_offset))
        .collect();
    assert_eq!(parts, vec![(0, 0, 0), (1, 0, 0), (2, 0, 0)]);

    // No config at all: every field shows the broker default, fsync ALWAYS among them.
    let alpha = c
        .create_topic(CreateTopicRequest {
            name: "alpha".into(),
            partitions: 1,
            config: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let config = alpha.config.unwrap();
    assert_eq!(config.fsync, FsyncPolicy::Always as i32);
    assert!(config.segment_bytes >= 65_536);
    assert!(config.max_record_bytes > 0);

    let names = |l: ListTopicsResponse| l.topics.into_iter().map(|t| t.name).collect::<Vec<_>>();
    let listed = c.list_topics(ListTopicsRequest {}).await.unwrap();
    assert_eq!(names(listed.into_inner()), ["alpha", "orders"]);

    append(&mut c, "orders", 1, recs("x", 0..4)).await;
    let described = describe(&mut c, "orders").await;
    assert_eq!(described.partition_info[1].end_offset, 4);
    assert!(described.partition_info[1].size_bytes > 0);
    assert_eq!(described.partition_info[0].end_offset, 0);

    let dir = broker.data_dir().join("topics").join("orders");
    assert!(dir.exists(), "{} missing", dir.display());
    c.delete_topic(DeleteTopicRequest {
        name: "orders".into(),
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "DeleteTopic left {}", dir.display());
    let gone = c
        .describe_topic(DescribeTopicRequest {
            name: "orders".into(),
        })
        .await;
    assert_eq!(code(gone), Code::NotFound);
    let again = c
        .delete_topic(DeleteTopicRequest {
            name: "orders".into(),
        })
        .await;
    assert_eq!(code(again), Code::NotFound);
    let listed = c.list_topics(ListTopicsRequest {}).await.unwrap();
    assert_eq!(names(listed.into_inner()), ["alpha"]);

    // The name is free again, and the new topic starts empty.
    let reborn = create_topic(&mut c, "orders", 2, FsyncPolicy::Unspecified).await;
    assert_eq!(reborn.partitions, 2);
    assert!(reborn.partition_info.iter().all(|p| p.end_offset == 0));
}

#[tokio::test]
async fn append_then_read_keeps_keys_headers_order_and_timestamps() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;

    let headers = vec![
        Header {
            key: "h".into(),
            value: Bytes::from_static(b"1"),
        },
        Header {
            key: "h".into(),
            value: Bytes::from_static(b"2"),
        },
        Header {
            key: "empty".into(),
            value: Bytes::new(),
        },
    ];
    let first = Record {
        key: Bytes::from_static(b"k1"),
        value: Bytes::from_static(b"v1"),
        headers: headers.clone(),
        timestamp_ms: 0,
        offset: 999, // ignored on append
        deliver_at_ms: 0,
    };
    let second = Record {
        value: Bytes::from_static(&[0, 255, 7]),
        timestamp_ms: 1_234_567,
        ..Record::default()
    };
    let before = now_ms();
    let resp = c
        .append(AppendRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![first, second, rec("")],
            request_id: 77,
            ..AppendRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let after = now_ms();
    assert_eq!(resp.request_id, 77);
    assert_eq!(resp.partition, 0);
    assert_eq!(resp.base_offset, 0);
    assert_eq!(resp.record_count, 3);
    assert!(!resp.duplicate);
    assert_eq!(resp.durability, Durability::Fsynced as i32);

    let second = append(&mut c, "t", 0, recs("more", 0..2)).await;
    assert_eq!((second.base_offset, second.record_count), (3, 2));

    let r = read(&mut c, "t", 0, 0, 0).await.unwrap();
    assert_eq!((r.start_offset, r.end_offset), (0, 5));
    let offsets: Vec<u64> = r.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    let got = &r.records[0];
    assert_eq!(got.key, Bytes::from_static(b"k1"));
    assert_eq!(got.value, Bytes::from_static(b"v1"));
    assert_eq!(got.headers, headers, "header order and repeats are kept");
    assert!(
        (before..=after).contains(&got.timestamp_ms),
        "timestamp 0 means broker time: {} not in {before}..={after}",
        got.timestamp_ms
    );
    assert_eq!(r.records[1].value, Bytes::from_static(&[0, 255, 7]));
    assert_eq!(r.records[1].timestamp_ms, 1_234_567);
    assert!(r.records[1].key.is_empty() && r.records[1].headers.is_empty());
    assert!(r.records[2].value.is_empty());
    assert_eq!(values(&r.records[3..]), ["more-0", "more-1"]);
}

/// A partition gauge from `/metrics`: `spool_partition_<name>{topic=...,partition="0"}`.
fn partition_gauge(broker: &Broker, name: &str, topic: &str) -> u64 {
    let body = broker.metrics();
    let prefix = format!("spool_partition_{name}{{topic=\"{topic}\",partition=\"0\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn append_durability_follows_the_fsync_policy() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "always", 1, FsyncPolicy::Always).await;
    create_topic(&mut c, "never", 1, FsyncPolicy::Never).await;
    let req = CreateTopicRequest {
        name: "interval".into(),
        partitions: 1,
        config: Some(TopicConfig {
            fsync: FsyncPolicy::Interval as i32,
            fsync_interval_ms: 100,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req)).await.unwrap();
    let a = append(&mut c, "always", 0, recs("a", 0..3)).await;
    assert_eq!(a.durability, Durability::Fsynced as i32);
    assert!(partition_gauge(&broker, "fsyncs", "always") >= 1);
    assert_eq!(partition_gauge(&broker, "durable_offset", "always"), 3);
    // NEVER: answered as written, and no fsync of its log ran.
    for i in 0..5 {
        let n = append(&mut c, "never", 0, recs("n", i * 3..i * 3 + 3)).await;
        assert_eq!(n.durability, Durability::Written as i32);
    }
    assert_eq!(partition_gauge(&broker, "fsyncs", "never"), 0);
    assert_eq!(partition_gauge(&broker, "durable_offset", "never"), 0);
    // INTERVAL: answered before the disk, then made durable by the flusher on its own.
    append(&mut c, "interval", 0, recs("i", 0..3)).await;
    within("the flusher syncs the interval topic", async {
        while partition_gauge(&broker, "durable_offset", "interval") < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(partition_gauge(&broker, "fsyncs", "interval") >= 1);
}

#[tokio::test]
async fn read_starts_inside_a_batch_spans_batches_and_honours_limits() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    for b in 0..3 {
        let records = (0..10)
            .map(|i| rec(format!("b{b}-{i:03}-{}", "x".repeat(92))))
            .collect();
        append(&mut c, "t", 0, records).await;
    }
    let value_of = |offset: u64| format!("b{}-{:03}-{}", offset / 10, offset % 10, "x".repeat(92));

    // From the middle of the second batch to the end: several batches, exact start.
    let r = read(&mut c, "t", 0, 15, 0).await.unwrap();
    let offsets: Vec<u64> = r.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (15..30).collect::<Vec<_>>());
    assert_eq!(values(&r.records[..1]), [value_of(15)]);
    assert_eq!(r.end_offset, 30);

    // max_records inside one batch and across a batch boundary.
    let r = read(&mut c, "t", 0, 5, 3).await.unwrap();
    assert_eq!(values(&r.records), [value_of(5), value_of(6), value_of(7)]);
    let r = read(&mut c, "t", 0, 5, 12).await.unwrap();
    let offsets: Vec<u64> = r.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (5..17).collect::<Vec<_>>());

    // max_bytes: each record is 100 payload bytes. A limit below one record still returns
    // that record alone; a larger limit never returns more bytes than it allows.
    let tiny = c
        .read(ReadRequest {
            topic: "t".into(),
            partition: 0,
            offset: 12,
            max_bytes: 1,
            ..ReadRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(&tiny.records), [value_of(12)]);
    let some = c
        .read(ReadRequest {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            max_bytes: 450,
            ..ReadRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let n = some.records.len();
    assert!((1..=4).contains(&n), "{n} records for 450 bytes");
    let expected: Vec<String> = (3..3 + n as u64).map(value_of).collect();
    assert_eq!(values(&some.records), expected);

    // At the end with no wait: nothing, at once.
    let r = read(&mut c, "t", 0, 30, 0).await.unwrap();
    assert!(r.records.is_empty());
    assert_eq!((r.start_offset, r.end_offset), (0, 30));
}

#[tokio::test]
async fn read_long_poll_wakes_when_records_arrive() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    append(&mut c, "t", 1, recs("old", 0..1)).await;

    // Nothing arrives: an empty answer after the wait.
    let r = c
        .read(ReadRequest {
            topic: "t".into(),
            partition: 1,
            offset: 1,
            max_wait_ms: 100,
            ..ReadRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.records.is_empty());
    assert_eq!(r.end_offset, 1);

    // Records arrive during the wait. The poll may wait up to 30 s (the broker's cap); an
    // answer within 25 s can only come from the wake-up, whatever the machine's load.
    let mut poller = c.clone();
    let poll = tokio::spawn(async move {
        poller
            .read(ReadRequest {
                topic: "t".into(),
                partition: 1,
                offset: 1,
                max_wait_ms: 30_000,
                ..ReadRequest::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An append to another partition must not satisfy the poll with wrong data.
    append(&mut c, "t", 0, recs("other", 0..1)).await;
    append(&mut c, "t", 1, recs("new", 0..2)).await;
    let r = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("the long poll did not return when records arrived")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(!r.records.is_empty());
    assert_eq!(r.records[0].offset, 1);
    assert_eq!(values(&r.records), ["new-0", "new-1"][..r.records.len()]);
}

#[tokio::test]
async fn read_long_poll_on_a_deleted_topic_ends_with_not_found() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let mut poller = c.clone();
    let poll = tokio::spawn(async move {
        poller
            .read(ReadRequest {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_wait_ms: 30_000,
                ..ReadRequest::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.delete_topic(DeleteTopicRequest { name: "t".into() })
        .await
        .unwrap();
    let r = within("long poll", poll).await.unwrap();
    // If the poll had not started waiting yet, the topic is already gone: NOT_FOUND too.
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn append_stream_answers_many_in_flight_requests_in_order() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;

    const N: u64 = 300;
    let requests: Vec<AppendRequest> = (0..N)
        .map(|i| AppendRequest {
            topic: "t".into(),
            partition: Some((i % 4) as u32),
            records: recs(&format!("r{i}"), 0..(i % 3 + 1) as u32),
            request_id: 1_000_000 + i * 7,
            ..AppendRequest::default()
        })
        .collect();
    // Every request is queued before the call, so they are all in flight at once.
    let (tx, rx) = tokio::sync::mpsc::channel(N as usize);
    for r in requests.clone() {
        tx.send(r).await.unwrap();
    }
    drop(tx);
    let mut responses = within(
        "AppendStream",
        c.append_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();

    let mut next_offset: BTreeMap<u32, u64> = BTreeMap::new();
    for req in &requests {
        let resp = within("AppendStream response", responses.next())
            .await
            .expect("a response per request")
            .unwrap();
        assert_eq!(
            resp.request_id, req.request_id,
            "responses in request order"
        );
        assert_eq!(Some(resp.partition), req.partition);
        assert_eq!(resp.record_count as usize, req.records.len());
        assert_eq!(resp.durability, Durability::Fsynced as i32);
        let next = next_offset.entry(resp.partition).or_default();
        assert_eq!(resp.base_offset, *next, "offsets follow request order");
        *next += u64::from(resp.record_count);
    }
    assert!(
        within("end of AppendStream", responses.next())
            .await
            .is_none(),
        "the stream ends after the last response"
    );

    for p in 0..4u32 {
        let got = read_to_end(&mut c, "t", p, 0).await;
        let expected: Vec<String> = requests
            .iter()
            .filter(|r| r.partition == Some(p))
            .flat_map(|r| values(&r.records))
            .collect();
        assert_eq!(values(&got), expected, "partition {p}");
    }
}

#[tokio::test]
async fn append_stream_ends_at_the_first_failure_and_appends_nothing_after_it() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    let good = |i: u64| AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: vec![rec(format!("g{i}"))],
        request_id: i,
        ..AppendRequest::default()
    };
    let mut requests: Vec<AppendRequest> = (0..5).map(good).collect();
    requests.push(AppendRequest {
        records: Vec::new(), // INVALID_ARGUMENT
        request_id: 5,
        ..good(5)
    });
    requests.extend((6..10).map(good));
    let mut responses = within(
        "AppendStream",
        c.append_stream(tokio_stream::iter(requests)),
    )
    .await
    .unwrap()
    .into_inner();
    for i in 0..5 {
        let r = within("response", responses.next()).await.unwrap().unwrap();
        assert_eq!((r.request_id, r.base_offset), (i, i));
    }
    let failure = within("failure", responses.next()).await.unwrap();
    assert_eq!(code(failure), Code::InvalidArgument);
    assert!(within("end", responses.next()).await.is_none());

    let stored = read_to_end(&mut c, "t", 0, 0).await;
    assert_eq!(values(&stored), ["g0", "g1", "g2", "g3", "g4"]);
}

#[tokio::test]
async fn partition_key_routing_matches_the_documented_hash() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "keyed", 12, FsyncPolicy::Never).await;
    let keyed = |key: Vec<u8>, partition: Option<u32>| AppendRequest {
        topic: "keyed".into(),
        partition,
        partition_key: Bytes::from(key),
        records: vec![rec("v")],
        ..AppendRequest::default()
    };

    let r = c
        .append(keyed(b"order-42".to_vec(), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partition, 8, "the documented test vector");

    let mut keys: Vec<Vec<u8>> = vec![b"a".to_vec(), b"foobar".to_vec(), b"user-1234".to_vec()];
    keys.extend((0..40).map(|_| {
        (0..rand::random_range(1..24))
            .map(|_| rand::random())
            .collect()
    }));
    for key in keys {
        let want = spool_proto::partitioning::partition_for_key(&key, 12);
        let r = c.append(keyed(key.clone(), None)).await.unwrap();
        assert_eq!(r.into_inner().partition, want, "key {key:?}");
    }

    // An explicit partition wins over the key.
    let r = c
        .append(keyed(b"order-42".to_vec(), Some(3)))
        .await
        .unwrap();
    assert_eq!(r.into_inner().partition, 3);
}

#[tokio::test]
async fn appends_without_partition_or_key_go_round_robin() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "rr", 4, FsyncPolicy::Never).await;
    let mut counts = [0u32; 4];
    for i in 0..8 {
        let r = c
            .append(AppendRequest {
                topic: "rr".into(),
                records: vec![rec(format!("{i}"))],
                ..AppendRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        counts[r.partition as usize] += 1;
    }
    assert_eq!(counts, [2, 2, 2, 2]);
}

#[tokio::test]
async fn commit_offset_and_get_offsets_report_committed_and_lag() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("a", 0..5)).await;
    append(&mut c, "t", 1, recs("b", 0..3)).await;

    // A group that never committed: every partition, committed unset, lag = end - start.
    let fresh = get_offsets(&mut c, "nobody", "t").await;
    let rows: Vec<_> = fresh
        .iter()
        .map(|p| {
            (
                p.partition,
                p.committed,
                p.start_offset,
                p.end_offset,
                p.lag,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(0, None, 0, 5, 5), (1, None, 0, 3, 3), (2, None, 0, 0, 0)]
    );

    commit(&mut c, "g", "t", 0, 2).await;
    commit(&mut c, "g", "t", 1, 3).await;
    let rows: Vec<_> = get_offsets(&mut c, "g", "t")
        .await
        .iter()
        .map(|p| (p.partition, p.committed, p.lag))
        .collect();
    assert_eq!(rows, [(0, Some(2), 3), (1, Some(3), 0), (2, None, 0)]);

    // Commits may move backwards; another group is independent.
    commit(&mut c, "g", "t", 0, 1).await;
    commit(&mut c, "other", "t", 2, 0).await;
    let g = get_offsets(&mut c, "g", "t").await;
    assert_eq!((g[0].committed, g[0].lag), (Some(1), 4));
    let other = get_offsets(&mut c, "other", "t").await;
    assert_eq!(
        other.iter().map(|p| p.committed).collect::<Vec<_>>(),
        [None, None, Some(0)]
    );

    // Commit metadata is accepted.
    c.commit_offset(CommitOffsetRequest {
        group: "g".into(),
        topic: "t".into(),
        partition: 1,
        offset: 1,
        metadata: "worker-7".into(),
    })
    .await
    .unwrap();
    assert_eq!(get_offsets(&mut c, "g", "t").await[1].committed, Some(1));
}

#[tokio::test]
async fn health_service_reports_the_broker_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let broker = Broker::start();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let r = health
        .check(HealthCheckRequest {
            service: "spool.v1.Broker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    assert_eq!(spool_proto::BROKER_SERVICE_NAME, "spool.v1.Broker");
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_broker_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let broker = Broker::start();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse =
        within("reflection", answers.next()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        services.iter().any(|s| s == "spool.v1.Broker"),
        "{services:?}"
    );
    assert!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "{services:?}"
    );
}

#[tokio::test]
async fn metrics_endpoint_exports_appends_and_partition_end_offsets() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "metered", 2, FsyncPolicy::Always).await;
    append(&mut c, "metered", 1, recs("m", 0..3)).await;
    commit(&mut c, "g", "metered", 1, 1).await;
    let body = broker.metrics();
    let line = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("topic=\"metered\""))
            .unwrap_or_else(|| panic!("no {name} for the topic in\n{body}"))
            .to_string()
    };
    assert!(line("spool_appended_records_total").ends_with(" 3"));
    let end = body
        .lines()
        .find(|l| {
            l.starts_with("spool_partition_end_offset")
                && l.contains("topic=\"metered\"")
                && l.contains("partition=\"1\"")
        })
        .unwrap_or_else(|| panic!("no end offset of partition 1 in\n{body}"));
    assert!(end.ends_with(" 3"), "{end}");
    let lag = line("spool_consumer_lag");
    assert!(lag.contains("group=\"g\""), "{lag}");
    assert!(body.contains("spool_append_latency_seconds"));
    assert!(body.contains("spool_fsync_latency_seconds"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn retention_moves_the_start_offset_and_reads_below_it_are_out_of_range() {
    let broker = Broker::start_with(&["--retention-check-ms", "200"]);
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 65_536,
            retention_bytes: 65_536,
            fsync: FsyncPolicy::Never as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let pad = "r".repeat(4000);
    for b in 0..20u32 {
        let records = (0..5)
            .map(|i| rec(format!("{}-{pad}", b * 5 + i)))
            .collect();
        append(&mut c, "t", 0, records).await;
    }
    // Retention runs every 200 ms; wait for it to drop the oldest segments.
    let info = within("retention to remove a segment", async {
        loop {
            let info = describe(&mut c, "t").await.partition_info[0].clone();
            if info.start_offset > 0 {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (start, end) = (info.start_offset, info.end_offset);
    assert_eq!(end, 100);
    assert!(start < end, "the active segment is never removed");

    let s = status(read(&mut c, "t", 0, 0, 0).await);
    assert_eq!(s.code(), Code::OutOfRange, "{s}");
    let r = read(&mut c, "t", 0, start, 1).await.unwrap();
    assert_eq!(r.start_offset, start);
    assert!(
        r.records[0]
            .value
            .starts_with(format!("{start}-").as_bytes())
    );

    // Earliest now means the new start; lag of a group with no commit counts from it.
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let msg = within("first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(msg.records[0].offset >= start);
    let offsets = get_offsets(&mut c, "g", "t").await;
    assert!(offsets[0].start_offset >= start);
    assert_eq!(offsets[0].lag, end - offsets[0].start_offset);
}
