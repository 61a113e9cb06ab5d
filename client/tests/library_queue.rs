//! The client's QueueConsumer against an in-process broker: every job acked once, nacks
//! and rejects, and leases of held jobs extended while a handler runs.

mod library_support;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use library_support::*;
use spool_broker::testing::TempBroker;
use spool_client::v1::{
    QueueConfig, SettleAction, SettleRequest, SettleResult, Settlement, TopicConfig,
};
use spool_client::{
    Client, Producer, ProducerOptions, ProducerRecord, QueueConsumer, QueueOptions,
};

async fn setup(broker: &TempBroker, records: usize, config: QueueConfig) -> Client {
    let client = connect(&broker.endpoint()).await;
    client
        .create_topic("jobs", 2, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::new(&client, "jobs", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..records {
        producer
            .send(ProducerRecord::new(format!("job-{i}")))
            .await
            .unwrap();
    }
    client
        .create_queue("jobs", "q", config, None)
        .await
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_consumer_acks_every_job_once_and_nacks_and_rejects_come_back_or_dead_letter() {
    let broker = TempBroker::start().await;
    let config = QueueConfig {
        retry_backoff_min_ms: 1,
        retry_backoff_max_ms: 1,
        ..QueueConfig::default()
    };
    let client = setup(&broker, 50, config).await;
    let mut jobs = QueueConsumer::new(&client, "jobs", "q", QueueOptions::default())
        .await
        .unwrap();
    let mut acked = HashSet::new();
    within(DEADLINE, "draining the queue", async {
        while acked.len() < 49 {
            let job = jobs.next().await.expect("open").expect("a job");
            let value = String::from_utf8(job.value.to_vec()).unwrap();
            match (value.as_str(), job.attempt) {
                ("job-7", 1) => assert_eq!(
                    job.nack(Some(Duration::ZERO)).await.unwrap(),
                    SettleResult::Ok
                ),
                ("job-9", _) => assert_eq!(job.reject("bad job").await.unwrap(), SettleResult::Ok),
                _ => {
                    assert_eq!(job.ack().await.unwrap(), SettleResult::Ok);
                    assert!(acked.insert(value), "a job acked twice");
                }
            }
        }
    })
    .await;
    assert!(acked.contains("job-7"), "the nacked job came back");
    let info = within(DEADLINE, "the dead letter", async {
        loop {
            let q = client.describe_queue("jobs", "q").await.unwrap();
            if q.dead_lettered_total == 1 {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!((info.acked_total, info.redelivered_total), (49, 1));
}

/// Holds one job for four lease periods, with and without automatic extension.
async fn hold_past_the_lease(auto_extend: bool) -> SettleResult {
    let broker = TempBroker::start().await;
    let config = QueueConfig {
        lease_ms: 300,
        ..QueueConfig::default()
    };
    let client = setup(&broker, 1, config).await;
    let options = QueueOptions {
        auto_extend,
        ..QueueOptions::default()
    };
    let mut jobs = QueueConsumer::new(&client, "jobs", "q", options)
        .await
        .unwrap();
    let job = within(DEADLINE, "a job", jobs.next())
        .await
        .unwrap()
        .unwrap();
    // The handler's work outlasts the lease: this sleep is the scenario, not a wait.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    job.ack().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_keeps_its_lease_while_auto_extension_is_on() {
    assert_eq!(hold_past_the_lease(true).await, SettleResult::Ok);
    assert_eq!(hold_past_the_lease(false).await, SettleResult::LeaseExpired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_made_at_once_each_get_their_own_outcome() {
    let broker = TempBroker::start().await;
    let client = setup(&broker, 100, QueueConfig::default()).await;
    let mut jobs = QueueConsumer::new(&client, "jobs", "q", QueueOptions::default())
        .await
        .unwrap();
    let held = within(DEADLINE, "taking 100 jobs", async {
        let mut held = Vec::new();
        while held.len() < 100 {
            held.push(jobs.next().await.expect("open").expect("a job"));
        }
        held
    })
    .await;
    // Every tenth is acked first through the unary Settle, so its job's ack finds no lease.
    let early: Vec<Settlement> = held
        .iter()
        .step_by(10)
        .map(|j| Settlement {
            partition: j.partition,
            offset: j.offset,
            lease_id: j.lease_id,
            action: SettleAction::Ack as i32,
            ..Settlement::default()
        })
        .collect();
    client
        .settle(SettleRequest {
            topic: "jobs".into(),
            queue: "q".into(),
            settlements: early,
        })
        .await
        .unwrap();
    // Then all acked at once: the acks travel together, and each answer goes to its job.
    let outcomes = within(
        DEADLINE,
        "acking them",
        futures::future::join_all(held.into_iter().map(|job| job.ack())),
    )
    .await;
    let outcomes: Vec<SettleResult> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    for (i, o) in outcomes.iter().enumerate() {
        let expected = if i % 10 == 0 {
            SettleResult::Unknown
        } else {
            SettleResult::Ok
        };
        assert_eq!(*o, expected, "job {i}: {outcomes:?}");
    }
    let q = client.describe_queue("jobs", "q").await.unwrap();
    assert_eq!((q.acked_total, q.leased), (100, 0));
}
