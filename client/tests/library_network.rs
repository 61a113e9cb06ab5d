//! Transient network failures: a loopback proxy between the client and the broker cuts
//! every connection (and sometimes refuses new ones for a while) in the middle of
//! producing and of consuming. Same guarantees as across broker restarts.

mod library_support;

use std::net::SocketAddr;
use std::time::Duration;

use library_support::*;
use spool_broker::testing::TempBroker;
use spool_client::v1::TopicConfig;
use spool_client::{Client, GroupConsumer, GroupOptions, Reader, ReaderOptions};

/// A broker, a proxy in front of it, a client through the proxy and one straight to the
/// broker (for setting up and checking).
async fn setup(topic: &str, partitions: u32) -> (TempBroker, Proxy, Client, Client) {
    let broker = TempBroker::start().await;
    let addr: SocketAddr = broker
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("the broker's address");
    let proxy = Proxy::start(addr).await;
    let direct = connect(&broker.endpoint()).await;
    direct
        .create_topic(topic, partitions, TopicConfig::default())
        .await
        .expect("creating the topic");
    let proxied = connect(&proxy.endpoint()).await;
    (broker, proxy, proxied, direct)
}

/// Cuts every connection; every other time also refuses reconnects for a while.
async fn blip(proxy: &Proxy, k: usize) {
    proxy.cut();
    if k.is_multiple_of(2) {
        proxy.set_accepting(false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.set_accepting(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producing_through_dropped_connections_stores_every_record_once() {
    const N: usize = 30_000;
    let (_broker, proxy, proxied, direct) = setup("t", 3).await;
    let (_producer, enqueued, task) = start_producing(&proxied, "t", N).await;
    let mut mid_production = 0;
    for k in 1..=5 {
        wait_for(&enqueued, k * N / 6, &task).await;
        if !task.is_finished() {
            mid_production += 1;
        }
        blip(&proxy, k).await;
    }
    assert!(mid_production > 0, "no cut happened while producing");
    let results = within(DEADLINE, "producing", task)
        .await
        .expect("the producing task");
    let positions = read_stored(&direct, "t").await;
    check_deliveries(&results, &positions);
    assert_exactly(&positions, N);
    assert!(proxy.connections() > 1, "the producer never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_resumes_after_dropped_connections_without_gaps_or_duplicates() {
    // Enough bytes that the cuts land in the middle of the partitions (see the restart test).
    const N: usize = 8_000;
    let (_broker, proxy, proxied, direct) = setup("big", 2).await;
    fill(&direct, "big", N, |i| padded_value(i, 3_000)).await;
    let mut reader = Reader::new(
        &proxied,
        "big",
        ReaderOptions {
            max_batch_records: 50,
            buffer: 64,
            ..ReaderOptions::default()
        },
    )
    .await
    .expect("opening a reader");
    let mut k = 0;
    read_through(&mut reader, N, &[N / 8, N / 4, N / 3, N / 2], async |_| {
        k += 1;
        blip(&proxy, k).await;
    })
    .await;
    assert!(proxy.connections() > 1, "the reader never reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_member_resumes_from_its_commits_after_dropped_connections() {
    const N: usize = 20_000;
    let (_broker, proxy, proxied, direct) = setup("jobs", 3).await;
    fill(&direct, "jobs", N, value).await;
    let mut member = GroupConsumer::new(
        &proxied,
        "workers",
        "jobs",
        GroupOptions {
            // See the restart test for why not smaller.
            max_in_flight_records: 4_000,
            buffer: 64,
            ..GroupOptions::default()
        },
    )
    .await
    .expect("joining the group");
    let mut k = 0;
    let (duplicates, ids) = consume_through(
        &mut member,
        N,
        100,
        &[N / 5, 2 * N / 5, 3 * N / 5, 4 * N / 5],
        async |_| {
            k += 1;
            blip(&proxy, k).await;
        },
    )
    .await;
    eprintln!("{duplicates} duplicates over {k} connection drops");
    let state = member.state();
    for id in &ids {
        assert_eq!(id, &state.member_id, "the member rejoined under a new id");
    }
    let offsets = direct
        .get_offsets("workers", "jobs")
        .await
        .expect("reading the group's offsets");
    let info = direct.describe_topic("jobs").await.expect("describing");
    for p in &info.partition_info {
        let committed = offsets
            .iter()
            .find(|o| o.partition == p.partition)
            .and_then(|o| o.committed);
        // The producer fills partitions a batch at a time, so one may stay empty, with
        // nothing to commit: no commit counts as one at its start.
        assert_eq!(
            committed.unwrap_or(p.start_offset),
            p.end_offset,
            "partition {}",
            p.partition
        );
    }
    assert!(proxy.connections() > 1, "the member never reconnected");
}
