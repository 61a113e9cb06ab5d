//! A log: the segments of one partition. Appends, reads by offset and time, rolls,
//! retention, truncation, group-committed fsyncs and wake-ups for tailing readers.
//!
//! Lock order: `writer`, then `segments`, then a segment's own locks, then `sync_file`.
//! `sync` is taken without `writer` except by [`Log::truncate`], which takes `writer` first.
//! No lock is held across an fsync except the writer's during a roll or truncate.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::Shared;
use crate::batch::{self, Batch, ProducerStamp, Record, StoredRecord};
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::faults;
use crate::producer::{ProducerTable, Snapshot, Verdict};
use crate::recovery;
use crate::segment::{self, ActiveIndex, IndexBuilder, Probe, Segment};

/// A snapshot of the active segment's state is saved every this many appended bytes.
const SNAPSHOT_INTERVAL_BYTES: u64 = 32 * 1024 * 1024;

/// A callback run after every append with the new end offset (e.g. to wake async readers).
pub type Listener = Box<dyn Fn(u64) + Send + Sync>;

/// The outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record; the records hold `base_offset..base_offset+record_count`.
    pub base_offset: u64,
    pub record_count: u32,
    /// The batch was already in the log (an idempotent retry); nothing was written.
    pub duplicate: bool,
    /// The batch is on disk (fdatasync'd) on return.
    pub fsynced: bool,
}

/// A damaged range found by [`Log::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    /// Byte positions in the segment file.
    pub positions: Range<u64>,
    /// Offsets whose records are lost (empty for damage after a segment's last batch).
    pub offsets: Range<u64>,
    pub reason: String,
}

/// What opening the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub start_offset: u64,
    pub end_offset: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub dropped_bytes: u64,
    /// Batches whose CRC recovery checked (the tail after the last index entry).
    pub scanned_batches: u64,
    pub recovery_time: Duration,
}

struct Writer {
    segment: Arc<Segment>,
    file: Arc<File>,
    index_file: File,
    time_file: File,
    index_file_len: u64,
    time_file_len: u64,
    pos: u64,
    reserved: u64,
    /// Position of the segment's latest snapshot.
    snapshot_pos: u64,
    index: IndexBuilder,
    producers: ProducerTable,
    scratch: Vec<u8>,
}

#[derive(Default)]
struct SyncState {
    running: bool,
}

/// One partition's log. Cheap to share (`Arc<Log>`): appends are serialised inside, reads
/// run concurrently and never wait for the writer.
pub struct Log {
    name: String,
    dir: PathBuf,
    config: LogConfig,
    shared: Arc<Shared>,
    writer: Mutex<Writer>,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    start: AtomicU64,
    end: AtomicU64,
    durable: AtomicU64,
    sync: Mutex<SyncState>,
    sync_done: Condvar,
    sync_file: Mutex<Arc<File>>,
    last_sync: Mutex<Instant>,
    data_lock: Mutex<()>,
    data_ready: Condvar,
    listeners: RwLock<Vec<Listener>>,
    poisoned: AtomicBool,
    /// Files of segments closed without an fsync (durability other than `Always`), and the
    /// directory: synced by the next `sync` before it moves the durable offset.
    unsynced: Mutex<Vec<PathBuf>>,
    report: OpenReport,
}

impl Log {
    pub(crate) fn open(
        shared: Arc<Shared>,
        dir: PathBuf,
        name: String,
        config: LogConfig,
    ) -> Result<Log> {
        let began = Instant::now();
        config.validate()?;
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let mut bases = Vec::new();
        let mut others = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".tmp") {
                remove_file(&entry.path())?;
            } else if let Some(base) = segment::parse_log_name(&file_name) {
                bases.push(base);
            } else {
                others.push(entry.path());
            }
        }
        bases.sort_unstable();
        for path in others {
            let stem_base = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| segment::parse_log_name(&format!("{s}.log")));
            if stem_base.is_some_and(|b| bases.binary_search(&b).is_err()) {
                remove_file(&path)?;
            }
        }
        if bases.is_empty() {
            create_segment_files(&dir, 0, &Snapshot::default())?;
            sync_dir(&dir)?;
            bases.push(0);
        }

        let mut segments = BTreeMap::new();
        for pair in bases.windows(2) {
            let (base, next) = (pair[0], pair[1]);
            let path = dir.join(segment::file_name(base, "log"));
            let len = fs::metadata(&path)
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            let id = shared.next_id();
            segments.insert(base, Arc::new(Segment::closed(&dir, base, id, len, next)));
        }

        let base = *bases.last().expect("at least one segment");
        let log_path = dir.join(segment::file_name(base, "log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| Error::io("open", &log_path, e))?;
        let index_path = dir.join(segment::file_name(base, "index"));
        let time_path = dir.join(segment::file_name(base, "timeindex"));
        let snapshot_path = dir.join(segment::file_name(base, "producers"));
        let offsets = read_optional(&index_path)?;
        let times = read_optional(&time_path)?;
        let snapshot = match read_optional(&snapshot_path)? {
            bytes if bytes.is_empty() => None,
            bytes => Snapshot::decode(&bytes).or_else(|| {
                tracing::warn!(path = %snapshot_path.display(), "segment snapshot is damaged; replaying the segment's batch headers instead");
                None
            }),
        };
        // Without a usable snapshot of its own, a later segment inherits the producer state
        // of the one before it (a crash can interrupt a roll, or the file can be damaged).
        let snapshot = match (snapshot, bases.len()) {
            (Some(s), _) => Some(s),
            (None, n) if n >= 2 => {
                let prev = bases[n - 2];
                let prev_snapshot =
                    read_optional(&dir.join(segment::file_name(prev, "producers")))?;
                let producers = recovery::producers_after(
                    &dir.join(segment::file_name(prev, "log")),
                    prev,
                    Snapshot::decode(&prev_snapshot),
                )?;
                Some(Snapshot {
                    position: 0,
                    next_offset: base,
                    max_ts: i64::MIN,
                    max_rel: 0,
                    producers,
                })
            }
            (None, _) => None,
        };
        let tail = recovery::recover_tail(
            &log_path,
            &file,
            base,
            &offsets,
            &times,
            config.index_interval_bytes,
            snapshot,
        )?;
        let mut producers = tail.producers;
        // A snapshot (derived data) may remember batches the log no longer holds: forget
        // them, so a retry is never answered with offsets that do not exist.
        producers.truncate(tail.end);
        // What recovery kept may be only in the page cache (the process, not the machine,
        // went down): make it durable before calling it so.
        file.sync_data()
            .map_err(|e| Error::io("fsync", &log_path, e))?;
        let index_file = rewrite(&index_path, &tail.index.offsets)?;
        let time_file = rewrite(&time_path, &tail.index.times)?;
        let file = Arc::new(file);
        let active = Arc::new(Segment::active(
            &dir,
            base,
            shared.next_id(),
            Arc::clone(&file),
            tail.len,
            tail.end,
            tail.index.max_ts,
            ActiveIndex {
                offsets: tail.index.offsets.clone(),
                times: tail.index.times.clone(),
            },
        ));
        segments.insert(base, Arc::clone(&active));
        let start = *segments.keys().next().expect("at least one segment");
        let mut index = tail.index;
        let (index_file_len, time_file_len) =
            (index.offsets.len() as u64, index.times.len() as u64);
        index.offsets = Vec::new();
        index.times = Vec::new();
        let report = OpenReport {
            segments: segments.len(),
            start_offset: start,
            end_offset: tail.end,
            dropped_bytes: tail.dropped,
            scanned_batches: tail.scanned_batches,
            recovery_time: began.elapsed(),
        };
        Ok(Log {
            name,
            dir,
            shared,
            writer: Mutex::new(Writer {
                segment: active,
                file: Arc::clone(&file),
                index_file,
                time_file,
                index_file_len,
                time_file_len,
                pos: tail.len,
                reserved: tail.len,
                snapshot_pos: tail.len,
                index,
                producers,
                scratch: Vec::new(),
            }),
            segments: RwLock::new(segments),
            start: AtomicU64::new(start),
            end: AtomicU64::new(tail.end),
            durable: AtomicU64::new(tail.end),
            sync: Mutex::new(SyncState::default()),
            sync_done: Condvar::new(),
            sync_file: Mutex::new(file),
            last_sync: Mutex::new(Instant::now()),
            data_lock: Mutex::new(()),
            data_ready: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            poisoned: AtomicBool::new(false),
            unsynced: Mutex::new(Vec::new()),
            report,
            config,
        })
    }

    /// The log's name within its storage.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory holding the log's segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What opening the log found and did.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The first offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// The offset the next record will get.
    pub fn end_offset(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Every offset below this is on disk (fdatasync'd).
    pub fn durable_offset(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().values().map(|s| s.len()).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Runs `listener` with the new end offset after every append.
    pub fn add_listener(&self, listener: Listener) {
        self.listeners.write().push(listener);
    }

    /// Appends `records` as one batch at the end of the log.
    pub fn append(&self, records: &[Record], producer: ProducerStamp) -> Result<Appended> {
        self.append_inner(None, records, producer, true)
    }

    /// Appends like [`Log::append`] but returns once the batch is written and visible,
    /// without waiting for the durability policy: the caller calls [`Log::sync_to`] for
    /// `base_offset + record_count` when the policy is [`Durability::Always`]. This lets a
    /// pipelined caller keep the order of its writes while their fsyncs overlap.
    pub fn append_unsynced(&self, records: &[Record], producer: ProducerStamp) -> Result<Appended> {
        self.append_inner(None, records, producer, false)
    }

    /// Appends `records` as one batch that must start at `offset` (a follower's path).
    pub fn append_at(
        &self,
        offset: u64,
        records: &[Record],
        producer: ProducerStamp,
    ) -> Result<Appended> {
        self.append_inner(Some(offset), records, producer, true)
    }

    fn append_inner(
        &self,
        at: Option<u64>,
        records: &[Record],
        producer: ProducerStamp,
        sync: bool,
    ) -> Result<Appended> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        self.check_poisoned()?;
        let first_ts = records[0].timestamp_ms;
        let mut size = batch::HEADER_LEN as u64;
        for (i, r) in records.iter().enumerate() {
            let n = batch::record_encoded_len(r, i, first_ts) as u64;
            if n > self.config.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    size: n,
                    max: self.config.max_record_bytes,
                });
            }
            size += n;
        }
        if size > self.config.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size,
                max: self.config.max_batch_bytes,
            });
        }
        let mut w = self.writer.lock();
        let end = self.end.load(Ordering::Acquire);
        if end.checked_add(records.len() as u64).is_none() {
            return Err(Error::LogFull { end });
        }
        if let Some(at) = at
            && at != end
        {
            return Err(Error::OffsetMismatch {
                expected: end,
                got: at,
            });
        }
        let appended = match w.producers.check(producer)? {
            Verdict::Duplicate {
                base_offset,
                record_count,
            } => {
                drop(w);
                Appended {
                    base_offset,
                    record_count,
                    duplicate: true,
                    fsynced: false,
                }
            }
            Verdict::Append => {
                let mut buf = std::mem::take(&mut w.scratch);
                let header = batch::encode(&mut buf, end, producer, records);
                let written = self.write_batch(&mut w, &buf, &header);
                w.scratch = buf;
                written?;
                w.producers.observe(&header);
                drop(w);
                self.notify(header.next_offset());
                Appended {
                    base_offset: end,
                    record_count: header.record_count,
                    duplicate: false,
                    fsynced: false,
                }
            }
        };
        let fsynced = match self.config.durability {
            Durability::Always if sync => {
                self.sync_to(appended.base_offset + u64::from(appended.record_count))?;
                true
            }
            _ => self.durable_offset() >= appended.base_offset + u64::from(appended.record_count),
        };
        Ok(Appended {
            fsynced,
            ..appended
        })
    }

    fn write_batch(&self, w: &mut Writer, buf: &[u8], h: &batch::BatchHeader) -> Result<()> {
        let len = buf.len() as u64;
        let rel_fits = u32::try_from(h.next_offset() - w.segment.base).is_ok();
        if w.pos > 0 && (w.pos + len > self.config.segment_bytes || !rel_fits) {
            self.roll(w)?;
        }
        self.reserve(w, w.pos + len)?;
        let seg = Arc::clone(&w.segment);
        faults::check(faults::Op::Write, &seg.log_path)
            .and_then(|()| w.file.write_all_at(buf, w.pos))
            .map_err(|e| Error::io("write", &seg.log_path, e))?;
        let pos = w.pos;
        w.pos += len;
        let (offset_entry, time_entry) = w.index.observe(pos, (h.base_offset - seg.base) as u32, h);
        seg.publish(w.pos, h.next_offset(), h.max_timestamp_ms);
        seg.push_index(offset_entry, time_entry);
        self.write_index_entries(w, offset_entry, time_entry);
        self.end.store(h.next_offset(), Ordering::Release);
        if w.pos - w.snapshot_pos >= SNAPSHOT_INTERVAL_BYTES {
            self.write_snapshot(w, h.next_offset());
        }
        Ok(())
    }

    /// Saves the segment's state at the writer's position (not fsync'd: derived data that
    /// only shortens recovery).
    fn write_snapshot(&self, w: &mut Writer, next_offset: u64) {
        let snap = Snapshot {
            position: w.pos,
            next_offset,
            max_ts: w.index.max_ts,
            max_rel: w.index.max_rel,
            producers: w.producers.clone(),
        };
        let path = self
            .dir
            .join(segment::file_name(w.segment.base, "producers"));
        let tmp = path.with_extension("producers.tmp");
        match fs::write(&tmp, snap.encode()).and_then(|()| fs::rename(&tmp, &path)) {
            Ok(()) => w.snapshot_pos = w.pos,
            Err(e) => tracing::warn!(log = %self.name, error = %e, "segment snapshot write failed"),
        }
    }

    /// Appends index entries to the index files. Indexes are derived data: a failure here is
    /// logged and repaired when the segment closes or the log is recovered.
    fn write_index_entries(
        &self,
        w: &mut Writer,
        offset: Option<crate::index::OffsetEntry>,
        time: Option<crate::index::TimeEntry>,
    ) {
        if let Some(e) = offset {
            let mut buf = [0u8; crate::index::OFFSET_ENTRY_LEN];
            buf[..4].copy_from_slice(&e.rel.to_le_bytes());
            buf[4..].copy_from_slice(&e.pos.to_le_bytes());
            match w.index_file.write_all_at(&buf, w.index_file_len) {
                Ok(()) => w.index_file_len += buf.len() as u64,
                Err(e) => tracing::warn!(log = %self.name, error = %e, "offset index write failed"),
            }
        }
        if let Some(e) = time {
            let mut buf = [0u8; crate::index::TIME_ENTRY_LEN];
            buf[..8].copy_from_slice(&e.ts.to_le_bytes());
            buf[8..].copy_from_slice(&e.rel.to_le_bytes());
            match w.time_file.write_all_at(&buf, w.time_file_len) {
                Ok(()) => w.time_file_len += buf.len() as u64,
                Err(e) => tracing::warn!(log = %self.name, error = %e, "time index write failed"),
            }
        }
        w.index.offsets.clear();
        w.index.times.clear();
    }

    /// Makes sure the file has allocated blocks up to `need`, reserving ahead in steps.
    fn reserve(&self, w: &mut Writer, need: u64) -> Result<()> {
        if need <= w.reserved {
            return Ok(());
        }
        let step = (w.reserved + self.config.preallocate_bytes).min(self.config.segment_bytes);
        let target = need.max(step);
        faults::check(faults::Op::Allocate, &w.segment.log_path)
            .and_then(|()| allocate(&w.file, w.reserved, target - w.reserved))
            .map_err(|e| Error::io("fallocate", &w.segment.log_path, e))?;
        w.reserved = target;
        Ok(())
    }

    /// Closes the active segment and starts a new one at the end offset.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let old = Arc::clone(&w.segment);
        if let Some(e) = w.index.final_time_entry() {
            old.push_index(None, Some(e));
            self.write_index_entries(w, None, Some(e));
        }
        // Rewrite the index files whole from memory, so a failed entry write is repaired.
        if let Some((offsets, times)) = old.active_index_bytes() {
            w.index_file = rewrite(&old.index_path, &offsets)?;
            w.time_file = rewrite(&old.time_path, &times)?;
        }
        // Release the reserved tail: no view reaches past `pos`, so no page is pulled from
        // under a reader.
        w.file
            .set_len(w.pos)
            .map_err(|e| Error::io("truncate", &old.log_path, e))?;
        let always = self.config.durability == Durability::Always;
        if always {
            self.fsync(&w.file, &old.log_path)?;
            for (f, p) in [
                (&w.index_file, &old.index_path),
                (&w.time_file, &old.time_path),
            ] {
                f.sync_all().map_err(|e| Error::io("fsync", p, e))?;
            }
        } else {
            // Under `Interval` and `Never` a roll must not stall appends on the disk: the
            // closed files are synced by the next `sync`, before the durable offset moves.
            let mut unsynced = self.unsynced.lock();
            unsynced.extend([
                old.log_path.clone(),
                old.index_path.clone(),
                old.time_path.clone(),
            ]);
        }
        let end = self.end.load(Ordering::Acquire);
        let snapshot = Snapshot {
            position: 0,
            next_offset: end,
            max_ts: i64::MIN,
            max_rel: 0,
            producers: w.producers.clone(),
        };
        let (file, index_file, time_file) = create_segment_files(&self.dir, end, &snapshot)?;
        if always {
            sync_dir(&self.dir)?;
        }
        let file = Arc::new(file);
        let seg = Arc::new(Segment::active(
            &self.dir,
            end,
            self.shared.next_id(),
            Arc::clone(&file),
            0,
            end,
            i64::MIN,
            ActiveIndex::default(),
        ));
        self.segments.write().insert(end, Arc::clone(&seg));
        old.close();
        *self.sync_file.lock() = Arc::clone(&file);
        if always {
            self.durable.fetch_max(end, Ordering::AcqRel);
        }
        w.segment = seg;
        w.file = file;
        w.index_file = index_file;
        w.time_file = time_file;
        w.index_file_len = 0;
        w.time_file_len = 0;
        w.pos = 0;
        w.reserved = 0;
        w.snapshot_pos = 0;
        w.index = IndexBuilder::new(self.config.index_interval_bytes);
        Ok(())
    }

    fn fsync(&self, file: &File, path: &Path) -> Result<()> {
        faults::check(faults::Op::Sync, path)
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                // After a failed fsync the kernel may have dropped the dirty pages: never
                // pretend they are safe by retrying. Refuse writes until a restart recovers.
                self.poisoned.store(true, Ordering::Release);
                Error::io("fsync", path, e)
            })
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn notify(&self, end: u64) {
        drop(self.data_lock.lock());
        self.data_ready.notify_all();
        for l in self.listeners.read().iter() {
            l(end);
        }
    }

    /// Blocks until the end offset passes `offset` or `timeout` elapses; returns the end.
    pub fn wait_for(&self, offset: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut guard = self.data_lock.lock();
        loop {
            let end = self.end_offset();
            if end > offset {
                return end;
            }
            if self.data_ready.wait_until(&mut guard, deadline).timed_out() {
                return self.end_offset();
            }
        }
    }

    /// fdatasyncs everything appended so far.
    pub fn sync(&self) -> Result<()> {
        self.sync_to(self.end_offset())
    }

    /// Returns once every offset below `target` is on disk. Concurrent callers share one
    /// fdatasync (group commit): whoever finds no flush running starts one that covers
    /// everything published so far; the others wait for it and re-check.
    pub fn sync_to(&self, target: u64) -> Result<()> {
        // Nothing past the end can become durable: never wait for it.
        let target = target.min(self.end_offset());
        if self.durable_offset() >= target {
            return Ok(());
        }
        let mut st = self.sync.lock();
        loop {
            if self.durable_offset() >= target {
                return Ok(());
            }
            self.check_poisoned()?;
            if st.running {
                self.sync_done.wait(&mut st);
                continue;
            }
            st.running = true;
            drop(st);
            // Read the end, then the active file, then the closed-but-unsynced files: a roll
            // in between queues the older segment before it swaps the active file, so
            // together they cover everything below `end`.
            let end = self.end_offset();
            let file = Arc::clone(&self.sync_file.lock());
            let unsynced = std::mem::take(&mut *self.unsynced.lock());
            let mut result = Ok(());
            for path in &unsynced {
                result = result.and_then(|()| match File::open(path) {
                    Ok(f) => self.fsync(&f, path),
                    // Deleted by retention meanwhile: nothing left to make durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io("open", path, e)),
                });
            }
            if !unsynced.is_empty() {
                result = result.and_then(|()| sync_dir(&self.dir));
            }
            let result = result.and_then(|()| self.fsync(&file, &self.dir));
            if result.is_ok() {
                self.durable.fetch_max(end, Ordering::AcqRel);
                *self.last_sync.lock() = Instant::now();
            }
            st = self.sync.lock();
            st.running = false;
            self.sync_done.notify_all();
            result?;
        }
    }

    /// Whether the interval flusher should sync this log now.
    pub(crate) fn sync_due(&self, every: Duration) -> bool {
        self.end_offset() > self.durable_offset() && self.last_sync.lock().elapsed() >= every
    }

    fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .range(..=offset)
            .next_back()
            .map(|(_, s)| Arc::clone(s))
    }

    fn out_of_range(&self, requested: u64) -> Error {
        Error::OffsetOutOfRange {
            requested,
            start: self.start_offset(),
            end: self.end_offset(),
        }
    }

    /// Reads records from `offset` on, starting exactly there even inside a batch: at most
    /// `max_records`, and no more than `max_bytes` of payload except that the first record
    /// is always returned. Empty at the end offset. Damage is an error, never data.
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
                            let records = decode(&seg, &data, pos, h)?;
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
                    let records = decode(&seg, &data, pos, h)?;
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

    /// Deletes whole closed segments that retention no longer keeps: the oldest while the
    /// log would still hold `retention_bytes` without them, and those whose newest record
    /// is older than `retention`. Returns the number of segments deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        if self.config.retention_bytes.is_none() && self.config.retention.is_none() {
            return Ok(0);
        }
        let _w = self.writer.lock();
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let mut remaining: u64 = segs.iter().map(|s| s.len()).sum();
        let mut doomed = Vec::new();
        for s in &segs[..segs.len() - 1] {
            let by_bytes = self
                .config
                .retention_bytes
                .is_some_and(|max| remaining.saturating_sub(s.len()) >= max);
            let by_age = self.config.retention.is_some_and(|age| {
                let newest = s.max_timestamp(&self.shared.cache);
                newest != i64::MIN
                    && newest
                        < now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
            });
            if !(by_bytes || by_age) {
                break;
            }
            remaining -= s.len();
            doomed.push(Arc::clone(s));
        }
        let Some(last) = doomed.last() else {
            return Ok(0);
        };
        let new_start = last.end();
        {
            let mut map = self.segments.write();
            for s in &doomed {
                map.remove(&s.base);
            }
        }
        self.start.store(new_start, Ordering::Release);
        for s in &doomed {
            self.delete_segment_files(s)?;
        }
        sync_dir(&self.dir)?;
        tracing::info!(log = %self.name, segments = doomed.len(), start_offset = new_start, "retention deleted segments");
        Ok(doomed.len())
    }

    fn delete_segment_files(&self, s: &Segment) -> Result<()> {
        self.shared.cache.forget(s.id);
        for path in [
            s.log_path.clone(),
            s.index_path.clone(),
            s.time_path.clone(),
            self.dir.join(segment::file_name(s.base, "producers")),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &path, e)),
            }
        }
        Ok(())
    }

    /// Removes every record at or after `offset`, which must be a batch boundary (a
    /// follower's divergent suffix). Durable on return. Views already handed out keep
    /// the old bytes: the cut segment is rewritten into a new file, never shrunk in place.
    pub fn truncate(&self, offset: u64) -> Result<()> {
        let mut w = self.writer.lock();
        let end = self.end_offset();
        if offset == end {
            return Ok(());
        }
        if offset > end || offset < self.start_offset() {
            return Err(self.out_of_range(offset));
        }
        let mut st = self.sync.lock();
        while st.running {
            self.sync_done.wait(&mut st);
        }
        st.running = true;
        drop(st);
        let result = self.truncate_locked(&mut w, offset);
        let mut st = self.sync.lock();
        st.running = false;
        self.sync_done.notify_all();
        drop(st);
        result?;
        drop(w);
        self.notify(offset);
        Ok(())
    }

    fn truncate_locked(&self, w: &mut Writer, offset: u64) -> Result<()> {
        let seg = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        let data = seg.data(&self.shared.cache)?;
        let s = seg.locate(&self.shared.cache, &data, offset);
        let (mut pos, mut expected) = (s.pos, s.offset);
        while expected < offset {
            match segment::probe(&data, pos, expected) {
                Probe::Batch(h) if h.next_offset() <= offset => {
                    pos += h.total_len;
                    expected = h.next_offset();
                }
                Probe::Batch(h) => {
                    return Err(Error::NotBatchBoundary {
                        offset,
                        batch_start: h.base_offset,
                        batch_end: h.next_offset(),
                    });
                }
                Probe::Damaged(reason) => {
                    return Err(Error::Corrupt {
                        path: seg.log_path.clone(),
                        position: pos as u64,
                        offsets: None,
                        reason,
                    });
                }
            }
        }
        let later: Vec<Arc<Segment>> = self
            .segments
            .read()
            .range(seg.base + 1..)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        for s in later.iter().rev() {
            self.segments.write().remove(&s.base);
            s.close();
            self.delete_segment_files(s)?;
        }
        // Write the kept prefix into a new file and rename it over the segment.
        let tmp = seg.log_path.with_extension("log.truncate.tmp");
        let kept = &data[..pos];
        let write_tmp = || -> io::Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all_at(kept, 0)?;
            f.sync_all()?;
            Ok(f)
        };
        let file = write_tmp().map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, &seg.log_path).map_err(|e| Error::io("rename", &seg.log_path, e))?;
        sync_dir(&self.dir)?;
        let (builder, valid) =
            segment::scan_indexes(kept, seg.base, self.config.index_interval_bytes);
        debug_assert_eq!(valid, pos);
        let index_file = rewrite(&seg.index_path, &builder.offsets)?;
        let time_file = rewrite(&seg.time_path, &builder.times)?;
        let file = Arc::new(file);
        let fresh = Arc::new(Segment::active(
            &self.dir,
            seg.base,
            self.shared.next_id(),
            Arc::clone(&file),
            pos as u64,
            offset,
            builder.max_ts,
            ActiveIndex {
                offsets: builder.offsets.clone(),
                times: builder.times.clone(),
            },
        ));
        seg.close();
        self.shared.cache.forget(seg.id);
        self.segments.write().insert(seg.base, Arc::clone(&fresh));
        *self.sync_file.lock() = Arc::clone(&file);
        w.index_file_len = builder.offsets.len() as u64;
        w.time_file_len = builder.times.len() as u64;
        let mut index = builder;
        index.offsets = Vec::new();
        index.times = Vec::new();
        w.segment = fresh;
        w.file = file;
        w.index_file = index_file;
        w.time_file = time_file;
        w.pos = pos as u64;
        w.reserved = pos as u64;
        w.index = index;
        w.producers.truncate(offset);
        // The segment's snapshot may describe the removed suffix: drop it (recovery then
        // replays the segment's headers).
        let snap = self.dir.join(segment::file_name(seg.base, "producers"));
        if seg.base != offset || w.producers.is_empty() {
            let _ = fs::remove_file(&snap);
        }
        w.snapshot_pos = 0;
        self.end.store(offset, Ordering::Release);
        let durable = self.durable_offset().min(offset);
        self.durable.store(durable, Ordering::Release);
        Ok(())
    }

    /// Checks every batch of every segment (CRC, lengths, offsets) and reports each damaged
    /// range. Reads nothing into the log's state; safe while appends run.
    pub fn verify(&self) -> Result<Vec<Damage>> {
        let end = self.end_offset();
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let mut damage = Vec::new();
        for seg in segs {
            let data = seg.data(&self.shared.cache)?;
            let seg_end = seg.end().min(end);
            let (mut pos, mut expected) = (0usize, seg.base);
            while expected < seg_end {
                let probe = if pos < data.len() {
                    segment::probe(&data, pos, expected)
                } else {
                    Probe::Damaged("segment ends before its last offset".into())
                };
                match probe {
                    Probe::Batch(h) => {
                        pos += h.total_len;
                        expected = h.next_offset();
                    }
                    Probe::Damaged(reason) => {
                        let resume =
                            segment::resync(&data, pos, expected.saturating_add(1), seg_end);
                        let (rpos, rbase) =
                            resume.map_or((data.len(), seg_end), |(p, h)| (p, h.base_offset));
                        damage.push(Damage {
                            segment: seg.log_path.clone(),
                            positions: pos as u64..rpos as u64,
                            offsets: expected..rbase,
                            reason,
                        });
                        pos = rpos;
                        expected = rbase;
                    }
                }
            }
            // Index problems matter only where the log itself is intact: a damaged log
            // explains them, and its own damage is reported above.
            let log_damaged = damage.iter().any(|d| d.segment == seg.log_path);
            if !log_damaged {
                for (path, problem) in seg.check_indexes(&self.shared.cache, &data) {
                    damage.push(Damage {
                        segment: path,
                        positions: 0..0,
                        offsets: seg.base..seg.base,
                        reason: format!(
                            "{problem} (indexes are derived: rebuilt from the log when next used)"
                        ),
                    });
                }
            }
            if !seg.is_active() && data[pos.min(data.len())..].iter().any(|&b| b != 0) {
                damage.push(Damage {
                    segment: seg.log_path.clone(),
                    positions: pos as u64..data.len() as u64,
                    offsets: seg_end..seg_end,
                    reason: "bytes after the segment's last batch".into(),
                });
            }
        }
        Ok(damage)
    }

    /// Writes the active segment's indexes out whole and syncs the log (a clean close).
    pub fn close(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if let Some((offsets, times)) = w.segment.active_index_bytes() {
            rewrite(&w.segment.index_path, &offsets)?;
            rewrite(&w.segment.time_path, &times)?;
        }
        if w.snapshot_pos != w.pos {
            let end = self.end_offset();
            self.write_snapshot(&mut w, end);
        }
        drop(w);
        if self.config.durability != Durability::Never {
            self.sync()?;
        }
        Ok(())
    }

    /// Forgets the maps of every segment (the log is being deleted).
    pub(crate) fn forget_maps(&self) {
        for s in self.segments.read().values() {
            self.shared.cache.forget(s.id);
            s.close();
        }
        self.poisoned.store(true, Ordering::Release);
    }
}

/// The records of the validated batch `h` at `pos`; a batch whose records do not decode is
/// damage, reported with its offsets.
fn decode(
    seg: &Segment,
    data: &bytes::Bytes,
    pos: usize,
    h: batch::BatchHeader,
) -> Result<Vec<StoredRecord>> {
    let batch = Batch {
        header: h,
        bytes: data.slice(pos..pos + h.total_len),
    };
    batch.records().map_err(|e| Error::Corrupt {
        path: seg.log_path.clone(),
        position: pos as u64,
        offsets: Some(h.base_offset..h.next_offset()),
        reason: e.to_string(),
    })
}

fn create_segment_files(dir: &Path, base: u64, snapshot: &Snapshot) -> Result<(File, File, File)> {
    let open = |ext: &str| -> Result<File> {
        let path = dir.join(segment::file_name(base, ext));
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))
    };
    // The snapshot comes first: once the new `.log` exists it is the last segment, and
    // recovery needs the producer state of the older segments from this snapshot. (A
    // snapshot without its `.log` is an orphan that the next open removes.)
    let snapshot_path = dir.join(segment::file_name(base, "producers"));
    if snapshot.producers.is_empty() {
        match fs::remove_file(&snapshot_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &snapshot_path, e)),
        }
    } else {
        let snap = open("producers")?;
        snap.write_all_at(&snapshot.encode(), 0)
            .and_then(|()| snap.sync_data())
            .map_err(|e| Error::io("write", &snapshot_path, e))?;
    }
    let index = open("index")?;
    let time = open("timeindex")?;
    let log = open("log")?;
    Ok((log, index, time))
}

/// Replaces a small derived file's content in place (indexes: not fsync'd, rebuilt if torn).
fn rewrite(path: &Path, bytes: &[u8]) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| Error::io("write", path, e))?;
    Ok(f)
}

fn read_optional(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
}

/// fsyncs a directory so the names created or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Allocates blocks for `offset..offset+len` and extends the file over them. Falls back to
/// writing zeros where the file system has no fallocate.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
