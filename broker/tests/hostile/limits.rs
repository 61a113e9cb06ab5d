//! Oversized requests, absurd limits and absurd topic configs.

use super::*;

pub(super) async fn oversized_requests(c: &mut Client, w: &mut Witness) {
    const EXHAUSTED: &[Code] = &[Code::ResourceExhausted];
    let big = vec![b'x'; MAX_REQUEST_BYTES + 1];
    let req = AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: vec![rec(big.clone())],
        ..AppendRequest::default()
    };
    expect("an oversized Append", c.append(req.clone()), EXHAUSTED).await;
    w.still_serving("an oversized Append").await;

    // Many small records adding up to more than the limit.
    let many = AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: (0..2000).map(|_| rec(vec![b'y'; 64])).collect(),
        ..AppendRequest::default()
    };
    expect("an Append of many records", c.append(many), EXHAUSTED).await;
    w.still_serving("an Append of many records").await;

    // On AppendStream, after one good request: the good one stands, the stream ends.
    let good = AppendRequest {
        topic: "t".into(),
        partition: Some(1),
        records: vec![rec("good")],
        ..AppendRequest::default()
    };
    let end_before = describe(c, "t").await.partition_info[1].end_offset;
    let mut stream = within(
        "AppendStream",
        c.append_stream(futures::stream::iter(vec![good, req.clone()])),
    )
    .await
    .expect("AppendStream opens")
    .into_inner();
    let first = within("AppendStream answer", stream.message())
        .await
        .expect("the good request is answered")
        .expect("an answer");
    assert_eq!(first.base_offset, end_before);
    expect(
        "an oversized AppendStream request",
        stream.message(),
        EXHAUSTED,
    )
    .await;
    assert_eq!(
        describe(c, "t").await.partition_info[1].end_offset,
        end_before + 1
    );
    w.still_serving("an oversized AppendStream request").await;

    let name = "n".repeat(MAX_REQUEST_BYTES + 1);
    let create = CreateTopicRequest {
        name: name.clone(),
        partitions: 1,
        config: None,
        ..Default::default()
    };
    expect(
        "an oversized CreateTopic",
        c.create_topic(create),
        EXHAUSTED,
    )
    .await;
    let sub = SubscribeRequest {
        topic: "t".into(),
        partitions: vec![0; MAX_REQUEST_BYTES],
        ..SubscribeRequest::default()
    };
    expect("an oversized Subscribe", c.subscribe(sub), EXHAUSTED).await;
    let join = JoinGroup {
        group: "g".into(),
        topic: name,
        ..JoinGroup::default()
    };
    let (_tx, res) = consume(c, vec![join_req(join)]).await;
    expect("an oversized JoinGroup", async { res }, EXHAUSTED).await;
    let commit = CommitOffsetRequest {
        group: "g".into(),
        topic: "t".into(),
        partition: 0,
        offset: 0,
        metadata: "m".repeat(MAX_REQUEST_BYTES),
    };
    expect(
        "an oversized CommitOffset",
        c.commit_offset(commit),
        EXHAUSTED,
    )
    .await;
    w.still_serving("oversized requests").await;
}

pub(super) async fn absurd_limits(c: &mut Client, w: &mut Witness) {
    let end = |t: &TopicInfo, p: usize| t.partition_info[p].end_offset;
    let info = describe(c, "t").await;
    // max_records and max_bytes at 2^32-1: clamped, everything available comes back.
    for (max_records, max_bytes) in [(u32::MAX, 0), (0, u32::MAX), (u32::MAX, u32::MAX)] {
        let req = ReadRequest {
            topic: "t".into(),
            partition: 2,
            offset: 0,
            max_records,
            max_bytes,
            max_wait_ms: 0,
        };
        let r = within("Read", c.read(req))
            .await
            .unwrap_or_else(|s| panic!("Read max_records={max_records} max_bytes={max_bytes}: {s}"))
            .into_inner();
        assert_eq!(r.records.len() as u64, end(&info, 2));
    }
    w.still_serving("Read with absurd limits").await;

    // max_wait_ms at 2^32-1 with a short client deadline: the deadline wins.
    let mut req = tonic::Request::new(ReadRequest {
        topic: "t".into(),
        partition: 2,
        offset: end(&info, 2),
        max_wait_ms: u32::MAX,
        ..ReadRequest::default()
    });
    req.set_timeout(Duration::from_millis(300));
    expect(
        "Read max_wait_ms=2^32-1 with a 300 ms deadline",
        c.read(req),
        &[Code::DeadlineExceeded, Code::Cancelled],
    )
    .await;
    w.still_serving("a Read that waited past its deadline")
        .await;

    // ... and without one, the (clamped) long poll still wakes for an append.
    let mut reader = c.clone();
    let offset = end(&info, 2);
    let poll = tokio::spawn(async move {
        let req = ReadRequest {
            topic: "t".into(),
            partition: 2,
            offset,
            max_wait_ms: u32::MAX,
            ..ReadRequest::default()
        };
        within("a long poll", reader.read(req)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(c, "t", 2, vec![rec("wake")]).await;
    let got = poll.await.expect("the poll task").expect("the long poll");
    assert_eq!(values(&got.into_inner().records), ["wake"]);
    w.still_serving("a long poll with max_wait_ms=2^32-1").await;

    // Subscribe with max_batch_records at 2^32-1 delivers everything, in order.
    let info = describe(c, "t").await;
    let total: u64 = (0..3).map(|p| end(&info, p)).sum();
    let mut sub = subscribe(
        c,
        SubscribeRequest {
            topic: "t".into(),
            max_batch_records: u32::MAX,
            ..SubscribeRequest::default()
        },
    )
    .await
    .expect("Subscribe max_batch_records=2^32-1");
    take_records(&mut sub, total as usize).await;
    drop(sub);
    w.still_serving("Subscribe with max_batch_records=2^32-1")
        .await;

    // Consume with every JoinGroup limit at its maximum.
    let join = JoinGroup {
        group: "absurd".into(),
        topic: "t".into(),
        session_timeout_ms: u32::MAX,
        max_in_flight_records: u32::MAX,
        max_in_flight_bytes: u64::MAX,
        ..JoinGroup::default()
    };
    let (tx, res) = consume(c, vec![join_req(join)]).await;
    let mut stream = res.expect("Consume with absurd limits");
    let mut received = 0u64;
    let mut assigned = None;
    while received < total {
        let msg = within("Consume message", stream.message())
            .await
            .unwrap_or_else(|s| panic!("Consume failed after {received} records: {s}"))
            .expect("the Consume stream ended early");
        match msg.kind {
            Some(Resp::Assignment(a)) => assigned = Some(a.partitions),
            Some(Resp::Batch(b)) => received += b.records.len() as u64,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(assigned.as_deref(), Some(&[0, 1, 2][..]));
    let described = within(
        "DescribeGroup",
        c.describe_group(DescribeGroupRequest {
            group: "absurd".into(),
            topic: Some("t".into()),
        }),
    )
    .await
    .expect("DescribeGroup")
    .into_inner();
    let member = &described.topics[0].members[0];
    eprintln!(
        "session_timeout_ms=2^32-1 is in force as {} ms",
        member.session_timeout_ms
    );
    // The cap is the broker's (one hour); the API documents only the floor of 500 ms.
    assert_eq!(member.session_timeout_ms, 3_600_000);
    tx.send(ConsumeRequest {
        kind: Some(Req::Leave(LeaveGroup {})),
    })
    .await
    .expect("send LeaveGroup");
    loop {
        match within("Consume end", stream.message()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) => panic!("Consume after LeaveGroup: {s}"),
        }
    }
    w.still_serving("Consume with absurd limits").await;
}

pub(super) async fn absurd_topic_configs(c: &mut Client, w: &mut Witness) {
    let create = |name: &str, partitions: u32, config: TopicConfig| CreateTopicRequest {
        name: name.into(),
        partitions,
        config: Some(config),
        ..Default::default()
    };
    for partitions in [0, 10_001, u32::MAX] {
        expect(
            &format!("CreateTopic partitions={partitions}"),
            c.create_topic(create("many", partitions, TopicConfig::default())),
            &[Code::InvalidArgument],
        )
        .await;
    }
    let bad_configs = [
        TopicConfig {
            max_record_bytes: u32::MAX,
            ..TopicConfig::default()
        },
        TopicConfig {
            fsync: 99,
            ..TopicConfig::default()
        },
        TopicConfig {
            fsync: -1,
            ..TopicConfig::default()
        },
    ];
    for config in bad_configs {
        expect(
            &format!("CreateTopic {config:?}"),
            c.create_topic(create("bad-config", 1, config)),
            &[Code::InvalidArgument],
        )
        .await;
    }
    w.still_serving("CreateTopic with absurd partitions and configs")
        .await;

    // The largest values that are not invalid: clamped, and the topic works.
    let huge = TopicConfig {
        segment_bytes: u64::MAX,
        retention_bytes: u64::MAX,
        fsync: FsyncPolicy::Interval as i32,
        fsync_interval_ms: u64::MAX,
        ..TopicConfig::default()
    };
    let info = within("CreateTopic", c.create_topic(create("huge", 1, huge)))
        .await
        .expect("CreateTopic with u64::MAX sizes")
        .into_inner()
        .topic
        .expect("topic info");
    let config = info.config.expect("config");
    assert!(
        config.segment_bytes <= 2 << 30,
        "segment_bytes is clamped: {config:?}"
    );
    fill(c, "huge", 0, 100, 100, 100).await;
    assert_eq!(read_to_end(c, "huge", 0, 0).await.len(), 100);
    w.still_serving("a topic with u64::MAX sizes").await;
}
