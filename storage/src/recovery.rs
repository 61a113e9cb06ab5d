//! Recovery of a log's last segment after any shutdown, clean or not.
//!
//! Policy: the log ends at the first batch whose length, magic, version, CRC or base offset
//! fails. The CRC scan starts at the last index entry that points at a valid batch, so a
//! restart checks only the tail whatever the size of the data; the tail after the valid end
//! is cut off, the indexes are re-derived for the scanned part, and the bytes dropped are
//! reported. Producer state and the segment's newest timestamp come from the segment's
//! snapshot plus the batch headers after it (read without a CRC check: they precede the
//! scanned tail, which was valid when it was written). Closed segments are not scanned:
//! their damage is found by reads (never served) and by [`crate::Log::verify`].

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::index;
use crate::mmap::MappedFile;
use crate::producer::{ProducerTable, Snapshot};
use crate::segment::{self, IndexBuilder, Probe};

/// The state of a last segment after recovery.
pub struct RecoveredTail {
    /// Valid length in bytes: the file is cut to this.
    pub len: u64,
    /// The offset after the last valid batch.
    pub end: u64,
    pub index: IndexBuilder,
    pub producers: ProducerTable,
    /// Bytes that were cut off after the valid end (zeroed preallocation not counted).
    pub dropped: u64,
    /// Batches whose CRC recovery checked.
    pub scanned_batches: u64,
}

/// Recovers the segment in `file` (base offset `base`) from its index files' contents and
/// its snapshot, if any.
pub fn recover_tail(
    path: &Path,
    file: &File,
    base: u64,
    offset_index: &[u8],
    time_index: &[u8],
    interval: u32,
    snapshot: Option<Snapshot>,
) -> Result<RecoveredTail> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let map = MappedFile::map(file, file_len).map_err(|e| Error::io("mmap", path, e))?;
    let data = map
        .view(0, map.len())
        .map_err(|e| Error::io("view", path, e))?;

    // 1. Where the CRC scan starts: the last offset entry that points at a valid batch.
    let offsets = &offset_index[..index::valid_offset_prefix(offset_index, file_len)];
    let mut kept = 0;
    let mut start = (0usize, base);
    for i in (0..index::offset_entries(offsets)).rev() {
        let e = index::offset_entry(offsets, i);
        // An entry whose offset would pass u64::MAX points at no batch (found by fuzzing).
        let Some(at) = base.checked_add(u64::from(e.rel)) else {
            continue;
        };
        if matches!(segment::probe(&data, e.pos as usize, at), Probe::Batch(_)) {
            kept = i + 1;
            start = (e.pos as usize, at);
            break;
        }
    }

    // 2. Scan the tail with full checks, keeping the headers for the replay below. A bad
    //    batch followed by valid batches that continue the offsets is damage inside the
    //    log (reads report it as lost), not a torn tail: cutting there would throw away
    //    acknowledged records that are intact on disk.
    let mut tail = Vec::new();
    let (mut pos, mut expected) = start;
    loop {
        while pos < data.len() {
            let Probe::Batch(h) = segment::probe(&data, pos, expected) else {
                break;
            };
            tail.push((pos, h));
            pos += h.total_len;
            expected = h.next_offset();
        }
        if pos >= data.len() {
            break;
        }
        if let Some(version) = crate::batch::future_version(&data[pos..]) {
            // Intact bytes a newer build wrote: cutting them would lose data this build
            // merely cannot read.
            return Err(Error::NewerFormat {
                path: path.to_path_buf(),
                version: u32::from(version),
                known: u32::from(crate::batch::SPARSE_VERSION),
            });
        }
        match segment::resync(&data, pos, expected.saturating_add(1), u64::MAX) {
            Some((p, h)) => {
                tracing::error!(
                    segment = %path.display(),
                    positions = ?(pos..p),
                    offsets = ?(expected..h.base_offset),
                    "damaged batches inside the last segment; later batches are intact and kept"
                );
                pos = p;
                expected = h.base_offset;
            }
            None => break,
        }
    }
    let (valid_end, end) = (pos, expected);

    // 3. Replay producer state and the newest timestamp: from the snapshot if it sits on a
    //    batch boundary of the valid log, else from the segment's first batch.
    let boundary_in_tail = |p: u64, o: u64| {
        (p == valid_end as u64 && o == end)
            || tail
                .iter()
                .any(|(tp, h)| *tp as u64 == p && h.base_offset == o)
    };
    let usable = snapshot.filter(|s| {
        if s.position as usize <= start.0 {
            s.position as usize == start.0 && s.next_offset == start.1
                || segment::hop(&data, s.position as usize)
                    .is_ok_and(|h| h.base_offset == s.next_offset)
        } else {
            boundary_in_tail(s.position, s.next_offset)
        }
    });
    let (mut producers, mut max_ts, mut max_rel, from) = match usable {
        Some(s) => (
            s.producers,
            s.max_ts,
            s.max_rel,
            (s.position as usize, s.next_offset),
        ),
        None => (ProducerTable::default(), i64::MIN, 0, (0, base)),
    };
    let (mut pos, mut expected) = from;
    let mut hopped_ok = true;
    while pos < start.0 {
        match segment::hop(&data, pos) {
            Ok(h) if h.base_offset == expected => {
                producers.observe(&h);
                if h.max_timestamp_ms > max_ts {
                    max_ts = h.max_timestamp_ms;
                    max_rel = (h.base_offset - base) as u32;
                }
                pos += h.total_len;
                expected = h.next_offset();
            }
            _ => {
                hopped_ok = false;
                break;
            }
        }
    }
    if !hopped_ok || pos != start.0.max(from.0) {
        // The trusted prefix disagrees with the index: distrust both and start over with
        // a full checked scan of the segment.
        tracing::warn!(segment = %path.display(), "segment index disagrees with the log; rescanning it whole");
        drop(data);
        drop(map);
        return recover_tail(path, file, base, &[], &[], interval, None);
    }
    // `max_ts` now bounds every timestamp before the scan start from above (exactly, or
    // including some scanned batches when the snapshot lies inside the tail): a safe seed
    // for the re-derived time entries, which must never understate the maximum so far.
    let seed = (max_ts, max_rel);
    for (p, h) in &tail {
        if *p >= from.0 {
            producers.observe(h);
            if h.max_timestamp_ms > max_ts {
                max_ts = h.max_timestamp_ms;
                max_rel = (h.base_offset - base) as u32;
            }
        }
    }

    // 4. Indexes: keep the entries before the scan start, re-derive the rest.
    let start_rel = (start.1 - base) as u32;
    let times = &time_index[..index::valid_time_prefix(time_index, u64::MAX)];
    let time_kept = (0..index::time_entries(times))
        .take_while(|&i| {
            let e = &times[i * index::TIME_ENTRY_LEN..(i + 1) * index::TIME_ENTRY_LEN];
            u32::from_le_bytes([e[8], e[9], e[10], e[11]]) < start_rel
        })
        .count();
    let mut builder = IndexBuilder::new(interval);
    builder.offsets = offsets[..kept * index::OFFSET_ENTRY_LEN].to_vec();
    builder.last_offset_pos = start.0 as u64;
    builder.times = times[..time_kept * index::TIME_ENTRY_LEN].to_vec();
    if let Some(e) = index::last_time_entry(&builder.times) {
        builder.max_ts = e.ts;
        builder.max_rel = e.rel;
        builder.last_time_ts = e.ts;
    }
    if seed.0 > builder.max_ts {
        builder.max_ts = seed.0;
        builder.max_rel = seed.1;
    }
    for (p, h) in &tail {
        builder.observe(*p as u64, (h.base_offset - base) as u32, h);
    }
    if max_ts > builder.max_ts {
        builder.max_ts = max_ts;
        builder.max_rel = max_rel;
    }

    // 5. Cut whatever follows the valid end.
    let dropped = data[valid_end..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1);
    drop(data);
    drop(map);
    if file_len != valid_end as u64 {
        crate::disk::set_len(file, path, valid_end as u64)
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
        end,
        index: builder,
        producers,
        dropped,
        scanned_batches: tail.len() as u64,
    })
}

/// The producer state at the end of a closed segment: its snapshot plus its batch headers.
/// Used when the last segment's own snapshot is missing or damaged, so idempotence survives.
pub fn producers_after(
    path: &Path,
    base: u64,
    snapshot: Option<Snapshot>,
) -> Result<ProducerTable> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let map = MappedFile::map(&file, len).map_err(|e| Error::io("mmap", path, e))?;
    let data = map
        .view(0, map.len())
        .map_err(|e| Error::io("view", path, e))?;
    let (mut table, mut pos, mut expected) = match snapshot {
        Some(s)
            if segment::hop(&data, s.position as usize)
                .is_ok_and(|h| h.base_offset == s.next_offset) =>
        {
            (s.producers, s.position as usize, s.next_offset)
        }
        _ => (ProducerTable::default(), 0, base),
    };
    while pos < data.len() {
        match segment::hop(&data, pos) {
            Ok(h) if h.base_offset == expected => {
                table.observe(&h);
                pos += h.total_len;
                expected = h.next_offset();
            }
            _ => break,
        }
    }
    Ok(table)
}
