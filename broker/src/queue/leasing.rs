//! One queue: its partitions' state behind one lock, and the two things workers do to it,
//! lease records and settle them. Both return the events that make the change durable;
//! the caller appends them before answering.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use spool_proto::v1;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::QueueConfig;
use super::state::{AfterLease, LeaseCheck, Partition, State, after_lease};
use super::store::{Event, StartSpec};
use crate::error::Result;
use crate::registry::Topic;
use crate::service::convert;

/// The most distinct consumer names a queue remembers (the least recently seen go first).
const MAX_CONSUMERS: usize = 1_000;
/// How many records one scan of a partition reads from its log at most.
const SCAN_RECORDS: usize = 500;
const SCAN_BYTES: usize = 4 << 20;

pub struct Queue {
    pub id: u64,
    pub topic: String,
    pub name: String,
    pub config: QueueConfig,
    pub start: StartSpec,
    pub(super) state: Mutex<QueueState>,
    /// Wakes long polls and workers: records may have become available.
    pub changed: Notify,
    /// Cancelled when the queue is deleted.
    pub deleted: CancellationToken,
}

#[derive(Default)]
pub(super) struct QueueState {
    pub partitions: Vec<Partition>,
    pub acked_total: u64,
    pub dead_lettered_total: u64,
    pub redelivered_total: u64,
    pub retention_dropped_total: u64,
    /// Consumer name → when it last received a lease (ms).
    pub consumers: HashMap<Arc<str>, i64>,
    /// Which partition the next lease looks at first, so none is starved.
    next_partition: usize,
}

/// How much one look for records may lease: `records` at most, and no more records once
/// their keys and values reach `bytes` (one record is leased whatever its size), so an
/// answer fits a client's message limit and a stream's buffer stays bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub records: usize,
    pub bytes: usize,
}

impl Limit {
    /// Up to `n` records, whatever their size.
    pub fn records(n: usize) -> Limit {
        Limit {
            records: n,
            bytes: usize::MAX,
        }
    }
}

/// What one look for records found.
pub struct Leased {
    pub deliveries: Vec<v1::Delivery>,
    /// The deliveries' key and value bytes.
    pub bytes: usize,
    pub events: Vec<Event>,
    /// When the earliest record not available now becomes so (a retry, a delivery time,
    /// a running lease's end), if any.
    pub next_due_ms: Option<i64>,
    /// Some lease ran out on its last attempt: the dead-letter task has work.
    pub dead_letters_due: bool,
}

impl Leased {
    fn full(&self, limit: Limit) -> bool {
        self.deliveries.len() >= limit.records || self.bytes >= limit.bytes
    }
}

/// Why a queue cannot deliver right now, if it cannot.
pub fn pause_reason(q: &Queue, parts: &[Partition]) -> String {
    let max = q.config.max_leased as usize;
    let full: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.leased() >= max)
        .map(|(i, _)| i.to_string())
        .collect();
    if !full.is_empty() {
        return format!(
            "partitions {} have max_leased ({max}) records leased: settle some, or raise max_leased",
            full.join(", ")
        );
    }
    let waiting: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.tracked() >= 2 * max)
        .map(|(i, _)| i.to_string())
        .collect();
    if !waiting.is_empty() {
        return format!(
            "partitions {} track 2 × max_leased ({}) unsettled records waiting for a retry or a delivery time: new records wait until some are retried",
            waiting.join(", "),
            2 * max
        );
    }
    String::new()
}

impl Queue {
    pub fn new(
        id: u64,
        topic: String,
        name: String,
        config: QueueConfig,
        start: StartSpec,
        floors: &[u64],
    ) -> Queue {
        Queue {
            id,
            topic,
            name,
            config,
            start,
            state: Mutex::new(QueueState {
                partitions: floors.iter().map(|f| Partition::new(*f)).collect(),
                ..QueueState::default()
            }),
            changed: Notify::new(),
            deleted: CancellationToken::new(),
        }
    }

    pub fn partitions(&self) -> usize {
        self.state.lock().partitions.len()
    }

    /// The id of lease `attempt` of a record: derived, so nothing per lease is stored, and
    /// salted with the queue's id, so another queue's (or an old queue's) ids do not match.
    pub fn lease_id(&self, partition: u32, offset: u64, attempt: u32) -> u64 {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8..12].copy_from_slice(&partition.to_le_bytes());
        bytes[12..20].copy_from_slice(&offset.to_le_bytes());
        bytes[20..].copy_from_slice(&attempt.to_le_bytes());
        // A stable hash: ids granted before an upgrade must still match after it.
        spool_proto::partitioning::fnv1a64(&bytes)
    }

    /// The key a record is ordered by: its key's hash under key ordering, unless empty.
    fn order_key(&self, key: &[u8]) -> Option<u64> {
        (self.config.ordering == super::config::Ordering::Key && !key.is_empty())
            .then(|| spool_proto::partitioning::fnv1a64(key))
    }

    /// Leases available records, up to `limit` (blocking: reads the topic's logs).
    pub fn lease(
        &self,
        topic: &Topic,
        limit: Limit,
        lease_ms: u32,
        consumer: &str,
        now: i64,
    ) -> Result<Leased> {
        let mut out = Leased {
            deliveries: Vec::new(),
            bytes: 0,
            events: Vec::new(),
            next_due_ms: None,
            dead_letters_due: false,
        };
        let consumer: Arc<str> = Arc::from(consumer);
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let n = st.partitions.len().min(topic.partitions.len());
        let first = st.next_partition % n.max(1);
        st.next_partition = st.next_partition.wrapping_add(1);
        for i in 0..n {
            if out.full(limit) {
                break;
            }
            let p = (first + i) % n;
            let log = &topic.partitions[p].log;
            let part = &mut st.partitions[p];
            st.retention_dropped_total += part.drop_below(log.start_offset());
            let due = self.due(part, now, &mut out);
            for o in due {
                if out.full(limit) || part.leased() >= self.config.max_leased as usize {
                    break;
                }
                let Some(record) = read_one(log, o)? else {
                    // Gone meanwhile (retention): nothing left to deliver.
                    part.settle(o);
                    st.retention_dropped_total += 1;
                    continue;
                };
                let key = self.order_key(&record.key);
                let attempt = part.grant(
                    o,
                    now + i64::from(lease_ms),
                    lease_ms,
                    Arc::clone(&consumer),
                    key,
                );
                if attempt > 1 {
                    st.redelivered_total += 1;
                }
                self.deliver(p as u32, record, attempt, now, lease_ms, &mut out);
            }
            self.scan_fresh(
                p as u32,
                part,
                log,
                limit,
                (lease_ms, &consumer),
                now,
                &mut out,
            )?;
        }
        if !out.deliveries.is_empty() {
            if st.consumers.len() >= MAX_CONSUMERS && !st.consumers.contains_key(&consumer) {
                let oldest = st
                    .consumers
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(c, _)| Arc::clone(c));
                if let Some(c) = oldest {
                    st.consumers.remove(&c);
                }
            }
            st.consumers.insert(consumer, now);
        }
        Ok(out)
    }

    /// The tracked records of `part` available now, oldest first; notes when the next one
    /// will be and whether a lease ran out on its last attempt.
    fn due(&self, part: &Partition, now: i64, out: &mut Leased) -> Vec<u64> {
        let mut due = Vec::new();
        let mut note = |at: i64| {
            out.next_due_ms = Some(out.next_due_ms.map_or(at, |d| d.min(at)));
        };
        for (o, e) in part.entries() {
            match &e.state {
                State::Waiting { at_ms } if *at_ms <= now => due.push(o),
                State::Waiting { at_ms } => note(*at_ms),
                State::Leased { expires_ms, .. } => {
                    match after_lease(
                        e.attempt,
                        *expires_ms,
                        self.config.max_deliveries,
                        self.config.backoff_ms(e.attempt),
                    ) {
                        AfterLease::RetryAt(at) if *expires_ms <= now && at <= now => due.push(o),
                        AfterLease::RetryAt(at) => note(at),
                        AfterLease::DeadLetter if *expires_ms <= now => out.dead_letters_due = true,
                        AfterLease::DeadLetter => note(*expires_ms),
                    }
                }
                State::DeadLettering { .. } | State::Blocked { .. } => {}
            }
        }
        due
    }

    /// Leases fresh records from the partition's log, past everything tracked.
    #[allow(clippy::too_many_arguments)]
    fn scan_fresh(
        &self,
        partition: u32,
        part: &mut Partition,
        log: &spool_storage::Log,
        limit: Limit,
        (lease_ms, consumer): (u32, &Arc<str>),
        now: i64,
        out: &mut Leased,
    ) -> Result<()> {
        let max_leased = self.config.max_leased as usize;
        'scan: while !out.full(limit)
            && part.leased() < max_leased
            && part.tracked() < 2 * max_leased
            && part.scan() < log.end_offset()
        {
            let records = match log.read(part.scan(), SCAN_RECORDS, SCAN_BYTES) {
                Ok(r) => r,
                Err(spool_storage::Error::OffsetOutOfRange { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if records.is_empty() {
                break;
            }
            for r in records {
                if out.full(limit)
                    || part.leased() >= max_leased
                    || part.tracked() >= 2 * max_leased
                {
                    break 'scan;
                }
                let o = r.offset;
                if part.is_fresh(o) {
                    let proto = convert::to_proto(r);
                    let key = self.order_key(&proto.key);
                    let at = proto.deliver_at_ms.max(
                        proto
                            .timestamp_ms
                            .saturating_add(self.config.delivery_delay_ms as i64),
                    );
                    if part.key_is_held(key) {
                        part.track_fresh(o, State::Blocked { at_ms: at }, key);
                    } else if at > now {
                        part.track_fresh(o, State::Waiting { at_ms: at }, key);
                        out.next_due_ms = Some(out.next_due_ms.map_or(at, |d| d.min(at)));
                    } else {
                        let attempt = part.grant(
                            o,
                            now + i64::from(lease_ms),
                            lease_ms,
                            Arc::clone(consumer),
                            key,
                        );
                        self.deliver_proto(partition, proto, attempt, now, lease_ms, out);
                    }
                }
                part.scanned_to(o + 1);
            }
        }
        Ok(())
    }

    fn deliver(
        &self,
        partition: u32,
        record: spool_storage::StoredRecord,
        attempt: u32,
        now: i64,
        lease_ms: u32,
        out: &mut Leased,
    ) {
        self.deliver_proto(
            partition,
            convert::to_proto(record),
            attempt,
            now,
            lease_ms,
            out,
        );
    }

    fn deliver_proto(
        &self,
        partition: u32,
        record: v1::Record,
        attempt: u32,
        now: i64,
        lease_ms: u32,
        out: &mut Leased,
    ) {
        let o = record.offset;
        let expires_ms = now + i64::from(lease_ms);
        out.events.push(Event::Lease {
            id: self.id,
            p: partition,
            o,
            attempt,
            expires_ms,
            lease_ms,
            key: self.order_key(&record.key),
        });
        out.bytes += record.key.len() + record.value.len();
        out.deliveries.push(v1::Delivery {
            record: Some(record),
            partition,
            attempt,
            lease_id: self.lease_id(partition, o, attempt),
            lease_expires_ms: expires_ms,
        });
    }

    /// Applies checked settlements (every partition in range, every action set) and
    /// returns one outcome each and the events that make them durable. `dlq_end` is the
    /// dead-letter topic's end offset, recorded in each dead letter's intent.
    pub fn settle(
        &self,
        settlements: &[v1::Settlement],
        now: i64,
        dlq_end: u64,
    ) -> (Vec<v1::SettleOutcome>, Vec<Event>) {
        use v1::{SettleAction as A, SettleResult as R};
        let mut outcomes = Vec::with_capacity(settlements.len());
        let mut events = Vec::new();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        for s in settlements {
            let (p, o) = (s.partition, s.offset);
            let part = &mut st.partitions[p as usize];
            let check = part.check_lease(o, s.lease_id, now, |a| self.lease_id(p, o, a));
            let mut outcome = v1::SettleOutcome {
                result: match check {
                    LeaseCheck::Active => R::Ok,
                    LeaseCheck::Ended => R::LeaseExpired,
                    LeaseCheck::Unknown => R::Unknown,
                } as i32,
                lease_expires_ms: 0,
            };
            if check != LeaseCheck::Active {
                outcomes.push(outcome);
                continue;
            }
            let entry = part
                .entry(o)
                .cloned()
                .expect("an active lease has an entry");
            let dead_letter = |reason: String| {
                (
                    State::DeadLettering {
                        reason: reason.clone(),
                        dlq_from: dlq_end,
                    },
                    Event::DeadLetter {
                        id: self.id,
                        p,
                        o,
                        reason,
                        dlq_from: dlq_end,
                    },
                )
            };
            match A::try_from(s.action).unwrap_or(A::Unspecified) {
                A::Ack => {
                    part.settle(o);
                    st.acked_total += 1;
                    events.push(Event::Ack { id: self.id, p, o });
                }
                A::Nack if entry.attempt >= self.config.max_deliveries => {
                    let (state, event) = dead_letter(super::MAX_DELIVERIES_REASON.to_string());
                    part.set_state(o, state);
                    events.push(event);
                }
                A::Nack => {
                    let delay = s
                        .delay_ms
                        .unwrap_or_else(|| self.config.backoff_ms(entry.attempt));
                    let at_ms = now.saturating_add(delay.min(i64::MAX as u64) as i64);
                    part.set_state(o, State::Waiting { at_ms });
                    events.push(Event::Nack {
                        id: self.id,
                        p,
                        o,
                        at_ms,
                    });
                }
                A::Extend => {
                    let State::Leased {
                        lease_ms, consumer, ..
                    } = entry.state
                    else {
                        unreachable!("an active lease is leased")
                    };
                    let delay = s.delay_ms.unwrap_or(u64::from(lease_ms));
                    let expires_ms = now.saturating_add(delay.min(i64::MAX as u64) as i64);
                    part.set_state(
                        o,
                        State::Leased {
                            expires_ms,
                            lease_ms,
                            consumer,
                        },
                    );
                    outcome.lease_expires_ms = expires_ms;
                    events.push(Event::Extend {
                        id: self.id,
                        p,
                        o,
                        expires_ms,
                    });
                }
                A::Reject => {
                    let reason = if s.reason.is_empty() {
                        "rejected".to_string()
                    } else {
                        s.reason.clone()
                    };
                    let (state, event) = dead_letter(reason);
                    part.set_state(o, state);
                    events.push(event);
                }
                A::Unspecified => unreachable!("settlements are checked first"),
            }
            outcomes.push(outcome);
        }
        (outcomes, events)
    }

    /// The queue's config, start, counts and partitions, for `DescribeQueue`.
    pub fn info(&self, topic: Option<&Topic>, now: i64) -> v1::QueueInfo {
        let st = self.state.lock();
        let mut info = v1::QueueInfo {
            topic: self.topic.clone(),
            queue: self.name.clone(),
            config: Some(self.config.to_proto()),
            start: Some(v1::StartPosition {
                kind: self.start.kind,
                offset: self.start.offset,
                timestamp_ms: self.start.timestamp_ms,
            }),
            acked_total: st.acked_total,
            dead_lettered_total: st.dead_lettered_total,
            redelivered_total: st.redelivered_total,
            retention_dropped_total: st.retention_dropped_total,
            paused: pause_reason(self, &st.partitions),
            ..v1::QueueInfo::default()
        };
        let mut oldest_ready: Option<i64> = None;
        for (i, part) in st.partitions.iter().enumerate() {
            let end = topic
                .and_then(|t| t.partitions.get(i))
                .map_or(part.floor(), |p| p.log.end_offset());
            let mut leased = 0;
            let mut tracked = 0u64;
            for (_, e) in part.entries() {
                tracked += 1;
                match &e.state {
                    State::Waiting { at_ms } if *at_ms <= now => {
                        info.ready += 1;
                        oldest_ready = Some(oldest_ready.map_or(*at_ms, |o| o.min(*at_ms)));
                    }
                    State::Waiting { .. } => info.delayed += 1,
                    State::Leased { expires_ms, .. } if *expires_ms > now => leased += 1,
                    State::Leased { expires_ms, .. } => {
                        let at = match after_lease(
                            e.attempt,
                            *expires_ms,
                            self.config.max_deliveries,
                            self.config.backoff_ms(e.attempt),
                        ) {
                            AfterLease::RetryAt(at) => at,
                            AfterLease::DeadLetter => continue,
                        };
                        if at <= now {
                            info.ready += 1;
                        } else {
                            info.delayed += 1;
                        }
                    }
                    State::DeadLettering { .. } | State::Blocked { .. } => {}
                }
            }
            info.blocked_keys += part.blocked_keys() as u64;
            // Records never touched: available (a delivery time not yet seen counts as
            // ready until a scan reads it).
            let untouched = (end.saturating_sub(part.floor()))
                .saturating_sub(part.settled_below(end))
                .saturating_sub(tracked);
            info.ready += untouched;
            info.leased += leased;
            info.partitions.push(v1::QueuePartition {
                partition: i as u32,
                ack_floor: part.floor(),
                end_offset: end,
                leased,
            });
        }
        if let Some(t) = oldest_ready {
            info.oldest_ready_age_ms = (now - t).max(0) as u64;
        }
        let window = i64::from(self.config.lease_ms);
        let mut consumers: Vec<v1::QueueConsumerInfo> = st
            .consumers
            .iter()
            .filter(|(_, seen)| now - **seen <= window)
            .map(|(c, seen)| v1::QueueConsumerInfo {
                consumer: c.to_string(),
                leased: st
                    .partitions
                    .iter()
                    .flat_map(|p| p.entries())
                    .filter(|(_, e)| matches!(&e.state, State::Leased { consumer, expires_ms, .. } if consumer == c && *expires_ms > now))
                    .count() as u64,
                last_seen_ms: *seen,
            })
            .collect();
        consumers.sort_by(|a, b| a.consumer.cmp(&b.consumer));
        info.consumers = consumers;
        info
    }
}

/// The record at `offset`, or `None` if retention removed it.
pub fn read_one(
    log: &spool_storage::Log,
    offset: u64,
) -> Result<Option<spool_storage::StoredRecord>> {
    match log.read(offset, 1, 1) {
        Ok(records) => Ok(records.into_iter().find(|r| r.offset == offset)),
        Err(spool_storage::Error::OffsetOutOfRange { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
