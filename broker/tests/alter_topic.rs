//! `AlterTopic` against a real `spoold`: changed settings take effect at once and survive
//! kill -9; partitions are only ever added, and an all-partition subscription opened
//! before reads the new ones; `reset` restores the broker's defaults; bad requests are
//! `INVALID_ARGUMENT` saying what to fix and change nothing.

mod common;

use common::*;
use spool_proto::v1::*;
use tonic::Code;

#[tokio::test]
async fn altered_settings_apply_at_once_and_survive_kill_9() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "orders", 1, FsyncPolicy::Never).await;
    append(&mut c, "orders", 0, vec![rec("x".repeat(500))]).await;
    let info = alter(
        &mut c,
        "orders",
        0,
        TopicConfig {
            max_record_bytes: 100,
            retention_ms: 3_600_000,
            compression: Compression::Zstd as i32,
            fsync: FsyncPolicy::Always as i32,
            ..TopicConfig::default()
        },
    )
    .await;
    let got = info.config.unwrap();
    assert_eq!(got.max_record_bytes, 100);
    assert_eq!(got.retention_ms, 3_600_000);
    assert_eq!(got.compression, Compression::Zstd as i32);
    assert_eq!(got.fsync, FsyncPolicy::Always as i32);
    assert_eq!(got.segment_bytes, 128 * 1024 * 1024, "left alone");
    let too_big = c
        .append(AppendRequest {
            topic: "orders".into(),
            partition: Some(0),
            records: vec![rec("x".repeat(500))],
            ..AppendRequest::default()
        })
        .await;
    assert_eq!(code(too_big), Code::InvalidArgument);
    let a = append(&mut c, "orders", 0, vec![rec("small")]).await;
    assert_eq!(a.durability, Durability::Fsynced as i32, "fsync always now");
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    let got = describe(&mut c, "orders").await.config.unwrap();
    assert_eq!((got.max_record_bytes, got.retention_ms), (100, 3_600_000));
    assert_eq!(got.compression, Compression::Zstd as i32);
    let values = values(&read_to_end(&mut c, "orders", 0, 0).await);
    assert_eq!(values, ["x".repeat(500), "small".into()]);
}

#[tokio::test]
async fn partitions_are_added_and_an_open_subscription_reads_them() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "events", 2, FsyncPolicy::Never).await;
    let mut s = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "events".into(),
            start: start(start_position::Kind::Earliest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    append(&mut c, "events", 1, recs("old", 0..3)).await;
    assert_eq!(take_records(&mut s, 3).await.len(), 3);
    let info = alter(&mut c, "events", 5, TopicConfig::default()).await;
    assert_eq!(info.partitions, 5);
    assert_eq!(info.partition_info.len(), 5);
    for p in 2..5 {
        append(&mut c, "events", p, recs(&format!("new{p}"), 0..2)).await;
    }
    let got = take_records(&mut s, 6).await;
    let mut partitions: Vec<u32> = got.iter().map(|(p, _)| *p).collect();
    partitions.sort();
    assert_eq!(partitions, [2, 2, 3, 3, 4, 4]);
    assert!(
        got.iter().all(|(_, r)| r.offset < 2),
        "from their first offset"
    );
    // A key may now hash to a new partition: the topic routes by 5.
    let keyed = c
        .append(AppendRequest {
            topic: "events".into(),
            partition_key: b"order-42".to_vec().into(),
            records: vec![rec("k")],
            ..AppendRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        keyed.partition,
        spool_proto::partitioning::partition_for_key(b"order-42", 5)
    );
    assert_eq!(keyed.partition, 4, "FNV-1a 64 of order-42 is 4 mod 5");
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    assert_eq!(describe(&mut c, "events").await.partitions, 5);
    let values = values(&read_to_end(&mut c, "events", 4, 0).await);
    assert_eq!(values, ["new4-0", "new4-1", "k"]);
}

#[tokio::test]
async fn reset_restores_defaults_and_bad_requests_change_nothing() {
    let b = Broker::start();
    let mut c = b.client().await;
    let config = TopicConfig {
        retention_ms: 60_000,
        max_record_bytes: 2_048,
        compression: Compression::Lz4 as i32,
        ..TopicConfig::default()
    };
    create_topic_with(&mut c, "t", 3, config).await;
    for (partitions, config, reset, says) in [
        (
            2,
            TopicConfig::default(),
            &[][..],
            "fewer than the topic's 3",
        ),
        (
            0,
            TopicConfig::default(),
            &["retention"][..],
            "not a TopicConfig field",
        ),
        (
            0,
            TopicConfig {
                retention_ms: 5,
                ..TopicConfig::default()
            },
            &["retention_ms"][..],
            "both set and reset",
        ),
        (
            0,
            TopicConfig {
                compression_level: 3,
                ..TopicConfig::default()
            },
            &[][..],
            "lz4 has no levels",
        ),
        (0, TopicConfig::default(), &[][..], ""),
    ] {
        let r = try_alter(&mut c, "t", partitions, config, reset).await;
        if says.is_empty() {
            // Nothing asked: the topic is as it was.
            let got = r.unwrap().config.unwrap();
            assert_eq!((got.retention_ms, got.max_record_bytes), (60_000, 2_048));
            continue;
        }
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().contains(says), "{says}: {}", s.message());
    }
    let info = describe(&mut c, "t").await;
    assert_eq!(info.partitions, 3);
    assert_eq!(info.config.unwrap().retention_ms, 60_000);
    // A level alone keeps the codec; a codec alone takes its default level.
    let got = alter(
        &mut c,
        "t",
        0,
        TopicConfig {
            compression: Compression::Zstd as i32,
            ..TopicConfig::default()
        },
    )
    .await
    .config
    .unwrap();
    assert_eq!(
        (got.compression, got.compression_level),
        (Compression::Zstd as i32, 0)
    );
    let got = alter(
        &mut c,
        "t",
        0,
        TopicConfig {
            compression_level: 9,
            ..TopicConfig::default()
        },
    )
    .await
    .config
    .unwrap();
    assert_eq!(
        (got.compression, got.compression_level),
        (Compression::Zstd as i32, 9)
    );
    let got = try_alter(
        &mut c,
        "t",
        0,
        TopicConfig::default(),
        &[
            "retention_ms",
            "max_record_bytes",
            "compression",
            "compression_level",
        ],
    )
    .await
    .unwrap()
    .config
    .unwrap();
    assert_eq!(got.retention_ms, 0, "the broker default: unlimited");
    assert_eq!(got.max_record_bytes, 1024 * 1024);
    assert_eq!(got.compression, Compression::None as i32);
    let missing = try_alter(&mut c, "nope", 0, TopicConfig::default(), &[]).await;
    assert_eq!(code(missing), Code::NotFound);
}

#[tokio::test]
async fn altering_needs_alter_on_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let config = auth_config(
        dir.path(),
        &[("ops", "ops-token"), ("app", "app-token")],
        &[
            ("ops", "topic:t", "\"create\", \"alter\""),
            ("app", "topic:t", "\"describe\", \"append\", \"read\""),
        ],
    );
    let b = Broker::start_with(&["--config", config.to_str().unwrap()]);
    let mut c = b.client().await;
    let as_caller = |token: &str, partitions: u32| {
        let mut req = tonic::Request::new(AlterTopicRequest {
            name: "t".into(),
            partitions,
            ..AlterTopicRequest::default()
        });
        let bearer = format!("Bearer {token}").parse().unwrap();
        req.metadata_mut().insert("authorization", bearer);
        req
    };
    let mut create = tonic::Request::new(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: None,
        ..Default::default()
    });
    let bearer = "Bearer ops-token".parse().unwrap();
    create.metadata_mut().insert("authorization", bearer);
    c.create_topic(create).await.unwrap();
    let denied = status(c.alter_topic(as_caller("app-token", 2)).await);
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("may not alter topic:t"),
        "{}",
        denied.message()
    );
    let info = c.alter_topic(as_caller("ops-token", 2)).await.unwrap();
    assert_eq!(info.into_inner().topic.unwrap().partitions, 2);
}

/// An `AlterTopic` killed after creating a partition's directory but before its
/// `topic.json`: the start removes the partition, and the topic is as it was.
#[tokio::test]
async fn a_partition_left_by_an_interrupted_alter_is_removed_on_start() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    b.stop().await;
    let stray = b.data_dir().join("topics/t/2");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("00000000000000000000.log"), b"").unwrap();
    b.restart();
    let mut c = b.client().await;
    assert_eq!(describe(&mut c, "t").await.partitions, 2);
    assert!(!stray.exists(), "the uncommitted partition was removed");
    let info = alter(&mut c, "t", 3, TopicConfig::default()).await;
    assert_eq!(info.partition_info[2].end_offset, 0);
}
