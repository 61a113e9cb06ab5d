//! End-to-end tests of queues against a real `spoold`: leases, settlements, retries, dead
//! letters, restarts. Modules by behaviour; shared helpers here.

#[path = "../common/mod.rs"]
mod common;

mod compacted;
mod compressed;
mod dead_letters;
mod durability;
mod leases;
mod manage;
mod work;

use std::time::Duration;

use common::*;
use spool_proto::v1::*;

/// A queue config for tests: short leases and retries, so expiry happens in the test.
pub fn fast(lease_ms: u32, max_deliveries: u32) -> QueueConfig {
    QueueConfig {
        lease_ms,
        max_deliveries,
        retry_backoff_min_ms: 1,
        retry_backoff_max_ms: 1,
        ..QueueConfig::default()
    }
}

pub async fn create_queue(
    c: &mut Client,
    topic: &str,
    queue: &str,
    config: QueueConfig,
) -> QueueInfo {
    within(
        "CreateQueue",
        c.create_queue(CreateQueueRequest {
            topic: topic.into(),
            queue: queue.into(),
            config: Some(config),
            start: None,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("CreateQueue {topic}/{queue}: {s}"))
    .into_inner()
    .queue
    .expect("queue info")
}

pub async fn receive(
    c: &mut Client,
    topic: &str,
    queue: &str,
    max: u32,
    wait_ms: u32,
) -> Vec<Delivery> {
    within(
        "Receive",
        c.receive(ReceiveRequest {
            topic: topic.into(),
            queue: queue.into(),
            max_records: max,
            wait_ms,
            lease_ms: 0,
            consumer: "test".into(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("Receive {topic}/{queue}: {s}"))
    .into_inner()
    .deliveries
}

/// Receives until `n` deliveries came (each call long-polls), failing after PATIENCE.
pub async fn receive_n(c: &mut Client, topic: &str, queue: &str, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    within("receive_n", async {
        while got.len() < n {
            got.extend(receive(c, topic, queue, (n - got.len()) as u32, 1_000).await);
        }
    })
    .await;
    got
}

pub fn settlement(d: &Delivery, action: SettleAction, delay_ms: Option<u64>) -> Settlement {
    Settlement {
        partition: d.partition,
        offset: d.record.as_ref().unwrap().offset,
        lease_id: d.lease_id,
        action: action as i32,
        delay_ms,
        reason: String::new(),
    }
}

pub async fn settle(
    c: &mut Client,
    topic: &str,
    queue: &str,
    s: Vec<Settlement>,
) -> Vec<SettleResult> {
    within(
        "Settle",
        c.settle(SettleRequest {
            topic: topic.into(),
            queue: queue.into(),
            settlements: s,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("Settle {topic}/{queue}: {s}"))
    .into_inner()
    .outcomes
    .iter()
    .map(|o| SettleResult::try_from(o.result).unwrap())
    .collect()
}

pub async fn ack_all(c: &mut Client, topic: &str, queue: &str, ds: &[Delivery]) {
    let s = ds
        .iter()
        .map(|d| settlement(d, SettleAction::Ack, None))
        .collect();
    let r = settle(c, topic, queue, s).await;
    assert!(r.iter().all(|r| *r == SettleResult::Ok), "acks: {r:?}");
}

pub async fn describe_queue(c: &mut Client, topic: &str, queue: &str) -> QueueInfo {
    within(
        "DescribeQueue",
        c.describe_queue(DescribeQueueRequest {
            topic: topic.into(),
            queue: queue.into(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("DescribeQueue {topic}/{queue}: {s}"))
    .into_inner()
    .queue
    .expect("queue info")
}

pub async fn redrive(c: &mut Client, max_per_second: u32) -> RedriveQueueResponse {
    within(
        "RedriveQueue",
        c.redrive_queue(RedriveQueueRequest {
            topic: "jobs".into(),
            queue: "q".into(),
            max_per_second,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("RedriveQueue jobs/q: {s}"))
    .into_inner()
}

/// Waits (polling DescribeQueue) until `cond` holds of the queue.
pub async fn wait_queue(
    c: &mut Client,
    topic: &str,
    queue: &str,
    what: &str,
    cond: impl Fn(&QueueInfo) -> bool,
) -> QueueInfo {
    within(what, async {
        loop {
            let q = describe_queue(c, topic, queue).await;
            if cond(&q) {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

pub fn offset(d: &Delivery) -> u64 {
    d.record.as_ref().unwrap().offset
}
