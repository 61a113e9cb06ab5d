//! A log: the segments of one partition. Appends, reads by offset and time, rolls,
//! retention, truncation, group-committed fsyncs and wake-ups for tailing readers.
//!
//! Lock order: `writer`, then `segments`, then a segment's own locks, then `sync_file`.
//! `sync` is taken without `writer` except by [`Log::truncate`], which takes `writer` first.
//! No lock is held across an fsync except the writer's during a roll or truncate.
//!
//! `mod.rs` holds the types, opening and closing; the rest of `impl Log` lives by concern in
//! `append.rs` (appends, index entries, rolls), `sync.rs` (fsyncs and the durable offset),
//! `read.rs` (reads by offset and time), `producers.rs` (bounds on the idempotent producer
//! table), `maintenance.rs` (retention, truncation, verification) and `compact.rs`
//! (compaction by key).

mod append;
mod compact;
mod maintenance;
mod producers;
mod read;
mod sync;

pub use compact::{CompactOptions, CompactReport, TOMBSTONE_HEADER};

pub use sync::{Durable, SyncLeader, SyncWait};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::Shared;
use crate::config::{Durability, LogConfig};
use crate::disk;
use crate::error::{Error, Result};
use crate::producer::{ProducerTable, Snapshot};
use crate::recovery;
use crate::segment::{self, ActiveIndex, IndexBuilder, Segment};

/// A snapshot of the active segment's state is saved every this many appended bytes.
const SNAPSHOT_INTERVAL_BYTES: u64 = 32 * 1024 * 1024;

/// The first reservation of a newly opened partition reaches this far ahead; each later one
/// twice as far as the one before, up to `LogConfig::preallocate_bytes`.
const FIRST_RESERVE_BYTES: u64 = 64 * 1024;

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
    /// Bytes of the active segment's offset and time indexes already in their files (the
    /// files are opened only to append the rest, so a partition holds one descriptor).
    index_file_len: u64,
    time_file_len: u64,
    /// Writer position when the index files were last appended to.
    index_persisted_pos: u64,
    pos: u64,
    reserved: u64,
    /// How far ahead the next reservation reaches (see `Log::reserve`).
    reserve_step: u64,
    /// Position of the segment's latest snapshot.
    snapshot_pos: u64,
    index: IndexBuilder,
    producers: ProducerTable,
    /// `producers.len()` as last added to the storage-wide count.
    counted_producers: usize,
    scratch: Vec<u8>,
    /// When the active segment's first batch was appended (`segment_age`); `None` when
    /// the segment is empty or, after a restart, not read yet.
    first_append_ms: Option<i64>,
}

#[derive(Default)]
struct SyncState {
    /// A thread is flushing (the leader): others wait for it instead of flushing too.
    running: bool,
    /// Asynchronous waits the leader completes (see `sync.rs`): a target offset and a slot.
    waiters: Vec<(u64, Arc<sync::Slot>)>,
}

/// One partition's log. Cheap to share (`Arc<Log>`): appends are serialised inside, reads
/// run concurrently and never wait for the writer.
pub struct Log {
    name: String,
    dir: PathBuf,
    /// Replaced whole by [`Log::reconfigure`]; each operation reads one snapshot.
    config: RwLock<Arc<LogConfig>>,
    shared: Arc<Shared>,
    writer: Mutex<Writer>,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    start: AtomicU64,
    end: AtomicU64,
    durable: AtomicU64,
    sync: Mutex<SyncState>,
    sync_done: Condvar,
    /// The active segment's file and path, as the flusher syncs them.
    sync_file: Mutex<(Arc<File>, PathBuf)>,
    last_sync: Mutex<Instant>,
    data_lock: Mutex<()>,
    data_ready: Condvar,
    listeners: RwLock<Vec<Listener>>,
    poisoned: AtomicBool,
    /// Successful fdatasyncs of this log's segments since it was opened.
    fsyncs: AtomicU64,
    /// What poisoned the log (a failed flush), for operators: see [`Log::failure`].
    failure: Mutex<Option<String>>,
    /// Files of segments closed without an fsync (durability other than `Always`), and the
    /// directory: synced by the next `sync` before it moves the durable offset.
    unsynced: Mutex<Vec<PathBuf>>,
    report: OpenReport,
    /// Compaction's checkpoint: the log is clean below this offset.
    cleaned_to: AtomicU64,
    /// Held by the compaction pass running on this log, if any.
    compacting: Mutex<()>,
    /// When a tombstone the last pass kept expires (`i64::MAX`: none); 0 until a pass ran.
    tombstones_due_ms: AtomicI64,
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
        disk::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
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
        producers.stamp_unknown(producers::wall_clock_ms());
        // What recovery kept is durable: `Storage::open` synced the file system unless a
        // clean shutdown had (`clean`), so no log needs an fsync of its own here.
        // Index files are derived data: rewritten only when recovery's differ.
        if tail.index.offsets != offsets {
            rewrite(&index_path, &tail.index.offsets, false)?;
        }
        if tail.index.times != times {
            rewrite(&time_path, &tail.index.times, false)?;
        }
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
        let log = Log {
            name,
            dir,
            shared,
            writer: Mutex::new(Writer {
                segment: active,
                file: Arc::clone(&file),
                index_file_len,
                time_file_len,
                index_persisted_pos: tail.len,
                pos: tail.len,
                reserved: tail.len,
                reserve_step: FIRST_RESERVE_BYTES,
                snapshot_pos: tail.len,
                index,
                producers,
                counted_producers: 0,
                scratch: Vec::new(),
                first_append_ms: None,
            }),
            segments: RwLock::new(segments),
            start: AtomicU64::new(start),
            end: AtomicU64::new(tail.end),
            durable: AtomicU64::new(tail.end),
            sync: Mutex::new(SyncState::default()),
            sync_done: Condvar::new(),
            sync_file: Mutex::new((file, log_path.clone())),
            last_sync: Mutex::new(Instant::now()),
            data_lock: Mutex::new(()),
            data_ready: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            poisoned: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            failure: Mutex::new(None),
            unsynced: Mutex::new(Vec::new()),
            report,
            config: RwLock::new(Arc::new(config)),
            cleaned_to: AtomicU64::new(0),
            compacting: Mutex::new(()),
            tombstones_due_ms: AtomicI64::new(0),
        };
        let checkpoint = compact::load_checkpoint(&log.dir).min(log.end_offset());
        log.cleaned_to.store(checkpoint, Ordering::Release);
        // Recovered producers count against the bounds too (an older build kept them all).
        let mut w = log.writer.lock();
        log.bound_producers(&mut w, producers::wall_clock_ms());
        drop(w);
        Ok(log)
    }

    /// The log's name within its storage.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory holding the log's segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<LogConfig> {
        Arc::clone(&self.config.read())
    }

    /// Changes the configuration of the open log: limits, segment size, retention,
    /// durability and compression apply from the next append (or retention pass) on;
    /// batches already written keep their form. The index interval is fixed at open.
    /// Storage's [`crate::Storage::reconfigure_log`] also moves the log to or from the
    /// interval flusher.
    pub(crate) fn reconfigure(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let config = LogConfig {
            index_interval_bytes: self.config().index_interval_bytes,
            ..config
        };
        *self.config.write() = Arc::new(config);
        Ok(())
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

    /// Successful fdatasyncs of this log's segments since it was opened (recovery's own
    /// sync not counted): how tests and metrics see what a durability policy costs.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
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

    /// Writes the active segment's indexes and snapshot out whole, cuts its preallocated
    /// tail and syncs the log (a clean close; appending afterwards works but undoes it).
    pub fn close(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if let Some((offsets, times)) = w.segment.active_index_bytes() {
            rewrite(&w.segment.index_path, &offsets, false)?;
            rewrite(&w.segment.time_path, &times, false)?;
            w.index_file_len = offsets.len() as u64;
            w.time_file_len = times.len() as u64;
            w.index.offsets.clear();
            w.index.times.clear();
            w.index_persisted_pos = w.pos;
        }
        if w.snapshot_pos != w.pos {
            let end = self.end_offset();
            self.write_snapshot(&mut w, end);
        }
        // Release the reserved tail, so the next start has nothing to cut (no view reaches
        // past `pos`, so no page is pulled from under a reader).
        if w.reserved > w.pos {
            disk::set_len(&w.file, &w.segment.log_path, w.pos)
                .map_err(|e| Error::io("truncate", &w.segment.log_path, e))?;
            w.reserved = w.pos;
        }
        drop(w);
        if self.config().durability != Durability::Never {
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

fn create_segment_files(dir: &Path, base: u64, snapshot: &Snapshot) -> Result<File> {
    let open = |ext: &str| -> Result<File> {
        let path = dir.join(segment::file_name(base, ext));
        disk::open(&path, true, true).map_err(|e| Error::io("create", &path, e))
    };
    // The snapshot comes first: once the new `.log` exists it is the last segment, and
    // recovery needs the producer state of the older segments from this snapshot. (A
    // snapshot without its `.log` is an orphan that the next open removes.)
    let snapshot_path = dir.join(segment::file_name(base, "producers"));
    if snapshot.producers.is_empty() {
        match disk::remove_file(&snapshot_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &snapshot_path, e)),
        }
    } else {
        let snap = open("producers")?;
        disk::write_at(&snap, &snapshot_path, &snapshot.encode(), 0)
            .and_then(|()| disk::sync_data(&snap, &snapshot_path))
            .map_err(|e| Error::io("write", &snapshot_path, e))?;
    }
    open("index")?;
    open("timeindex")?;
    open("log")
}

/// Replaces a small derived file's content in place (indexes: rebuilt if torn, so synced
/// only when `sync` asks, as a roll under `Always` does).
fn rewrite(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let f = disk::open(path, true, true).map_err(|e| Error::io("create", path, e))?;
    disk::write_at(&f, path, bytes, 0).map_err(|e| Error::io("write", path, e))?;
    if sync {
        disk::sync_data(&f, path).map_err(|e| Error::io("fsync", path, e))?;
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn remove_file(path: &Path) -> Result<()> {
    disk::remove_file(path).map_err(|e| Error::io("remove", path, e))
}

/// fsyncs a directory so the names created or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    disk::sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests;
