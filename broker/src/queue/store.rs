//! Queue state, durable on an internal log of the storage engine (`internal/queues`).
//!
//! Every change a client could observe (a queue created or deleted, a lease granted, a
//! settlement, a dead letter's intent and completion) is one record: key the queue's id as
//! u64 little-endian, value the [`Event`] as JSON (docs/format.md). Appended and fsync'd
//! before the request that caused it is answered (concurrent requests share the fsync), and
//! replayed in order on start. Lease expiry writes nothing: what follows an expired lease is
//! computed from its expiry time, so replay reaches the same state without timers.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spool_storage::{Durability, Log, LogConfig, ProducerStamp, Record, Storage};

use super::config::QueueConfig;
use crate::error::{Error, Result};

const LOG: &str = "internal/queues";

/// How a queue's start was chosen (reported by `DescribeQueue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSpec {
    /// `StartPosition.Kind` as its number.
    pub kind: i32,
    pub offset: u64,
    pub timestamp_ms: i64,
}

/// One change of queue state. `id` names the queue (a queue created again gets a new one,
/// so the old queue's events never apply to it); `p` and `o` a partition and offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Event {
    Create {
        id: u64,
        topic: String,
        queue: String,
        config: QueueConfig,
        start: StartSpec,
        /// Where the queue starts in each partition.
        floors: Vec<u64>,
        /// Where the next redrive starts in the dead-letter topic: its end offset when the
        /// queue was created, then where the last redrive ended (absent in logs written
        /// before redrives: 0).
        #[serde(default)]
        redrive_next: u64,
    },
    Delete {
        id: u64,
    },
    Lease {
        id: u64,
        p: u32,
        o: u64,
        attempt: u32,
        expires_ms: i64,
        lease_ms: u32,
        /// The record's key hash (FNV-1a 64) when the queue orders by key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<u64>,
    },
    /// Leases granted together, with one expiry: what [`coalesce`] makes of a run of
    /// `Lease` events (one look for records leases hundreds).
    Leases {
        id: u64,
        p: u32,
        expires_ms: i64,
        lease_ms: u32,
        grants: Vec<Grant>,
    },
    Ack {
        id: u64,
        p: u32,
        o: u64,
    },
    /// Records acked together: what [`coalesce`] makes of a run of `Ack` events.
    Acks {
        id: u64,
        p: u32,
        o: Vec<u64>,
    },
    Nack {
        id: u64,
        p: u32,
        o: u64,
        at_ms: i64,
    },
    Extend {
        id: u64,
        p: u32,
        o: u64,
        expires_ms: i64,
    },
    /// The record will be dead-lettered: written before the dead letter is appended.
    DeadLetter {
        id: u64,
        p: u32,
        o: u64,
        reason: String,
        dlq_from: u64,
    },
    /// The dead letter is durable: the record is settled.
    DeadLettered {
        id: u64,
        p: u32,
        o: u64,
    },
    /// Records deferred to the delay store (their timers already durable there): offset
    /// ranges, each `[start, end)`.
    Deferred {
        id: u64,
        p: u32,
        ranges: Vec<(u64, u64)>,
    },
    /// Part of a checkpoint's deferred set of partition `p` (after its `Snapshot` parts): a
    /// serialized roaring bitmap of offsets, base64 (standard alphabet, padded).
    SnapshotDeferred {
        id: u64,
        p: u32,
        bits: String,
    },
    /// A redrive asked for: the dead-letter topic's records up to `until` are to be looked
    /// at, `per_second` redriven at most a second.
    Redrive {
        id: u64,
        until: u64,
        per_second: u32,
    },
    /// A redrive step: `records` (`[p, o, key, life]`) are available again from `at_ms` with their
    /// attempts reset, and the dead-letter topic was looked at up to `next`.
    Redriven {
        id: u64,
        next: u64,
        at_ms: i64,
        records: Vec<RedrivenRecord>,
    },
    /// Part of a checkpoint of partition `p` (after the queue's `Create` in the same
    /// checkpoint): the first part (`reset`) starts the partition afresh at `floor`.
    Snapshot {
        id: u64,
        p: u32,
        reset: bool,
        floor: u64,
        settled: Vec<(u64, u64)>,
        entries: Vec<SnapEntry>,
        /// With partition 0's first part: the queue's counters.
        counters: Option<Counters>,
    },
}

/// One lease of a `Leases` event: offset, attempt and key hash (under key ordering),
/// as a JSON array `[o, attempt, key]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant(pub u64, pub u32, pub Option<u64>);

/// A record a redrive made available again: partition, offset, key hash (under key
/// ordering) and its new life (the dead letter's offset plus one), as a JSON array
/// `[p, o, key, life]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedrivenRecord(pub u32, pub u64, pub Option<u64>, pub u64);

/// The most leases or acks one coalesced event holds: an event stays far below the queue
/// log's 64 KiB record limit.
pub(super) const COALESCE_MAX: usize = 1_000;

/// `events` with each run of `Lease` events of one queue, partition and expiry made one
/// `Leases`, and each run of `Ack` events of one queue and partition one `Acks` (at most
/// [`COALESCE_MAX`] each): the same state on replay, in a fraction of the bytes and
/// records. Order is kept.
pub fn coalesce(events: &[Event]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len().min(64));
    for e in events {
        match (out.last_mut(), e) {
            (
                Some(Event::Leases {
                    id,
                    p,
                    expires_ms,
                    lease_ms,
                    grants,
                }),
                Event::Lease {
                    id: i,
                    p: q,
                    o,
                    attempt,
                    expires_ms: x,
                    lease_ms: l,
                    key,
                },
            ) if (*id, *p, *expires_ms, *lease_ms) == (*i, *q, *x, *l)
                && grants.len() < COALESCE_MAX =>
            {
                grants.push(Grant(*o, *attempt, *key));
            }
            (
                _,
                Event::Lease {
                    id,
                    p,
                    o,
                    attempt,
                    expires_ms,
                    lease_ms,
                    key,
                },
            ) => out.push(Event::Leases {
                id: *id,
                p: *p,
                expires_ms: *expires_ms,
                lease_ms: *lease_ms,
                grants: vec![Grant(*o, *attempt, *key)],
            }),
            (Some(Event::Acks { id, p, o }), Event::Ack { id: i, p: q, o: x })
                if (*id, *p) == (*i, *q) && o.len() < COALESCE_MAX =>
            {
                o.push(*x);
            }
            (_, Event::Ack { id, p, o }) => out.push(Event::Acks {
                id: *id,
                p: *p,
                o: vec![*o],
            }),
            (_, other) => out.push(other.clone()),
        }
    }
    out
}

/// A tracked record in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapEntry {
    pub o: u64,
    pub attempt: u32,
    /// `waiting`, `leased`, `dead_lettering` or `blocked` (behind its key's head).
    pub state: String,
    /// Waiting: when available; leased: when the lease ends.
    pub at_ms: i64,
    pub lease_ms: u32,
    pub reason: String,
    pub dlq_from: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u64>,
    /// The record's life (see `state::Entry::life`), absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub life: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A queue's totals, carried by checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub acked: u64,
    pub dead_lettered: u64,
    pub redelivered: u64,
    pub retention_dropped: u64,
    #[serde(default)]
    pub redriven: u64,
}

impl Event {
    /// The highest partition the event names, if it names one.
    pub fn highest_partition(&self) -> Option<u32> {
        match self {
            Event::Lease { p, .. }
            | Event::Leases { p, .. }
            | Event::Ack { p, .. }
            | Event::Acks { p, .. }
            | Event::Nack { p, .. }
            | Event::Extend { p, .. }
            | Event::DeadLetter { p, .. }
            | Event::DeadLettered { p, .. }
            | Event::Deferred { p, .. }
            | Event::SnapshotDeferred { p, .. }
            | Event::Snapshot { p, .. } => Some(*p),
            Event::Redriven { records, .. } => records.iter().map(|r| r.0).max(),
            Event::Create { .. } | Event::Delete { .. } | Event::Redrive { .. } => None,
        }
    }

    pub fn queue_id(&self) -> u64 {
        match self {
            Event::Create { id, .. }
            | Event::Delete { id }
            | Event::Lease { id, .. }
            | Event::Leases { id, .. }
            | Event::Ack { id, .. }
            | Event::Acks { id, .. }
            | Event::Nack { id, .. }
            | Event::Extend { id, .. }
            | Event::DeadLetter { id, .. }
            | Event::DeadLettered { id, .. }
            | Event::Deferred { id, .. }
            | Event::SnapshotDeferred { id, .. }
            | Event::Redrive { id, .. }
            | Event::Redriven { id, .. }
            | Event::Snapshot { id, .. } => *id,
        }
    }

    fn encode(&self) -> Record {
        Record {
            key: Bytes::copy_from_slice(&self.queue_id().to_le_bytes()),
            value: Bytes::from(serde_json::to_vec(self).expect("events serialize")),
            headers: Vec::new(),
            timestamp_ms: crate::now_ms(),
        }
    }
}

/// The queue state log.
pub struct QueueLog {
    log: Arc<Log>,
    /// Held by every append, and by a checkpoint from its snapshot of the state to its
    /// append, so that every event before the checkpoint is in it.
    writes: parking_lot::Mutex<()>,
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 * 1024 * 1024,
        durability: Durability::Always,
        max_record_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

impl QueueLog {
    /// Opens the log and returns every event in it, oldest first (blocking).
    pub fn open(storage: &Storage) -> Result<(QueueLog, Vec<Event>)> {
        let log = storage.open_log(LOG, log_config())?;
        let mut events = Vec::new();
        let mut offset = log.start_offset();
        while offset < log.end_offset() {
            let records = log.read(offset, 10_000, 8 << 20)?;
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            for r in records {
                let e: Event = serde_json::from_slice(&r.value).map_err(|e| Error::Metadata {
                    path: storage.root().join(LOG),
                    reason: format!("queue event at offset {}: {e}", r.offset),
                })?;
                events.push(e);
            }
        }
        Ok((
            QueueLog {
                log,
                writes: parking_lot::Mutex::new(()),
            },
            events,
        ))
    }

    /// Appends `events` (coalesced) as one batch and returns once they are on disk
    /// (blocking).
    pub fn append(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = coalesce(events).iter().map(Event::encode).collect();
        let a = {
            let _w = self.writes.lock();
            self.log
                .append_unsynced(&records, ProducerStamp::default())?
        };
        self.log
            .sync_to(a.base_offset + u64::from(a.record_count))?;
        Ok(())
    }

    /// Writes a checkpoint, `take()`'s events taken while no other append runs, makes it
    /// durable and removes the closed segments wholly before it (blocking). Returns the
    /// segments removed.
    pub fn checkpoint(&self, take: impl FnOnce() -> Vec<Event>) -> Result<usize> {
        let upto = {
            let _w = self.writes.lock();
            let upto = self.log.end_offset();
            let events = take();
            for chunk in events.chunks(256) {
                let records: Vec<Record> = chunk.iter().map(Event::encode).collect();
                self.log
                    .append_unsynced(&records, ProducerStamp::default())?;
            }
            upto
        };
        self.log.sync()?;
        Ok(self.log.remove_before(upto)?)
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    pub fn close(&self) -> Result<()> {
        Ok(self.log.close()?)
    }

    pub fn records(&self) -> u64 {
        self.log.end_offset() - self.log.start_offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(p: u32, o: u64, expires_ms: i64) -> Event {
        Event::Lease {
            id: 7,
            p,
            o,
            attempt: 1 + (o % 3) as u32,
            expires_ms,
            lease_ms: 100,
            // Full-width key hashes: the largest events' size.
            key: o
                .is_multiple_of(2)
                .then_some(o.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63),
        }
    }

    fn ack(p: u32, o: u64) -> Event {
        Event::Ack { id: 7, p, o }
    }

    /// The single events a coalesced one stands for.
    fn expand(events: &[Event]) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            match e {
                Event::Leases {
                    id,
                    p,
                    expires_ms,
                    lease_ms,
                    grants,
                } => out.extend(grants.iter().map(|Grant(o, attempt, key)| Event::Lease {
                    id: *id,
                    p: *p,
                    o: *o,
                    attempt: *attempt,
                    expires_ms: *expires_ms,
                    lease_ms: *lease_ms,
                    key: *key,
                })),
                Event::Acks { id, p, o } => out.extend(o.iter().map(|o| Event::Ack {
                    id: *id,
                    p: *p,
                    o: *o,
                })),
                other => out.push(other.clone()),
            }
        }
        out
    }

    #[test]
    fn coalescing_keeps_every_event_in_order_in_bounded_events() {
        let mut events: Vec<Event> = (0..2_500).map(|o| lease(0, o, 50)).collect();
        events.push(ack(0, 3));
        events.push(lease(0, 2_500, 50));
        events.push(lease(0, 2_501, 60));
        events.push(lease(1, 0, 60));
        events.extend((0..3).map(|o| ack(1, o)));
        events.push(Event::Nack {
            id: 7,
            p: 1,
            o: 9,
            at_ms: 5,
        });
        events.push(ack(1, 4));
        let coalesced = coalesce(&events);
        let sizes: Vec<(&str, usize)> = coalesced
            .iter()
            .map(|e| match e {
                Event::Leases { grants, .. } => ("leases", grants.len()),
                Event::Acks { o, .. } => ("acks", o.len()),
                _ => ("other", 1),
            })
            .collect();
        assert_eq!(
            sizes,
            [
                ("leases", 1_000),
                ("leases", 1_000),
                ("leases", 500),
                ("acks", 1),
                ("leases", 1),
                ("leases", 1),
                ("leases", 1),
                ("acks", 3),
                ("other", 1),
                ("acks", 1),
            ]
        );
        assert_eq!(expand(&coalesced), events);
        for e in &coalesced {
            assert!((e.encode().value.len() as u64) < log_config().max_record_bytes / 2);
        }
    }
}
