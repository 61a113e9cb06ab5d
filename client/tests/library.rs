//! The client library against an in-process broker: bulk batched production read back
//! exactly once, and the errors a caller sees (unreachable broker, missing topic, a record
//! over the topic's size limit in the middle of a pipelined stream).

mod library_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use library_support::*;
use spool_broker::testing::TempBroker;
use spool_client::v1::{AppendRequest, Record, TopicConfig};
use spool_client::{Client, Error, Producer, ProducerOptions, ProducerRecord};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_batched_records_arrive_exactly_once_in_partition_order() {
    const N: usize = 100_000;
    const PARTITIONS: u32 = 4;
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("bulk", PARTITIONS, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Arc::new(
        Producer::new(&client, "bulk", ProducerOptions::default())
            .await
            .expect("starting the producer"),
    );
    // A third of the records are keyed (routed by the key's hash), the rest spread.
    let key = |i: usize| i.is_multiple_of(3).then(|| format!("key-{}", i % 101));
    let make = move |i: usize| match key(i) {
        Some(k) => ProducerRecord::new(value(i)).key(k),
        None => ProducerRecord::new(value(i)),
    };
    let enqueued = Arc::new(AtomicUsize::new(0));
    let results = within(
        DEADLINE,
        "producing",
        produce(Arc::clone(&producer), N, make, enqueued),
    )
    .await;

    // In send order, each partition's offsets only grow: batching keeps per-partition order.
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        let d = r
            .as_ref()
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
        assert!(d.partition < PARTITIONS);
        if let Some(k) = key(i) {
            assert_eq!(
                d.partition,
                spool_proto::partitioning::partition_for_key(k.as_bytes(), PARTITIONS),
                "record {i} with key {k:?} is not where the documented hash routes it"
            );
        }
        if let Some(prev) = last.insert(d.partition, d.offset) {
            assert!(
                d.offset > prev,
                "record {i} at partition {} offset {} follows offset {prev}",
                d.partition,
                d.offset
            );
        }
    }
    assert_eq!(
        last.len(),
        PARTITIONS as usize,
        "every partition got records"
    );

    // Read back: exactly N, each once, and each delivery named the right position.
    let positions = read_stored(&client, "bulk").await;
    check_deliveries(&results, &positions);
    assert_exactly(&positions, N);

    Arc::into_inner(producer)
        .expect("the producer is no longer shared")
        .close()
        .await
        .expect("closing the producer");
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_unreachable_retriable_and_readable() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = Client::connect(&endpoint)
        .await
        .expect_err("nothing listens on the port");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        "cannot reach the broker",
        &format!("127.0.0.1:{port}"),
        "connection refused",
        "is spoold running?",
    ] {
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
    }
    assert!(err.is_retriable(), "an unreachable broker may come back");
}

#[tokio::test]
async fn producing_to_a_missing_topic_fails_with_not_found() {
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;

    let err = Producer::new(&client, "missing", ProducerOptions::default())
        .await
        .err()
        .expect("a producer for a missing topic");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(!err.is_retriable(), "{err}");

    let err = client
        .append(AppendRequest {
            topic: "missing".into(),
            records: vec![Record {
                value: Bytes::from_static(b"x"),
                ..Record::default()
            }],
            ..AppendRequest::default()
        })
        .await
        .expect_err("appending to a missing topic");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");

    // A topic deleted under a live producer: the next send fails, it does not hang.
    client
        .create_topic("doomed", 1, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Producer::new(&client, "doomed", ProducerOptions::default())
        .await
        .expect("starting the producer");
    producer
        .send(ProducerRecord::new("before"))
        .await
        .expect("sending before the delete");
    client
        .delete_topic("doomed")
        .await
        .expect("deleting the topic");
    let err = within(DEADLINE, "sending after the delete", async {
        producer.send(ProducerRecord::new("after")).await
    })
    .await
    .expect_err("sending to a deleted topic");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
}

/// A topic whose records may be at most 1 KiB.
async fn small_records_topic(client: &Client, name: &str, partitions: u32) {
    client
        .create_topic(
            name,
            partitions,
            TopicConfig {
                max_record_bytes: 1024,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("creating the topic");
}

#[tokio::test]
async fn an_oversized_record_fails_alone_and_later_sends_succeed() {
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    small_records_topic(&client, "small", 1).await;
    let producer = Producer::new(&client, "small", ProducerOptions::default())
        .await
        .expect("starting the producer");

    let first = producer
        .send(ProducerRecord::new(value(0)))
        .await
        .expect("a small record");
    assert_eq!(first.offset, 0);
    let err = producer
        .send(ProducerRecord::new("x".repeat(2000)))
        .await
        .expect_err("a record over max_record_bytes");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(!err.is_retriable(), "{err}");
    // The failed batch's sequence number is reused: no gap for the broker to refuse.
    for i in 1..5 {
        let d = producer
            .send(ProducerRecord::new(value(i)))
            .await
            .unwrap_or_else(|e| panic!("record {i} after the oversized one: {e}"));
        assert_eq!(d.offset, i as u64);
    }
    read_back(&client, "small", 5).await;
}

#[tokio::test]
async fn an_oversized_record_in_a_pipeline_fails_alone_and_the_rest_are_stored_once() {
    const N: usize = 40;
    const BIG: usize = 13;
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    small_records_topic(&client, "pipelined", 2).await;
    // One record per batch, so the oversized one fails while later batches of both
    // partitions are in flight behind it and must be renumbered and resent.
    let producer = Producer::new(
        &client,
        "pipelined",
        ProducerOptions {
            batch_records: 1,
            ..ProducerOptions::default()
        },
    )
    .await
    .expect("starting the producer");
    let mut pending = Vec::new();
    for i in 0..N {
        let record = if i == BIG {
            ProducerRecord::new(padded_value(i, 2000))
        } else {
            ProducerRecord::new(value(i))
        };
        pending.push(
            producer
                .enqueue(record.partition((i % 2) as u32))
                .await
                .expect("enqueueing"),
        );
    }
    producer.flush().await.expect("flushing");
    let mut next = [0u64; 2];
    for (i, p) in pending.into_iter().enumerate() {
        let r = within(DEADLINE, "a delivery", p).await;
        if i == BIG {
            let err = r.expect_err("the oversized record");
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
            continue;
        }
        let d = r.unwrap_or_else(|e| {
            panic!("record {i} failed with {:?}: {e}", e.code());
        });
        let p = (i % 2) as u32;
        assert_eq!((d.partition, d.offset), (p, next[p as usize]), "record {i}");
        next[p as usize] += 1;
    }
    // Everything but the oversized record, each once, in order per partition.
    let positions = read_back_except(&client, "pipelined", N, BIG).await;
    assert_eq!(positions.len(), N - 1);
}

/// Reads `n - 1` records (all but `missing`) and checks each is stored once.
async fn read_back_except(client: &Client, topic: &str, n: usize, missing: usize) -> Positions {
    use futures::StreamExt;
    let mut reader = spool_client::Reader::new(client, topic, Default::default())
        .await
        .expect("opening a reader");
    let mut positions = Positions::new();
    for _ in 0..n - 1 {
        let m = within(DEADLINE, "reading back", reader.next())
            .await
            .expect("a reader never ends")
            .expect("reading back");
        let i = index_of(&m.value);
        assert_ne!(i, missing, "the failed record was stored");
        assert!(
            positions.insert(i, (m.partition, m.offset)).is_none(),
            "record {i} stored twice"
        );
    }
    let info = client.describe_topic(topic).await.expect("describing");
    let stored: u64 = info.partition_info.iter().map(|p| p.end_offset).sum();
    assert_eq!(stored as usize, n - 1, "records stored");
    positions
}

/// Flow control counts records "delivered and not yet committed" (spool.proto, Consume):
/// a commit in the middle of a delivered batch frees room for the records it covers.
#[tokio::test]
async fn a_member_committing_inside_a_batch_gets_more_records() {
    use futures::StreamExt;
    use spool_client::{GroupConsumer, GroupOptions};
    const N: usize = 1_000;
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("work", 1, TopicConfig::default())
        .await
        .expect("creating the topic");
    fill(&client, "work", N, value).await;
    let mut member = GroupConsumer::new(
        &client,
        "g",
        "work",
        GroupOptions {
            max_in_flight_records: 100,
            ..GroupOptions::default()
        },
    )
    .await
    .expect("joining");
    // Commit every 30 records: after 100 records, 90 are committed and 10 are not, far
    // below the credit of 100, so delivery must go on.
    for i in 0..N {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), member.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {i} records with commits every 30"))
            .expect("a group consumer never ends")
            .expect("consuming");
        assert_eq!(m.offset, i as u64);
        if (i + 1).is_multiple_of(30) {
            member
                .commit(m.partition, m.offset + 1)
                .await
                .expect("committing");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_larger_than_the_buffer_resolve_in_call_order_and_store_once() {
    const CALLS: usize = 6;
    const PER_CALL: usize = 5_000; // more than buffer_records: handed over in parts
    const PARTITIONS: u32 = 3;
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("batches", PARTITIONS, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Producer::new(
        &client,
        "batches",
        ProducerOptions {
            batch_records: 300,
            buffer_records: 2_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .expect("starting the producer");
    let mut pending = Vec::new();
    for c in 0..CALLS {
        // Keys spread each call over every partition, so a call's runs split across
        // partitions and broker batches and come back out of order.
        let records = (c * PER_CALL..(c + 1) * PER_CALL)
            .map(|i| ProducerRecord::new(value(i)).key(format!("k{}", i % 7)));
        pending.push(
            within(
                DEADLINE,
                "enqueueing a batch",
                producer.enqueue_batch(records),
            )
            .await
            .expect("enqueueing a batch"),
        );
    }
    let mut results = Vec::new();
    for p in pending {
        let deliveries = within(DEADLINE, "a batch's answers", p)
            .await
            .expect("every record of the call acknowledged");
        assert_eq!(deliveries.len(), PER_CALL, "one delivery per record");
        results.extend(deliveries.into_iter().map(Ok));
    }
    for (i, d) in results.iter().enumerate() {
        let d = d.as_ref().expect("acknowledged");
        let key = format!("k{}", i % 7);
        assert_eq!(
            d.partition,
            spool_proto::partitioning::partition_for_key(key.as_bytes(), PARTITIONS),
            "record {i}'s delivery names the wrong partition"
        );
    }
    let positions = read_stored(&client, "batches").await;
    check_deliveries(&results, &positions);
    assert_exactly(&positions, CALLS * PER_CALL);
    let none = producer
        .enqueue_batch(Vec::new())
        .await
        .expect("an empty call is fine");
    assert!(none.await.expect("answered at once").is_empty());
    producer.close().await.expect("closing the producer");
}

#[tokio::test]
async fn the_buffer_bounds_unanswered_records_not_calls() {
    let broker = RestartableBroker::start().await;
    let proxy = Proxy::start(broker.addr()).await;
    let client = connect(&proxy.endpoint()).await;
    client
        .create_topic("bounded", 1, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Producer::new(
        &client,
        "bounded",
        ProducerOptions {
            batch_records: 100,
            buffer_records: 1_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .expect("starting the producer");
    // The network goes away: whatever is enqueued now stays unanswered.
    proxy.set_accepting(false);
    proxy.cut();
    let records = |n: usize| (0..n).map(|i| ProducerRecord::new(value(i)));
    let _first = producer
        .enqueue_batch(records(600))
        .await
        .expect("600 of 1,000 fit");
    let _second = producer
        .enqueue_batch(records(400))
        .await
        .expect("1,000 of 1,000 fit");
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        producer.enqueue(ProducerRecord::new("one more")),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a record beyond buffer_records must wait for answers, not be accepted"
    );
    // Once the network is back the waiting room frees up and everything is stored.
    proxy.set_accepting(true);
    let last = within(
        DEADLINE,
        "the waiting record",
        producer.enqueue(ProducerRecord::new("one more")),
    )
    .await
    .expect("accepted once answers come back");
    within(DEADLINE, "its acknowledgement", last)
        .await
        .expect("stored");
}

#[tokio::test]
async fn a_producer_the_broker_forgot_fails_one_send_and_goes_on_under_a_new_id() {
    let broker = TempBroker::start_with(|c| c.max_producers_per_partition = 1).await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("forgetful", 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(&client, "forgetful", ProducerOptions::default())
        .await
        .unwrap();
    producer.send(ProducerRecord::new("a")).await.unwrap();
    // Another producer takes the partition's only slot: ours is evicted.
    client
        .append(AppendRequest {
            topic: "forgetful".into(),
            partition: Some(0),
            records: vec![Record {
                value: Bytes::from_static(b"other"),
                ..Record::default()
            }],
            producer_id: 12_345,
            sequence: 0,
            ..AppendRequest::default()
        })
        .await
        .unwrap();
    let err = producer
        .send(ProducerRecord::new("b"))
        .await
        .expect_err("the forgotten producer's next sequence is refused");
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    // Not stuck: the next record goes out under a fresh producer id.
    let d = producer.send(ProducerRecord::new("c")).await.unwrap();
    assert_eq!(d.offset, 2, "nothing of the refused send was appended");
}

/// AlterTopic under a live producer: a record naming a new partition is sent there (the
/// producer asks the broker before refusing it), and keys hash over the new count.
#[tokio::test]
async fn a_producer_takes_up_partitions_added_to_its_topic() {
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("growing", 2, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Producer::new(&client, "growing", ProducerOptions::default())
        .await
        .expect("starting the producer");
    let err = producer
        .send(ProducerRecord::new("x").partition(3))
        .await
        .expect_err("partition 3 does not exist yet");
    assert!(err.to_string().contains("partitions 0..2"), "{err}");
    client
        .alter_topic("growing", 4, TopicConfig::default(), Vec::new())
        .await
        .expect("altering the topic");
    let d = producer
        .send(ProducerRecord::new("to three").partition(3))
        .await
        .expect("partition 3 exists now");
    assert_eq!((d.partition, d.offset), (3, 0));
    assert_eq!(producer.partitions(), 4);
    // Keys now hash over four partitions.
    let d = producer
        .send(ProducerRecord::new("keyed").key("order-42"))
        .await
        .unwrap();
    assert_eq!(
        d.partition,
        spool_proto::partitioning::partition_for_key(b"order-42", 4)
    );
}

/// Without a record naming a new partition, the periodic metadata refresh takes up the
/// partitions AlterTopic added, so keys hash over them.
#[tokio::test]
async fn a_producer_learns_added_partitions_by_its_periodic_refresh() {
    let broker = TempBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("refreshed", 1, TopicConfig::default())
        .await
        .expect("creating the topic");
    let options = ProducerOptions {
        metadata_refresh: Duration::from_millis(50),
        ..ProducerOptions::default()
    };
    let producer = Producer::new(&client, "refreshed", options)
        .await
        .expect("starting the producer");
    assert_eq!(producer.partitions(), 1);
    client
        .alter_topic("refreshed", 3, TopicConfig::default(), Vec::new())
        .await
        .expect("altering the topic");
    // Well inside the 30 s default: the option is what makes it this quick.
    within(
        Duration::from_secs(10),
        "the producer learning 3 partitions",
        async {
            while producer.partitions() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    let d = producer
        .send(ProducerRecord::new("keyed").key("user-7"))
        .await
        .unwrap();
    assert_eq!(
        d.partition,
        spool_proto::partitioning::partition_for_key(b"user-7", 3)
    );
}
