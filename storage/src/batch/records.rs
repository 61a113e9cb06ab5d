//! Decoding a validated batch's records: zero-copy views into the mapped bytes, or into
//! one inflated chunk of a compressed batch.

use std::sync::Arc;

use bytes::Bytes;

use super::compress::{self, Budget, Chunk};
use super::{BatchError, BatchHeader, Header, StoredRecord, check, unzigzag};

/// A validated batch: its header and its bytes (a zero-copy view into the log).
#[derive(Clone, Debug)]
pub struct Batch {
    pub header: BatchHeader,
    pub bytes: Bytes,
}

impl Batch {
    /// Validates the batch at the start of `bytes` (CRC included) and keeps a view of it.
    pub fn parse(bytes: &Bytes) -> Result<Batch, BatchError> {
        let header = check(bytes)?;
        Ok(Batch {
            header,
            bytes: bytes.slice(..header.total_len),
        })
    }

    /// Decodes every record; keys, values and header values are views into `bytes` (or
    /// into an inflated chunk, whose memory no budget limits: for tools and tests).
    pub fn records(&self) -> Result<Vec<StoredRecord>, BatchError> {
        self.records_from(self.header.base_offset, usize::MAX, &Budget::unlimited())
    }

    /// The records from offset `first` on, at most `max` (at least one if there is one).
    /// Records before `first` are skipped by their length prefix, not decoded: a read of
    /// one record from a batch of thousands (a queue's due record) costs the CRC and a walk
    /// over lengths, not thousands of allocations. The CRC covers what is skipped; its
    /// fields are checked when it is read itself.
    ///
    /// A compressed batch inflates only the chunks holding the records returned (each at
    /// most about 128 KiB), each taken from `budget` for as long as any returned record
    /// lives; [`BatchError::OverBudget`] if the budget cannot hold the first chunk needed.
    /// Once some records are decoded, a chunk the budget cannot hold ends the read early.
    pub fn records_from(
        &self,
        first: u64,
        max: usize,
        budget: &Arc<Budget>,
    ) -> Result<Vec<StoredRecord>, BatchError> {
        let h = &self.header;
        // A dense batch's record `i` is at `base_offset + i`, so records before `first`
        // are known by index; a sparse batch's are found by their deltas.
        let skip = if h.is_sparse() {
            0
        } else {
            first
                .saturating_sub(h.base_offset)
                .min(u64::from(h.record_count)) as u32
        };
        let mut last_delta = None;
        let max = max.max(1);
        let start = h.header_len();
        // `record_count` comes from disk: every record takes at least one byte, so the
        // bytes bound it (found by fuzzing: a count of 2^26 in a tiny batch allocated GiBs).
        let room = self.bytes.len().saturating_sub(start);
        let mut out = Vec::with_capacity(((h.record_count - skip) as usize).min(room).min(max));
        if h.codec().is_none() {
            let span = Span {
                first_index: 0,
                count: h.record_count,
                end: self.bytes.len(),
            };
            parse(
                h,
                &self.bytes,
                start,
                span,
                (first, &mut last_delta),
                max,
                &mut out,
            )?;
            return Ok(out);
        }
        let chunks = compress::chunks(h, &self.bytes)?;
        for chunk in chunks {
            let Chunk {
                first_index, count, ..
            } = chunk;
            if first_index + count <= skip {
                continue;
            }
            if out.len() >= max {
                break;
            }
            let raw = match compress::inflate(h, &self.bytes, &chunk, budget) {
                Ok(raw) => raw,
                Err(BatchError::OverBudget { .. }) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            let span = Span {
                first_index,
                count,
                end: raw.len(),
            };
            parse(h, &raw, 0, span, (first, &mut last_delta), max, &mut out)?;
        }
        Ok(out)
    }
}

/// Records `first_index .. first_index + count` of a batch, encoded back to back in
/// `buf[start..end]`.
#[derive(Clone, Copy)]
struct Span {
    first_index: u32,
    count: u32,
    end: usize,
}

/// Appends to `out` the records of `span` at offset `first` or later, until `out` holds
/// `max`; the span must end exactly after its last record when it is read whole.
/// `last_delta` carries a sparse batch's latest offset delta across its chunks: deltas
/// must increase.
fn parse(
    h: &BatchHeader,
    buf: &Bytes,
    start: usize,
    span: Span,
    (first, last_delta): (u64, &mut Option<u64>),
    max: usize,
    out: &mut Vec<StoredRecord>,
) -> Result<(), BatchError> {
    let mut cur = Cursor {
        buf: &buf[..span.end],
        pos: start,
    };
    for i in span.first_index..span.first_index + span.count {
        let len = cur.varint()? as usize;
        let end = cur
            .pos
            .checked_add(len)
            .filter(|&e| e <= span.end)
            .ok_or(BatchError::BadRecord("record runs past the batch"))?;
        let offset = if h.is_sparse() {
            let delta = cur.varint()?;
            if delta >= u64::from(h.offset_span) || last_delta.is_some_and(|l| delta <= l) {
                return Err(BatchError::BadRecord(
                    "sparse offset delta out of order or past the span",
                ));
            }
            *last_delta = Some(delta);
            h.base_offset + delta
        } else {
            h.base_offset + u64::from(i)
        };
        if offset < first {
            cur.pos = end;
            continue;
        }
        if out.len() >= max {
            return Ok(());
        }
        if !h.is_sparse() && cur.varint()? != u64::from(i) {
            return Err(BatchError::BadRecord("offset delta out of order"));
        }
        let ts = h.first_timestamp_ms.wrapping_add(unzigzag(cur.varint()?));
        let key = cur.bytes(buf, end)?;
        let value = cur.bytes(buf, end)?;
        let n_headers = cur.varint()?;
        if n_headers > len as u64 {
            return Err(BatchError::BadRecord("header count exceeds record size"));
        }
        let mut headers = Vec::with_capacity(n_headers as usize);
        for _ in 0..n_headers {
            let k = cur.bytes(buf, end)?;
            let key = String::from_utf8(k.to_vec())
                .map_err(|_| BatchError::BadRecord("header key is not UTF-8"))?;
            let value = cur.bytes(buf, end)?;
            headers.push(Header { key, value });
        }
        if cur.pos != end {
            return Err(BatchError::BadRecord(
                "record length disagrees with its fields",
            ));
        }
        out.push(StoredRecord {
            offset,
            timestamp_ms: ts,
            key,
            value,
            headers,
        });
    }
    if cur.pos != span.end {
        return Err(BatchError::BadRecord(
            "trailing bytes after the last record",
        ));
    }
    Ok(())
}

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl Cursor<'_> {
    pub(super) fn varint(&mut self) -> Result<u64, BatchError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(BatchError::BadRecord("varint runs past the batch"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BatchError::BadRecord("varint longer than 10 bytes"))
    }

    fn bytes(&mut self, owner: &Bytes, limit: usize) -> Result<Bytes, BatchError> {
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= limit)
            .ok_or(BatchError::BadRecord("field runs past its record"))?;
        let b = owner.slice(self.pos..end);
        self.pos = end;
        Ok(b)
    }
}
