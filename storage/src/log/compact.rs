//! Compaction: closed segments rewritten keeping the newest record of each key, at the
//! offsets they had. See ARCHITECTURE.md, *Compaction*.
//!
//! A pass maps the newest offset of each key in the dirty part of the log (the closed
//! segments past the last pass's checkpoint), at most `max_keys` keys, then rewrites every
//! closed segment below the point the map reaches: a record stays unless the map holds a
//! newer offset for its key, or it is a tombstone older than `delete_retention_ms` with
//! nothing newer. Each segment is written to a temporary file, synced, and renamed over
//! the old one (the commit point), its indexes after it: a crash at any step leaves the old
//! segment or the new one, whole, and stale index files are found and rebuilt by readers.
//! Appends never wait for a pass (the writer lock is held only to swap one segment in),
//! and readers holding the old segment's map keep reading it.

use std::cell::Cell;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::batch::{self, Record, StoredRecord};
use crate::disk;
use crate::error::{Error, Result};
use crate::faults;
use crate::segment::{self, IndexBuilder, Probe, Segment};

use super::{Log, sync_dir};

/// The header naming a tombstone: a record with a key, an empty value and this header
/// (its value ignored) deletes its key.
pub const TOMBSTONE_HEADER: &str = "spool-tombstone";

/// Bytes of records an output batch gathers before it closes (its span ends at an input
/// batch's end): big enough to compress well, small enough that a read inflates little.
const OUTPUT_BATCH_BYTES: usize = batch::CHUNK_TARGET;

/// The file holding the offset below which the log is clean.
const CHECKPOINT: &str = "cleaner-checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"SPCK";

/// What one pass may do.
#[derive(Clone, Debug)]
pub struct CompactOptions {
    /// The broker's clock, which tombstone ages are measured against.
    pub now_ms: i64,
    /// A tombstone appended longer ago than this is removed.
    pub delete_retention_ms: u64,
    /// The most keys the pass maps (its memory bound: about 32 bytes a key). A dirty part
    /// with more keys is cleaned over several passes.
    pub max_keys: usize,
    /// Bytes per second the pass reads and writes at most; 0 = unthrottled.
    pub bytes_per_sec: u64,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompactReport {
    /// Segments rewritten.
    pub segments: usize,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records removed (superseded, or expired tombstones).
    pub records_removed: u64,
    /// The checkpoint after the pass: the log is clean below it.
    pub cleaned_to: u64,
    pub duration: Duration,
}

impl CompactReport {
    pub fn bytes_cleaned(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

impl Log {
    /// The share of the closed segments' bytes past the last compaction's checkpoint (0
    /// with no closed segment): what the next pass would clean.
    pub fn dirty_ratio(&self) -> f64 {
        let clean_below = self.cleaned_to.load(Ordering::Acquire);
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let closed = &segs[..segs.len() - 1];
        let total: u64 = closed.iter().map(|s| s.len()).sum();
        let dirty: u64 = closed
            .iter()
            .filter(|s| s.end() > clean_below)
            .map(|s| s.len())
            .sum();
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    /// Whether a pass would do anything now: the dirty share of the closed segments is at
    /// least `min_dirty_ratio` (and above 0), or a dirty closed segment's newest batch was
    /// appended `max_lag_ms` or longer ago (so a little dirt is not kept forever), or a
    /// tombstone kept by the last pass has expired since (after a reopen: one pass finds
    /// out).
    pub fn needs_compaction(&self, now_ms: i64, min_dirty_ratio: f64, max_lag_ms: u64) -> bool {
        if self.tombstones_due_ms.load(Ordering::Acquire) <= now_ms {
            return true;
        }
        let ratio = self.dirty_ratio();
        if ratio <= 0.0 {
            return false;
        }
        if ratio >= min_dirty_ratio {
            return true;
        }
        let clean_below = self.cleaned_to.load(Ordering::Acquire);
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let lag = i64::try_from(max_lag_ms).unwrap_or(i64::MAX);
        segs[..segs.len() - 1]
            .iter()
            .find(|s| s.end() > clean_below)
            .is_some_and(|s| s.newest_append_time(&self.shared.cache) <= now_ms.saturating_sub(lag))
    }

    /// Runs one compaction pass (see the module doc). Blocks on the disk: never on an async
    /// thread. A second pass on the same log while one runs returns at once, empty.
    pub fn compact(&self, opts: &CompactOptions) -> Result<CompactReport> {
        let Some(_running) = self.compacting.try_lock() else {
            return Ok(CompactReport::default());
        };
        let began = Instant::now();
        let mut throttle = Throttle::new(opts.bytes_per_sec);
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let closed = &segs[..segs.len() - 1];
        let clean_below = self.cleaned_to.load(Ordering::Acquire);
        let mut report = CompactReport {
            cleaned_to: clean_below,
            ..CompactReport::default()
        };
        let dirty: Vec<&Arc<Segment>> = closed.iter().filter(|s| s.end() > clean_below).collect();
        let tombstones_due = self.tombstones_due_ms.load(Ordering::Acquire) <= opts.now_ms;
        if dirty.is_empty() && !tombstones_due {
            return Ok(report);
        }
        let keys = KeyMap::new(opts.max_keys);
        let (keys, stop) = self.map_keys(keys, &dirty, clean_below, &mut throttle)?;
        let rule = Keep {
            keys: &keys,
            opts,
            last_record: self.last_record(),
            next_expiry: Cell::new(i64::MAX),
        };
        for seg in closed.iter().filter(|s| s.base < stop) {
            if let Some((before, after, removed)) = self.clean_segment(seg, &rule, &mut throttle)? {
                report.segments += 1;
                report.bytes_before += before;
                report.bytes_after += after;
                report.records_removed += removed;
            }
        }
        self.store_checkpoint(stop)?;
        self.tombstones_due_ms
            .store(rule.next_expiry.get(), Ordering::Release);
        report.cleaned_to = stop;
        report.duration = began.elapsed();
        tracing::info!(log = %self.name, segments = report.segments, removed = report.records_removed, bytes_cleaned = report.bytes_cleaned(), cleaned_to = stop, "compacted");
        Ok(report)
    }

    /// Maps each key of the dirty segments to its newest offset, until `keys` is full.
    /// Returns the map and the offset it reaches: every record below it was mapped.
    fn map_keys(
        &self,
        mut keys: KeyMap,
        dirty: &[&Arc<Segment>],
        clean_below: u64,
        throttle: &mut Throttle,
    ) -> Result<(KeyMap, u64)> {
        let mut stop = clean_below;
        for seg in dirty {
            let mut full = false;
            self.each_batch(seg, |h, records| {
                for r in records.iter().filter(|r| r.offset >= clean_below) {
                    if !r.key.is_empty() && !keys.insert(&r.key, r.offset) {
                        full = true;
                        return false;
                    }
                    stop = r.offset + 1;
                }
                stop = stop.max(h.next_offset().min(seg.end()));
                true
            })?;
            throttle.spent(seg.len());
            if full {
                break;
            }
            stop = seg.end();
        }
        Ok((keys, stop))
    }

    /// The offset of the log's last record (never removed, so the end offset is always
    /// backed by the batch holding it, and a read below the end returns a record).
    fn last_record(&self) -> u64 {
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        for seg in segs.iter().rev() {
            let mut last = None;
            let walked = self.each_batch(seg, |_, records| {
                if let Some(r) = records.last() {
                    last = Some(r.offset);
                }
                true
            });
            match (walked, last) {
                (Ok(()), Some(last)) => return last,
                (Ok(()), None) => continue,
                // Unreadable: keep the whole segment.
                (Err(_), _) => return seg.base,
            }
        }
        0
    }

    /// Calls `f` with each batch of `seg` and its records, in order, until it returns false.
    fn each_batch(
        &self,
        seg: &Segment,
        mut f: impl FnMut(&batch::BatchHeader, Vec<StoredRecord>) -> bool,
    ) -> Result<()> {
        let data = seg.data(&self.shared.cache)?;
        let (mut pos, mut expected) = (0usize, seg.base);
        while expected < seg.end() && pos < data.len() {
            let h = match segment::probe(&data, pos, expected) {
                Probe::Batch(h) => h,
                Probe::Damaged(reason) => {
                    return Err(Error::Corrupt {
                        path: seg.log_path.clone(),
                        position: pos as u64,
                        offsets: Some(expected..seg.end()),
                        reason,
                    });
                }
            };
            let records = super::read::decode(
                &self.shared.budget,
                seg,
                &data,
                pos,
                h,
                h.base_offset,
                usize::MAX,
            )?;
            if !f(&h, records) {
                return Ok(());
            }
            pos += h.total_len;
            expected = h.next_offset();
        }
        Ok(())
    }

    /// Rewrites `seg` keeping what `rule` keeps, unless it keeps everything (found by a
    /// first read that writes nothing). Returns the bytes before and after and the records
    /// removed, or `None` if nothing changed. Output batches are written as they fill, so
    /// the pass holds about one batch of records.
    fn clean_segment(
        &self,
        seg: &Arc<Segment>,
        rule: &Keep,
        throttle: &mut Throttle,
    ) -> Result<Option<(u64, u64, u64)>> {
        let mut removed = 0u64;
        self.each_batch(seg, |h, records| {
            removed += records.iter().filter(|r| !rule.keeps(r, h)).count() as u64;
            true
        })?;
        throttle.spent(seg.len());
        if removed == 0 {
            return Ok(None);
        }
        let config = self.config();
        let tmp = temp_path(&seg.log_path);
        let mut out = Output::create(&tmp, seg.base, config.index_interval_bytes)?;
        let mut pending = Pending {
            base: seg.base,
            next: seg.base,
            append_time_ms: i64::MIN,
            ..Pending::default()
        };
        let mut failed = None;
        self.each_batch(seg, |h, records| {
            for r in records.into_iter().filter(|r| rule.keeps(r, h)) {
                pending.push(r);
            }
            pending.cover(h);
            if pending.bytes >= OUTPUT_BATCH_BYTES
                && let Err(e) = out.write(&mut pending, config.compression, throttle)
            {
                failed = Some(e);
                return false;
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if pending.next > pending.base {
            out.write(&mut pending, config.compression, throttle)?;
        }
        let (len, offsets, times) = out.finish()?;
        let index_tmp = temp_path(&seg.index_path);
        let time_tmp = temp_path(&seg.time_path);
        write_synced(&index_tmp, &offsets)?;
        write_synced(&time_tmp, &times)?;
        if !self.swap_in(seg, &tmp, len)? {
            for p in [&tmp, &index_tmp, &time_tmp] {
                disk::remove_file(p).map_err(|e| Error::io("remove", p, e))?;
            }
            return Ok(None);
        }
        for (from, to) in [(&index_tmp, &seg.index_path), (&time_tmp, &seg.time_path)] {
            faults::check(faults::Op::Rename, to)
                .and_then(|()| disk::rename(from, to))
                .map_err(|e| Error::io("rename", to, e))?;
        }
        sync_dir(&self.dir)?;
        Ok(Some((seg.len(), len, removed)))
    }

    /// Renames the cleaned file over `seg` and puts it in the log's map, if `seg` is still
    /// there (a truncation or retention since the pass began wins: `false`).
    fn swap_in(&self, seg: &Arc<Segment>, tmp: &Path, len: u64) -> Result<bool> {
        let _w = self.writer.lock();
        let mut map = self.segments.write();
        let current = map.get(&seg.base).is_some_and(|m| Arc::ptr_eq(m, seg));
        let closed = map.range(seg.base + 1..).next().is_some();
        if !current || !closed {
            return Ok(false);
        }
        faults::check(faults::Op::Rename, &seg.log_path)
            .and_then(|()| disk::rename(tmp, &seg.log_path))
            .map_err(|e| Error::io("rename", &seg.log_path, e))?;
        let id = self.shared.next_id();
        let cleaned = Segment::closed(&self.dir, seg.base, id, len, seg.end());
        map.insert(seg.base, Arc::new(cleaned));
        self.shared.cache.forget(seg.id);
        Ok(true)
    }

    /// Stores the checkpoint (tmp, fsync, rename): derived data, so a lost one only makes
    /// the next pass map more.
    fn store_checkpoint(&self, offset: u64) -> Result<()> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        bytes.extend_from_slice(&offset.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let path = self.dir.join(CHECKPOINT);
        let tmp = temp_path(&path);
        write_synced(&tmp, &bytes)?;
        disk::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
        self.cleaned_to.store(offset, Ordering::Release);
        Ok(())
    }
}

/// The checkpoint stored in `dir`, or 0 when there is none (or it is damaged).
pub(super) fn load_checkpoint(dir: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(dir.join(CHECKPOINT)) else {
        return 0;
    };
    if bytes.len() != 16 || &bytes[..4] != CHECKPOINT_MAGIC {
        return 0;
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..12]) != crc {
        return 0;
    }
    u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"))
}

/// `path` + `.cleaned.tmp` (removed when the log opens, as every `.tmp`).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".cleaned.tmp");
    path.with_file_name(name)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    faults::check(faults::Op::Write, path)
        .and_then(|()| disk::write_file(path, bytes))
        .and_then(|f| {
            faults::check(faults::Op::Sync, path).and_then(|()| disk::sync_data(&f, path))
        })
        .map_err(|e| Error::io("write", path, e))
}

/// Whether a record survives the pass.
struct Keep<'a> {
    keys: &'a KeyMap,
    opts: &'a CompactOptions,
    /// The log's last record (and, if it cannot be read, everything from here) stays.
    last_record: u64,
    /// When the first tombstone kept so far expires.
    next_expiry: Cell<i64>,
}

impl Keep<'_> {
    fn keeps(&self, r: &StoredRecord, h: &batch::BatchHeader) -> bool {
        if r.key.is_empty() || r.offset >= self.last_record {
            return true;
        }
        if self
            .keys
            .newest(&r.key)
            .is_some_and(|newest| newest > r.offset)
        {
            return false;
        }
        let tombstone = r.value.is_empty() && r.headers.iter().any(|h| h.key == TOMBSTONE_HEADER);
        if !tombstone {
            return true;
        }
        let retention = i64::try_from(self.opts.delete_retention_ms).unwrap_or(i64::MAX);
        let expires = h.append_time_ms.saturating_add(retention);
        if expires <= self.opts.now_ms {
            return false;
        }
        self.next_expiry.set(self.next_expiry.get().min(expires));
        true
    }
}

/// Keys by a 128-bit hash (two independently seeded SipHashes, new each pass, so no
/// client can aim for a collision) to their newest offset.
struct KeyMap {
    map: HashMap<u128, u64>,
    max: usize,
    seeds: (RandomState, RandomState),
}

impl KeyMap {
    fn new(max: usize) -> KeyMap {
        KeyMap {
            map: HashMap::new(),
            max: max.max(1),
            seeds: (RandomState::new(), RandomState::new()),
        }
    }

    fn hash(&self, key: &[u8]) -> u128 {
        (u128::from(self.seeds.0.hash_one(key)) << 64) | u128::from(self.seeds.1.hash_one(key))
    }

    /// Records `offset` as `key`'s newest; false if the map is full and `key` is new.
    fn insert(&mut self, key: &[u8], offset: u64) -> bool {
        let h = self.hash(key);
        if self.map.len() >= self.max && !self.map.contains_key(&h) {
            return false;
        }
        self.map.insert(h, offset);
        true
    }

    fn newest(&self, key: &[u8]) -> Option<u64> {
        self.map.get(&self.hash(key)).copied()
    }
}

/// The output batch being gathered: it covers whole input batches, `base..next`, and
/// holds the records kept from them.
#[derive(Default)]
struct Pending {
    base: u64,
    next: u64,
    append_time_ms: i64,
    records: Vec<(u32, Record)>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, r: StoredRecord) {
        self.bytes += r.payload_len() + 16;
        // Input batches lie within one segment, whose offsets fit a u32 from its base.
        let delta = (r.offset - self.base) as u32;
        self.records.push((
            delta,
            Record {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            },
        ));
    }

    /// Starts covering at input batch `h` if empty, and extends the span past it. The
    /// batch's newest append time stands for all its records (tombstones only ever age
    /// later for it, never earlier).
    fn cover(&mut self, h: &batch::BatchHeader) {
        self.next = h.next_offset();
        self.append_time_ms = self.append_time_ms.max(h.append_time_ms);
    }

    /// Takes the gathered batch out, leaving an empty one that starts where it ended.
    fn take(&mut self) -> Pending {
        let next = self.next;
        std::mem::replace(
            self,
            Pending {
                base: next,
                next,
                append_time_ms: i64::MIN,
                ..Pending::default()
            },
        )
    }
}

/// The cleaned segment being written, and its indexes.
struct Output {
    file: std::fs::File,
    path: PathBuf,
    base: u64,
    pos: u64,
    index: IndexBuilder,
    buf: Vec<u8>,
}

impl Output {
    fn create(path: &Path, base: u64, interval: u32) -> Result<Output> {
        let file = disk::open(path, true, true).map_err(|e| Error::io("create", path, e))?;
        Ok(Output {
            file,
            path: path.to_path_buf(),
            base,
            pos: 0,
            index: IndexBuilder::new(interval),
            buf: Vec::new(),
        })
    }

    /// Writes the pending batch and empties it.
    fn write(
        &mut self,
        pending: &mut Pending,
        compression: batch::Compression,
        throttle: &mut Throttle,
    ) -> Result<()> {
        let b = pending.take();
        let span = u32::try_from(b.next - b.base).map_err(|_| {
            Error::InvalidConfig(format!(
                "a segment of {} spans more than 2^32 offsets",
                self.path.display()
            ))
        })?;
        let h = batch::encode_sparse_compressed(
            &mut self.buf,
            b.base,
            span,
            &b.records,
            b.append_time_ms,
            compression,
        );
        faults::check(faults::Op::Write, &self.path)
            .and_then(|()| disk::write_at(&self.file, &self.path, &self.buf, self.pos))
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.index
            .observe(self.pos, (b.base - self.base) as u32, &h);
        self.pos += self.buf.len() as u64;
        throttle.spent(self.buf.len() as u64);
        Ok(())
    }

    /// Syncs the file; returns its length and index bytes.
    fn finish(mut self) -> Result<(u64, Vec<u8>, Vec<u8>)> {
        faults::check(faults::Op::Sync, &self.path)
            .and_then(|()| disk::sync_data(&self.file, &self.path))
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        self.index.final_time_entry();
        Ok((self.pos, self.index.offsets, self.index.times))
    }
}

/// Keeps a pass's reads and writes at `bytes_per_sec` by sleeping its (blocking) thread.
struct Throttle {
    rate: u64,
    began: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            began: Instant::now(),
            bytes: 0,
        }
    }

    fn spent(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.began.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
