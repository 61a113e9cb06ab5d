//! The map cache: closed segments and indexes are mapped on first use and released least
//! recently used, so thousands of partitions never exhaust `vm.max_map_count` and never hold
//! a file descriptor for a closed segment (the descriptor is closed right after mapping).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::mmap::MappedFile;

/// Which file of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Log,
    Index,
    TimeIndex,
}

type Key = (u64, FileKind);

/// Least-recently-used set of mapped files, shared by every log of a [`crate::Storage`].
pub struct MapCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    entries: HashMap<Key, (Bytes, u64)>,
    order: BTreeMap<u64, Key>,
}

impl MapCache {
    pub fn new(capacity: usize) -> MapCache {
        MapCache {
            capacity: capacity.max(2),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A view of the whole file `path`, mapping it if it is not mapped yet. `id` names the
    /// segment; ids are never reused within a process.
    pub fn get(&self, id: u64, kind: FileKind, path: &Path) -> io::Result<Bytes> {
        let key = (id, kind);
        if let Some(b) = self.touch(key) {
            return Ok(b);
        }
        // Map outside the lock: opening a file may take a while on a slow disk.
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let map = MappedFile::map(&file, len)?;
        drop(file);
        let view = map.view(0, map.len())?;
        let mut inner = self.inner.lock();
        if let Some((b, _)) = inner.entries.get(&key) {
            return Ok(b.clone());
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.insert(key, (view.clone(), tick));
        inner.order.insert(tick, key);
        while inner.entries.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        Ok(view)
    }

    fn touch(&self, key: Key) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let (bytes, old) = {
            let e = inner.entries.get_mut(&key)?;
            let old = e.1;
            e.1 = tick;
            (e.0.clone(), old)
        };
        inner.order.remove(&old);
        inner.order.insert(tick, key);
        Some(bytes)
    }

    /// Drops the maps of segment `id` (it was deleted or rewritten).
    pub fn forget(&self, id: u64) {
        let mut inner = self.inner.lock();
        for kind in [FileKind::Log, FileKind::Index, FileKind::TimeIndex] {
            if let Some((_, tick)) = inner.entries.remove(&(id, kind)) {
                inner.order.remove(&tick);
            }
        }
    }

    /// Files currently held mapped by the cache.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MapCache::new(2);
        for i in 0..3u8 {
            std::fs::write(dir.path().join(format!("{i}")), [i; 10]).unwrap();
        }
        let p = |i: u8| dir.path().join(format!("{i}"));
        assert_eq!(cache.get(0, FileKind::Log, &p(0)).unwrap()[0], 0);
        cache.get(1, FileKind::Log, &p(1)).unwrap();
        cache.get(0, FileKind::Log, &p(0)).unwrap(); // 0 is now most recent
        cache.get(2, FileKind::Log, &p(2)).unwrap(); // evicts 1
        assert_eq!(cache.len(), 2);
        std::fs::remove_file(p(1)).unwrap();
        assert!(cache.get(1, FileKind::Log, &p(1)).is_err(), "1 was evicted");
        std::fs::remove_file(p(0)).unwrap();
        assert_eq!(
            cache.get(0, FileKind::Log, &p(0)).unwrap()[0],
            0,
            "0 stayed mapped"
        );
    }
}
