//! Idempotent producer state: the last few batch sequences of each producer, per log.
//!
//! Rebuilt on open from a snapshot written when a segment starts plus the batch headers of
//! that segment, so a retry across a restart is still recognised as a duplicate.

use std::collections::{HashMap, VecDeque};

use crate::batch::{BatchHeader, ProducerStamp};
use crate::error::{Error, Result};

/// How many recent batches per producer are remembered for duplicate detection. Part of the
/// API contract (docs/api.md, `AppendRequest` in spool.proto: clients keep at most this many
/// requests per partition unanswered): never lower it.
pub const REMEMBERED_BATCHES: usize = 8;

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"SPLP");
const SNAPSHOT_VERSION: u8 = 2;

/// The state of a segment at a batch boundary, saved so recovery can start from it instead
/// of replaying every batch header: written (fsync'd) when a segment starts, and, without an
/// fsync, periodically and on a clean close. Derived data: checked by CRC and against the
/// log, and ignored when it disagrees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Byte position in the segment of the batch boundary the state is taken at.
    pub position: u64,
    /// The offset of the batch starting at `position`.
    pub next_offset: u64,
    /// Largest record timestamp before `position` (`i64::MIN` if none).
    pub max_ts: i64,
    /// Relative offset of the batch that reached `max_ts`.
    pub max_rel: u32,
    pub producers: ProducerTable,
}

impl Snapshot {
    /// Serialises the snapshot; see `docs/format.md` ("segment snapshot").
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        out.extend_from_slice(&self.max_rel.to_le_bytes());
        self.producers.encode_into(&mut out);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a snapshot; `None` when it is torn, corrupt or of another version.
    pub fn decode(buf: &[u8]) -> Option<Snapshot> {
        let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.u32()? != SNAPSHOT_MAGIC || r.u8()? != SNAPSHOT_VERSION {
            return None;
        }
        let position = r.u64()?;
        let next_offset = r.u64()?;
        let max_ts = r.u64()? as i64;
        let max_rel = r.u32()?;
        let producers = ProducerTable::decode_from(&mut r)?;
        (r.pos == body.len()).then_some(Snapshot {
            position,
            next_offset,
            max_ts,
            max_rel,
            producers,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    base_offset: u64,
    record_count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    epoch: u16,
    recent: VecDeque<Entry>,
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
}

impl ProducerTable {
    /// Decides whether a batch stamped `stamp` is new, a duplicate, or out of order.
    pub fn check(&self, stamp: ProducerStamp) -> Result<Verdict> {
        if stamp.producer_id == 0 {
            return Ok(Verdict::Append);
        }
        let Some(state) = self.producers.get(&stamp.producer_id) else {
            return if stamp.sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(Error::SequenceGap {
                    producer_id: stamp.producer_id,
                    expected: 0,
                    got: stamp.sequence,
                })
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
        let state = self.producers.entry(stamp.producer_id).or_default();
        state.epoch = stamp.producer_epoch;
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
        self.producers.retain(|_, s| !s.recent.is_empty());
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let s = &self.producers[&id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&s.epoch.to_le_bytes());
            out.push(s.recent.len() as u8);
            for e in &s.recent {
                out.extend_from_slice(&e.sequence.to_le_bytes());
                out.extend_from_slice(&e.base_offset.to_le_bytes());
                out.extend_from_slice(&e.record_count.to_le_bytes());
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Option<ProducerTable> {
        let mut table = ProducerTable::default();
        for _ in 0..r.u32()? {
            let id = r.u64()?;
            let epoch = r.u16()?;
            let n = r.u8()?;
            let mut recent = VecDeque::new();
            for _ in 0..n {
                recent.push_back(Entry {
                    sequence: r.u64()?,
                    base_offset: r.u64()?,
                    record_count: r.u32()?,
                });
            }
            table.producers.insert(id, State { epoch, recent });
        }
        Some(table)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.buf.get(self.pos..self.pos + N)?;
        self.pos += N;
        b.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: u64, seq: u64, base: u64, count: u32) -> BatchHeader {
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
            Err(Error::SequenceGap { .. })
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
        let snap = Snapshot {
            position: 4096,
            next_offset: 8,
            max_ts: -5,
            max_rel: 3,
            producers: t,
        };
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes), Some(snap.clone()));
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
}
