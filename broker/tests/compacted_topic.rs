//! Compacted topics against a real `spoold`: the cleanup policy and its settings are stored
//! and shown, a record naming no partition goes where its key hashes (so one key lives in
//! one partition), and a compacted topic refuses new partitions.

mod common;

use common::*;
use spool_proto::partitioning::partition_for_key;
use spool_proto::v1::*;
use tonic::Code;

fn compacted() -> TopicConfig {
    TopicConfig {
        fsync: FsyncPolicy::Never as i32,
        cleanup_policy: CleanupPolicy::Compact as i32,
        ..TopicConfig::default()
    }
}

fn keyed(key: &str, value: &str) -> Record {
    Record {
        key: key.to_string().into(),
        value: value.to_string().into(),
        ..Record::default()
    }
}

/// An append naming no partition.
fn unrouted(topic: &str, records: Vec<Record>) -> AppendRequest {
    AppendRequest {
        topic: topic.into(),
        records,
        ..AppendRequest::default()
    }
}

#[tokio::test]
async fn a_compacted_topic_routes_by_record_key_and_refuses_new_partitions() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    let info = create_topic_with(&mut c, "state", 4, compacted()).await;
    let config = info.config.expect("config");
    assert_eq!(config.cleanup_policy, CleanupPolicy::Compact as i32);
    assert_eq!(config.delete_retention_ms, 24 * 3600 * 1000, "the default");
    assert_eq!(config.segment_ms, 7 * 24 * 3600 * 1000, "the default");
    for key in ["user-1", "user-2", "order-42", "cart-9"] {
        let r = within("Append", c.append(unrouted("state", vec![keyed(key, "v")])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.partition, partition_for_key(key.as_bytes(), 4), "{key}");
    }
    // Keys of one append that hash apart cannot go to one partition.
    let (a, z) = ("user-1", "user-2");
    assert_ne!(
        partition_for_key(a.as_bytes(), 4),
        partition_for_key(z.as_bytes(), 4)
    );
    let s = status(
        c.append(unrouted("state", vec![keyed(a, "1"), keyed(z, "2")]))
            .await,
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("separate appends"), "{}", s.message());
    // An explicit partition or partition_key still decides.
    let explicit = AppendRequest {
        partition: Some(3),
        ..unrouted("state", vec![keyed(a, "1"), keyed(z, "2")])
    };
    assert_eq!(c.append(explicit).await.unwrap().into_inner().partition, 3);
    let s = status(try_alter(&mut c, "state", 8, TopicConfig::default(), &[]).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("compacted"), "{}", s.message());
    assert_eq!(describe(&mut c, "state").await.partitions, 4, "unchanged");
    // A delete topic altered to compact keeps its partitions and now routes by key; its
    // settings survive a restart.
    create_topic(&mut c, "log", 2, FsyncPolicy::Never).await;
    let altered = TopicConfig {
        cleanup_policy: CleanupPolicy::CompactDelete as i32,
        delete_retention_ms: 60_000,
        segment_ms: 3_600_000,
        ..TopicConfig::default()
    };
    alter(&mut c, "log", 0, altered).await;
    b.stop().await;
    b.restart();
    let mut c = b.client().await;
    let config = describe(&mut c, "log").await.config.expect("config");
    assert_eq!(
        (
            config.cleanup_policy,
            config.delete_retention_ms,
            config.segment_ms
        ),
        (CleanupPolicy::CompactDelete as i32, 60_000, 3_600_000)
    );
    let r = c
        .append(unrouted("log", vec![keyed("k", "v")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partition, partition_for_key(b"k", 2));
    let bad = TopicConfig {
        cleanup_policy: 9,
        ..TopicConfig::default()
    };
    let s = status(try_alter(&mut c, "log", 0, bad, &[]).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("CleanupPolicy"), "{}", s.message());
}
