//! Queues: named cursors over a topic that lease its records to workers one by one, with
//! per-record settlement (ack, nack, extend, reject), retries with backoff, dead letters
//! and delivery times. A topic can be read as a log and as any number of queues at once.
//!
//! - `config.rs`: the effective config (defaults, clamps).
//! - `state.rs`: one partition's state machine, pure.
//! - `leasing.rs`: `Queue`: leasing and settling under its lock.
//! - `replay.rs`: applying the queue log on start, and checkpoints.
//! - `describe.rs`: what `DescribeQueue` reports, and why a queue is paused.
//! - `store.rs`: the events on `internal/queues` that make every change durable.
//! - `dead_letter.rs`: the task that writes dead letters and then settles their records.
//! - `delays.rs`: timers of records due far ahead, on disk in time buckets.
//! - `redrive.rs`: dead-lettered records made available again, at a bounded rate.
//!
//! Every change is durable before the request that made it is answered; the lock of a
//! queue is never held across an `.await` or an fsync.

pub mod config;
pub mod dead_letter;
#[cfg(test)]
mod deferral_tests;
pub mod delays;
mod describe;
pub mod leasing;
pub mod redrive;
mod replay;
pub mod state;
pub mod store;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use spool_proto::v1;
use spool_storage::Storage;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::registry::{Registry, Topic, validate_name};
use config::QueueConfig;
use delays::{DelayBudget, DelayStore};
use leasing::Queue;
use redrive::Redrive;
use store::{Event, QueueLog, StartSpec};

/// The `spool-dead-letter-reason` of a record whose last allowed lease ended unacked.
pub const MAX_DELIVERIES_REASON: &str = "max deliveries";

/// Every queue of the broker.
pub struct Queues {
    log: QueueLog,
    queues: RwLock<BTreeMap<(String, String), Arc<Queue>>>,
    /// Serialises create and delete.
    admin: Mutex<()>,
    /// Wakes the dead-letter task.
    pub dead_letters: Notify,
    /// Where each queue's delay store lives: `<data>/queue-delays/<queue id, hex>/`.
    delay_root: std::path::PathBuf,
    pub delay_budget: Arc<DelayBudget>,
}

/// The directory under the data directory holding the delay stores.
const DELAY_DIR: &str = "queue-delays";

impl Queues {
    /// Opens the queue log and rebuilds every queue of a topic that still exists
    /// (blocking).
    pub fn open(storage: &Storage, registry: &Registry, delay_memory: u64) -> Result<Queues> {
        let (log, events) = QueueLog::open(storage)?;
        let delay_root = storage.root().join(DELAY_DIR);
        let delay_budget = DelayBudget::new(delay_memory);
        let mut by_id: BTreeMap<u64, Arc<Queue>> = BTreeMap::new();
        for e in &events {
            match e {
                Event::Create {
                    id,
                    topic,
                    queue,
                    config,
                    start,
                    floors,
                    redrive_next,
                } => {
                    // A checkpoint's Create replaces the queue: its snapshot follows.
                    let q = Arc::new(Queue::new(
                        *id,
                        topic.clone(),
                        queue.clone(),
                        config.clone(),
                        start.clone(),
                        floors,
                        DelayStore::open(delay_dir(&delay_root, *id), Arc::clone(&delay_budget))?,
                    ));
                    q.state.lock().redrive = Redrive::starting_at(*redrive_next);
                    by_id.insert(*id, q);
                }
                Event::Delete { id } => {
                    by_id.remove(id);
                }
                other => {
                    if let Some(q) = by_id.get(&other.queue_id()) {
                        q.replay(other);
                    }
                }
            }
        }
        let mut queues = BTreeMap::new();
        for q in by_id.into_values() {
            if registry.get(&q.topic).is_ok() {
                q.account_deferred();
                queues.insert((q.topic.clone(), q.name.clone()), q);
            }
        }
        remove_unused_delay_stores(&delay_root, &queues)?;
        tracing::info!(
            queues = queues.len(),
            events = events.len(),
            "queues recovered"
        );
        Ok(Queues {
            log,
            queues: RwLock::new(queues),
            admin: Mutex::new(()),
            dead_letters: Notify::new(),
            delay_root,
            delay_budget,
        })
    }

    pub fn get(&self, topic: &str, queue: &str) -> Result<Arc<Queue>> {
        self.queues
            .read()
            .get(&(topic.to_string(), queue.to_string()))
            .cloned()
            .ok_or_else(|| Error::QueueNotFound {
                topic: topic.to_string(),
                queue: queue.to_string(),
            })
    }

    /// The queues of `topic`, or of every topic, sorted.
    pub fn list(&self, topic: Option<&str>) -> Vec<Arc<Queue>> {
        self.queues
            .read()
            .values()
            .filter(|q| topic.is_none_or(|t| q.topic == t))
            .cloned()
            .collect()
    }

    /// Closes the queue log (at shutdown, after the last write).
    pub fn close(&self) -> Result<()> {
        self.log.close()
    }

    /// Checkpoints every queue and drops the log before it, once the log holds more than
    /// `min_records` records in at least two segments (blocking). Returns the segments
    /// removed.
    pub fn compact(&self, min_records: u64) -> Result<usize> {
        if self.log.segment_count() < 2 || self.log.records() <= min_records {
            return Ok(0);
        }
        let mut loaded = Vec::new();
        let removed = self.log.checkpoint(|| {
            let mut events = Vec::new();
            for q in self.list(None) {
                let (e, l) = q.checkpoint();
                events.extend(e);
                loaded.extend(l);
            }
            events
        })?;
        delays::remove_loaded(&loaded);
        tracing::info!(
            segments = removed,
            records = self.log.records(),
            "compacted the queue log"
        );
        Ok(removed)
    }

    /// Makes `events` durable (blocking).
    pub fn persist(&self, events: &[Event]) -> Result<()> {
        self.log.append(events)
    }

    /// Creates a queue, or finds the same one (blocking). Returns the queue and whether the
    /// caller must create its dead-letter topic (`None` when it exists).
    pub fn create(&self, registry: &Registry, req: &v1::CreateQueueRequest) -> Result<Arc<Queue>> {
        validate_name("topic", &req.topic)?;
        validate_name("queue", &req.queue)?;
        let topic = registry.get(&req.topic)?;
        let config = QueueConfig::effective(&req.topic, &req.queue, req.config.as_ref())?;
        let _admin = self.admin.lock();
        if let Ok(q) = self.get(&req.topic, &req.queue) {
            if q.config == config {
                return Ok(q);
            }
            return Err(Error::QueueExists(format!(
                "queue {:?} on topic {:?} exists with a different config ({:?}); delete it first or create it with the same config",
                req.queue, req.topic, q.config
            )));
        }
        self.check_dead_letter_topic(&req.topic, &config)?;
        if registry.get(&config.dead_letter_topic).is_err() {
            let settings = registry.settings_for(&v1::TopicConfig::default())?;
            match registry.create(&config.dead_letter_topic, 1, settings) {
                Ok(_) | Err(Error::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (start, floors) = resolve_start(&topic, req.start.as_ref())?;
        // Dead letters already there are not this queue's: a redrive starts past them.
        let redrive_next = registry
            .get(&config.dead_letter_topic)?
            .partitions
            .first()
            .map_or(0, |p| p.log.end_offset());
        let id = new_id();
        let event = Event::Create {
            id,
            topic: req.topic.clone(),
            queue: req.queue.clone(),
            config: config.clone(),
            start: start.clone(),
            floors: floors.clone(),
            redrive_next,
        };
        self.log.append(std::slice::from_ref(&event))?;
        let q = Arc::new(Queue::new(
            id,
            req.topic.clone(),
            req.queue.clone(),
            config,
            start,
            &floors,
            DelayStore::open(
                delay_dir(&self.delay_root, id),
                Arc::clone(&self.delay_budget),
            )?,
        ));
        q.state.lock().redrive = Redrive::starting_at(redrive_next);
        self.queues
            .write()
            .insert((req.topic.clone(), req.queue.clone()), Arc::clone(&q));
        tracing::info!(topic = %req.topic, queue = %req.queue, "queue created");
        Ok(q)
    }

    /// A dead-letter topic may not be the source topic, too long a name, or another
    /// queue's source: dead letters must never feed a queue by accident.
    fn check_dead_letter_topic(&self, topic: &str, config: &QueueConfig) -> Result<()> {
        let dlq = &config.dead_letter_topic;
        let ask = "set QueueConfig.dead_letter_topic to an explicit name";
        if dlq.len() > crate::registry::MAX_TOPIC_NAME {
            return Err(Error::invalid(format!(
                "the dead-letter topic name {dlq:?} is over the {}-character limit: {ask}",
                crate::registry::MAX_TOPIC_NAME
            )));
        }
        validate_name("dead-letter topic", dlq)?;
        if dlq == topic {
            return Err(Error::invalid(format!(
                "the dead-letter topic {dlq:?} is the queue's own topic: {ask}"
            )));
        }
        if self.queues.read().values().any(|q| &q.topic == dlq) {
            return Err(Error::invalid(format!(
                "the dead-letter topic {dlq:?} is the source topic of another queue: {ask}"
            )));
        }
        Ok(())
    }

    /// Deletes a queue: its leases end and its streams see `NOT_FOUND` (blocking).
    pub fn delete(&self, topic: &str, queue: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let q = self.get(topic, queue)?;
        self.log.append(&[Event::Delete { id: q.id }])?;
        self.queues
            .write()
            .remove(&(topic.to_string(), queue.to_string()));
        q.deleted.cancel();
        q.changed.notify_waiters();
        let dir = delay_dir(&self.delay_root, q.id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // Removed at the next start.
            tracing::warn!(dir = %dir.display(), error = %e, "removing a deleted queue's delay store failed");
        }
        tracing::info!(%topic, %queue, "queue deleted");
        Ok(())
    }

    /// Deletes every queue of a deleted topic (blocking).
    pub fn topic_deleted(&self, topic: &str) -> Result<()> {
        for q in self.list(Some(topic)) {
            match self.delete(&q.topic, &q.name) {
                Ok(()) | Err(Error::QueueNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn delay_dir(root: &std::path::Path, id: u64) -> std::path::PathBuf {
    root.join(format!("{id:016x}"))
}

/// Removes the delay stores of queues that no longer exist (deleted, or a removal a crash
/// interrupted).
fn remove_unused_delay_stores(
    root: &std::path::Path,
    queues: &BTreeMap<(String, String), Arc<Queue>>,
) -> Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", root, e)),
    };
    let live: std::collections::HashSet<std::path::PathBuf> =
        queues.values().map(|q| delay_dir(root, q.id)).collect();
    for entry in entries {
        let path = entry.map_err(|e| Error::io("list", root, e))?.path();
        if !live.contains(&path) {
            tracing::info!(dir = %path.display(), "removing the delay store of a queue that no longer exists");
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Where a new queue starts in each partition.
fn resolve_start(
    topic: &Topic,
    start: Option<&v1::StartPosition>,
) -> Result<(StartSpec, Vec<u64>)> {
    use v1::start_position::Kind;
    let s = start.cloned().unwrap_or_default();
    let kind = Kind::try_from(s.kind).map_err(|_| {
        Error::invalid(format!("start.kind {} is not a StartPosition.Kind", s.kind))
    })?;
    let mut floors = Vec::with_capacity(topic.partitions.len());
    for p in &topic.partitions {
        let log = &p.log;
        let floor = match kind {
            Kind::Unspecified | Kind::Earliest => log.start_offset(),
            Kind::Latest => log.end_offset(),
            Kind::Offset => s.offset.clamp(log.start_offset(), log.end_offset()),
            Kind::Timestamp => log.offset_for_timestamp(s.timestamp_ms)?,
            Kind::Committed => {
                return Err(Error::invalid(
                    "a queue cannot start from a group's committed offset: use KIND_EARLIEST, KIND_LATEST, KIND_OFFSET or KIND_TIMESTAMP",
                ));
            }
        };
        floors.push(floor);
    }
    Ok((
        StartSpec {
            kind: s.kind,
            offset: s.offset,
            timestamp_ms: s.timestamp_ms,
        },
        floors,
    ))
}

/// A queue id no earlier queue had: random (the std hasher's per-process keys) mixed with
/// the clock.
fn new_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::queue::leasing::Limit;
    use spool_storage::{ProducerStamp, Record, StorageConfig};

    pub(crate) fn open(dir: &std::path::Path) -> (Arc<Storage>, Registry, Queues) {
        let storage = Arc::new(Storage::open(dir, StorageConfig::default()).unwrap());
        let config = Arc::new(BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        });
        let registry = Registry::open(Arc::clone(&storage), config).unwrap();
        let queues = Queues::open(&storage, &registry, 64 << 20).unwrap();
        (storage, registry, queues)
    }

    /// A one-partition topic "t" of `n` records (timestamp 1) and queue "q" over it.
    pub(crate) fn queue_over(
        registry: &Registry,
        queues: &Queues,
        n: usize,
        config: v1::QueueConfig,
    ) -> (Arc<Topic>, Arc<Queue>) {
        let settings = registry.settings_for(&v1::TopicConfig::default()).unwrap();
        let topic = registry.create("t", 1, settings).unwrap();
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                value: format!("v{i}").into(),
                timestamp_ms: 1,
                ..Record::default()
            })
            .collect();
        topic.partitions[0]
            .log
            .append(&records, ProducerStamp::default())
            .unwrap();
        let req = v1::CreateQueueRequest {
            topic: "t".into(),
            queue: "q".into(),
            config: Some(config),
            start: None,
        };
        let q = queues.create(registry, &req).unwrap();
        (topic, q)
    }

    /// One settlement per delivery, each `action`.
    pub(crate) fn settle_each(
        deliveries: &[v1::Delivery],
        action: v1::SettleAction,
    ) -> Vec<v1::Settlement> {
        deliveries
            .iter()
            .map(|d| v1::Settlement {
                partition: d.partition,
                offset: d.record.as_ref().unwrap().offset,
                lease_id: d.lease_id,
                action: action as i32,
                ..v1::Settlement::default()
            })
            .collect()
    }

    /// The counts and positions a restart must keep.
    fn summary(q: &Queue, topic: &Topic) -> (u64, u64, u64, u64, Vec<u64>) {
        let i = q.info(Some(topic), 0);
        let floors = i.partitions.iter().map(|p| p.ack_floor).collect();
        (
            i.acked_total,
            i.redelivered_total,
            i.leased + i.delayed,
            i.ready,
            floors,
        )
    }

    #[test]
    fn compaction_keeps_the_queue_log_bounded_and_a_restart_sees_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let (_storage, registry, queues) = open(dir.path());
            let settings = registry.settings_for(&v1::TopicConfig::default()).unwrap();
            let topic = registry.create("t", 2, settings).unwrap();
            for p in &topic.partitions {
                let records: Vec<Record> = (0..1_000)
                    .map(|i| Record {
                        value: format!("v{i}").into(),
                        timestamp_ms: 1,
                        ..Record::default()
                    })
                    .collect();
                for chunk in records.chunks(250) {
                    p.log.append(chunk, ProducerStamp::default()).unwrap();
                }
            }
            let req = v1::CreateQueueRequest {
                topic: "t".into(),
                queue: "q".into(),
                config: Some(v1::QueueConfig {
                    max_deliveries: 1_000,
                    ..v1::QueueConfig::default()
                }),
                start: None,
            };
            let q = queues.create(&registry, &req).unwrap();
            // Lease everything, ack most, nack some (they stay tracked), over and over:
            // far more events than live state.
            let mut now = 1_000_000;
            let mut removed = 0;
            for round in 0..60 {
                let leased = q
                    .lease(&topic, Limit::records(10_000), 1_000, "w", now)
                    .unwrap();
                queues.persist(&leased.events).unwrap();
                let settlements: Vec<v1::Settlement> = leased
                    .deliveries
                    .iter()
                    .enumerate()
                    .map(|(i, d)| v1::Settlement {
                        partition: d.partition,
                        offset: d.record.as_ref().unwrap().offset,
                        lease_id: d.lease_id,
                        action: if round == 59 || i % 50 != 0 {
                            v1::SettleAction::Nack
                        } else {
                            v1::SettleAction::Ack
                        } as i32,
                        delay_ms: Some(0),
                        reason: String::new(),
                    })
                    .collect();
                let (_, events) = q.settle(&settlements, now, 0);
                queues.persist(&events).unwrap();
                removed += queues.compact(10_000).unwrap();
                now += 10;
            }
            assert!(removed > 0, "compaction removed no segment");
            // About 140,000 events were written.
            assert!(
                queues.log.records() < 60_000,
                "the log holds {} records",
                queues.log.records()
            );
            summary(&q, &topic)
        };
        let (_storage, registry, queues) = open(dir.path());
        let q = queues.get("t", "q").unwrap();
        let topic = registry.get("t").unwrap();
        assert_eq!(summary(&q, &topic), before);
        assert!(before.0 > 0 && before.1 > 0, "{before:?}");
    }

    #[test]
    fn leases_that_expired_at_max_leased_are_granted_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_storage, registry, queues) = open(dir.path());
        let config = v1::QueueConfig {
            max_leased: 2,
            retry_backoff_min_ms: 10,
            retry_backoff_max_ms: 10,
            ..v1::QueueConfig::default()
        };
        let (topic, q) = queue_over(&registry, &queues, 5, config);
        let now = 1_000_000;
        let first = q
            .lease(&topic, Limit::records(10), 1_000, "w", now)
            .unwrap();
        assert_eq!(first.deliveries.len(), 2);
        // Both leases ran out unsettled: the partition is at max_leased with expired leases.
        let again = q
            .lease(&topic, Limit::records(10), 1_000, "w", now + 1_010)
            .unwrap();
        let attempts: Vec<(u64, u32)> = again
            .deliveries
            .iter()
            .map(|d| (d.record.as_ref().unwrap().offset, d.attempt))
            .collect();
        assert_eq!(attempts, [(0, 2), (1, 2)]);
    }
}
