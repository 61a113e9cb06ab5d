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
use super::delays::{DEFER_MIN_MS, DelayStore};
use super::redrive::Redrive;
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
/// How many records one look scans per partition at most (deferred ones cost no memory, so
/// the tracked bound alone would not end a scan through millions of them).
const SCAN_BUDGET: usize = 20_000;
/// Due records at most this far apart are read in one log read (see [`read_due`]); farther
/// apart, a read of its own skips to each (a batch's records before it cost a length each).
const READ_GAP: u64 = 8;

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

/// The most partitions a queue's state grows to (a topic has at most 10,000 by default):
/// a replayed event naming a wild partition cannot allocate without bound.
const MAX_QUEUE_PARTITIONS: usize = 1 << 20;

impl QueueState {
    /// Gives the queue state for partitions up to `n`, new ones starting at offset 0
    /// (their beginning: retention moves a floor below the log's start up at the next
    /// scan).
    pub fn grow_to(&mut self, n: usize) {
        let n = n.min(MAX_QUEUE_PARTITIONS);
        while self.partitions.len() < n {
            self.partitions.push(Partition::new(0));
        }
    }
}

pub(super) struct QueueState {
    pub partitions: Vec<Partition>,
    pub acked_total: u64,
    pub dead_lettered_total: u64,
    pub redelivered_total: u64,
    pub retention_dropped_total: u64,
    pub redriven_total: u64,
    /// Where redrives stand in the dead-letter topic.
    pub redrive: Redrive,
    /// Consumer name → when it last received a lease (ms).
    pub consumers: HashMap<Arc<str>, i64>,
    /// Which partition the next lease looks at first, so none is starved.
    next_partition: usize,
    /// Timers of deferred records.
    pub delays: DelayStore,
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

impl Queue {
    pub fn new(
        id: u64,
        topic: String,
        name: String,
        config: QueueConfig,
        start: StartSpec,
        floors: &[u64],
        delays: DelayStore,
    ) -> Queue {
        Queue {
            id,
            topic,
            name,
            config,
            start,
            state: Mutex::new(QueueState {
                partitions: floors.iter().map(|f| Partition::new(*f)).collect(),
                acked_total: 0,
                dead_lettered_total: 0,
                redelivered_total: 0,
                retention_dropped_total: 0,
                redriven_total: 0,
                redrive: Redrive::starting_at(0),
                consumers: HashMap::new(),
                next_partition: 0,
                delays,
            }),
            changed: Notify::new(),
            deleted: CancellationToken::new(),
        }
    }

    /// Counts the queue's deferred sets in the broker's delay budget (after a replay).
    pub(super) fn account_deferred(&self) {
        let mut st = self.state.lock();
        let bytes = st.partitions.iter().map(Partition::deferred_bytes).sum();
        st.delays.account(bytes);
    }

    pub fn partitions(&self) -> usize {
        self.state.lock().partitions.len()
    }

    /// The id of lease `attempt` of a record in its `life` (0 unless a redrive brought it
    /// back): derived, so nothing per lease is stored, and salted with the queue's id, so
    /// another queue's (or an old queue's) ids do not match.
    pub fn lease_id(&self, partition: u32, offset: u64, attempt: u32, life: u64) -> u64 {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8..12].copy_from_slice(&partition.to_le_bytes());
        bytes[12..20].copy_from_slice(&offset.to_le_bytes());
        bytes[20..24].copy_from_slice(&attempt.to_le_bytes());
        bytes[24..].copy_from_slice(&life.to_le_bytes());
        // A stable hash: ids granted before an upgrade must still match after it (a first
        // life hashes the 24 bytes it always did).
        let len = if life == 0 { 24 } else { 32 };
        spool_proto::partitioning::fnv1a64(&bytes[..len])
    }

    /// The key a record is ordered by: its key's hash under key ordering, unless empty.
    pub(super) fn order_key(&self, key: &[u8]) -> Option<u64> {
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
        let mut deferred = Vec::new();
        let looked = self.look(
            st,
            topic,
            limit,
            (lease_ms, &consumer),
            now,
            &mut out,
            &mut deferred,
        );
        self.make_deferrals_durable(st, deferred, &mut out);
        looked?;
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

    /// One look through the partitions: timers due brought back, due records leased, then
    /// fresh ones scanned (deferring those due far ahead into `deferred`).
    #[allow(clippy::too_many_arguments)]
    fn look(
        &self,
        st: &mut QueueState,
        topic: &Topic,
        limit: Limit,
        (lease_ms, consumer): (u32, &Arc<str>),
        now: i64,
        out: &mut Leased,
        deferred: &mut Vec<(u32, u64)>,
    ) -> Result<()> {
        // Partitions AlterTopic added are the queue's from their beginning.
        st.grow_to(topic.partitions.len());
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
            self.load_delayed(p as u32, part, &mut st.delays, now, out)?;
            let mut due = self.due(part, now, out);
            due.truncate(limit.records.saturating_sub(out.deliveries.len()));
            let records = read_due(log, &due, limit.bytes.saturating_sub(out.bytes))?;
            for (o, record) in due.into_iter().zip(records) {
                if out.full(limit) {
                    break;
                }
                // An expired lease granted again does not add to the leased count.
                let relet = matches!(part.entry(o).map(|e| &e.state), Some(State::Leased { .. }));
                if !relet && part.leased() >= self.config.max_leased as usize {
                    continue;
                }
                let Some(record) = record else {
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
                    Arc::clone(consumer),
                    key,
                );
                if attempt > 1 {
                    st.redelivered_total += 1;
                }
                let life = part.entry(o).map_or(0, |e| e.life);
                self.deliver(p as u32, record, (attempt, life), now, lease_ms, out);
            }
            self.scan_fresh(
                (p as u32, part, &mut st.delays),
                log,
                limit,
                (lease_ms, consumer),
                now,
                out,
                deferred,
            )?;
        }
        Ok(())
    }

    /// Brings back the deferred records of partition `p` whose timers are due (a bucket span
    /// ahead), as waiting entries, while the partition tracks fewer than `2 × max_leased`.
    fn load_delayed(
        &self,
        p: u32,
        part: &mut Partition,
        delays: &mut DelayStore,
        now: i64,
        out: &mut Leased,
    ) -> Result<()> {
        let room = (2 * self.config.max_leased as usize).saturating_sub(part.tracked());
        if room > 0 {
            delays.take_due(p, now, room, |o, at| part.undefer(o, at))?;
        }
        // Work still due now: look again at once if there is room (a cascade moves a chunk
        // per look); without room a settlement wakes the queue.
        let room = (2 * self.config.max_leased as usize).saturating_sub(part.tracked());
        if let Some(at) = delays.next_action_ms(p).filter(|at| *at > now || room > 0) {
            let at = at.max(now);
            out.next_due_ms = Some(out.next_due_ms.map_or(at, |d| d.min(at)));
        }
        Ok(())
    }

    /// Makes this look's deferrals durable: their timers fsynced, then `Deferred` events
    /// for the caller to append. If the timers cannot be written, the records wait in
    /// memory instead.
    fn make_deferrals_durable(
        &self,
        st: &mut QueueState,
        mut deferred: Vec<(u32, u64)>,
        out: &mut Leased,
    ) {
        // Nothing to write is Ok at once.
        if let Err(e) = st.delays.flush() {
            tracing::warn!(queue = %self.name, topic = %self.topic, error = %e, "writing delay timers failed: the records wait in memory");
            for (p, o, at) in st.delays.take_pending() {
                if let Some(part) = st.partitions.get_mut(p as usize) {
                    part.undefer(o, at);
                }
            }
            deferred.clear();
        }
        // Deferred sets grew (deferrals) or shrank (timers loaded): count them again.
        if st.delays.take_changed() {
            let bytes = st.partitions.iter().map(Partition::deferred_bytes).sum();
            st.delays.account(bytes);
        }
        deferred.sort_unstable();
        let mut i = 0;
        while i < deferred.len() {
            let p = deferred[i].0;
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            while i < deferred.len() && deferred[i].0 == p {
                let o = deferred[i].1;
                match ranges.last_mut() {
                    Some((_, end)) if *end == o => *end = o + 1,
                    _ => ranges.push((o, o + 1)),
                }
                i += 1;
            }
            for chunk in ranges.chunks(super::store::COALESCE_MAX) {
                out.events.push(Event::Deferred {
                    id: self.id,
                    p,
                    ranges: chunk.to_vec(),
                });
            }
        }
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
        (partition, part, delays): (u32, &mut Partition, &mut DelayStore),
        log: &spool_storage::Log,
        limit: Limit,
        (lease_ms, consumer): (u32, &Arc<str>),
        now: i64,
        out: &mut Leased,
        deferred: &mut Vec<(u32, u64)>,
    ) -> Result<()> {
        let max_leased = self.config.max_leased as usize;
        let mut scanned = 0;
        'scan: while !out.full(limit)
            && part.leased() < max_leased
            && part.tracked() < 2 * max_leased
            && part.skip_settled() < log.end_offset()
        {
            if scanned >= SCAN_BUDGET {
                // More to scan: look again at once.
                out.next_due_ms = Some(now);
                break;
            }
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
                scanned += 1;
                let o = r.offset;
                if part.scan() < o {
                    // Offsets without records (a compacted topic's gaps).
                    part.skip_gap(part.scan(), o);
                }
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
                        if key.is_none() && at - now >= DEFER_MIN_MS && !delays.budget_full() {
                            part.defer(o);
                            delays.defer(partition, o, at, now);
                            deferred.push((partition, o));
                        } else {
                            part.track_fresh(o, State::Waiting { at_ms: at }, key);
                            out.next_due_ms = Some(out.next_due_ms.map_or(at, |d| d.min(at)));
                        }
                    } else {
                        let attempt = part.grant(
                            o,
                            now + i64::from(lease_ms),
                            lease_ms,
                            Arc::clone(consumer),
                            key,
                        );
                        self.deliver_proto(partition, proto, (attempt, 0), now, lease_ms, out);
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
        granted: (u32, u64),
        now: i64,
        lease_ms: u32,
        out: &mut Leased,
    ) {
        self.deliver_proto(
            partition,
            convert::to_proto(record),
            granted,
            now,
            lease_ms,
            out,
        );
    }

    fn deliver_proto(
        &self,
        partition: u32,
        record: v1::Record,
        (attempt, life): (u32, u64),
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
            lease_id: self.lease_id(partition, o, attempt, life),
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
            let check =
                part.check_lease(o, s.lease_id, now, |a, life| self.lease_id(p, o, a, life));
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
}

/// The records at `offsets` (ascending), `None` for one retention removed. A run of offsets
/// at most `READ_GAP` apart is one log read, which decodes only the records it returns, so
/// records due together (a batch's retries) cost one read and scattered ones (a delay
/// bucket's) one short read each. Stops once their keys and values reach `max_bytes` (past the first), so fewer may
/// come back than asked.
fn read_due(
    log: &spool_storage::Log,
    offsets: &[u64],
    max_bytes: usize,
) -> Result<Vec<Option<spool_storage::StoredRecord>>> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut bytes = 0;
    let mut i = 0;
    while i < offsets.len() && (i == 0 || bytes < max_bytes) {
        let first = offsets[i];
        let mut j = i + 1;
        while j < offsets.len()
            && offsets[j] - offsets[j - 1] <= READ_GAP
            && offsets[j] - first < SCAN_RECORDS as u64
        {
            j += 1;
        }
        let span = (offsets[j - 1] - first + 1) as usize;
        let records = match log.read(first, span, SCAN_BYTES) {
            Ok(r) => r,
            Err(spool_storage::Error::OffsetOutOfRange { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut records = records.into_iter().filter(|r| r.offset >= first).peekable();
        let before = out.len();
        let mut covered = None;
        for &o in &offsets[i..j] {
            while records.next_if(|r| r.offset < o).is_some() {}
            match records.next_if(|r| r.offset == o) {
                Some(r) => {
                    bytes += r.key.len() + r.value.len();
                    covered = Some(o);
                    out.push(Some(r));
                }
                // Past what this read returned (its byte bound): read again from `o`.
                None if records.peek().is_none() => break,
                None => out.push(None),
            }
        }
        if covered.is_none() && out.len() == before {
            // Nothing at `first`: retention removed it.
            out.push(None);
        }
        i += out.len() - before;
    }
    Ok(out)
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
