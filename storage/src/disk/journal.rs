//! What the engine changed on disk, in order, for tests that rebuild the disk a power cut
//! could leave. [`Change`] always exists (the I/O functions describe their change with it);
//! recording ([`record`]) needs the `fault-injection` feature and costs nothing without it.

use std::io;
use std::path::{Path, PathBuf};

/// One change to the disk. Recorded paths are relative to the recorded directory (the
/// directory itself is the empty path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new, empty directory.
    CreateDir(PathBuf),
    /// A new, empty file.
    Create(PathBuf),
    /// Bytes written at an offset of a file (growing it if they reach past its end).
    Write(PathBuf, u64, Vec<u8>),
    /// A file cut or extended with zeros to this length.
    SetLen(PathBuf, u64),
    /// A file extended with zeros to at least this length (space reserved ahead).
    Extend(PathBuf, u64),
    /// `fdatasync` or `fsync` of a file: its data and length are durable.
    Sync(PathBuf),
    /// fsync of a directory: the names created, renamed and removed in it are durable.
    SyncDir(PathBuf),
    /// A rename within one directory, replacing the target.
    Rename(PathBuf, PathBuf),
    /// A file removed, or a directory and everything in it.
    Remove(PathBuf),
    /// `syncfs`: everything is durable.
    SyncAll,
}

impl Change {
    #[cfg(feature = "fault-injection")]
    fn relative_to(self, root: &Path) -> Change {
        let rel = |p: PathBuf| p.strip_prefix(root).map(Path::to_path_buf).unwrap_or(p);
        match self {
            Change::CreateDir(p) => Change::CreateDir(rel(p)),
            Change::Create(p) => Change::Create(rel(p)),
            Change::Write(p, at, data) => Change::Write(rel(p), at, data),
            Change::SetLen(p, len) => Change::SetLen(rel(p), len),
            Change::Extend(p, len) => Change::Extend(rel(p), len),
            Change::Sync(p) => Change::Sync(rel(p)),
            Change::SyncDir(p) => Change::SyncDir(rel(p)),
            Change::Rename(from, to) => Change::Rename(rel(from), rel(to)),
            Change::Remove(p) => Change::Remove(rel(p)),
            Change::SyncAll => Change::SyncAll,
        }
    }
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// The changes made under one directory since [`record`] was called for it.
    pub struct Journal {
        root: PathBuf,
        changes: Mutex<Vec<Change>>,
    }

    impl Journal {
        /// How many changes are recorded so far: a position to compare later ones with.
        pub fn len(&self) -> usize {
            self.changes.lock().len()
        }

        /// Whether nothing is recorded yet.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// The changes recorded so far, in the order they were made.
        pub fn changes(&self) -> Vec<Change> {
            self.changes.lock().clone()
        }
    }

    static JOURNALS: Mutex<Vec<Arc<Journal>>> = Mutex::new(Vec::new());

    /// Records every change the engine makes under `root` from now on, until [`stop`].
    pub fn record(root: &Path) -> Arc<Journal> {
        let journal = Arc::new(Journal {
            root: root.to_path_buf(),
            changes: Mutex::new(Vec::new()),
        });
        JOURNALS.lock().push(Arc::clone(&journal));
        journal
    }

    /// Whether changes under `path` are being recorded.
    pub(crate) fn recording(path: &Path) -> bool {
        JOURNALS.lock().iter().any(|j| path.starts_with(&j.root))
    }

    /// Stops recording into `journal`.
    pub fn stop(journal: &Arc<Journal>) {
        JOURNALS.lock().retain(|j| !Arc::ptr_eq(j, journal));
    }

    /// Runs `op` and, if `path` is being recorded, notes its change. The journal stays
    /// locked while `op` runs, so changes made by several threads are noted in the order
    /// they took effect.
    pub(crate) fn observe<T>(
        path: &Path,
        op: impl FnOnce() -> io::Result<T>,
        what: impl FnOnce(&T) -> Option<Change>,
    ) -> io::Result<T> {
        let journal = JOURNALS
            .lock()
            .iter()
            .find(|j| path.starts_with(&j.root))
            .cloned();
        let Some(journal) = journal else {
            return op();
        };
        let mut changes = journal.changes.lock();
        let done = op()?;
        if let Some(change) = what(&done) {
            changes.push(change.relative_to(&journal.root));
        }
        Ok(done)
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{Journal, record, stop};

#[cfg(feature = "fault-injection")]
pub(crate) use imp::{observe, recording};

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn recording(_path: &Path) -> bool {
    false
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn observe<T>(
    _path: &Path,
    op: impl FnOnce() -> io::Result<T>,
    _what: impl FnOnce(&T) -> Option<Change>,
) -> io::Result<T> {
    op()
}
