//! Durability: fdatasync of the active segment (group-committed: one flush acknowledges every
//! append published before it started), the closed segments a roll left unsynced, and the
//! durable offset. A failed flush poisons the log, as the kernel may have dropped the pages.
//!
//! One thread at a time flushes a log, the leader: a blocking `sync_to` caller, or whoever
//! runs the `SyncLeader` that `sync_async` hands out when no flush is running. It flushes
//! until every waiter registered meanwhile is covered, then hands over. Blocking callers wait
//! on a condition variable; asynchronous ones are futures completed by the leader.

use std::fs::File;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::{disk, faults};

use super::{Log, sync_dir};

impl Log {
    pub(super) fn fsync(&self, file: &File, path: &Path) -> Result<()> {
        faults::check(faults::Op::Sync, path)
            .and_then(|()| disk::sync_data(file, path))
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

    /// Returns once every offset below `target` is on disk, blocking the calling thread.
    /// Concurrent callers share one fdatasync (group commit): whoever finds no flush running
    /// leads, flushing until it and every waiter are covered; the others wait and re-check.
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
            return self.lead();
        }
    }

    /// Starts waiting, without blocking, until every offset below `target` is on disk:
    /// done already, or a future a running flush completes, or, when no flush is running,
    /// a [`SyncLeader`] the caller must run on a thread that may block. So thousands of
    /// waiting appends cost one thread per log (the leader's), not one each, and storage
    /// needs no async runtime: the future is woken through its `std::task::Waker`.
    pub fn sync_async(self: &Arc<Self>, target: u64) -> SyncWait {
        let target = target.min(self.end_offset());
        let mut st = self.sync.lock();
        if self.durable_offset() >= target {
            return SyncWait::Done(Ok(()));
        }
        if let Err(e) = self.check_poisoned() {
            return SyncWait::Done(Err(e));
        }
        if !st.running {
            st.running = true;
            return SyncWait::Lead(SyncLeader {
                log: Some(Arc::clone(self)),
            });
        }
        let slot = Arc::new(Slot::default());
        st.waiters.push((target, Arc::clone(&slot)));
        SyncWait::Follow(Durable { slot })
    }

    /// Flushes as the leader (`running` is set) until no waiter is left uncovered, then
    /// hands over. Returns the outcome of the last flush.
    fn lead(&self) -> Result<()> {
        loop {
            let result = self.flush_once();
            let mut st = self.sync.lock();
            let durable = self.durable_offset();
            let waiters = std::mem::take(&mut st.waiters);
            let (covered, waiting): (Vec<_>, Vec<_>) = match &result {
                Ok(()) => waiters.into_iter().partition(|(t, _)| *t <= durable),
                // Every waiter learns of a failure (the durable offset may never move).
                Err(_) => (waiters, Vec::new()),
            };
            st.waiters = waiting;
            for (_, slot) in covered {
                slot.complete(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Error::io(
                        "fsync",
                        &self.dir,
                        io::Error::other(e.to_string()),
                    )),
                });
            }
            self.sync_done.notify_all();
            if st.waiters.is_empty() {
                st.running = false;
                return result;
            }
        }
    }

    /// One group-committed flush of everything published when it starts.
    fn flush_once(&self) -> Result<()> {
        // Read the end, then the active file, then the closed-but-unsynced files: a roll
        // in between queues the older segment before it swaps the active file, so
        // together they cover everything below `end`.
        let end = self.end_offset();
        let (file, path) = self.sync_file.lock().clone();
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
        let result = result.and_then(|()| self.fsync(&file, &path));
        if result.is_ok() {
            self.durable.fetch_max(end, Ordering::AcqRel);
            *self.last_sync.lock() = Instant::now();
        }
        result
    }

    /// Whether the interval flusher should sync this log now.
    pub(crate) fn sync_due(&self, every: Duration) -> bool {
        self.end_offset() > self.durable_offset() && self.last_sync.lock().elapsed() >= every
    }
}

/// What [`Log::sync_async`] found.
pub enum SyncWait {
    /// Already durable, or the log has failed.
    Done(Result<()>),
    /// No flush was running: run [`SyncLeader::run`] where blocking is allowed; its result
    /// is this wait's.
    Lead(SyncLeader),
    /// A flush is running; the future completes when one covers the target.
    Follow(Durable),
}

/// The duty to flush a log for everyone waiting on it (see [`Log::sync_async`]).
pub struct SyncLeader {
    log: Option<Arc<Log>>,
}

impl SyncLeader {
    /// Flushes (blocking) until this wait and every other one registered meanwhile are
    /// durable or failed.
    pub fn run(mut self) -> Result<()> {
        let log = self.log.take().expect("a leader runs once");
        log.lead()
    }
}

impl Drop for SyncLeader {
    /// A leader dropped unrun (its task was cancelled before it started) still leads, so
    /// no waiter is stranded. Only happens when a runtime drops queued blocking work.
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let _ = log.lead();
        }
    }
}

/// A future that resolves once a flush covers its target, or fails with the flush.
pub struct Durable {
    slot: Arc<Slot>,
}

impl Future for Durable {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.slot.state.lock();
        match s.done.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Where a leader leaves a waiter's outcome and wakes it.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    done: Option<Result<()>>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, result: Result<()>) {
        let waker = {
            let mut s = self.state.lock();
            s.done = Some(result);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}
