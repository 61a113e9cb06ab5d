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

/// The newest value of every key in `records` (a tombstone as an empty value).
fn newest(records: &[Record]) -> std::collections::HashMap<Vec<u8>, Vec<u8>> {
    records
        .iter()
        .filter(|r| !r.key.is_empty())
        .map(|r| (r.key.to_vec(), r.value.to_vec()))
        .collect()
}

/// Waits until every partition of `topic` holds at most `most` records.
async fn wait_compacted(c: &mut Client, topic: &str, partitions: u32, most: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let mut counts = Vec::new();
        for p in 0..partitions {
            counts.push(read_to_end(c, topic, p, 0).await.len());
        }
        if counts.iter().all(|n| *n <= most) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not compacted: {counts:?} records per partition"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// 1,000 keys written 1,000 times each into two partitions: compaction brings each
/// partition to about its 500 keys (plus at most its last record, which stays), every read
/// returns each key's newest value at its offset, tombstoned keys go after their retention,
/// and all of it holds through kill -9.
#[tokio::test]
async fn a_compacted_topic_ends_with_the_newest_value_of_each_key() {
    let mut b = Broker::start_with(&QUICK_COMPACTION);
    let mut c = b.client().await;
    let config = TopicConfig {
        segment_bytes: 1 << 20,
        segment_ms: 1_000,
        delete_retention_ms: 2_000,
        ..compacted()
    };
    create_topic_with(&mut c, "state", 2, config).await;
    let (keys, rounds) = (1_000u32, 1_000u32);
    for round in 0..rounds {
        let mut by_partition: [Vec<Record>; 2] = Default::default();
        for k in 0..keys {
            let key = format!("key-{k}");
            let p = partition_for_key(key.as_bytes(), 2) as usize;
            by_partition[p].push(keyed(&key, &format!("{key}={round}")));
        }
        for (p, records) in by_partition.into_iter().enumerate() {
            append(&mut c, "state", p as u32, records).await;
        }
    }
    // At most a partition's keys plus its last batch (about 500 records).
    wait_compacted(&mut c, "state", 2, 1_100).await;
    let mut all = Vec::new();
    for p in 0..2 {
        let records = read_to_end(&mut c, "state", p, 0).await;
        assert!(
            records.len() >= 400,
            "partition {p}: {} records",
            records.len()
        );
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
        all.extend(records);
    }
    let values = newest(&all);
    assert_eq!(values.len(), keys as usize);
    for k in 0..keys {
        let key = format!("key-{k}");
        let want = format!("{key}={}", rounds - 1);
        assert_eq!(values[key.as_bytes()], want.as_bytes(), "{key}");
    }
    let info = describe(&mut c, "state").await;
    assert!(
        info.partition_info.iter().all(|p| p.dirty_ratio < 0.5),
        "{info:?}"
    );
    let metrics = b.metrics();
    assert!(
        metrics.contains("spool_compaction_bytes_cleaned_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spool_partition_dirty_ratio{"),
        "{metrics}"
    );

    // Tombstones for 100 keys: gone with their keys once their retention passed.
    let deleted: Vec<String> = (0..100).map(|k| format!("key-{k}")).collect();
    for key in &deleted {
        let mut t = keyed(key, "");
        t.headers.push(Header {
            key: "spool-tombstone".into(),
            value: Default::default(),
        });
        let p = partition_for_key(key.as_bytes(), 2);
        append(&mut c, "state", p, vec![t]).await;
    }
    // Later appends of other keys, so the tombstones are not the partitions' last batches.
    for p in 0..2u32 {
        let other = (100..keys)
            .map(|k| format!("key-{k}"))
            .find(|k| partition_for_key(k.as_bytes(), 2) == p)
            .unwrap();
        append(
            &mut c,
            "state",
            p,
            vec![keyed(&other, &format!("{other}=final"))],
        )
        .await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut all = Vec::new();
        for p in 0..2 {
            all.extend(read_to_end(&mut c, "state", p, 0).await);
        }
        let present = deleted
            .iter()
            .filter(|k| all.iter().any(|r| r.key == k.as_bytes()))
            .count();
        if present == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let left: Vec<(u64, String)> = all
                .iter()
                .filter(|r| deleted.iter().any(|k| r.key == k.as_bytes()))
                .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
                .collect();
            let log = b.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("compacted"))
                .collect();
            panic!(
                "{present} deleted keys still present: {left:?}\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    let mut after = Vec::new();
    for p in 0..2 {
        after.extend(read_to_end(&mut c, "state", p, 0).await);
    }
    let values = newest(&after);
    assert_eq!(values.len(), keys as usize - deleted.len(), "after kill -9");
    assert!(deleted.iter().all(|k| !values.contains_key(k.as_bytes())));
    assert_eq!(values[b"key-500".as_slice()], b"key-500=999");
}
