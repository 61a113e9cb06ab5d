//! The sparse offset index and the time index of a segment.
//!
//! Both are derived data: recovery rebuilds them whenever they disagree with the log. An
//! active segment keeps its entries in memory (and appends them to the file as it goes); a
//! closed segment's index is read through a memory map. Either way a lookup runs over the
//! encoded bytes, so one function serves both.
//!
//! Offset index entry, 8 bytes: `u32 relative offset, u32 byte position` of a batch start.
//! Time index entry, 12 bytes: `i64 max timestamp so far in the segment, u32 relative offset`
//! of the batch that raised it. Entries strictly increase in both fields.

/// Bytes of one offset index entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of one time index entry.
pub const TIME_ENTRY_LEN: usize = 12;

/// A batch start: its offset relative to the segment base and its byte position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel: u32,
    pub pos: u32,
}

/// The running maximum timestamp of a segment, reached by the batch at `rel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub ts: i64,
    pub rel: u32,
}

impl OffsetEntry {
    pub fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel.to_le_bytes());
        out.extend_from_slice(&self.pos.to_le_bytes());
    }

    fn at(idx: &[u8], i: usize) -> OffsetEntry {
        let b = &idx[i * OFFSET_ENTRY_LEN..(i + 1) * OFFSET_ENTRY_LEN];
        OffsetEntry {
            rel: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            pos: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl TimeEntry {
    pub fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ts.to_le_bytes());
        out.extend_from_slice(&self.rel.to_le_bytes());
    }

    fn at(idx: &[u8], i: usize) -> TimeEntry {
        let b = &idx[i * TIME_ENTRY_LEN..(i + 1) * TIME_ENTRY_LEN];
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            ts: i64::from_le_bytes(ts),
            rel: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Number of whole offset entries in `idx`.
pub fn offset_entries(idx: &[u8]) -> usize {
    idx.len() / OFFSET_ENTRY_LEN
}

/// Number of whole time entries in `idx`.
pub fn time_entries(idx: &[u8]) -> usize {
    idx.len() / TIME_ENTRY_LEN
}

/// The `i`th offset entry. Panics if out of bounds (callers index below `offset_entries`).
pub fn offset_entry(idx: &[u8], i: usize) -> OffsetEntry {
    OffsetEntry::at(idx, i)
}

/// The `i`th time entry. Panics if out of bounds (callers index below `time_entries`).
pub fn time_entry(idx: &[u8], i: usize) -> TimeEntry {
    TimeEntry::at(idx, i)
}

/// The last time entry, if any.
pub fn last_time_entry(idx: &[u8]) -> Option<TimeEntry> {
    time_entries(idx)
        .checked_sub(1)
        .map(|i| TimeEntry::at(idx, i))
}

/// The last offset entry at or below relative offset `rel`: where a scan for `rel` starts.
pub fn offset_lookup(idx: &[u8], rel: u32) -> Option<OffsetEntry> {
    let n = offset_entries(idx);
    // partition_point over "entry.rel <= rel"
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if OffsetEntry::at(idx, mid).rel <= rel {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1).map(|i| OffsetEntry::at(idx, i))
}

/// The last time entry whose running maximum is below `ts`: every record up to and including
/// that entry's batch is older than `ts`, so a scan for the first record at or after `ts` may
/// start there.
pub fn time_lookup(idx: &[u8], ts: i64) -> Option<TimeEntry> {
    let n = time_entries(idx);
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if TimeEntry::at(idx, mid).ts < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1).map(|i| TimeEntry::at(idx, i))
}

/// Length in bytes of the longest prefix of `idx` that is a well-formed offset index for a
/// segment of `log_len` bytes: whole entries, strictly increasing, positions inside the log
/// and past its first batch.
pub fn valid_offset_prefix(idx: &[u8], log_len: u64) -> usize {
    let mut prev: Option<OffsetEntry> = None;
    for i in 0..offset_entries(idx) {
        let e = OffsetEntry::at(idx, i);
        let ordered = prev.is_none_or(|p| e.rel > p.rel && e.pos > p.pos);
        // No entry names position 0: the first batch of a segment starts there, at the
        // segment's base offset, and needs no entry (one claiming another offset is bogus).
        if !ordered || e.pos == 0 || u64::from(e.pos) >= log_len {
            return i * OFFSET_ENTRY_LEN;
        }
        prev = Some(e);
    }
    offset_entries(idx) * OFFSET_ENTRY_LEN
}

/// Length in bytes of the longest prefix of `idx` that is a well-formed time index for a
/// segment whose relative offsets are below `rel_end`.
pub fn valid_time_prefix(idx: &[u8], rel_end: u64) -> usize {
    let mut prev: Option<TimeEntry> = None;
    for i in 0..time_entries(idx) {
        let e = TimeEntry::at(idx, i);
        let ordered = prev.is_none_or(|p| e.ts > p.ts && e.rel >= p.rel);
        if !ordered || u64::from(e.rel) >= rel_end {
            return i * TIME_ENTRY_LEN;
        }
        prev = Some(e);
    }
    time_entries(idx) * TIME_ENTRY_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(rel, pos) in entries {
            OffsetEntry { rel, pos }.encode(&mut v);
        }
        v
    }

    #[test]
    fn offset_lookup_finds_last_entry_at_or_below() {
        let idx = offsets(&[(0, 0), (10, 4096), (25, 8200)]);
        assert_eq!(offset_lookup(&idx, 0).unwrap().pos, 0);
        assert_eq!(offset_lookup(&idx, 9).unwrap().pos, 0);
        assert_eq!(offset_lookup(&idx, 10).unwrap().pos, 4096);
        assert_eq!(offset_lookup(&idx, 24).unwrap().pos, 4096);
        assert_eq!(offset_lookup(&idx, 1000).unwrap().pos, 8200);
        assert_eq!(offset_lookup(&offsets(&[(5, 100)]), 4), None);
        assert_eq!(offset_lookup(&[], 4), None);
    }

    #[test]
    fn time_lookup_finds_last_entry_strictly_older() {
        let mut idx = Vec::new();
        for (ts, rel) in [(100, 0), (200, 5), (300, 9)] {
            TimeEntry { ts, rel }.encode(&mut idx);
        }
        assert_eq!(time_lookup(&idx, 100), None);
        assert_eq!(time_lookup(&idx, 101).unwrap().rel, 0);
        assert_eq!(time_lookup(&idx, 300).unwrap().rel, 5);
        assert_eq!(time_lookup(&idx, 301).unwrap().rel, 9);
        assert_eq!(last_time_entry(&idx).unwrap().ts, 300);
    }

    #[test]
    fn validation_keeps_the_well_formed_prefix() {
        let idx = offsets(&[(2, 100), (10, 4096), (9, 5000), (30, 9000)]);
        assert_eq!(valid_offset_prefix(&idx, 10_000), 16);
        let idx = offsets(&[(2, 100), (10, 4096)]);
        assert_eq!(valid_offset_prefix(&idx, 4096), 8, "position past the log");
        let mut torn = offsets(&[(2, 100), (10, 4096)]);
        torn.truncate(13);
        assert_eq!(valid_offset_prefix(&torn, 10_000), 8);
        let at_start = offsets(&[(195, 0), (200, 4096)]);
        assert_eq!(
            valid_offset_prefix(&at_start, 10_000),
            0,
            "no entry names position 0"
        );
    }
}
