//! Redrive: a queue's dead-lettered records made available again in the queue, their
//! attempts reset, at a bounded rate. The dead-letter topic keeps its copies as history and
//! the source topic gets nothing new: a dead letter's `spool-dead-letter-partition` and
//! `-offset` headers name the record, which the queue un-settles where it is.
//!
//! A queue keeps a cursor in its dead-letter topic (`Redrive::next`): a redrive looks at
//! the records from there to the topic's end offset when it was asked for (`until`), in
//! steps the dead-letter task runs (`step_all`). Each step is one `Redriven` event, durable
//! before its records become available, carrying the new cursor, so a restart resumes the
//! redrive where it was and no dead letter is redriven twice. A step stops early at a
//! partition that already tracks `2 × max_leased` records (the bound of its memory) and at
//! a record whose dead-lettering is not settled yet, and waits for them.

use std::time::Instant;

use super::Queues;
use super::dead_letter::{H_OFFSET, H_PARTITION, H_QUEUE, H_TOPIC, header};
use super::leasing::{Queue, QueueState};
use super::state::State;
use super::store::{Event, RedrivenRecord};
use crate::error::{Error, Result};
use crate::registry::Registry;

/// `RedriveQueueRequest.max_per_second`: its default and its most.
pub const DEFAULT_PER_SECOND: u32 = 1_000;
pub const MAX_PER_SECOND: u32 = 100_000;
/// The most records one step makes available (one event, far under the queue log's
/// record limit).
const STEP_RECORDS: usize = 1_000;
/// The most dead-letter records one step looks at (other queues' letters cost a look).
const STEP_LOOKS: usize = 10_000;

/// A queue's redrive position, and how fast it may go.
#[derive(Debug, Default)]
pub struct Redrive {
    /// The next dead-letter offset to look at.
    pub next: u64,
    /// Where the redrive asked for ends (exclusive); `next >= until`: none runs.
    pub until: u64,
    pub per_second: u32,
    allowance: Allowance,
}

impl Redrive {
    pub fn starting_at(next: u64) -> Redrive {
        Redrive {
            next,
            until: next,
            ..Redrive::default()
        }
    }

    pub fn remaining(&self) -> u64 {
        self.until.saturating_sub(self.next)
    }

    /// Takes a redrive asked for (live or replayed): it runs up to `until` now.
    pub fn ask(&mut self, until: u64, per_second: u32) {
        self.until = self.until.max(until);
        self.per_second = per_second;
    }
}

/// A token bucket: `per_second` records a second, bursts of a fifth of a second (one
/// step of the dead-letter task is a tenth).
#[derive(Debug, Default)]
struct Allowance {
    tokens: f64,
    at: Option<Instant>,
}

impl Allowance {
    /// Whole records that may be redriven at `now`.
    fn refill(&mut self, per_second: u32, now: Instant) -> usize {
        let rate = f64::from(per_second.max(1));
        let cap = (rate / 5.0).max(1.0);
        self.tokens = match self.at {
            Some(at) => {
                (self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(cap)
            }
            None => cap / 2.0,
        };
        self.at = Some(now);
        self.tokens as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

impl QueueState {
    /// Applies a redrive step (live or replayed).
    pub(super) fn apply_redriven(&mut self, next: u64, at_ms: i64, records: &[RedrivenRecord]) {
        for RedrivenRecord(p, o, key, life) in records {
            if let Some(part) = self.partitions.get_mut(*p as usize)
                && part.redrive(*o, at_ms, *key, *life)
            {
                self.redriven_total += 1;
            }
        }
        self.redrive.next = self.redrive.next.max(next);
    }
}

impl Queues {
    /// Starts (or extends) a redrive of `topic`/`queue` up to its dead-letter topic's end
    /// offset now, and returns the dead-letter offsets it covers (blocking).
    pub fn redrive(
        &self,
        registry: &Registry,
        topic: &str,
        queue: &str,
        per_second: u32,
    ) -> Result<(u64, u64)> {
        let _admin = self.admin.lock();
        let q = self.get(topic, queue)?;
        let dlq = registry.get(&q.config.dead_letter_topic).map_err(|_| {
            Error::TopicNotFound(format!(
                "{} (the dead-letter topic of queue {queue:?} is gone: nothing to redrive)",
                q.config.dead_letter_topic
            ))
        })?;
        let log = &dlq.partitions[0].log;
        let per_second = match per_second {
            0 => DEFAULT_PER_SECOND,
            n => n.min(MAX_PER_SECOND),
        };
        let (next, until) = {
            let st = q.state.lock();
            let next = st.redrive.next.max(log.start_offset());
            (next, log.end_offset().max(st.redrive.until).max(next))
        };
        self.log.append(&[Event::Redrive {
            id: q.id,
            until,
            per_second,
        }])?;
        q.state.lock().redrive.ask(until, per_second);
        self.dead_letters.notify_one();
        tracing::info!(%topic, %queue, from = next, until, per_second, "redrive asked for");
        Ok((next, until))
    }
}

/// What a step makes of one dead letter.
enum Look {
    /// Redrive the record.
    Take(RedrivenRecord),
    /// Not this queue's, already available, or gone: pass over it.
    Pass,
    /// Wait for the queue: the step ends before this letter.
    Wait,
}

/// Runs a step of every running redrive, as far as each one's rate allows (blocking: reads
/// dead-letter topics and appends to the queue log).
pub fn step_all(queues: &Queues, registry: &Registry) -> Result<()> {
    for q in queues.list(None) {
        let budget = {
            let mut st = q.state.lock();
            let r = &mut st.redrive;
            if r.remaining() == 0 {
                continue;
            }
            r.allowance.refill(r.per_second, Instant::now())
        };
        let mut left = budget;
        while left > 0 && !q.deleted.is_cancelled() {
            let Some(taken) = step(queues, registry, &q, left.min(STEP_RECORDS))? else {
                break;
            };
            q.state.lock().redrive.allowance.spend(taken);
            left = left.saturating_sub(taken.max(1));
        }
    }
    Ok(())
}

/// One step of `q`'s redrive: up to `budget` records made available again, durably.
/// Returns how many, or `None` when the step made no progress.
fn step(queues: &Queues, registry: &Registry, q: &Queue, budget: usize) -> Result<Option<usize>> {
    let (Ok(dlq), Ok(topic)) = (
        registry.get(&q.config.dead_letter_topic),
        registry.get(&q.topic),
    ) else {
        return Ok(None);
    };
    let log = &dlq.partitions[0].log;
    let (next, until) = {
        let st = q.state.lock();
        (st.redrive.next, st.redrive.until)
    };
    let end = until.min(log.end_offset());
    let mut at = next.max(log.start_offset());
    let mut taken: Vec<RedrivenRecord> = Vec::new();
    let mut looks = 0;
    'read: while at < end && taken.len() < budget && looks < STEP_LOOKS {
        let records = log.read(at, (end - at).min(1_000) as usize, 8 << 20)?;
        if records.is_empty() {
            break;
        }
        let st = q.state.lock();
        for r in &records {
            if r.offset >= end {
                break;
            }
            match look(q, &st, &topic, r, &taken) {
                Look::Take(t) if taken.len() < budget => taken.push(t),
                Look::Take(_) | Look::Wait => break 'read,
                Look::Pass => {}
            }
            at = r.offset + 1;
            looks += 1;
        }
    }
    if at >= end {
        // Everything to `until` looked at, or gone (retention, a dead-letter topic made
        // again): the redrive is done.
        at = until;
    }
    if at <= next && taken.is_empty() {
        return Ok(None);
    }
    let at_ms = crate::now_ms();
    queues.persist(&[Event::Redriven {
        id: q.id,
        next: at,
        at_ms,
        records: taken.clone(),
    }])?;
    q.state.lock().apply_redriven(at, at_ms, &taken);
    if !taken.is_empty() {
        q.changed.notify_waiters();
    }
    Ok(Some(taken.len()))
}

/// Whether the dead letter `r` is one of `q`'s to redrive now.
fn look(
    q: &Queue,
    st: &QueueState,
    topic: &crate::registry::Topic,
    r: &spool_storage::StoredRecord,
    taken: &[RedrivenRecord],
) -> Look {
    let number = |key| {
        header(r, key)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    if header(r, H_QUEUE) != Some(q.name.as_bytes())
        || header(r, H_TOPIC) != Some(q.topic.as_bytes())
    {
        return Look::Pass;
    }
    let (Some(p), Some(o)) = (number(H_PARTITION), number(H_OFFSET)) else {
        return Look::Pass;
    };
    let (Some(part), Some(source)) = (
        st.partitions.get(p as usize),
        topic.partitions.get(p as usize),
    ) else {
        return Look::Pass;
    };
    let p = p as u32;
    if o < source.log.start_offset() || taken.iter().any(|t| (t.0, t.1) == (p, o)) {
        return Look::Pass;
    }
    if let Some(e) = part.entry(o) {
        return match e.state {
            // Its dead letter is written, its settlement about to be.
            State::DeadLettering { .. } => Look::Wait,
            _ => Look::Pass,
        };
    }
    if !part.is_settled(o) {
        return Look::Pass;
    }
    let room = 2 * q.config.max_leased as usize;
    if part.tracked() + taken.iter().filter(|t| t.0 == p).count() >= room {
        return Look::Wait;
    }
    Look::Take(RedrivenRecord(p, o, q.order_key(&r.key), r.offset + 1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use spool_proto::v1;

    use super::*;
    use crate::queue::dead_letter::sweep;
    use crate::queue::leasing::Limit;
    use crate::queue::tests::{open, queue_over, settle_each};

    const NOW: i64 = 4_000_000_000_000;

    /// Queue "q" over a one-partition topic "t" of `n` records.
    fn queue(registry: &Registry, queues: &Queues, n: usize, max_leased: u32) -> Arc<Queue> {
        let config = v1::QueueConfig {
            max_leased,
            ..Default::default()
        };
        queue_over(registry, queues, n, config).1
    }

    /// Leases up to `n` records and settles each with `action`; returns (offset, attempt).
    fn lease_and(
        registry: &Registry,
        queues: &Queues,
        q: &Queue,
        n: usize,
        action: v1::SettleAction,
    ) -> Vec<(u64, u32)> {
        let topic = registry.get("t").unwrap();
        let leased = q
            .lease(&topic, Limit::records(n), 60_000, "w", NOW)
            .unwrap();
        queues.persist(&leased.events).unwrap();
        let settlements = settle_each(&leased.deliveries, action);
        let dlq_end = registry.get("t.q.dlq").unwrap().partitions[0]
            .log
            .end_offset();
        let (_, events) = q.settle(&settlements, NOW, dlq_end);
        queues.persist(&events).unwrap();
        sweep(queues, registry).unwrap();
        leased
            .deliveries
            .iter()
            .map(|d| (d.record.as_ref().unwrap().offset, d.attempt))
            .collect()
    }

    fn counts(q: &Queue) -> (u64, u64, u64, u64) {
        let st = q.state.lock();
        (
            st.dead_lettered_total,
            st.redriven_total,
            st.redrive.remaining(),
            st.partitions[0].ack_floor(),
        )
    }

    #[test]
    fn redriven_records_come_back_once_with_attempts_reset_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_s, registry, queues) = open(dir.path());
            let q = queue(&registry, &queues, 4, 100);
            let rejected = lease_and(&registry, &queues, &q, 3, v1::SettleAction::Reject);
            assert_eq!(rejected, [(0, 1), (1, 1), (2, 1)]);
            assert_eq!(counts(&q), (3, 0, 0, 3));
            assert_eq!(queues.redrive(&registry, "t", "q", 0).unwrap(), (0, 3));
            step_all(&queues, &registry).unwrap();
            assert_eq!(counts(&q), (3, 3, 0, 0));
            // A restart before they are leased keeps them available.
        }
        let (storage, registry, queues) = open(dir.path());
        let q = queues.get("t", "q").unwrap();
        assert_eq!(counts(&q), (3, 3, 0, 0));
        step_all(&queues, &registry).unwrap();
        assert_eq!(counts(&q).1, 3, "nothing redriven twice");
        let again = lease_and(&registry, &queues, &q, 2, v1::SettleAction::Ack);
        assert_eq!(again, [(0, 1), (1, 1)], "attempts start again");
        let last = lease_and(&registry, &queues, &q, 2, v1::SettleAction::Reject);
        assert_eq!(last, [(2, 1), (3, 1)]);
        // The dead-letter topic keeps the first copies: the next redrive starts after them.
        assert_eq!(queues.redrive(&registry, "t", "q", 0).unwrap(), (3, 5));
        queues.compact(0).unwrap();
        drop((q, queues, registry, storage));
        let (_s, registry, queues) = open(dir.path());
        let q = queues.get("t", "q").unwrap();
        assert_eq!(counts(&q), (5, 3, 2, 4), "the checkpoint kept the redrive");
        step_all(&queues, &registry).unwrap();
        assert_eq!(counts(&q), (5, 5, 0, 2));
        let source = registry.get("t").unwrap();
        assert_eq!(source.partitions[0].log.end_offset(), 4, "nothing appended");
    }

    #[test]
    fn a_redrive_waits_for_room_in_a_partition_and_then_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, registry, queues) = open(dir.path());
        // max_leased 2: a partition tracks 4 records at most.
        let q = queue(&registry, &queues, 6, 2);
        for _ in 0..3 {
            lease_and(&registry, &queues, &q, 2, v1::SettleAction::Reject);
        }
        assert_eq!(counts(&q), (6, 0, 0, 6));
        queues.redrive(&registry, "t", "q", 0).unwrap();
        step_all(&queues, &registry).unwrap();
        assert_eq!(counts(&q), (6, 4, 2, 0), "four taken, two wait for room");
        step_all(&queues, &registry).unwrap();
        assert_eq!(counts(&q).1, 4);
        lease_and(&registry, &queues, &q, 2, v1::SettleAction::Ack);
        step_all(&queues, &registry).unwrap();
        assert_eq!(counts(&q), (6, 6, 0, 2));
    }

    #[test]
    fn the_allowance_grants_the_rate_and_bursts_at_most_a_fifth_of_a_second() {
        let mut a = Allowance::default();
        let t0 = Instant::now();
        assert_eq!(a.refill(1_000, t0), 100, "half a burst to begin with");
        a.spend(100);
        assert_eq!(a.refill(1_000, t0 + Duration::from_millis(50)), 50);
        a.spend(50);
        // Idle for a minute: still one burst, not 60,000.
        assert_eq!(a.refill(1_000, t0 + Duration::from_secs(60)), 200);
        a.spend(200);
        assert_eq!(a.refill(1_000, t0 + Duration::from_secs(60)), 0);
        // A slow rate still lets one record through now and then.
        let mut slow = Allowance::default();
        slow.refill(2, t0);
        slow.spend(1);
        assert_eq!(slow.refill(2, t0 + Duration::from_millis(200)), 0);
        assert_eq!(slow.refill(2, t0 + Duration::from_millis(600)), 1);
    }
}
