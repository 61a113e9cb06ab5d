//! One segment: a `.log` file of batches plus its `.index` and `.timeindex`.
//!
//! A segment is *active* while the log appends to it: it keeps its indexes in memory and
//! maps its file itself, remapping as the file grows. Once closed it is immutable: its files
//! are mapped through the shared [`MapCache`] on demand and it holds no descriptor.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::batch::{self, BatchError, BatchHeader};
use crate::cache::{FileKind, MapCache};
use crate::error::{Error, Result};
use crate::index::{self, OffsetEntry, TimeEntry};
use crate::mmap::MappedFile;

/// `i64::MIN` marks "not known yet" for a closed segment's newest timestamp.
const UNKNOWN_TS: i64 = i64::MIN;

/// File name of a segment file: the base offset in 20 digits and the extension.
pub fn file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Parses `<20 digits>.log` back into a base offset.
pub fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// In-memory indexes of the active segment, encoded exactly as on disk.
#[derive(Default)]
pub struct ActiveIndex {
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
}

struct ActiveFile {
    file: Arc<File>,
    map: Option<Arc<MappedFile>>,
}

pub struct Segment {
    pub base: u64,
    /// Process-unique id, the key of this segment's maps in the cache.
    pub id: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    pub time_path: PathBuf,
    /// Published length in bytes: every byte below it is a complete batch, never rewritten.
    len: AtomicU64,
    /// The offset after the last published batch.
    end: AtomicU64,
    /// Newest timestamp in the segment, or `UNKNOWN_TS`.
    max_ts: AtomicI64,
    /// The broker's append time of the newest batch, or `UNKNOWN_TS` until asked for.
    last_append: AtomicI64,
    active: RwLock<Option<ActiveIndex>>,
    file: Mutex<Option<ActiveFile>>,
}

/// Where a scan for an offset or a time starts.
#[derive(Clone, Copy, Debug)]
pub struct ScanStart {
    pub pos: usize,
    pub offset: u64,
}

impl Segment {
    fn paths(dir: &Path, base: u64) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join(file_name(base, "log")),
            dir.join(file_name(base, "index")),
            dir.join(file_name(base, "timeindex")),
        )
    }

    /// A closed segment found on disk: `len` bytes, offsets `base..end`.
    pub fn closed(dir: &Path, base: u64, id: u64, len: u64, end: u64) -> Segment {
        let (log_path, index_path, time_path) = Self::paths(dir, base);
        Segment {
            base,
            id,
            log_path,
            index_path,
            time_path,
            len: AtomicU64::new(len),
            end: AtomicU64::new(end),
            max_ts: AtomicI64::new(UNKNOWN_TS),
            last_append: AtomicI64::new(UNKNOWN_TS),
            active: RwLock::new(None),
            file: Mutex::new(None),
        }
    }

    /// The segment being appended to.
    #[allow(clippy::too_many_arguments)]
    pub fn active(
        dir: &Path,
        base: u64,
        id: u64,
        file: Arc<File>,
        len: u64,
        end: u64,
        max_ts: i64,
        index: ActiveIndex,
    ) -> Segment {
        let (log_path, index_path, time_path) = Self::paths(dir, base);
        Segment {
            base,
            id,
            log_path,
            index_path,
            time_path,
            len: AtomicU64::new(len),
            end: AtomicU64::new(end),
            max_ts: AtomicI64::new(max_ts),
            last_append: AtomicI64::new(UNKNOWN_TS),
            active: RwLock::new(Some(index)),
            file: Mutex::new(Some(ActiveFile { file, map: None })),
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub fn is_active(&self) -> bool {
        self.active.read().is_some()
    }

    /// Publishes a batch the writer has put in place: first the bytes, then the offsets.
    pub fn publish(&self, len: u64, end: u64, h: &BatchHeader) {
        self.len.store(len, Ordering::Release);
        self.end.store(end, Ordering::Release);
        self.max_ts.fetch_max(h.max_timestamp_ms, Ordering::AcqRel);
        self.last_append
            .fetch_max(h.append_time_ms, Ordering::AcqRel);
    }

    /// Adds index entries of the active segment (after the batch is published).
    pub fn push_index(&self, offset: Option<OffsetEntry>, time: Option<TimeEntry>) {
        if offset.is_none() && time.is_none() {
            return;
        }
        if let Some(idx) = self.active.write().as_mut() {
            if let Some(e) = offset {
                e.encode(&mut idx.offsets);
            }
            if let Some(e) = time {
                e.encode(&mut idx.times);
            }
        }
    }

    /// A copy of the active indexes, to rewrite the index files.
    pub fn active_index_bytes(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.active
            .read()
            .as_ref()
            .map(|i| (i.offsets.clone(), i.times.clone()))
    }

    /// Marks the segment closed: from now on it is read through the cache.
    pub fn close(&self) {
        *self.active.write() = None;
        *self.file.lock() = None;
    }

    /// A view of the published bytes.
    pub fn data(&self, cache: &MapCache) -> Result<Bytes> {
        let len = self.len() as usize;
        {
            let mut guard = self.file.lock();
            if let Some(af) = guard.as_mut() {
                let stale = af.map.as_ref().is_none_or(|m| m.len() < len);
                if stale {
                    let file_len = af
                        .file
                        .metadata()
                        .map_err(|e| Error::io("stat", &self.log_path, e))?
                        .len();
                    let map = MappedFile::map(&af.file, file_len)
                        .map_err(|e| Error::io("mmap", &self.log_path, e))?;
                    map.advise_sequential();
                    af.map = Some(map);
                }
                let map = af.map.as_ref().expect("mapped above");
                return map
                    .view(0, len)
                    .map_err(|e| Error::io("view", &self.log_path, e));
            }
        }
        let all = cache
            .get(self.id, FileKind::Log, &self.log_path)
            .map_err(|e| Error::io("map", &self.log_path, e))?;
        Ok(all.slice(..len.min(all.len())))
    }

    /// The offset entry at or below `rel` (`Err` when a closed segment's index is unusable).
    fn lookup_offset(&self, cache: &MapCache, rel: u32) -> Result<Option<OffsetEntry>, ()> {
        if let Some(idx) = self.active.read().as_ref() {
            return Ok(index::offset_lookup(&idx.offsets, rel));
        }
        let idx = cache
            .get(self.id, FileKind::Index, &self.index_path)
            .map_err(|_| ())?;
        if index::valid_offset_prefix(&idx, self.len()) != idx.len() {
            return Err(());
        }
        Ok(index::offset_lookup(&idx, rel))
    }

    /// The closed segment's time index, if well formed.
    fn closed_time_index(&self, cache: &MapCache) -> Option<Bytes> {
        let idx = cache
            .get(self.id, FileKind::TimeIndex, &self.time_path)
            .ok()?;
        let rel_end = self.end().saturating_sub(self.base);
        (index::valid_time_prefix(&idx, rel_end) == idx.len()).then_some(idx)
    }

    /// Where to start scanning for `offset`: the closest indexed batch at or below it,
    /// checked against the log. An index that disagrees is rebuilt.
    pub fn locate(&self, cache: &MapCache, data: &Bytes, offset: u64) -> ScanStart {
        let from_start = ScanStart {
            pos: 0,
            offset: self.base,
        };
        let rel = u32::try_from(offset.saturating_sub(self.base)).unwrap_or(u32::MAX);
        match self.lookup_offset(cache, rel) {
            Err(()) => {
                self.rebuild_indexes(cache, data);
                from_start
            }
            Ok(None) => from_start,
            Ok(Some(e)) => {
                let pos = e.pos as usize;
                // `None` past u64::MAX: a bogus entry, like one that misses its batch.
                let at = self.base.checked_add(u64::from(e.rel));
                match data.get(pos..).map(batch::decode_header) {
                    Some(Ok(h)) if Some(h.base_offset) == at => ScanStart {
                        pos,
                        offset: h.base_offset,
                    },
                    _ => {
                        self.rebuild_indexes(cache, data);
                        from_start
                    }
                }
            }
        }
    }

    /// Newest timestamp in the segment (from the time index once closed).
    pub fn max_timestamp(&self, cache: &MapCache) -> i64 {
        let known = self.max_ts.load(Ordering::Acquire);
        if known != UNKNOWN_TS || self.is_active() {
            return known;
        }
        let Ok(data) = self.data(cache) else {
            return UNKNOWN_TS;
        };
        // The last entry must agree with its batch, and no later batch may be newer (a
        // truncated time index loses its final entries while staying well formed). The
        // answer is cached, so the header walk after the entry happens once per segment.
        let from_index = self
            .closed_time_index(cache)
            .and_then(|idx| index::last_time_entry(&idx))
            .filter(|e| self.time_entry_agrees(cache, &data, *e))
            .filter(|e| self.newest_from(cache, &data, e.rel) == Some(e.ts))
            .map(|e| e.ts);
        let ts = match from_index {
            Some(ts) => ts,
            None => self.rebuild_indexes(cache, &data).unwrap_or(UNKNOWN_TS),
        };
        self.max_ts.fetch_max(ts, Ordering::AcqRel);
        ts
    }

    /// The broker's append time of the segment's newest batch (`UNKNOWN_TS` when empty or
    /// unreadable): what age retention measures, since record timestamps come from clients.
    /// Format version 1 did not store it: a segment ending in such a batch falls back to
    /// its newest record timestamp. Found from the last indexed batch, then cached.
    pub fn newest_append_time(&self, cache: &MapCache) -> i64 {
        let known = self.last_append.load(Ordering::Acquire);
        let end = self.end();
        if known != UNKNOWN_TS || end == self.base {
            return known;
        }
        let Ok(data) = self.data(cache) else {
            return UNKNOWN_TS;
        };
        let s = self.locate(cache, &data, end - 1);
        let (mut pos, mut expected, mut last) = (s.pos, s.offset, None);
        while expected < end {
            match hop(&data, pos) {
                Ok(h) if h.base_offset == expected => {
                    pos += h.total_len;
                    expected = h.next_offset();
                    last = Some(h);
                }
                _ => {
                    last = None;
                    break;
                }
            }
        }
        let t = match last {
            Some(h) if h.version > 1 => h.append_time_ms,
            _ => self.max_timestamp(cache),
        };
        self.last_append.fetch_max(t, Ordering::AcqRel);
        t
    }

    /// Offset where a scan for the first record at or after `ts` may start.
    pub fn time_start(&self, cache: &MapCache, data: &Bytes, ts: i64) -> u64 {
        let found = match self.active.read().as_ref() {
            Some(idx) => index::time_lookup(&idx.times, ts),
            None => self
                .closed_time_index(cache)
                .and_then(|idx| index::time_lookup(&idx, ts)),
        };
        let Some(e) = found else {
            return self.base;
        };
        // A closed segment's entry is checked against its batch before it is trusted; an
        // entry past u64::MAX is bogus.
        match self.base.checked_add(u64::from(e.rel)) {
            Some(at) if self.is_active() || self.time_entry_agrees(cache, data, e) => at,
            _ => {
                self.rebuild_indexes(cache, data);
                self.base
            }
        }
    }

    /// What is wrong with a closed segment's index files (for `verify`): each file with
    /// its problem. One pass over the batch headers; repairs nothing.
    pub fn check_indexes(&self, cache: &MapCache, data: &Bytes) -> Vec<(PathBuf, String)> {
        let mut problems = Vec::new();
        if self.is_active() {
            return problems;
        }
        // Every batch start: position → (base offset, max timestamp).
        let mut batches = std::collections::HashMap::new();
        let (mut pos, mut expected) = (0usize, self.base);
        while let Ok(h) = hop(data, pos) {
            if h.base_offset != expected {
                break;
            }
            batches.insert(pos, (h.base_offset, h.max_timestamp_ms));
            pos += h.total_len;
            expected = h.next_offset();
        }
        let by_offset: std::collections::HashMap<u64, i64> = batches.values().copied().collect();
        match cache.get(self.id, FileKind::Index, &self.index_path) {
            Err(e) => problems.push((
                self.index_path.clone(),
                format!("offset index unreadable: {e}"),
            )),
            Ok(idx) if index::valid_offset_prefix(&idx, self.len()) != idx.len() => {
                problems.push((self.index_path.clone(), "offset index is malformed".into()));
            }
            Ok(idx) => {
                for i in 0..index::offset_entries(&idx) {
                    let e = index::offset_entry(&idx, i);
                    let at = self.base.checked_add(u64::from(e.rel));
                    if batches.get(&(e.pos as usize)).map(|b| Some(b.0)) != Some(at) {
                        problems.push((
                            self.index_path.clone(),
                            format!("offset index entry {i} does not point at its batch"),
                        ));
                        break;
                    }
                }
            }
        }
        match cache.get(self.id, FileKind::TimeIndex, &self.time_path) {
            Err(e) => problems.push((
                self.time_path.clone(),
                format!("time index unreadable: {e}"),
            )),
            Ok(t)
                if index::valid_time_prefix(&t, self.end().saturating_sub(self.base))
                    != t.len() =>
            {
                problems.push((self.time_path.clone(), "time index is malformed".into()));
            }
            Ok(t) => {
                for i in 0..index::time_entries(&t) {
                    let e = index::time_entry(&t, i);
                    let at = self.base.checked_add(u64::from(e.rel));
                    if at.and_then(|a| by_offset.get(&a)) != Some(&e.ts) {
                        problems.push((
                            self.time_path.clone(),
                            format!("time index entry {i} disagrees with its batch"),
                        ));
                        break;
                    }
                }
            }
        }
        problems
    }

    /// The newest timestamp of the batches from relative offset `rel` to the segment's end
    /// (headers only), or `None` where the batches do not chain.
    fn newest_from(&self, cache: &MapCache, data: &Bytes, rel: u32) -> Option<i64> {
        let at = self.base.checked_add(u64::from(rel))?;
        let s = self.locate(cache, data, at);
        let (mut pos, mut expected) = (s.pos, s.offset);
        let mut newest = i64::MIN;
        while expected < self.end() {
            let h = hop(data, pos).ok().filter(|h| h.base_offset == expected)?;
            if h.base_offset >= at {
                newest = newest.max(h.max_timestamp_ms);
            }
            pos += h.total_len;
            expected = h.next_offset();
        }
        Some(newest)
    }

    /// Whether a time entry says what its batch says: every entry records the maximum
    /// timestamp of the very batch that raised the segment's running maximum.
    fn time_entry_agrees(&self, cache: &MapCache, data: &Bytes, e: TimeEntry) -> bool {
        let Some(at) = self.base.checked_add(u64::from(e.rel)) else {
            return false;
        };
        let s = self.locate(cache, data, at);
        let (mut pos, mut expected) = (s.pos, s.offset);
        while expected < at {
            match hop(data, pos) {
                Ok(h) if h.base_offset == expected => {
                    pos += h.total_len;
                    expected = h.next_offset();
                }
                _ => return false,
            }
        }
        expected == at
            && hop(data, pos).is_ok_and(|h| h.base_offset == at && h.max_timestamp_ms == e.ts)
    }

    /// Rebuilds a closed segment's index files from its log (they are derived data) and
    /// returns the segment's newest timestamp. Best effort: on failure reads still work by
    /// scanning from the start.
    pub fn rebuild_indexes(&self, cache: &MapCache, data: &Bytes) -> Option<i64> {
        if self.is_active() {
            return None;
        }
        tracing::warn!(segment = %self.log_path.display(), "index disagrees with the log; rebuilding it");
        let built = build_indexes(data, self.base, 4096);
        let write = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
            let tmp = path.with_extension("rebuild.tmp");
            let f = crate::disk::write_file(&tmp, bytes)?;
            crate::disk::sync_data(&f, &tmp)?;
            crate::disk::rename(&tmp, path)
        };
        if let Err(e) = write(&self.index_path, &built.offsets)
            .and_then(|()| write(&self.time_path, &built.times))
        {
            tracing::error!(segment = %self.log_path.display(), error = %e, "could not rewrite index");
        }
        cache.forget(self.id);
        (built.max_ts != UNKNOWN_TS).then_some(built.max_ts)
    }
}

/// Indexes derived from a scan of whole, valid batches.
pub struct BuiltIndexes {
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
    pub max_ts: i64,
}

/// Builds both indexes for the valid batches of `data` (stopping at the first invalid one).
pub fn build_indexes(data: &[u8], base: u64, interval: u32) -> BuiltIndexes {
    let mut b = scan_indexes(data, base, interval).0;
    b.final_time_entry();
    BuiltIndexes {
        offsets: b.offsets,
        times: b.times,
        max_ts: b.max_ts,
    }
}

/// Scans the valid batches of `data` from the start, returning the index state and the
/// valid length.
pub fn scan_indexes(data: &[u8], base: u64, interval: u32) -> (IndexBuilder, usize) {
    let mut b = IndexBuilder::new(interval);
    let mut pos = 0;
    let mut expected = base;
    while pos < data.len() {
        let Probe::Batch(h) = probe(data, pos, expected) else {
            break;
        };
        b.observe(pos as u64, (h.base_offset - base) as u32, &h);
        pos += h.total_len;
        expected = h.next_offset();
    }
    (b, pos)
}

/// The rule deciding when a batch gets index entries, shared by the writer and recovery.
pub struct IndexBuilder {
    interval: u64,
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
    pub last_offset_pos: u64,
    pub last_time_pos: Option<u64>,
    pub max_ts: i64,
    /// Relative offset of the batch that reached `max_ts`.
    pub max_rel: u32,
    /// Timestamp of the last time entry emitted.
    pub last_time_ts: i64,
}

impl IndexBuilder {
    pub fn new(interval: u32) -> IndexBuilder {
        IndexBuilder {
            interval: u64::from(interval),
            offsets: Vec::new(),
            times: Vec::new(),
            last_offset_pos: 0,
            last_time_pos: None,
            max_ts: UNKNOWN_TS,
            max_rel: 0,
            last_time_ts: UNKNOWN_TS,
        }
    }

    /// The entry that records the segment's final maximum when it closes, if the sparse
    /// entries have not recorded it yet.
    pub fn final_time_entry(&mut self) -> Option<TimeEntry> {
        if self.max_ts == UNKNOWN_TS || self.max_ts <= self.last_time_ts {
            return None;
        }
        let e = TimeEntry {
            ts: self.max_ts,
            rel: self.max_rel,
        };
        e.encode(&mut self.times);
        self.last_time_ts = self.max_ts;
        Some(e)
    }

    /// Entries the batch at `pos` (relative offset `rel`) earns; also appended to the
    /// builder's own buffers.
    pub fn observe(
        &mut self,
        pos: u64,
        rel: u32,
        h: &BatchHeader,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        let mut out = (None, None);
        if pos > 0 && pos - self.last_offset_pos >= self.interval {
            let e = OffsetEntry {
                rel,
                pos: pos as u32,
            };
            e.encode(&mut self.offsets);
            self.last_offset_pos = pos;
            out.0 = Some(e);
        }
        if h.max_timestamp_ms > self.max_ts {
            self.max_ts = h.max_timestamp_ms;
            self.max_rel = rel;
            if self.last_time_pos.is_none_or(|p| pos - p >= self.interval) {
                let e = TimeEntry {
                    ts: h.max_timestamp_ms,
                    rel,
                };
                e.encode(&mut self.times);
                self.last_time_pos = Some(pos);
                self.last_time_ts = e.ts;
                out.1 = Some(e);
            }
        }
        out
    }
}

/// The outcome of checking the batch at `pos`.
pub enum Probe {
    Batch(BatchHeader),
    /// Bytes at `pos` are not the batch expected there.
    Damaged(String),
}

/// Checks the batch at `pos` of `data` fully (CRC included) and that it starts at `expected`.
pub fn probe(data: &[u8], pos: usize, expected: u64) -> Probe {
    match batch::check(&data[pos..]) {
        Ok(h) if h.base_offset == expected => Probe::Batch(h),
        Ok(h) => Probe::Damaged(format!(
            "batch claims base offset {} where {expected} was expected",
            h.base_offset
        )),
        Err(e) => Probe::Damaged(e.to_string()),
    }
}

/// The next position after `from` holding a fully valid batch whose base offset lies in
/// `min_offset..max_offset` (and no further than the skipped bytes can hold): where reading
/// can resume after damage.
pub fn resync(
    data: &[u8],
    from: usize,
    min_offset: u64,
    max_offset: u64,
) -> Option<(usize, BatchHeader)> {
    let magic = batch::MAGIC.to_le_bytes();
    let mut pos = from + 1;
    while pos + batch::MIN_HEADER_LEN <= data.len() {
        // The base offset lies outside the CRC: besides the range, it must be reachable
        // from `min_offset` through the skipped bytes (every record takes at least a byte),
        // so a damaged base offset is never believed.
        let reachable = min_offset.saturating_add((pos - from) as u64);
        if data[pos + 12..pos + 16] == magic
            && let Ok(h) = batch::check(&data[pos..])
            && (min_offset..max_offset).contains(&h.base_offset)
            && h.base_offset <= reachable
        {
            return Some((pos, h));
        }
        pos += 1;
    }
    None
}

/// Decodes a header without the CRC check, for hopping over trusted bytes.
/// `pos` may lie past the end (a snapshot's position is read from disk): that is an error.
pub fn hop(data: &[u8], pos: usize) -> Result<BatchHeader, BatchError> {
    let rest = data.get(pos..).unwrap_or_default();
    let h = batch::decode_header(rest)?;
    if h.total_len > rest.len() {
        return Err(BatchError::Truncated {
            needed: h.total_len,
            available: rest.len(),
        });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(file_name(42, "log"), "00000000000000000042.log");
        assert_eq!(parse_log_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_name("42.log"), None);
        assert_eq!(parse_log_name("00000000000000000042.index"), None);
        assert_eq!(parse_log_name("0000000000000000004x.log"), None);
    }
}
