//! The traffic the broker is killed under: one idempotent [`Producer`] at a steady rate
//! (records spread over every partition) and group members that verify, count and commit
//! what they receive. Both use the same client objects for the whole run: resuming after
//! a restart is their job, not the harness's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::SeedableRng;
use rand::rngs::StdRng;
use spool_client::{GroupConsumer, Producer, ProducerRecord};
use tokio::sync::{mpsc, watch};

use super::ledger::Ledger;
use super::{DEADLINE, value};

/// Enqueues `rate` records a second (in 10 ms steps) until `stop` turns true; hands each
/// pending acknowledgement to a collector task, which records the outcomes in the ledger.
/// Returns the collector, which ends once every acknowledgement is in.
pub async fn produce(
    producer: Arc<Producer>,
    ledger: Arc<Ledger>,
    rate: u32,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = {
        let ledger = Arc::clone(&ledger);
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            while open || !pending.is_empty() {
                tokio::select! {
                    next = rx.recv(), if open => match next {
                        Some((id, delivery)) => pending.push(async move {
                            let d: spool_client::PendingDelivery = delivery;
                            (id, d.await)
                        }),
                        None => open = false,
                    },
                    Some((id, result)) = pending.next(), if !pending.is_empty() => {
                        ledger.on_ack(id, result);
                    }
                }
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let partitions = u64::from(producer.partitions());
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id = 0u64;
    while !*stop.borrow_and_update() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        for _ in 0..per_tick {
            let record = ProducerRecord::new(value::encode(id, &mut rng))
                .partition((id % partitions) as u32);
            // Counted first: the record may be stored and read back before enqueue returns.
            ledger.enqueue(id);
            // Not cancelled by `stop`: every id counted must reach the producer.
            match producer.enqueue(record).await {
                Ok(delivery) => {
                    let _ = tx.send((id, delivery));
                }
                Err(e) => ledger.on_ack(id, Err(e)),
            }
            id += 1;
        }
    }
    collector
}

/// Group member `member`: checks every record's checksum, records it in the ledger, and
/// every 100 ms (or 200 records) commits the offset after the last record it received in
/// each partition it still owns, if that is past what it committed before. Runs until
/// aborted; a stream that ends or fails is reported in the ledger.
pub async fn consume(member: usize, mut consumer: GroupConsumer, ledger: Arc<Ledger>) {
    let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut since_commit = 0usize;
    let mut last_commit = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
            Err(_) => {}
            Ok(Some(Ok(m))) => {
                ledger.on_message(member, &m);
                let next = pending.entry(m.partition).or_default();
                *next = (*next).max(m.offset + 1);
                since_commit += 1;
            }
            Ok(Some(Err(e))) => {
                ledger.consumer_error(format!("member {member}: the stream failed: {e}"));
                return;
            }
            Ok(None) => {
                ledger.consumer_error(format!("member {member}: the stream ended"));
                return;
            }
        }
        if since_commit < 200 && last_commit.elapsed() < Duration::from_millis(100) {
            continue;
        }
        since_commit = 0;
        last_commit = Instant::now();
        let owned = consumer.state().partitions;
        for (p, offset) in std::mem::take(&mut pending) {
            if !owned.contains(&p) || committed.get(&p).is_some_and(|&c| c >= offset) {
                continue;
            }
            match tokio::time::timeout(DEADLINE, consumer.commit(p, offset)).await {
                Ok(result) => {
                    if result.is_ok() {
                        committed.insert(p, offset);
                    }
                    ledger.on_commit(p, offset, result);
                }
                Err(_) => ledger.consumer_error(format!(
                    "member {member}: commit of partition {p} at {offset} unanswered for {DEADLINE:?}"
                )),
            }
        }
    }
}
