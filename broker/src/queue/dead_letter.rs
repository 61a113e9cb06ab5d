//! Dead letters: a record whose last allowed lease ended unacked, or that a worker
//! rejected, is appended to the queue's dead-letter topic with headers saying where it
//! came from and why, and settled only once that append is durable.
//!
//! Crash safety: the intent (`Event::DeadLetter`, with the dead-letter topic's end offset
//! at the time) is durable first. After a crash the intent is replayed and the record is
//! dead-lettered again unless a copy is found in the dead-letter topic past that offset,
//! so it is never lost and never written twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_storage::{Header, Log, ProducerStamp, Record, StoredRecord};
use tokio_util::sync::CancellationToken;

use super::leasing::{Queue, read_one};
use super::state::{AfterLease, State, after_lease};
use super::store::Event;
use super::{MAX_DELIVERIES_REASON, Queues, redrive};
use crate::error::{Error, Result};
use crate::registry::{Registry, Topic};

pub const H_TOPIC: &str = "spool-dead-letter-topic";
pub const H_PARTITION: &str = "spool-dead-letter-partition";
pub const H_OFFSET: &str = "spool-dead-letter-offset";
pub const H_ATTEMPTS: &str = "spool-dead-letter-attempts";
pub const H_REASON: &str = "spool-dead-letter-reason";
pub const H_TIMESTAMP: &str = "spool-dead-letter-timestamp-ms";
/// Which queue dead-lettered it (a custom dead-letter topic may serve several).
pub const H_QUEUE: &str = "spool-dead-letter-queue";
const PREFIX: &str = "spool-dead-letter-";

/// How far past an intent's recorded offset a search for an earlier copy looks.
const SEARCH_RECORDS: usize = 10_000;

/// How often leases are checked for a last attempt that ran out, besides on a wake-up.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The queue log is compacted once it holds this many records (and two segments).
pub const COMPACT_RECORDS: u64 = 100_000;
/// Sweeps between compaction checks (about ten seconds).
const COMPACT_EVERY: u32 = 100;

/// Runs until `shutdown`: dead-letters what is due and runs redrive steps, on the blocking
/// pool, and now and then compacts the queue log.
pub async fn run(queues: Arc<Queues>, registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut sweeps = 0u32;
    loop {
        sweeps = sweeps.wrapping_add(1);
        if sweeps.is_multiple_of(COMPACT_EVERY) {
            let q = Arc::clone(&queues);
            match tokio::task::spawn_blocking(move || q.compact(COMPACT_RECORDS)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "compacting the queue log failed"),
                Err(e) => tracing::error!(error = %e, "queue log compaction panicked"),
            }
        }
        tokio::select! {
            () = queues.dead_letters.notified() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let (q, r) = (Arc::clone(&queues), Arc::clone(&registry));
        let done = tokio::task::spawn_blocking(move || (sweep(&q, &r), redrive::step_all(&q, &r)));
        match done.await {
            Ok((dead_lettered, redriven)) => {
                if let Err(e) = dead_lettered {
                    tracing::warn!(error = %e, "dead-lettering failed; retrying");
                }
                if let Err(e) = redriven {
                    tracing::warn!(error = %e, "a redrive step failed; retrying");
                }
            }
            Err(e) => tracing::error!(error = %e, "dead-letter task panicked"),
        }
    }
}

/// One pass over every queue (blocking).
pub fn sweep(queues: &Queues, registry: &Registry) -> Result<()> {
    for q in queues.list(None) {
        let Ok(topic) = registry.get(&q.topic) else {
            continue;
        };
        let dlq = dead_letter_topic(registry, &q)?;
        let dlq_log = &dlq.partitions[0].log;
        let intents = expired_last_attempts(&q, dlq_log.end_offset(), crate::now_ms());
        queues.persist(&intents)?;
        let pending: Vec<(u32, u64, u32, String, u64)> = {
            let st = q.state.lock();
            st.partitions
                .iter()
                .enumerate()
                .flat_map(|(p, part)| {
                    part.entries().filter_map(move |(o, e)| match &e.state {
                        State::DeadLettering { reason, dlq_from } => {
                            Some((p as u32, o, e.attempt, reason.clone(), *dlq_from))
                        }
                        _ => None,
                    })
                })
                .collect()
        };
        for (p, o, attempts, reason, dlq_from) in pending {
            if q.deleted.is_cancelled() {
                break;
            }
            let Some(partition) = topic.partitions.get(p as usize) else {
                continue;
            };
            if let Some(record) = read_one(&partition.log, o)?
                && !already_written(dlq_log, dlq_from, &q, p, o)?
            {
                let letter = dead_letter(&q, p, attempts, &reason, record);
                let a = dlq_log.append_unsynced(&[letter], ProducerStamp::default())?;
                dlq_log.sync_to(a.base_offset + u64::from(a.record_count))?;
            }
            queues.persist(&[Event::DeadLettered { id: q.id, p, o }])?;
            let mut st = q.state.lock();
            st.partitions[p as usize].settle(o);
            st.dead_lettered_total += 1;
            drop(st);
            // A key blocked behind this record may flow again.
            q.changed.notify_waiters();
        }
    }
    Ok(())
}

/// The queue's dead-letter topic, created again (one partition) if someone deleted it.
fn dead_letter_topic(registry: &Registry, q: &Queue) -> Result<Arc<Topic>> {
    match registry.get(&q.config.dead_letter_topic) {
        Ok(t) => Ok(t),
        Err(Error::TopicNotFound(_)) => {
            let settings = registry.settings_for(&Default::default())?;
            match registry.create(&q.config.dead_letter_topic, 1, settings) {
                Ok(t) => Ok(t),
                Err(Error::TopicExists(_)) => registry.get(&q.config.dead_letter_topic),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Turns leases that ran out on their last attempt into dead-letter intents.
fn expired_last_attempts(q: &Queue, dlq_end: u64, now: i64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut st = q.state.lock();
    for (p, part) in st.partitions.iter_mut().enumerate() {
        let due: Vec<u64> = part
            .entries()
            .filter(|(_, e)| match e.state {
                State::Leased { expires_ms, .. } => {
                    expires_ms <= now
                        && after_lease(
                            e.attempt,
                            expires_ms,
                            q.config.max_deliveries,
                            q.config.backoff_ms(e.attempt),
                        ) == AfterLease::DeadLetter
                }
                _ => false,
            })
            .map(|(o, _)| o)
            .collect();
        for o in due {
            part.set_state(
                o,
                State::DeadLettering {
                    reason: MAX_DELIVERIES_REASON.to_string(),
                    dlq_from: dlq_end,
                },
            );
            events.push(Event::DeadLetter {
                id: q.id,
                p: p as u32,
                o,
                reason: MAX_DELIVERIES_REASON.to_string(),
                dlq_from: dlq_end,
            });
        }
    }
    events
}

/// Whether a copy of this queue's record `(p, o)` is in the dead-letter log from `from`.
fn already_written(log: &Log, from: u64, q: &Queue, p: u32, o: u64) -> Result<bool> {
    let (p, o) = (p.to_string(), o.to_string());
    let mut next = from.max(log.start_offset());
    let mut seen = 0;
    while next < log.end_offset() && seen < SEARCH_RECORDS {
        let records = log.read(next, 1_000, 8 << 20)?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        seen += records.len();
        if records.iter().any(|r| {
            header(r, H_QUEUE) == Some(q.name.as_bytes())
                && header(r, H_TOPIC) == Some(q.topic.as_bytes())
                && header(r, H_PARTITION) == Some(p.as_bytes())
                && header(r, H_OFFSET) == Some(o.as_bytes())
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn header<'a>(r: &'a StoredRecord, key: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .rev()
        .find(|h| h.key == key)
        .map(|h| h.value.as_ref())
}

/// The dead letter of `record`: its key, value and headers (less any earlier
/// `spool-dead-letter-*` ones and the stored delivery time) plus where it came from.
fn dead_letter(q: &Queue, p: u32, attempts: u32, reason: &str, record: StoredRecord) -> Record {
    let mut headers: Vec<Header> = record
        .headers
        .into_iter()
        .filter(|h| {
            !h.key.starts_with(PREFIX) && h.key != crate::service::convert::DELIVER_AT_HEADER
        })
        .collect();
    let mut add = |k: &str, v: String| {
        headers.push(Header {
            key: k.to_string(),
            value: Bytes::from(v),
        })
    };
    add(H_TOPIC, q.topic.clone());
    add(H_PARTITION, p.to_string());
    add(H_OFFSET, record.offset.to_string());
    add(H_ATTEMPTS, attempts.to_string());
    add(H_REASON, reason.to_string());
    add(H_TIMESTAMP, record.timestamp_ms.to_string());
    add(H_QUEUE, q.name.clone());
    Record {
        key: record.key,
        value: record.value,
        headers,
        timestamp_ms: crate::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use spool_proto::v1;
    use spool_storage::{ProducerStamp, Record};

    use super::*;
    use crate::queue::leasing::Limit;
    use crate::queue::tests::open;

    /// A queue "q" on topic "t" with one record, which is leased and rejected (the intent
    /// durable); returns what `sweep` would append as its dead letter.
    fn rejected(dir: &std::path::Path) -> Record {
        let (_s, registry, queues) = open(dir);
        let settings = registry.settings_for(&Default::default()).unwrap();
        let topic = registry.create("t", 1, settings).unwrap();
        let record = Record {
            value: "job".into(),
            timestamp_ms: 7,
            ..Record::default()
        };
        topic.partitions[0]
            .log
            .append(&[record], ProducerStamp::default())
            .unwrap();
        let req = v1::CreateQueueRequest {
            topic: "t".into(),
            queue: "q".into(),
            ..Default::default()
        };
        let q = queues.create(&registry, &req).unwrap();
        let leased = q
            .lease(&topic, Limit::records(1), 60_000, "w", crate::now_ms())
            .unwrap();
        queues.persist(&leased.events).unwrap();
        let d = &leased.deliveries[0];
        let reject = v1::Settlement {
            partition: 0,
            offset: 0,
            lease_id: d.lease_id,
            action: v1::SettleAction::Reject as i32,
            reason: "bad".into(),
            ..Default::default()
        };
        let (_, events) = q.settle(&[reject], crate::now_ms(), 0);
        queues.persist(&events).unwrap();
        let stored = read_one(&topic.partitions[0].log, 0).unwrap().unwrap();
        let letter = dead_letter(&q, 0, 1, "bad", stored);
        // Owned bytes: views of the mapped log would keep the storage (and its lock) open.
        Record {
            key: bytes::Bytes::copy_from_slice(&letter.key),
            value: bytes::Bytes::copy_from_slice(&letter.value),
            headers: letter
                .headers
                .iter()
                .map(|h| Header {
                    key: h.key.clone(),
                    value: bytes::Bytes::copy_from_slice(&h.value),
                })
                .collect(),
            timestamp_ms: letter.timestamp_ms,
        }
    }

    fn letters(registry: &Registry) -> usize {
        let log = &registry.get("t.q.dlq").unwrap().partitions[0].log;
        (log.end_offset() - log.start_offset()) as usize
    }

    #[test]
    fn an_intent_left_by_a_crash_is_dead_lettered_once_after_the_restart() {
        for appended_before_the_crash in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let letter = rejected(dir.path());
            if appended_before_the_crash {
                // The crash came after the dead letter's append, before its settlement.
                let (_s, registry, _q) = open(dir.path());
                let log = &registry.get("t.q.dlq").unwrap().partitions[0].log;
                log.append(&[letter], ProducerStamp::default()).unwrap();
            }
            let (storage, registry, queues) = open(dir.path());
            sweep(&queues, &registry).unwrap();
            sweep(&queues, &registry).unwrap();
            assert_eq!(
                letters(&registry),
                1,
                "appended before: {appended_before_the_crash}"
            );
            let q = queues.get("t", "q").unwrap();
            let info = q.info(registry.get("t").ok().as_deref(), crate::now_ms());
            assert_eq!(
                (info.dead_lettered_total, info.partitions[0].ack_floor),
                (1, 1)
            );
            drop((queues, registry, storage));
            // And the settlement itself survives another restart.
            let (_s, registry, queues) = open(dir.path());
            sweep(&queues, &registry).unwrap();
            assert_eq!(letters(&registry), 1);
        }
    }
}
