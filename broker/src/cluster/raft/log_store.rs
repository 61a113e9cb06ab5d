//! A Raft group's log on a storage-engine [`Log`]: one record per Raft entry (its value the
//! serialised entry), record offset = Raft index − `base`. The engine gives the entries
//! CRCs, recovery of a torn tail, and durability: `append` is acknowledged to openraft
//! only once the batch is fsynced. The vote and the purge point live in a small state
//! file written atomically (temporary file, fsync, rename, fsync) before openraft is told,
//! so a node never votes twice in a term after a crash.
//!
//! A snapshot installed past the log's end leaves nothing to keep: the log starts again
//! empty at a new `base`, in a new directory named by it (`<name>-<base>`), created before
//! the state file names it, so a crash at any point leaves one consistent pair.

// openraft's traits fix the error types (StorageError, RPCError), large as they are.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spool_storage::{Durability, Log, LogConfig, ProducerStamp, Record, Storage};

/// The vote and purge point, persisted together.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HardState {
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
    /// The Raft index of the log's offset 0.
    base: u64,
}

struct Inner {
    storage: Arc<Storage>,
    /// The log's name without its base: `internal/raft/meta`.
    name: String,
    state_path: PathBuf,
    state: Mutex<HardState>,
    log: Mutex<Arc<Log>>,
    last: Mutex<Option<LogId<u64>>>,
}

/// The log of one Raft group. Clones share it (openraft's reader is a clone).
pub struct LogStore<C> {
    inner: Arc<Inner>,
    _types: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: Arc::clone(&self.inner),
            _types: std::marker::PhantomData,
        }
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        durability: Durability::Always,
        max_record_bytes: 64 * 1024 * 1024,
        producer_expiration: None,
        ..LogConfig::default()
    }
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

/// Runs blocking disk work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError<u64>> + Send + 'static,
) -> Result<T, StorageError<u64>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io_err(e)),
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    /// Opens (or creates) the log named `name` under the storage root (blocking).
    pub fn open(storage: Arc<Storage>, name: &str) -> crate::error::Result<LogStore<C>> {
        let state_path = storage.root().join(format!("{name}.state.json"));
        let state: HardState = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                crate::error::Error::invalid(format!(
                    "{} is damaged ({e}): this node's Raft vote is lost; remove the node's data directory to rejoin as a fresh replica",
                    state_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HardState::default(),
            Err(e) => return Err(crate::error::Error::io("read", &state_path, e)),
        };
        let log = storage.open_log(&format!("{name}-{}", state.base), log_config())?;
        remove_other_bases(&storage, name, state.base)?;
        let store = LogStore {
            inner: Arc::new(Inner {
                storage,
                name: name.to_string(),
                state_path,
                state: Mutex::new(state),
                log: Mutex::new(log),
                last: Mutex::new(None),
            }),
            _types: std::marker::PhantomData,
        };
        let last = store
            .read_last()
            .map_err(|e| crate::error::Error::Task(e.to_string()))?;
        *store.inner.last.lock() = last;
        Ok(store)
    }

    fn log(&self) -> Arc<Log> {
        Arc::clone(&self.inner.log.lock())
    }

    /// The id of the newest entry in the log, or the purge point when it is empty.
    fn read_last(&self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let log = self.log();
        let end = log.end_offset();
        if end == log.start_offset() {
            return Ok(self.inner.state.lock().purged);
        }
        let base = self.inner.state.lock().base;
        let entry = self.read_range(&log, base, end - 1, end)?;
        Ok(entry.last().map(|e| *e.get_log_id()))
    }

    /// Entries at offsets `[from, to)` (blocking).
    fn read_range(
        &self,
        log: &Log,
        base: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut next = from;
        while next < to {
            let recs = log
                .read(next, (to - next) as usize, 16 * 1024 * 1024)
                .map_err(read_err)?;
            if recs.is_empty() {
                break;
            }
            for r in recs {
                if r.offset >= to {
                    break;
                }
                let entry: C::Entry = serde_json::from_slice(&r.value).map_err(read_err)?;
                debug_assert_eq!(entry.get_log_id().index, r.offset + base);
                next = r.offset + 1;
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn save_state(&self, state: &HardState) -> Result<(), StorageError<u64>> {
        let bytes = serde_json::to_vec(state).map_err(io_err)?;
        crate::registry::write_atomically(&self.inner.state_path, &bytes)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }
}

/// Removes the directories of this log at other bases (left by a crash mid-rebase).
fn remove_other_bases(storage: &Storage, name: &str, base: u64) -> crate::error::Result<()> {
    let path = storage.root().join(name);
    let (Some(dir), Some(stem)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}-", stem.to_string_lossy());
    let keep = format!("{prefix}{base}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with(&prefix) && n != keep && n[prefix.len()..].parse::<u64>().is_ok() {
            std::fs::remove_dir_all(e.path())
                .map_err(|err| crate::error::Error::io("remove", e.path(), err))?;
        }
    }
    Ok(())
}

fn offsets<RB: RangeBounds<u64>>(range: &RB, base: u64, end: u64) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => base,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i + 1,
        Bound::Excluded(&i) => i,
        Bound::Unbounded => base + end,
    };
    (from.saturating_sub(base), to.saturating_sub(base).min(end))
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        let this = self.clone();
        let log = this.log();
        let base = this.inner.state.lock().base;
        let (from, to) = offsets(&range, base, log.end_offset());
        blocking(move || {
            let from = from.max(log.start_offset());
            if from >= to {
                return Ok(Vec::new());
            }
            this.read_range(&log, base, from, to)
        })
        .await
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>,
    C::D: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        Ok(LogState {
            last_purged_log_id: self.inner.state.lock().purged,
            last_log_id: *self.inner.last.lock(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || {
            let mut state = this.inner.state.lock().clone();
            state.vote = Some(vote);
            this.save_state(&state)?;
            *this.inner.state.lock() = state;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.state.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| *e.get_log_id()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let first = entries[0].get_log_id().index;
        let now = crate::now_ms();
        let mut records = Vec::with_capacity(entries.len());
        for e in &entries {
            records.push(Record {
                key: Bytes::new(),
                value: Bytes::from(serde_json::to_vec(e).map_err(io_err)?),
                headers: Vec::new(),
                timestamp_ms: now,
            });
        }
        let this = self.clone();
        let written = blocking(move || {
            let base = this.inner.state.lock().base;
            let log = this.log();
            // Fsynced on return (`Durability::Always`): only then is openraft told.
            log.append_at(first - base, &records, ProducerStamp::default())
                .map_err(io_err)?;
            Ok(())
        })
        .await;
        match written {
            Ok(()) => {
                *self.inner.last.lock() = Some(last);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(move || {
            let base = this.inner.state.lock().base;
            let log = this.log();
            let at = log_id.index.saturating_sub(base).max(log.start_offset());
            if at < log.end_offset() {
                log.truncate(at).map_err(io_err)?;
            }
            let last = this.read_last()?;
            *this.inner.last.lock() = last;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(move || {
            let mut state = this.inner.state.lock().clone();
            let log = this.log();
            let keep_from = log_id.index + 1;
            state.purged = Some(log_id);
            if keep_from >= state.base + log.end_offset() {
                // Nothing left to keep: start an empty log at the next index.
                let fresh = this
                    .inner
                    .storage
                    .open_log(&format!("{}-{keep_from}", this.inner.name), log_config())
                    .map_err(io_err)?;
                state.base = keep_from;
                this.save_state(&state)?;
                *this.inner.state.lock() = state;
                let old = std::mem::replace(&mut *this.inner.log.lock(), fresh);
                this.inner.storage.delete_log(&old).map_err(io_err)?;
            } else {
                this.save_state(&state)?;
                let base = state.base;
                *this.inner.state.lock() = state;
                log.remove_before(keep_from - base).map_err(io_err)?;
            }
            let mut last = this.inner.last.lock();
            if last.is_none_or(|l| l.index < log_id.index) {
                *last = Some(log_id);
            }
            Ok(())
        })
        .await
    }
}
