//! Broker restarts (graceful, in-process, same address and data directory) in the middle
//! of producing and of consuming: the producer resends without duplicating, the reader
//! resumes after its last record, the group member rejoins under its id from its commits.

mod library_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use library_support::*;
use spool_client::v1::TopicConfig;
use spool_client::{
    GroupConsumer, GroupOptions, Producer, ProducerOptions, ProducerRecord, Reader, ReaderOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producing_through_graceful_broker_restarts_stores_every_record_once() {
    const N: usize = 30_000;
    let mut broker = RestartableBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("t", 3, TopicConfig::default())
        .await
        .expect("creating the topic");
    let (_producer, enqueued, task) = start_producing(&client, "t", N).await;
    let mut mid_production = 0;
    for k in 1..=3 {
        wait_for(&enqueued, k * N / 4, &task).await;
        broker.stop().await;
        if !task.is_finished() {
            mid_production += 1;
        }
        // The producer keeps enqueueing into its buffer and retrying while it is down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.start_again().await;
    }
    assert!(mid_production > 0, "no restart happened while producing");
    eprintln!(
        "{mid_production} of 3 restarts while producing; {} records enqueued at the end",
        enqueued.load(Ordering::SeqCst)
    );
    let results = within(DEADLINE, "producing", task)
        .await
        .expect("the producing task");
    let positions = read_stored(&client, "t").await;
    check_deliveries(&results, &positions);
    assert_exactly(&positions, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_resumes_after_broker_restarts_without_gaps_or_duplicates() {
    // 24 MB over two partitions: more than HTTP/2 buffers ahead of the reader, so the
    // restarts cut subscriptions in the middle of the log, not at its end.
    const N: usize = 8_000;
    const PAD: usize = 3_000;
    let mut broker = RestartableBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("big", 2, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Producer::new(&client, "big", ProducerOptions::default())
        .await
        .expect("starting the producer");
    for i in 0..N {
        producer
            .enqueue(ProducerRecord::new(padded_value(i, PAD)))
            .await
            .expect("enqueueing");
    }
    producer.flush().await.expect("flushing");

    let mut reader = Reader::new(
        &client,
        "big",
        ReaderOptions {
            max_batch_records: 50,
            buffer: 64,
            ..ReaderOptions::default()
        },
    )
    .await
    .expect("opening a reader");
    read_through(&mut reader, N, &[N / 8, N / 3], async |read| {
        eprintln!("restarting the broker after {read} records read");
        broker.restart().await;
    })
    .await;

    // Caught up and tailing: a restart, then new records, which must follow on.
    broker.restart().await;
    for i in N..N + 100 {
        producer
            .enqueue(ProducerRecord::new(padded_value(i, 10)))
            .await
            .expect("enqueueing");
    }
    producer.flush().await.expect("flushing");
    let mut tail = library_support::Seen::default();
    for _ in 0..100 {
        let m = within(DEADLINE, "tailing", futures::StreamExt::next(&mut reader))
            .await
            .expect("a reader never ends")
            .expect("tailing");
        let i = index_of(&m.value);
        assert!(i >= N, "record {i} delivered again after the restart");
        assert_eq!(tail.add(&m), 1, "record {i} delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_member_resumes_from_its_commits_after_broker_restarts() {
    const N: usize = 20_000;
    let mut broker = RestartableBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("jobs", 3, TopicConfig::default())
        .await
        .expect("creating the topic");
    fill(&client, "jobs", N, value).await;

    // A credit well below N keeps the broker close behind the commits, so each restart
    // lands in the middle of the partitions. (It stays above three whole batches of 1,000:
    // the broker frees credit only per whole batch, see
    // `library::a_member_committing_inside_a_batch_gets_more_records`.)
    let mut member = GroupConsumer::new(
        &client,
        "workers",
        "jobs",
        GroupOptions {
            max_in_flight_records: 4_000,
            buffer: 64,
            ..GroupOptions::default()
        },
    )
    .await
    .expect("joining the group");
    let mut at_restart = Vec::new();
    let (duplicates, ids) = consume_through(
        &mut member,
        N,
        100,
        &[N / 4, N / 2, 3 * N / 4],
        async |read| {
            at_restart.push(read);
            broker.restart().await;
        },
    )
    .await;
    eprintln!("restarts after {at_restart:?} records; {duplicates} duplicates");

    // Rejoined under the same member id, and every partition is committed to its end.
    let state = member.state();
    assert!(!state.member_id.is_empty());
    for id in &ids {
        assert_eq!(id, &state.member_id, "the member rejoined under a new id");
    }
    assert_eq!(state.partitions, vec![0, 1, 2]);
    let offsets = client
        .get_offsets("workers", "jobs")
        .await
        .expect("reading the group's offsets");
    let info = client.describe_topic("jobs").await.expect("describing");
    for p in &info.partition_info {
        let committed = offsets
            .iter()
            .find(|o| o.partition == p.partition)
            .unwrap_or_else(|| panic!("no commit for partition {}", p.partition));
        // A partition the producer left empty has nothing to commit.
        assert_eq!(
            committed.committed.unwrap_or(p.start_offset),
            p.end_offset,
            "{committed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fed_without_pause_reconnects_on_its_backoff_not_when_its_buffer_fills() {
    let mut broker = RestartableBroker::start().await;
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("t", 1, TopicConfig::default())
        .await
        .expect("creating the topic");
    let producer = Arc::new(
        Producer::new(
            &client,
            "t",
            ProducerOptions {
                // At one record per 2 ms this buffer takes 200 s to fill.
                buffer_records: 100_000,
                ..ProducerOptions::default()
            },
        )
        .await
        .expect("starting the producer"),
    );
    producer
        .send(ProducerRecord::new("before"))
        .await
        .expect("connected");
    // Records keep arriving the whole time, each one waking the producer's task.
    let feeder = {
        let producer = Arc::clone(&producer);
        tokio::spawn(async move {
            let mut i = 0usize;
            loop {
                if producer
                    .enqueue(ProducerRecord::new(value(i)))
                    .await
                    .is_err()
                {
                    return;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    broker.stop().await;
    // Down long enough for the first reconnect attempt to fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.start_again().await;
    let after = producer
        .enqueue(ProducerRecord::new("after the restart"))
        .await
        .expect("enqueued");
    // The backoff schedule (50 ms doubling) reconnects well within this; a backoff timer
    // restarted by every enqueued record would wait for the full buffer instead.
    within(
        Duration::from_secs(30),
        "an acknowledgement after the restart",
        after,
    )
    .await
    .expect("acknowledged");
    feeder.abort();
}
