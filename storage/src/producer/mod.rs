//! Idempotent producer state: the last few batch sequences of each producer, per log.
//!
//! Rebuilt on open from a snapshot written when a segment starts plus the batch headers of
//! that segment, so a retry across a restart is still recognised as a duplicate.
//!
//! Bounded, since any client allowed to append can invent producer ids: a producer is
//! forgotten once it has not appended for the log's expiration time, or, least recently
//! appending first, when the table (or the broker, see `Log`) is at its cap. A forgotten
//! id goes into [`EvictedFilter`], so its retries are refused rather than appended again.

mod evicted;
mod snapshot;

use std::collections::{BTreeMap, HashMap, VecDeque};

pub use evicted::EvictedFilter;
pub use snapshot::Snapshot;

use crate::batch::{BatchHeader, ProducerStamp};
use crate::error::{Error, Result};

/// How many recent batches per producer are remembered for duplicate detection. Part of the
/// API contract (docs/api.md, `AppendRequest` in spool.proto: clients keep at most this many
/// requests per partition unanswered): never lower it.
pub const REMEMBERED_BATCHES: usize = 8;

/// `last_append_ms` of a producer read from a snapshot that did not store it (version 2):
/// stamped with the time the log is opened, so it lives a whole expiration time from then.
const UNKNOWN_TIME: i64 = i64::MIN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    base_offset: u64,
    record_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    epoch: u16,
    recent: VecDeque<Entry>,
    /// The broker's append time of the producer's newest batch: expiry measures from it.
    last_append_ms: i64,
    /// Its key in `ProducerTable::order`.
    tick: u64,
}

/// What an append with a producer stamp should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new sequence: append it.
    Append,
    /// Already appended: answer with the original offsets and append nothing.
    Duplicate { base_offset: u64, record_count: u32 },
}

/// Recent sequences of every producer that wrote to one log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<u64, State>,
    /// Producer ids by the tick of their last append: the first is the least recently used.
    order: BTreeMap<u64, u64>,
    /// Grows with every observed batch.
    tick: u64,
    /// Ids forgotten by expiry or eviction (not by truncation: those batches are gone).
    evicted: EvictedFilter,
}

impl ProducerTable {
    /// Decides whether a batch stamped `stamp` is new, a duplicate, or out of order.
    pub fn check(&self, stamp: ProducerStamp) -> Result<Verdict> {
        if stamp.producer_id == 0 {
            return Ok(Verdict::Append);
        }
        let Some(state) = self.producers.get(&stamp.producer_id) else {
            return if stamp.sequence > 0 {
                Err(Error::UnknownProducer {
                    producer_id: stamp.producer_id,
                    sequence: stamp.sequence,
                })
            } else if self.evicted.may_contain(stamp.producer_id) {
                Err(Error::ForgottenProducer {
                    producer_id: stamp.producer_id,
                })
            } else {
                Ok(Verdict::Append)
            };
        };
        let (Some(first), Some(last)) = (state.recent.front(), state.recent.back()) else {
            return Ok(Verdict::Append);
        };
        if stamp.sequence == last.sequence + 1 {
            return Ok(Verdict::Append);
        }
        if stamp.sequence > last.sequence {
            return Err(Error::SequenceGap {
                producer_id: stamp.producer_id,
                expected: last.sequence + 1,
                got: stamp.sequence,
            });
        }
        match state.recent.iter().find(|e| e.sequence == stamp.sequence) {
            Some(e) => Ok(Verdict::Duplicate {
                base_offset: e.base_offset,
                record_count: e.record_count,
            }),
            None => Err(Error::SequenceTooOld {
                producer_id: stamp.producer_id,
                got: stamp.sequence,
                oldest: first.sequence,
            }),
        }
    }

    /// Records an appended (or recovered) batch.
    pub fn observe(&mut self, header: &BatchHeader) {
        let stamp = header.producer;
        if stamp.producer_id == 0 {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        let state = self.producers.entry(stamp.producer_id).or_insert(State {
            epoch: 0,
            recent: VecDeque::new(),
            last_append_ms: UNKNOWN_TIME,
            tick,
        });
        self.order.remove(&state.tick);
        self.order.insert(tick, stamp.producer_id);
        state.tick = tick;
        state.epoch = stamp.producer_epoch;
        state.last_append_ms = state.last_append_ms.max(header.append_time_ms);
        state.recent.push_back(Entry {
            sequence: stamp.sequence,
            base_offset: header.base_offset,
            record_count: header.record_count,
        });
        while state.recent.len() > REMEMBERED_BATCHES {
            state.recent.pop_front();
        }
    }

    /// Forgets batches at or past `offset` (the log was truncated there).
    pub fn truncate(&mut self, offset: u64) {
        for state in self.producers.values_mut() {
            state.recent.retain(|e| e.base_offset < offset);
        }
        let order = &mut self.order;
        self.producers.retain(|_, s| {
            let keep = !s.recent.is_empty();
            if !keep {
                order.remove(&s.tick);
            }
            keep
        });
    }

    /// Forgets producers whose last append is older than `ttl_ms` at `now_ms`, least
    /// recently used first. Returns how many went.
    pub fn expire(&mut self, now_ms: i64, ttl_ms: i64) -> usize {
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let mut gone = 0;
        while let Some((_, &id)) = self.order.first_key_value() {
            if self.producers[&id].last_append_ms >= cutoff {
                break;
            }
            self.forget_lru();
            gone += 1;
        }
        gone
    }

    /// Forgets the least recently used producer; `false` when there is none.
    pub fn forget_lru(&mut self) -> bool {
        let Some((_, id)) = self.order.pop_first() else {
            return false;
        };
        self.producers.remove(&id);
        self.evicted.insert(id);
        true
    }

    /// Gives producers whose last append time was not stored (read from an older snapshot)
    /// `now_ms`, so expiry measures from when the log was opened.
    pub fn stamp_unknown(&mut self, now_ms: i64) {
        for s in self.producers.values_mut() {
            if s.last_append_ms == UNKNOWN_TIME {
                s.last_append_ms = now_ms;
            }
        }
    }

    /// How many producers are known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        for id in self.order.values() {
            let s = &self.producers[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&s.epoch.to_le_bytes());
            out.extend_from_slice(&s.tick.to_le_bytes());
            out.extend_from_slice(&s.last_append_ms.to_le_bytes());
            out.push(s.recent.len() as u8);
            for e in &s.recent {
                out.extend_from_slice(&e.sequence.to_le_bytes());
                out.extend_from_slice(&e.base_offset.to_le_bytes());
                out.extend_from_slice(&e.record_count.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.tick.to_le_bytes());
        self.evicted.encode_into(out);
    }

    /// Reads a table written by snapshot `version` 2 (ids in order, no times, no filter) or
    /// 3 (least recently used first, with ticks, times and the filter).
    fn decode_from(r: &mut snapshot::Reader<'_>, version: u8) -> Option<ProducerTable> {
        let mut table = ProducerTable::default();
        for n in 0..u64::from(r.u32()?) {
            let id = r.u64()?;
            let epoch = r.u16()?;
            let (tick, last_append_ms) = if version >= 3 {
                (r.u64()?, r.u64()? as i64)
            } else {
                (n + 1, UNKNOWN_TIME)
            };
            let count = r.u8()?;
            let mut recent = VecDeque::new();
            for _ in 0..count {
                recent.push_back(Entry {
                    sequence: r.u64()?,
                    base_offset: r.u64()?,
                    record_count: r.u32()?,
                });
            }
            if table.order.insert(tick, id).is_some() {
                return None;
            }
            let state = State {
                epoch,
                recent,
                last_append_ms,
                tick,
            };
            if table.producers.insert(id, state).is_some() {
                return None;
            }
        }
        if version >= 3 {
            table.tick = r.u64()?;
            table.evicted = EvictedFilter::decode_from(r)?;
        } else {
            table.tick = table.producers.len() as u64;
        }
        let newest = table.order.last_key_value().map_or(0, |(t, _)| *t);
        (table.tick >= newest).then_some(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: u64, seq: u64, base: u64, count: u32) -> BatchHeader {
        header_at(pid, seq, base, count, 0)
    }

    fn header_at(pid: u64, seq: u64, base: u64, count: u32, at_ms: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            total_len: 0,
            crc: 0,
            attributes: 0,
            record_count: count,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            producer: ProducerStamp {
                producer_id: pid,
                producer_epoch: 0,
                sequence: seq,
            },
            version: crate::batch::VERSION,
            append_time_ms: at_ms,
            uncompressed_len: 0,
            offset_span: count,
        }
    }

    fn stamp(pid: u64, seq: u64) -> ProducerStamp {
        ProducerStamp {
            producer_id: pid,
            producer_epoch: 0,
            sequence: seq,
        }
    }

    #[test]
    fn sequences_append_dedupe_and_reject_gaps() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(stamp(9, 0)).unwrap(), Verdict::Append);
        assert!(matches!(
            t.check(stamp(9, 1)),
            Err(Error::UnknownProducer { sequence: 1, .. })
        ));
        t.observe(&header(9, 0, 10, 3));
        assert_eq!(t.check(stamp(9, 1)).unwrap(), Verdict::Append);
        assert_eq!(
            t.check(stamp(9, 0)).unwrap(),
            Verdict::Duplicate {
                base_offset: 10,
                record_count: 3
            }
        );
        assert!(matches!(
            t.check(stamp(9, 5)),
            Err(Error::SequenceGap { expected: 1, .. })
        ));
        for s in 1..20 {
            t.observe(&header(9, s, 10 + 3 * s, 3));
        }
        assert!(matches!(
            t.check(stamp(9, 2)),
            Err(Error::SequenceTooOld { .. })
        ));
        assert_eq!(t.check(stamp(0, 77)).unwrap(), Verdict::Append);
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let mut t = ProducerTable::default();
        t.observe(&header(1, 0, 0, 2));
        t.observe(&header(2, 0, 2, 1));
        t.observe(&header(1, 1, 3, 5));
        t.observe(&header(5, 0, 8, 1));
        assert!(t.forget_lru());
        let snap = Snapshot {
            position: 4096,
            next_offset: 8,
            max_ts: -5,
            max_rel: 3,
            producers: t,
        };
        let bytes = snap.encode();
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back, snap);
        assert!(matches!(
            back.producers.check(stamp(2, 0)),
            Err(Error::ForgottenProducer { .. })
        ));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(Snapshot::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(Snapshot::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn truncate_forgets_later_batches() {
        let mut t = ProducerTable::default();
        t.observe(&header(1, 0, 0, 2));
        t.observe(&header(1, 1, 2, 2));
        t.truncate(2);
        assert_eq!(t.check(stamp(1, 1)).unwrap(), Verdict::Append);
        t.truncate(0);
        assert!(t.is_empty());
    }

    #[test]
    fn idle_producers_expire_and_are_then_refused() {
        let mut t = ProducerTable::default();
        t.observe(&header_at(1, 0, 0, 1, 1_000));
        t.observe(&header_at(2, 0, 1, 1, 5_000));
        t.observe(&header_at(1, 1, 2, 1, 6_000));
        // Producer 2 last appended at 5,000: expired at 9,001 with a 4,000 ms lifetime;
        // producer 1 appended again at 6,000 and stays.
        assert_eq!(t.expire(9_000, 4_000), 0);
        assert_eq!(t.expire(9_001, 4_000), 1);
        assert_eq!(t.len(), 1);
        assert!(matches!(
            t.check(stamp(2, 1)),
            Err(Error::UnknownProducer { producer_id: 2, .. })
        ));
        // A retry of its first batch is not appended again.
        assert!(matches!(
            t.check(stamp(2, 0)),
            Err(Error::ForgottenProducer { producer_id: 2 })
        ));
        assert_eq!(t.check(stamp(1, 2)).unwrap(), Verdict::Append);
    }

    #[test]
    fn the_least_recently_used_producer_is_evicted_first() {
        let mut t = ProducerTable::default();
        for pid in 1..=3 {
            t.observe(&header(pid, 0, pid, 1));
        }
        t.observe(&header(1, 1, 10, 1));
        assert!(t.forget_lru());
        assert!(t.producers.contains_key(&1) && !t.producers.contains_key(&2));
        assert!(t.forget_lru() && t.forget_lru() && !t.forget_lru());
        assert!(t.is_empty() && t.order.is_empty());
    }

    #[test]
    fn version_2_snapshots_still_load_and_get_a_time_on_open() {
        // Version 2's table: count, then per producer id, epoch, batch count and batches.
        let mut body = Vec::new();
        body.extend_from_slice(&u32::from_le_bytes(*b"SPLP").to_le_bytes());
        body.push(2);
        for v in [4096u64, 8, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.push(1);
        for v in [0u64, 3] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut snap = Snapshot::decode(&body).expect("version 2 decodes");
        assert_eq!(snap.next_offset, 8);
        assert_eq!(
            snap.producers.check(stamp(7, 0)).unwrap(),
            Verdict::Duplicate {
                base_offset: 3,
                record_count: 2
            }
        );
        snap.producers.stamp_unknown(50_000);
        assert_eq!(snap.producers.expire(50_000 + 999, 1_000), 0);
        assert_eq!(snap.producers.expire(50_000 + 1_001, 1_000), 1);
    }
}
