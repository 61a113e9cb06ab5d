//! Durability: fdatasync of the active segment (group-committed: one flush acknowledges every
//! append published before it started), the closed segments a roll left unsynced, and the
//! durable offset. A failed flush poisons the log, as the kernel may have dropped the pages.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::faults;

use super::{Log, sync_dir};

impl Log {
    pub(super) fn fsync(&self, file: &File, path: &Path) -> Result<()> {
        faults::check(faults::Op::Sync, path)
            .and_then(|()| file.sync_data())
            .inspect(|()| {
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|e| {
                // After a failed fsync the kernel may have dropped the dirty pages: never
                // pretend they are safe by retrying. Refuse writes until a restart recovers.
                let e = Error::io("fsync", path, e);
                self.fail(&e);
                e
            })
    }

    /// Poisons the log after a failed flush: it refuses writes until reopened, remembers
    /// why (for `Log::failure`) and tells the storage's failure hook.
    pub(super) fn fail(&self, e: &Error) {
        {
            let mut failure = self.failure.lock();
            if failure.is_none() {
                *failure = Some(e.to_string());
            }
        }
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            self.shared.report_failure(&self.name);
        }
    }

    /// What made the log refuse writes (a failed fsync: the operation, the file and the
    /// OS error), or `None` while it is healthy.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    pub(super) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        Ok(())
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
            for (i, path) in unsynced.iter().enumerate() {
                let opened = faults::check(faults::Op::Open, path).and_then(|()| File::open(path));
                match opened {
                    Ok(f) => {
                        result = self.fsync(&f, path);
                        if result.is_err() {
                            break;
                        }
                    }
                    // Deleted by retention meanwhile: nothing left to make durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Not synced, but nothing is lost either (e.g. out of descriptors):
                    // queue this file and the rest again, so the durable offset stays
                    // below them and the next sync retries.
                    Err(e) => {
                        let mut queue = self.unsynced.lock();
                        let newer = std::mem::replace(&mut *queue, unsynced[i..].to_vec());
                        queue.extend(newer);
                        result = Err(Error::io("open", path, e));
                        break;
                    }
                }
            }
            if result.is_ok() && !unsynced.is_empty() {
                // A failed directory fsync is a failed fsync: the names it should have made
                // durable may never be, and this list is gone. Poison, as for data.
                result = sync_dir(&self.dir).inspect_err(|e| self.fail(e));
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
}
