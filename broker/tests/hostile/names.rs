//! Hostile names, offsets outside the log, unknown topics, partitions and groups, and
//! Consume streams that do not start with a join.

use super::*;

pub(super) async fn hostile_names(c: &mut Client, w: &mut Witness) {
    let long = "a".repeat(300);
    let names = [
        "a/b",
        "/etc",
        "../t",
        "a\\b",
        "..",
        ".",
        "t\0",
        "\0",
        long.as_str(),
    ];
    const BAD: &[Code] = &[Code::InvalidArgument];
    const MISSING: &[Code] = &[Code::NotFound];
    for name in names {
        let n = || name.to_string();
        let case = |rpc: &str| format!("{rpc} with the name {:?}", &name[..name.len().min(20)]);
        let create = CreateTopicRequest {
            name: n(),
            partitions: 1,
            config: None,
            ..Default::default()
        };
        expect(&case("CreateTopic"), c.create_topic(create), BAD).await;
        expect(
            &case("DescribeTopic"),
            c.describe_topic(DescribeTopicRequest { name: n() }),
            BAD,
        )
        .await;
        expect(
            &case("DeleteTopic"),
            c.delete_topic(DeleteTopicRequest { name: n() }),
            BAD,
        )
        .await;
        // The data-plane RPCs document only NOT_FOUND for a topic that does not exist,
        // and a topic with a bad name never does.
        let append = AppendRequest {
            topic: n(),
            partition: Some(0),
            records: vec![rec("x")],
            ..AppendRequest::default()
        };
        expect(&case("Append"), c.append(append), MISSING).await;
        let read = ReadRequest {
            topic: n(),
            ..ReadRequest::default()
        };
        expect(&case("Read"), c.read(read), MISSING).await;
        let sub = SubscribeRequest {
            topic: n(),
            ..SubscribeRequest::default()
        };
        expect(&case("Subscribe"), c.subscribe(sub), MISSING).await;
        // As a group name: INVALID_ARGUMENT everywhere a group is named.
        let commit = CommitOffsetRequest {
            group: n(),
            topic: "t".into(),
            partition: 0,
            offset: 0,
            metadata: String::new(),
        };
        expect(&case("CommitOffset group"), c.commit_offset(commit), BAD).await;
        let get = GetOffsetsRequest {
            group: n(),
            topic: "t".into(),
        };
        expect(&case("GetOffsets group"), c.get_offsets(get), BAD).await;
        let describe_group = DescribeGroupRequest {
            group: n(),
            topic: None,
        };
        expect(
            &case("DescribeGroup group"),
            c.describe_group(describe_group),
            BAD,
        )
        .await;
        let sub = SubscribeRequest {
            topic: "t".into(),
            group: n(),
            start: start(Kind::Committed),
            ..SubscribeRequest::default()
        };
        expect(
            &case("Subscribe KIND_COMMITTED group"),
            c.subscribe(sub),
            BAD,
        )
        .await;
        let join = JoinGroup {
            group: n(),
            topic: "t".into(),
            ..JoinGroup::default()
        };
        let (_tx, res) = consume(c, vec![join_req(join)]).await;
        expect(&case("Consume group"), async { res }, BAD).await;
        // As the topic of a group RPC: there is no such topic.
        let join = JoinGroup {
            group: "g".into(),
            topic: n(),
            ..JoinGroup::default()
        };
        let (_tx, res) = consume(c, vec![join_req(join)]).await;
        expect(&case("Consume topic"), async { res }, MISSING).await;
        let get = GetOffsetsRequest {
            group: "g".into(),
            topic: n(),
        };
        expect(&case("GetOffsets topic"), c.get_offsets(get), MISSING).await;
        // ListGroups filters by topic and documents no error: nothing matches.
        let listed = within(
            "ListGroups",
            c.list_groups(ListGroupsRequest { topic: n() }),
        )
        .await
        .unwrap_or_else(|s| panic!("{}: {s}", case("ListGroups")))
        .into_inner();
        assert!(listed.groups.is_empty(), "{}", case("ListGroups"));
        w.still_serving(&case("every RPC")).await;
    }
    // Nothing escaped the data directory or was created by any of it.
    let topics = within("ListTopics", c.list_topics(ListTopicsRequest {}))
        .await
        .expect("ListTopics")
        .into_inner()
        .topics;
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["huge", "t", "witness"]);
}

pub(super) async fn offsets_outside_the_log(c: &mut Client, w: &mut Witness) {
    const RANGE: &[Code] = &[Code::OutOfRange];
    // A topic whose start moves: 64 KiB segments and 64 KiB retention, checked every 100 ms.
    let req = CreateTopicRequest {
        name: "retained".into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 64 * 1024,
            retention_bytes: 64 * 1024,
            fsync: FsyncPolicy::Never as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req))
        .await
        .expect("CreateTopic retained");
    fill(c, "retained", 0, 400, 1000, 40).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Wait until retention moved the start and then settled (two samples 500 ms apart).
    let mut previous = 0;
    let (start_offset, end_offset) = loop {
        let p = describe(c, "retained").await.partition_info[0].clone();
        if p.start_offset > 0 && p.start_offset == previous {
            break (p.start_offset, p.end_offset);
        }
        previous = p.start_offset;
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never moved the start"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for offset in [0, start_offset - 1, end_offset + 1, u64::MAX / 2, u64::MAX] {
        let case = format!("Read at {offset} of {start_offset}..{end_offset}");
        let s = expect(&case, read(c, "retained", 0, offset, 0), RANGE).await;
        assert!(
            // Retention may move the start meanwhile; the end stays put.
            s.message().contains(&format!("..{end_offset}")),
            "{case}: the message gives the valid range: {s}"
        );
        // A long poll outside the log does not wait: it is refused at once.
        let req = ReadRequest {
            topic: "retained".into(),
            partition: 0,
            offset,
            max_wait_ms: u32::MAX,
            ..ReadRequest::default()
        };
        expect(&format!("{case} with a long poll"), c.read(req), RANGE).await;
        let sub = SubscribeRequest {
            topic: "retained".into(),
            start: Some(StartPosition {
                kind: Kind::Offset as i32,
                offset,
                timestamp_ms: 0,
            }),
            ..SubscribeRequest::default()
        };
        expect(&format!("Subscribe from {offset}"), c.subscribe(sub), RANGE).await;
    }
    // A commit past the end is refused; the edges of the range are fine.
    for offset in [end_offset + 1, u64::MAX] {
        let commit = CommitOffsetRequest {
            group: "g".into(),
            topic: "retained".into(),
            partition: 0,
            offset,
            metadata: String::new(),
        };
        expect(
            &format!("CommitOffset {offset}"),
            c.commit_offset(commit),
            RANGE,
        )
        .await;
    }
    let at_end = read(c, "retained", 0, end_offset, 0)
        .await
        .expect("a Read at the end offset");
    assert!(at_end.records.is_empty());
    let at_start = read(c, "retained", 0, start_offset, 1)
        .await
        .expect("a Read at the start offset");
    assert_eq!(at_start.records[0].offset, start_offset);
    // A KIND_TIMESTAMP start far in the past or the future is not an error.
    for ts in [i64::MIN, -1, i64::MAX] {
        let sub = SubscribeRequest {
            topic: "retained".into(),
            start: Some(StartPosition {
                kind: Kind::Timestamp as i32,
                offset: 0,
                timestamp_ms: ts,
            }),
            ..SubscribeRequest::default()
        };
        within("Subscribe", c.subscribe(sub))
            .await
            .unwrap_or_else(|s| panic!("Subscribe from timestamp {ts}: {s}"));
    }
    // An unknown start kind is bad input.
    let sub = SubscribeRequest {
        topic: "retained".into(),
        start: Some(StartPosition {
            kind: 99,
            offset: 0,
            timestamp_ms: 0,
        }),
        ..SubscribeRequest::default()
    };
    expect(
        "Subscribe kind=99",
        c.subscribe(sub),
        &[Code::InvalidArgument],
    )
    .await;
    w.still_serving("offsets outside the log").await;
}

pub(super) async fn unknown_topics_partitions_and_groups(c: &mut Client, w: &mut Witness) {
    const MISSING: &[Code] = &[Code::NotFound];
    const BAD: &[Code] = &[Code::InvalidArgument];
    let nope = || "no-such-topic".to_string();
    expect(
        "DescribeTopic unknown",
        c.describe_topic(DescribeTopicRequest { name: nope() }),
        MISSING,
    )
    .await;
    expect(
        "DeleteTopic unknown",
        c.delete_topic(DeleteTopicRequest { name: nope() }),
        MISSING,
    )
    .await;
    let append = |topic: String, partition: u32| AppendRequest {
        topic,
        partition: Some(partition),
        records: vec![rec("x")],
        ..AppendRequest::default()
    };
    expect("Append unknown topic", c.append(append(nope(), 0)), MISSING).await;
    expect(
        "Read unknown topic",
        read(c, "no-such-topic", 0, 0, 0),
        MISSING,
    )
    .await;
    let sub = |topic: String, partitions: Vec<u32>| SubscribeRequest {
        topic,
        partitions,
        ..SubscribeRequest::default()
    };
    expect(
        "Subscribe unknown topic",
        c.subscribe(sub(nope(), vec![])),
        MISSING,
    )
    .await;
    let commit = |topic: String, partition: u32| CommitOffsetRequest {
        group: "g".into(),
        topic,
        partition,
        offset: 0,
        metadata: String::new(),
    };
    expect(
        "CommitOffset unknown topic",
        c.commit_offset(commit(nope(), 0)),
        MISSING,
    )
    .await;
    expect(
        "DescribeGroup unknown topic",
        c.describe_group(DescribeGroupRequest {
            group: "g".into(),
            topic: Some(nope()),
        }),
        MISSING,
    )
    .await;
    w.still_serving("unknown topics").await;

    // Partitions out of range, up to 2^32-1.
    for p in [3, 1000, u32::MAX] {
        expect(
            &format!("Append partition {p}"),
            c.append(append("t".into(), p)),
            BAD,
        )
        .await;
        expect(&format!("Read partition {p}"), read(c, "t", p, 0, 0), BAD).await;
        expect(
            &format!("Subscribe partition {p}"),
            c.subscribe(sub("t".into(), vec![0, p])),
            BAD,
        )
        .await;
        expect(
            &format!("CommitOffset partition {p}"),
            c.commit_offset(commit("t".into(), p)),
            BAD,
        )
        .await;
    }
    w.still_serving("unknown partitions").await;

    // An unknown group is not an error: it has committed nothing.
    let offsets = get_offsets(c, "never-seen", "t").await;
    assert_eq!(offsets.len(), 3);
    assert!(offsets.iter().all(|p| p.committed.is_none()));
    let described = within(
        "DescribeGroup",
        c.describe_group(DescribeGroupRequest {
            group: "never-seen".into(),
            topic: None,
        }),
    )
    .await
    .expect("DescribeGroup of an unknown group")
    .into_inner();
    assert!(described.topics.is_empty());
    let mut from_committed = subscribe(
        c,
        SubscribeRequest {
            topic: "t".into(),
            partitions: vec![0],
            start: start(Kind::Committed),
            group: "never-seen".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .expect("Subscribe KIND_COMMITTED of an unknown group");
    let first = within("Subscribe message", from_committed.message())
        .await
        .expect("Subscribe KIND_COMMITTED of an unknown group")
        .expect("a message");
    assert_eq!(
        first.records[0].offset, 0,
        "an unknown group starts at the earliest"
    );
    let no_group = SubscribeRequest {
        topic: "t".into(),
        start: start(Kind::Committed),
        ..SubscribeRequest::default()
    };
    expect(
        "Subscribe KIND_COMMITTED without a group",
        c.subscribe(no_group),
        BAD,
    )
    .await;
    w.still_serving("unknown groups").await;
}

pub(super) async fn consume_streams_that_do_not_start_with_a_join(c: &mut Client, w: &mut Witness) {
    const BAD: &[Code] = &[Code::InvalidArgument];
    let firsts = [
        ("no kind", ConsumeRequest { kind: None }),
        (
            "a commit",
            ConsumeRequest {
                kind: Some(Req::Commit(CommitRequest {
                    partition: 0,
                    offset: 1,
                })),
            },
        ),
        (
            "an ack",
            ConsumeRequest {
                kind: Some(Req::Ack(Ack {
                    batch_count: u64::MAX,
                })),
            },
        ),
        (
            "a leave",
            ConsumeRequest {
                kind: Some(Req::Leave(LeaveGroup {})),
            },
        ),
    ];
    for (what, first) in firsts {
        let (_tx, res) = consume(c, vec![first]).await;
        expect(&format!("Consume starting with {what}"), async { res }, BAD).await;
    }
    // A stream closed before any message.
    let res = within(
        "Consume",
        c.consume(futures::stream::empty::<ConsumeRequest>()),
    )
    .await
    .map(|r| r.into_inner());
    expect("an empty Consume stream", async { res }, BAD).await;
    // A second JoinGroup on the same stream.
    let join = || {
        join_req(JoinGroup {
            group: "twice".into(),
            topic: "t".into(),
            ..JoinGroup::default()
        })
    };
    let (tx, res) = consume(c, vec![join()]).await;
    let mut stream = res.expect("the first join");
    tx.send(join()).await.expect("send the second join");
    let failed = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) => return Err(s),
            }
        }
    };
    expect("a second JoinGroup", failed, BAD).await;
    w.still_serving("Consume streams without a join").await;
}

// ---------------------------------------------------------------------------------------
// Known bugs, kept out of the green suite
// ---------------------------------------------------------------------------------------
