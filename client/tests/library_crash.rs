//! The real `spoold`, killed with SIGKILL in the middle of production and started again on
//! the same port and data directory: every acknowledged record is there, none twice.
//!
//! Runs `target/<profile>/spoold`, building it first when it is missing or stale
//! (`cargo test -p spool-client` does not build it).

mod library_support;
mod spoold_binary;

use std::time::Duration;

use library_support::*;
use spool_client::v1::TopicConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producing_through_spoold_kills_keeps_every_acknowledged_record_once() {
    let path = spoold_binary::binary();
    const N: usize = 30_000;
    let mut spoold = Spoold::start(path).await;
    let client = connect(&spoold.endpoint()).await;
    client
        .create_topic("t", 3, TopicConfig::default())
        .await
        .expect("creating the topic");
    let (_producer, enqueued, task) = start_producing(&client, "t", N).await;
    let mut mid_production = 0;
    for k in 1..=5 {
        wait_for(&enqueued, k * N / 6, &task).await;
        spoold.kill();
        if !task.is_finished() {
            mid_production += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        spoold.start_again().await;
    }
    assert!(mid_production > 0, "no kill happened while producing");
    let results = within(DEADLINE, "producing", task)
        .await
        .expect("the producing task");
    // Every acknowledged record is stored once, where its delivery says; records whose
    // outcome the producer could not learn may be stored or not, but never twice.
    let positions = read_stored(&client, "t").await;
    check_acknowledged(&results, &positions);
    let acknowledged = results.iter().filter(|r| r.is_ok()).count();
    assert!(positions.len() >= acknowledged);
    assert!(positions.keys().all(|&i| i < N));
    // The producer resends through the kills: it must acknowledge everything.
    assert_eq!(
        acknowledged,
        N,
        "{} of {N} records failed ({} of them stored) instead of being resent",
        N - acknowledged,
        positions.len() - acknowledged
    );
}
