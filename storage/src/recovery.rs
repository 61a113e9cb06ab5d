//! Recovery of a log's last segment after any shutdown, clean or not.
//!
//! Policy: the log ends at the first batch whose length, magic, CRC or base offset fails.
//! Scanning starts from the last index entry that points at a valid batch (so a restart costs
//! a short scan whatever the size of the data), the tail after the valid end is cut off,
//! the indexes are re-derived for the scanned part, and the bytes dropped are reported.
//! Closed segments are not scanned: their damage is found by reads (never served) and by
//! [`crate::Log::verify`].

use std::fs::File;
use std::path::Path;

use crate::batch::BatchHeader;
use crate::error::{Error, Result};
use crate::index;
use crate::mmap::MappedFile;
use crate::producer::ProducerTable;
use crate::segment::{self, IndexBuilder, Probe};

/// The state of a last segment after recovery.
pub struct RecoveredTail {
    /// Valid length in bytes: the file is cut to this.
    pub len: u64,
    /// The offset after the last valid batch.
    pub end: u64,
    pub index: IndexBuilder,
    /// Bytes that were cut off after the valid end (zeroed preallocation not counted).
    pub dropped: u64,
    /// Batches whose CRC was checked during the scan.
    pub scanned_batches: u64,
}

/// Recovers the segment in `file` (base offset `base`) given its index files' contents, and
/// replays its batch headers into `producers`.
pub fn recover_tail(
    path: &Path,
    file: &File,
    base: u64,
    offset_index: &[u8],
    time_index: &[u8],
    interval: u32,
    producers: &mut ProducerTable,
) -> Result<RecoveredTail> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let map = MappedFile::map(file, file_len).map_err(|e| Error::io("mmap", path, e))?;
    let data = map
        .view(0, map.len())
        .map_err(|e| Error::io("view", path, e))?;

    let offsets = &offset_index[..index::valid_offset_prefix(offset_index, file_len)];
    let times = &time_index[..index::valid_time_prefix(time_index, u64::MAX)];

    // The scan must cover the last time entry's batch so the running maximum is exact, and
    // everything after the last offset entry, whose batches may be torn.
    let last_off_rel = index::offset_entries(offsets)
        .checked_sub(1)
        .map(|i| index::offset_entry(offsets, i).rel);
    let last_time_rel = index::last_time_entry(times).map(|e| e.rel);
    let want_rel = match (last_off_rel, last_time_rel) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, _) => 0,
    };
    // Walk back from the entry at or below `want_rel` to one that points at a valid batch.
    let mut kept = 0;
    let mut start = (0usize, base);
    for i in (0..index::offset_entries(offsets)).rev() {
        let e = index::offset_entry(offsets, i);
        if e.rel > want_rel {
            continue;
        }
        let at = base + u64::from(e.rel);
        if matches!(segment::probe(&data, e.pos as usize, at), Probe::Batch(_)) {
            kept = i + 1;
            start = (e.pos as usize, at);
            break;
        }
    }

    let mut builder = IndexBuilder::new(interval);
    builder.offsets = offsets[..kept * index::OFFSET_ENTRY_LEN].to_vec();
    builder.last_offset_pos = start.0 as u64;
    let start_rel = (start.1 - base) as u32;
    let time_kept = (0..index::time_entries(times))
        .take_while(|&i| {
            let e = &times[i * index::TIME_ENTRY_LEN..(i + 1) * index::TIME_ENTRY_LEN];
            u32::from_le_bytes([e[8], e[9], e[10], e[11]]) < start_rel
        })
        .count();
    builder.times = times[..time_kept * index::TIME_ENTRY_LEN].to_vec();
    if let Some(e) = index::last_time_entry(&builder.times) {
        builder.max_ts = e.ts;
        builder.max_rel = e.rel;
        builder.last_time_ts = e.ts;
        // The kept entry's position is not known here; allow the next entry at once.
        builder.last_time_pos = None;
    }

    // Replay producer state from the trusted prefix, header by header.
    let mut pos = 0usize;
    let mut expected = base;
    while pos < start.0 {
        match segment::hop(&data, pos) {
            Ok(h) if h.base_offset == expected => {
                producers.observe(&h);
                pos += h.total_len;
                expected = h.next_offset();
            }
            _ => break,
        }
    }
    if pos != start.0 {
        // The prefix disagrees with the index: distrust it and scan everything.
        builder = IndexBuilder::new(interval);
        start = (0, base);
        *producers = ProducerTable::default();
    }

    let mut pos = start.0;
    let mut expected = start.1;
    let mut scanned = 0;
    while pos < data.len() {
        let Probe::Batch(h) = segment::probe(&data, pos, expected) else {
            break;
        };
        let h: BatchHeader = h;
        builder.observe(pos as u64, (h.base_offset - base) as u32, &h);
        producers.observe(&h);
        pos += h.total_len;
        expected = h.next_offset();
        scanned += 1;
    }
    let valid_end = pos;
    let dropped = data[valid_end..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1);
    drop(data);
    drop(map);
    if file_len != valid_end as u64 {
        file.set_len(valid_end as u64)
            .map_err(|e| Error::io("truncate", path, e))?;
    }
    if dropped > 0 {
        tracing::warn!(
            segment = %path.display(),
            valid_bytes = valid_end,
            dropped_bytes = dropped,
            "recovery cut a torn or corrupt tail"
        );
    }
    Ok(RecoveredTail {
        len: valid_end as u64,
        end: expected,
        index: builder,
        dropped,
        scanned_batches: scanned,
    })
}
