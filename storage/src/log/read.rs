//! Reads: records from an offset within count and byte limits, and the first offset at or
//! after a timestamp. Readers take no writer lock: they see what `publish` released.

use std::sync::Arc;

use crate::batch::{self, Batch, BatchError, Budget, StoredRecord};
use crate::error::{Error, Result};
use crate::segment::{self, Probe, Segment};

use super::Log;

impl Log {
    /// Reads records from `offset` on, starting exactly there even inside a batch: at most
    /// `max_records`, and no more than `max_bytes` of payload except that the first record
    /// is always returned. Empty at the end offset. Damage is an error, never data.
    ///
    /// Offsets may have gaps (compaction removes records, never renumbers them): the
    /// records returned are in offset order but not always consecutive, and a read from
    /// inside a gap returns the records after it. The log's last batch is never compacted
    /// away, so a read from below the end offset returns at least one record.
    pub fn read(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        let end = self.end_offset();
        let start = self.start_offset();
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let max_records = max_records.max(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = offset;
        'segments: while next < end {
            let seg = self
                .segment_for(next)
                .ok_or_else(|| self.out_of_range(next))?;
            let data = match seg.data(&self.shared.cache) {
                Ok(d) => d,
                // Retention deleted the segment after we looked it up.
                Err(_) if self.start_offset() > next => return Err(self.out_of_range(next)),
                Err(e) => return Err(e),
            };
            let seg_end = seg.end().min(end);
            let s = seg.locate(&self.shared.cache, &data, next);
            let (mut pos, mut expected) = (s.pos, s.offset);
            while expected < seg_end {
                let probe = if pos < data.len() {
                    segment::probe(&data, pos, expected)
                } else {
                    Probe::Damaged("segment ends before its last offset".into())
                };
                match probe {
                    Probe::Batch(h) => {
                        if h.next_offset() > next {
                            let want = max_records.saturating_sub(out.len());
                            let records = match decode(
                                &self.shared.budget,
                                &seg,
                                &data,
                                pos,
                                h,
                                next,
                                want,
                            ) {
                                // The budget cannot inflate more now, or the batch is
                                // damaged: return what is read (the next read reports it).
                                Err(Error::DecompressBudget { .. } | Error::Corrupt { .. })
                                    if !out.is_empty() =>
                                {
                                    break 'segments;
                                }
                                r => r?,
                            };
                            // Fewer than asked for: the batch holds no more records
                            // past `next`, so the rest of its span (a gap, in a sparse
                            // batch) is read too.
                            let whole = records.len() < want;
                            for r in records {
                                if r.offset < next {
                                    continue;
                                }
                                if r.offset >= seg_end {
                                    // Past the log's end, or a (damaged) batch running past
                                    // its segment's end: those offsets, if any, belong to
                                    // the next segment (found by fuzzing).
                                    break;
                                }
                                let n = r.payload_len();
                                if !out.is_empty()
                                    && (out.len() >= max_records || bytes + n > max_bytes)
                                {
                                    break 'segments;
                                }
                                bytes += n;
                                next = r.offset + 1;
                                out.push(r);
                            }
                            if whole {
                                next = next.max(h.next_offset().min(seg_end));
                            }
                        }
                        pos += h.total_len;
                        expected = h.next_offset();
                    }
                    Probe::Damaged(reason) => {
                        let resume =
                            segment::resync(&data, pos, expected.saturating_add(1), seg_end);
                        let lost =
                            expected..resume.as_ref().map_or(seg_end, |(_, h)| h.base_offset);
                        tracing::error!(segment = %seg.log_path.display(), position = pos, offsets = ?lost, %reason, "corrupt batch");
                        if next < lost.end {
                            if !out.is_empty() {
                                break 'segments;
                            }
                            return Err(Error::Corrupt {
                                path: seg.log_path.clone(),
                                position: pos as u64,
                                offsets: Some(lost),
                                reason,
                            });
                        }
                        let (p, h) = resume.expect("next >= lost.end implies a resume point");
                        pos = p;
                        expected = h.base_offset;
                    }
                }
            }
            if next < seg_end {
                // Every batch of the segment was read but `next` was not reached: only a
                // damaged segment can do that, and damage returned above.
                break;
            }
        }
        Ok(out)
    }

    /// The first offset whose record has a timestamp at or after `ts` (exactly, not the
    /// start of its batch); the end offset when there is none.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<u64> {
        let end = self.end_offset();
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        for seg in segs {
            if seg.max_timestamp(&self.shared.cache) < ts {
                continue;
            }
            let data = seg.data(&self.shared.cache)?;
            let from = seg.time_start(&self.shared.cache, &data, ts);
            let s = seg.locate(&self.shared.cache, &data, from);
            let (mut pos, mut expected) = (s.pos, s.offset);
            let seg_end = seg.end().min(end);
            while expected < seg_end && pos < data.len() {
                let h = match segment::probe(&data, pos, expected) {
                    Probe::Batch(h) => h,
                    Probe::Damaged(reason) => {
                        // The first record at or after `ts` may be among the lost ones: say
                        // which offsets are lost rather than guess past them.
                        let resume =
                            segment::resync(&data, pos, expected.saturating_add(1), seg_end);
                        let lost = expected..resume.map_or(seg_end, |(_, h)| h.base_offset);
                        return Err(Error::Corrupt {
                            path: seg.log_path.clone(),
                            position: pos as u64,
                            offsets: Some(lost),
                            reason,
                        });
                    }
                };
                if h.max_timestamp_ms >= ts {
                    let records = decode(&self.shared.budget, &seg, &data, pos, h, 0, usize::MAX)?;
                    if let Some(r) = records.iter().find(|r| r.timestamp_ms >= ts) {
                        return Ok(r.offset.min(end));
                    }
                }
                pos += h.total_len;
                expected = h.next_offset();
            }
        }
        Ok(end)
    }
}

/// The records of the validated batch `h` at `pos`, compressed chunks inflated within
/// `budget`; a batch whose records do not decode is damage, reported with its offsets.
pub(super) fn decode(
    budget: &Arc<Budget>,
    seg: &Segment,
    data: &bytes::Bytes,
    pos: usize,
    h: batch::BatchHeader,
    first: u64,
    max: usize,
) -> Result<Vec<StoredRecord>> {
    let batch = Batch {
        header: h,
        bytes: data.slice(pos..pos + h.total_len),
    };
    batch.records_from(first, max, budget).map_err(|e| match e {
        BatchError::OverBudget { needed, limit } => Error::DecompressBudget { needed, limit },
        e => Error::Corrupt {
            path: seg.log_path.clone(),
            position: pos as u64,
            offsets: Some(h.base_offset..h.next_offset()),
            reason: e.to_string(),
        },
    })
}
