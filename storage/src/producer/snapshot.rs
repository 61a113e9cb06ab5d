//! The segment snapshot: a segment's state at a batch boundary, producer table included.

use super::ProducerTable;

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"SPLP");
/// Version 3 adds each producer's last append time and the evicted-id filter; version 2
/// (neither) is still read.
const SNAPSHOT_VERSION: u8 = 3;

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

    /// Parses a snapshot; `None` when it is torn, corrupt or of an unknown version.
    pub fn decode(buf: &[u8]) -> Option<Snapshot> {
        let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.u32()? != SNAPSHOT_MAGIC {
            return None;
        }
        let version = r.u8()?;
        if !(2..=SNAPSHOT_VERSION).contains(&version) {
            return None;
        }
        let position = r.u64()?;
        let next_offset = r.u64()?;
        let max_ts = r.u64()? as i64;
        let max_rel = r.u32()?;
        let producers = ProducerTable::decode_from(&mut r, version)?;
        (r.pos == body.len()).then_some(Snapshot {
            position,
            next_offset,
            max_ts,
            max_rel,
            producers,
        })
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.buf.get(self.pos..self.pos + N)?;
        self.pos += N;
        b.try_into().ok()
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}
