//! Spool's storage engine: a segmented, memory-mapped write-ahead log per partition.
//!
//! An acknowledged record is never lost (under [`Durability::Always`]), a torn or corrupt
//! record is never served, and a restart scans only the tail of the last segment.
//!
//! # Layout
//! - [`batch`]: the byte layout of a batch and its records; pure encode and decode.
//! - [`index`]: the sparse offset index and the time index, and their lookups.
//! - `segment`: one `.log` file and its indexes; active (appending) or closed (immutable).
//! - `recovery`: finding the valid end of the last segment on open.
//! - [`log`]: the segments of one partition: append, read, roll, retention, truncate, sync.
//! - `producer`: idempotent producer state, rebuilt from batch headers.
//! - [`clean`]: the clean-shutdown marker a graceful stop leaves for the next start.
//! - `cache`: closed segments mapped on demand and released least recently used.
//! - `flusher`: the background thread behind [`Durability::Interval`].
//! - `disk`: every call that changes the disk (writes, syncs, creates, renames, removals),
//!   so a test can record them all (`journal`) and rebuild what a power cut would leave.
//! - `mmap`: the only `unsafe` code, a read-only map behind a safe API.
//! - [`error`]: the one error enum of this layer.
//! - [`faults`]: fault injection for tests (feature `fault-injection`).
//!
//! # Invariants
//! - Bytes of a segment below its published length are never modified while mapped;
//!   truncation writes a new file and renames it over the old one.
//! - The end offset is published after the batch's bytes are in place, so readers see
//!   only complete batches; appends to one log are serialised.
//! - Storage knows nothing of async runtimes or gRPC: blocking calls, plain threads.
//! - One process per data directory, enforced by an exclusive lock on `<root>/.lock`.

pub mod batch;
mod cache;
pub mod clean;
pub mod config;
mod disk;
pub mod error;
pub mod faults;
pub mod format;
/// Recording of every change the engine makes to the disk (tests; `fault-injection`).
#[cfg(feature = "fault-injection")]
pub use disk::journal;
mod flusher;
pub mod index;
pub mod log;
mod mmap;
mod producer;
mod recovery;
mod segment;

use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use batch::{Header, ProducerStamp, Record, StoredRecord};
pub use config::{Durability, LogConfig, StorageConfig};
pub use error::{Error, Result};
pub use log::{
    Appended, CompactOptions, CompactReport, Damage, Durable, Listener, Log, OpenReport,
    SyncLeader, SyncWait, TOMBSTONE_HEADER, sync_dir,
};

/// Called with a log's name when the log fails (see [`Log::failure`]); set with
/// [`Storage::on_failure`]. It runs on the thread that saw the failure: keep it short.
pub type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

/// State shared by every log of one storage: the map cache, segment ids, the flusher.
pub(crate) struct Shared {
    cache: cache::MapCache,
    next_id: AtomicU64,
    flusher: flusher::Flusher,
    on_failure: parking_lot::RwLock<Option<FailureHook>>,
    /// Idempotent producers remembered by all logs, and the cap on them.
    producers: std::sync::atomic::AtomicUsize,
    max_producers: usize,
    /// Inflated compressed chunks held by reads, across all logs.
    budget: Arc<batch::Budget>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn report_failure(&self, log: &str) {
        tracing::error!(log, "log failed: it refuses writes until it is reopened");
        if let Some(hook) = self.on_failure.read().as_ref() {
            hook(log);
        }
    }
}

/// A data directory holding many logs, locked for this process.
pub struct Storage {
    root: PathBuf,
    shared: Arc<Shared>,
    _lock: File,
    /// Opened after a clean shutdown (an intact marker, now removed): what the logs hold
    /// was already durable, so the open synced nothing.
    clean_start: bool,
}

impl Storage {
    /// Opens (creating if needed) the data directory `root` and takes its exclusive lock.
    /// A second process on the same directory fails at once with [`Error::Locked`].
    pub fn open(root: impl AsRef<Path>, config: StorageConfig) -> Result<Storage> {
        let root = root.as_ref().to_path_buf();
        disk::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        let lock_path = root.join(".lock");
        let lock =
            disk::open(&lock_path, true, false).map_err(|e| Error::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: root }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        // Before anything can be written: a crash from here on must find no marker.
        format::check_and_stamp(&root)?;
        let clean_start = clean::take(&root)?;
        // After a crash, of the process or the machine, what the logs hold may be only in
        // the page cache, closed segments and new names included: one `syncfs` makes all of
        // it durable before any log calls it so (a clean stop did this before its marker).
        if !clean_start {
            faults::check(faults::Op::Sync, &root)
                .and_then(|()| disk::sync_fs(&lock, &root))
                .map_err(|e| Error::io("syncfs", &root, e))?;
        }
        let flusher =
            flusher::Flusher::start().map_err(|e| Error::io("spawn flusher", &root, e))?;
        Ok(Storage {
            root,
            shared: Arc::new(Shared {
                cache: cache::MapCache::new(config.max_mapped_files),
                next_id: AtomicU64::new(1),
                flusher,
                on_failure: parking_lot::RwLock::new(None),
                producers: std::sync::atomic::AtomicUsize::new(0),
                max_producers: config.max_producers,
                budget: batch::Budget::new(config.decompress_budget_bytes),
            }),
            clean_start,
            _lock: lock,
        })
    }

    /// Sets the hook told when a log fails, so a server can report it (health, metrics)
    /// without polling every log. Replaces any earlier hook.
    pub fn on_failure(&self, hook: FailureHook) {
        *self.shared.on_failure.write() = Some(hook);
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating if needed) the log `name`, a relative path of plain components such
    /// as `topics/orders/0`, and recovers it.
    pub fn open_log(&self, name: &str, config: LogConfig) -> Result<Arc<Log>> {
        let dir = self.log_dir(name)?;
        let interval = match config.durability {
            Durability::Interval(d) => Some(d),
            _ => None,
        };
        let log = Arc::new(Log::open(
            Arc::clone(&self.shared),
            dir,
            name.to_string(),
            config,
        )?);
        if let Some(every) = interval {
            self.shared.flusher.register(&log, every);
        }
        Ok(log)
    }

    /// Whether this start followed a clean shutdown ([`Storage::mark_clean`]).
    /// Changes an open log's configuration (see [`Log::reconfigure`]), registering it with
    /// the interval flusher or taking it off as its durability now asks.
    pub fn reconfigure_log(&self, log: &Arc<Log>, config: LogConfig) -> Result<()> {
        let interval = match config.durability {
            Durability::Interval(d) => Some(d),
            _ => None,
        };
        log.reconfigure(config)?;
        match interval {
            Some(every) => self.shared.flusher.register(log, every),
            None => self.shared.flusher.unregister(log),
        }
        Ok(())
    }

    pub fn clean_start(&self) -> bool {
        self.clean_start
    }

    /// Leaves the clean-shutdown marker for the next start: call once every log is closed
    /// ([`Log::close`]) and nothing will be written again. Syncs the whole file system of
    /// the data directory first (`syncfs`), so logs that never fsync (`Durability::Never`)
    /// are durable too, then writes the marker durably.
    pub fn mark_clean(&self) -> Result<()> {
        disk::sync_fs(&self._lock, &self.root).map_err(|e| Error::io("syncfs", &self.root, e))?;
        clean::write(&self.root)
    }

    /// Deletes a log's files. The log must no longer be appended to; readers holding views
    /// keep them (unlinked files stay mapped).
    pub fn delete_log(&self, log: &Log) -> Result<()> {
        log.forget_maps();
        let dir = log.dir().to_path_buf();
        match disk::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &dir, e)),
        }
        if let Some(parent) = dir.parent() {
            log::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Files currently mapped by the shared cache (closed segments and indexes).
    pub fn cached_maps(&self) -> usize {
        self.shared.cache.len()
    }

    fn log_dir(&self, name: &str) -> Result<PathBuf> {
        let invalid = |reason| Error::InvalidName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        let path = Path::new(name);
        for c in path.components() {
            match c {
                Component::Normal(s) => {
                    let s = s.to_str().ok_or_else(|| invalid("not UTF-8"))?;
                    if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return Err(invalid("components may hold only A-Z a-z 0-9 . _ -"));
                    }
                    if s == "." || s == ".." {
                        return Err(invalid("`.` and `..` are not names"));
                    }
                }
                _ => return Err(invalid("must be a relative path of plain components")),
            }
        }
        Ok(self.root.join(path))
    }
}
