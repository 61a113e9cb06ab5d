//! End-to-end tests of the broker's refusals: each validation error comes back with its
//! documented gRPC status code and a message that says what was wrong.

mod common;

use bytes::Bytes;
use common::*;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tonic::Code;

fn create(name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        partitions,
        config: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_topic_names_are_invalid_argument_and_create_nothing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    let long = "x".repeat(250);
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../escape",
        "a\\b",
        "sp ace",
        "é",
        "nul\0",
        &long,
    ] {
        let s = status(c.create_topic(create(bad, 1)).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s}");
        assert!(s.message().contains("name"), "{bad:?}: {s}");
        let s = status(
            c.describe_topic(DescribeTopicRequest { name: bad.into() })
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "describe {bad:?}: {s}");
        let s = status(
            c.delete_topic(DeleteTopicRequest { name: bad.into() })
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "delete {bad:?}: {s}");
    }
    // Nothing escaped the data directory or landed in it.
    let topics_dir = broker.data_dir().join("topics");
    let entries: Vec<_> = std::fs::read_dir(&topics_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
    assert!(!broker.data_dir().join("escape").exists());
    let listed = c.list_topics(ListTopicsRequest {}).await.unwrap();
    assert!(listed.into_inner().topics.is_empty());

    // The longest and the oddest valid names are fine.
    for good in ["x".repeat(249), "a.b_c-D9".into(), "...".into(), "-".into()] {
        c.create_topic(create(&good, 1))
            .await
            .unwrap_or_else(|s| panic!("{good:?}: {s}"));
    }
}

#[tokio::test]
async fn partition_counts_outside_1_to_10000_are_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    for n in [0, 10_001, u32::MAX] {
        let s = status(c.create_topic(create("t", n)).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{n}: {s}");
        assert!(s.message().contains("partitions"), "{s}");
    }
    c.create_topic(create("t", 1)).await.unwrap();
}

#[tokio::test]
async fn an_existing_topic_is_already_exists_and_keeps_its_data() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..3)).await;
    let s = status(c.create_topic(create("t", 5)).await);
    assert_eq!(s.code(), Code::AlreadyExists, "{s}");
    let info = describe(&mut c, "t").await;
    assert_eq!(info.partitions, 2);
    assert_eq!(info.partition_info[0].end_offset, 3);
}

#[tokio::test]
async fn an_invalid_fsync_policy_value_is_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    let s = status(
        c.create_topic(CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            config: Some(TopicConfig {
                fsync: 42,
                ..TopicConfig::default()
            }),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
}

#[tokio::test]
async fn every_rpc_on_an_unknown_topic_is_not_found() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    let t = || "missing".to_string();
    let describe = c.describe_topic(DescribeTopicRequest { name: t() }).await;
    assert_eq!(code(describe), Code::NotFound);
    let delete = c.delete_topic(DeleteTopicRequest { name: t() }).await;
    assert_eq!(code(delete), Code::NotFound);
    let append = c
        .append(AppendRequest {
            topic: t(),
            records: vec![rec("v")],
            ..AppendRequest::default()
        })
        .await;
    assert_eq!(code(append), Code::NotFound);
    let read = read(&mut c, "missing", 0, 0, 0).await;
    assert_eq!(code(read), Code::NotFound);
    let sub = subscribe(
        &mut c,
        SubscribeRequest {
            topic: t(),
            ..SubscribeRequest::default()
        },
    )
    .await;
    assert_eq!(code(sub), Code::NotFound);
    let commit = c
        .commit_offset(CommitOffsetRequest {
            group: "g".into(),
            topic: t(),
            partition: 0,
            offset: 0,
            metadata: String::new(),
        })
        .await;
    assert_eq!(code(commit), Code::NotFound);
    let offsets = c
        .get_offsets(GetOffsetsRequest {
            group: "g".into(),
            topic: t(),
        })
        .await;
    assert_eq!(code(offsets), Code::NotFound);
    let s = status(
        c.append(AppendRequest {
            topic: t(),
            records: vec![rec("v")],
            ..AppendRequest::default()
        })
        .await,
    );
    assert!(s.message().contains("missing"), "{s}");
}

#[tokio::test]
async fn partitions_out_of_range_are_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    let append = c
        .append(AppendRequest {
            topic: "t".into(),
            partition: Some(2),
            records: vec![rec("v")],
            ..AppendRequest::default()
        })
        .await;
    assert_eq!(code(append), Code::InvalidArgument);
    assert_eq!(
        code(read(&mut c, "t", 7, 0, 0).await),
        Code::InvalidArgument
    );
    let sub = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            partitions: vec![0, 2],
            ..SubscribeRequest::default()
        },
    )
    .await;
    assert_eq!(code(sub), Code::InvalidArgument);
    let commit = c
        .commit_offset(CommitOffsetRequest {
            group: "g".into(),
            topic: "t".into(),
            partition: 5,
            offset: 0,
            metadata: String::new(),
        })
        .await;
    assert_eq!(code(commit), Code::InvalidArgument);
}

#[tokio::test]
async fn empty_appends_and_oversized_records_are_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "small".into(),
        partitions: 1,
        config: Some(TopicConfig {
            max_record_bytes: 1024,
            fsync: FsyncPolicy::Never as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let empty = c
        .append(AppendRequest {
            topic: "small".into(),
            partition: Some(0),
            records: Vec::new(),
            ..AppendRequest::default()
        })
        .await;
    let s = status(empty);
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");

    // Exactly at the limit (key + value + headers) is fine; one byte over is not, and the
    // batch is refused whole.
    let at_limit = Record {
        key: Bytes::from(vec![b'k'; 24]),
        value: Bytes::from(vec![b'v'; 990]),
        headers: vec![Header {
            key: "hh".into(),
            value: Bytes::from(vec![b'h'; 8]),
        }],
        ..Record::default()
    };
    append(&mut c, "small", 0, vec![at_limit.clone()]).await;
    let mut over = at_limit.clone();
    over.headers[0].value = Bytes::from(vec![b'h'; 9]);
    let s = status(
        c.append(AppendRequest {
            topic: "small".into(),
            partition: Some(0),
            records: vec![rec("fine"), over],
            ..AppendRequest::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
    assert!(
        s.message().contains("1024"),
        "the message names the limit: {s}"
    );
    assert_eq!(
        describe(&mut c, "small").await.partition_info[0].end_offset,
        1
    );

    // A max_record_bytes over the request limit cannot be configured.
    let s = status(
        c.create_topic(CreateTopicRequest {
            name: "huge".into(),
            partitions: 1,
            config: Some(TopicConfig {
                max_record_bytes: u32::MAX,
                ..TopicConfig::default()
            }),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
}

/// A broker with a 64 KiB request limit (the default is 64 MiB; a small one keeps the test
/// light) and a topic "t" whose records may be 8 KiB.
async fn small_request_limit() -> (Broker, Client) {
    let broker = Broker::start_with(&["--max-request-bytes", "65536"]);
    let mut c = broker.client().await;
    c.create_topic(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: Some(TopicConfig {
            max_record_bytes: 8192,
            fsync: FsyncPolicy::Never as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    (broker, c)
}

/// Ten 8,000-byte records: about 80 KB, over the 64 KiB limit.
fn oversized_request() -> AppendRequest {
    AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: (0..10).map(|_| rec(vec![b'x'; 8000])).collect(),
        ..AppendRequest::default()
    }
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_and_appends_nothing() {
    let (_broker, mut c) = small_request_limit().await;
    let s = status(c.append(oversized_request()).await);
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{s}"
    );
    // A request under the limit still works, on the same connection.
    append(
        &mut c,
        "t",
        0,
        (0..5).map(|_| rec(vec![b'x'; 8000])).collect(),
    )
    .await;
    assert_eq!(describe(&mut c, "t").await.partition_info[0].end_offset, 5);
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_resource_exhausted() {
    let (_broker, mut c) = small_request_limit().await;
    let s = status(c.append(oversized_request()).await);
    assert_eq!(s.code(), Code::ResourceExhausted, "{s}");
}

#[tokio::test]
async fn a_lowered_request_limit_still_allows_topics_with_the_default_config() {
    let broker = Broker::start_with(&["--max-request-bytes", "65536"]);
    let mut c = broker.client().await;
    let info = create_topic(&mut c, "t", 1, FsyncPolicy::Unspecified).await;
    let max_record_bytes = info.config.unwrap().max_record_bytes;
    assert!(
        (1..=65_536).contains(&max_record_bytes),
        "effective max_record_bytes {max_record_bytes} must fit in a request"
    );
}

#[tokio::test]
async fn reads_outside_the_partition_are_out_of_range_with_the_range_in_the_message() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..7)).await;
    let s = status(read(&mut c, "t", 0, 8, 0).await);
    assert_eq!(s.code(), Code::OutOfRange, "{s}");
    assert!(s.message().contains("0..7"), "the valid range: {s}");
    assert!(s.message().contains('8'), "the requested offset: {s}");
    let s = status(read(&mut c, "t", 0, u64::MAX, 0).await);
    assert_eq!(s.code(), Code::OutOfRange, "{s}");

    // Subscribe from an offset past the end.
    let s = status(
        subscribe(
            &mut c,
            SubscribeRequest {
                topic: "t".into(),
                start: Some(StartPosition {
                    kind: Kind::Offset as i32,
                    offset: 9,
                    timestamp_ms: 0,
                }),
                ..SubscribeRequest::default()
            },
        )
        .await,
    );
    assert_eq!(s.code(), Code::OutOfRange, "{s}");
    assert!(s.message().contains("0..7"), "{s}");
}

#[tokio::test]
async fn commits_past_the_end_are_out_of_range_and_bad_groups_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..4)).await;
    let commit = |group: &str, offset: u64| CommitOffsetRequest {
        group: group.into(),
        topic: "t".into(),
        partition: 0,
        offset,
        metadata: String::new(),
    };
    let s = status(c.commit_offset(commit("g", 5)).await);
    assert_eq!(s.code(), Code::OutOfRange, "{s}");
    assert!(s.message().contains('4'), "the end offset: {s}");
    c.commit_offset(commit("g", 4)).await.unwrap();
    assert_eq!(get_offsets(&mut c, "g", "t").await[0].committed, Some(4));

    for bad in ["", "..", "a/b", "sp ace"] {
        let s = status(c.commit_offset(commit(bad, 1)).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s}");
        let s = status(
            c.get_offsets(GetOffsetsRequest {
                group: bad.into(),
                topic: "t".into(),
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s}");
    }
}

#[tokio::test]
async fn subscribe_from_committed_without_a_group_is_invalid_argument() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let s = status(
        subscribe(
            &mut c,
            SubscribeRequest {
                topic: "t".into(),
                start: start(Kind::Committed),
                ..SubscribeRequest::default()
            },
        )
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
    let s = status(
        subscribe(
            &mut c,
            SubscribeRequest {
                topic: "t".into(),
                start: Some(StartPosition {
                    kind: 99,
                    ..StartPosition::default()
                }),
                ..SubscribeRequest::default()
            },
        )
        .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
}

#[tokio::test]
async fn a_sequence_gap_is_failed_precondition_and_appends_nothing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let req = |sequence: u64| AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: vec![rec(format!("s{sequence}"))],
        producer_id: 99,
        sequence,
        ..AppendRequest::default()
    };
    c.append(req(0)).await.unwrap();
    c.append(req(1)).await.unwrap();
    let s = status(c.append(req(3)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{s}");
    c.append(req(2)).await.unwrap();
    assert_eq!(
        values(&read_to_end(&mut c, "t", 0, 0).await),
        ["s0", "s1", "s2"]
    );
}
