//! The delay store of one queue: timers of records whose delivery time is far off, on disk in
//! time buckets, so that millions of delayed records cost the broker a bit or two each (the
//! partition's deferred set) instead of an entry each, and a restart reads none of them.
//!
//! Buckets form a hierarchical timing wheel per partition. A level-`l` bucket spans
//! `1024 × 64^l` ms; a timer goes to the finest level whose next 64 buckets reach its time,
//! so about 64 buckets per level are live whatever the delays (seven levels reach past
//! 2,000 years). From 30 s before a coarser bucket starts, its timers are *cascaded* into
//! finer ones, a chunk per look; a level-0 bucket is *loaded* (its timers handed to the queue, which makes them
//! waiting entries) one bucket span before it starts. Loading is partial when the queue
//! has no room: a cursor remembers how far it got.
//!
//! A bucket is files named `<partition>.<level>.<slot>.<generation>`, each a run of chunks
//! `[u32 LE payload length][u32 LE CRC-32 of the payload][payload: (u64 LE offset,
//! i64 LE deliver-at ms) × n]` (docs/format.md). A process appends only to files of its own
//! generation, started afresh after any failed write, so a torn chunk can only be a file's
//! last: reading stops there. Timers are fsynced before the queue log records their
//! records as deferred, so a deferred record always has a durable timer; a timer whose
//! record is not deferred (written twice, or its `Deferred` event never made durable) is
//! stale and the queue ignores it. Loaded buckets are deleted once a checkpoint that no
//! longer defers their records is durable (a restart before then reloads them: stale).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Width of a level-0 bucket.
const LEVEL0_MS: i64 = 1_024;
/// Buckets ahead of the clock on each level.
const FANOUT: i64 = 64;
const LEVELS: u32 = 7;
/// A record due sooner than this after it is scanned stays in memory, never deferred: its
/// bucket would be loaded at once.
pub const DEFER_MIN_MS: i64 = 2 * LEVEL0_MS;
/// Bytes of one timer in a chunk.
const TIMER: usize = 16;
/// Timers per chunk written or read at once (1 MiB).
const CHUNK_TIMERS: usize = 65_536;

fn width(level: u32) -> i64 {
    LEVEL0_MS * FANOUT.pow(level)
}

/// The bucket (level, slot) a timer for `at_ms` goes to at `now_ms`.
fn place(at_ms: i64, now_ms: i64) -> (u32, i64) {
    for level in 0..LEVELS {
        let w = width(level);
        if at_ms.div_euclid(w) - now_ms.div_euclid(w) < FANOUT {
            return (level, at_ms.div_euclid(w));
        }
    }
    let top = LEVELS - 1;
    (top, at_ms.div_euclid(width(top)))
}

/// How long before a coarse bucket starts its cascade into finer buckets begins (a chunk
/// per look, so a bucket of millions of timers is moved before any of them is due).
const CASCADE_AHEAD_MS: i64 = 30_000;

/// When a bucket needs work: a coarse one is cascaded `CASCADE_AHEAD_MS` before it starts,
/// a level-0 one is loaded one bucket span before it starts.
fn action_ms(level: u32, slot: i64) -> i64 {
    let start = slot.saturating_mul(width(level));
    if level == 0 {
        start - LEVEL0_MS
    } else {
        start - CASCADE_AHEAD_MS
    }
}

/// One bucket file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    action_ms: i64,
    level: u32,
    slot: i64,
    generation: u64,
}

#[derive(Clone, Debug, Default)]
struct Cursor {
    /// Byte offset of the next chunk to read.
    chunk: u64,
    /// Timers of that chunk already handed out.
    done: usize,
}

/// The broker-wide bound on what the deferred sets of all queues cost in memory
/// (`queue_delay_memory_bytes`).
#[derive(Debug)]
pub struct DelayBudget {
    limit: usize,
    used: AtomicUsize,
}

impl DelayBudget {
    pub fn new(limit: u64) -> Arc<DelayBudget> {
        Arc::new(DelayBudget {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }
}

pub struct DelayStore {
    dir: PathBuf,
    budget: Arc<DelayBudget>,
    /// What this queue's deferred sets were last counted as in `budget`.
    accounted: usize,
    /// Generation of the files this process appends to.
    generation: u64,
    /// Partition → its bucket files, the next to act on first.
    files: HashMap<u32, BTreeMap<FileKey, Cursor>>,
    /// Timers to append at the next flush: (partition, level, slot) → (offset, at).
    pending: HashMap<(u32, u32, i64), Vec<(u64, i64)>>,
    /// Files wholly loaded, deleted after the next checkpoint.
    loaded: Vec<PathBuf>,
    /// Timers were queued or taken since [`DelayStore::take_changed`]: the deferred sets
    /// changed and their memory must be counted again.
    changed: bool,
}

impl DelayStore {
    /// The store in `dir`, with the bucket files a previous run left (blocking: lists the
    /// directory; reads no timer).
    pub fn open(dir: PathBuf, budget: Arc<DelayBudget>) -> Result<DelayStore> {
        let mut store = DelayStore {
            dir,
            budget,
            accounted: 0,
            generation: 0,
            files: HashMap::new(),
            pending: HashMap::new(),
            loaded: Vec::new(),
            changed: false,
        };
        let entries = match fs::read_dir(&store.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(Error::io("list", &store.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &store.dir, e))?;
            let name = entry.file_name();
            let Some((p, key)) = name.to_str().and_then(parse_name) else {
                tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a delay bucket");
                continue;
            };
            store.generation = store.generation.max(key.generation + 1);
            store
                .files
                .entry(p)
                .or_default()
                .insert(key, Cursor::default());
        }
        Ok(store)
    }

    /// Whether timers were queued or taken since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Whether the broker's deferred sets have reached their memory bound.
    pub fn budget_full(&self) -> bool {
        self.budget.is_full()
    }

    /// Counts this queue's deferred sets as `bytes` in the broker's budget.
    pub fn account(&mut self, bytes: usize) {
        if bytes >= self.accounted {
            self.budget
                .used
                .fetch_add(bytes - self.accounted, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(self.accounted - bytes, Ordering::Relaxed);
        }
        self.accounted = bytes;
    }

    /// Queues a timer: record `offset` of `partition` is due at `at_ms`. Durable after the
    /// next [`DelayStore::flush`].
    pub fn defer(&mut self, partition: u32, offset: u64, at_ms: i64, now_ms: i64) {
        self.changed = true;
        let (level, slot) = place(at_ms, now_ms);
        self.pending
            .entry((partition, level, slot))
            .or_default()
            .push((offset, at_ms));
    }

    /// The timers queued since the last flush, dropped (their records must not be
    /// recorded as deferred): after a failed flush.
    pub fn take_pending(&mut self) -> Vec<(u32, u64, i64)> {
        let mut out = Vec::new();
        for ((p, _, _), timers) in self.pending.drain() {
            out.extend(timers.into_iter().map(|(o, at)| (p, o, at)));
        }
        out
    }

    /// Appends the queued timers to their buckets and fsyncs them (blocking). On an error
    /// the queued timers are kept for [`DelayStore::take_pending`] and later appends go to
    /// new files.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.write_pending();
        if result.is_err() {
            self.generation += 1;
        } else {
            self.pending.clear();
        }
        result
    }

    fn write_pending(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("create directory", &self.dir, e))?;
        let mut created = false;
        for (&(p, level, slot), timers) in &self.pending {
            let key = FileKey {
                action_ms: action_ms(level, slot),
                level,
                slot,
                generation: self.generation,
            };
            let path = self.path(p, &key);
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            for chunk in timers.chunks(CHUNK_TIMERS) {
                file.write_all(&encode(chunk))
                    .map_err(|e| Error::io("write", &path, e))?;
            }
            file.sync_data().map_err(|e| Error::io("fsync", &path, e))?;
            let files = self.files.entry(p).or_default();
            if let std::collections::btree_map::Entry::Vacant(v) = files.entry(key) {
                v.insert(Cursor::default());
                created = true;
            }
        }
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("fsync", &self.dir, e))?;
        }
        Ok(())
    }

    /// When `partition`'s next bucket needs work, if it has any.
    pub fn next_action_ms(&self, partition: u32) -> Option<i64> {
        self.files
            .get(&partition)
            .and_then(|f| f.keys().next())
            .map(|k| k.action_ms)
    }

    /// Hands `take` the timers of `partition` that are due by `now_ms` (within a bucket span)
    /// until it has accepted `max` (blocking: reads bucket files, and cascades coarse buckets
    /// into finer ones on the way). `take(offset, at_ms)` returns whether it used the timer
    /// (false for a stale one).
    pub fn take_due(
        &mut self,
        partition: u32,
        now_ms: i64,
        max: usize,
        mut take: impl FnMut(u64, i64) -> bool,
    ) -> Result<usize> {
        let due: Vec<FileKey> = self.files.get(&partition).map_or_else(Vec::new, |f| {
            f.keys()
                .take_while(|k| k.action_ms <= now_ms)
                .cloned()
                .collect()
        });
        let mut taken = 0;
        let mut cascaded = false;
        for key in due {
            if taken >= max {
                break;
            }
            let path = bucket_path(&self.dir, partition, &key);
            let finished = if key.level > 0 {
                // One chunk per look: a look under the queue's lock stays short, and the
                // cascade starts early enough to finish before the bucket does.
                if cascaded {
                    continue;
                }
                cascaded = true;
                self.cascade_chunk(partition, &key, &path, now_ms)?
            } else {
                let Some(cursor) = self.files.get_mut(&partition).and_then(|f| f.get_mut(&key))
                else {
                    continue;
                };
                read_from(&path, cursor, |o, at| {
                    taken += usize::from(take(o, at));
                    taken < max
                })?
            };
            if finished {
                if let Some(files) = self.files.get_mut(&partition) {
                    files.remove(&key);
                }
                if key.level > 0 {
                    fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                } else {
                    self.loaded.push(path);
                }
            }
        }
        if self.files.get(&partition).is_some_and(BTreeMap::is_empty) {
            self.files.remove(&partition);
        }
        self.changed |= taken > 0;
        Ok(taken)
    }

    /// Moves the next chunk of a coarse bucket's timers into finer buckets and fsyncs them;
    /// true once the whole bucket is moved (the caller deletes it). After a failed write
    /// the chunk is moved again later: timers moved twice are harmless.
    fn cascade_chunk(
        &mut self,
        partition: u32,
        key: &FileKey,
        path: &Path,
        now_ms: i64,
    ) -> Result<bool> {
        let Some(at_start) = self.files.get(&partition).and_then(|f| f.get(key)).cloned() else {
            return Ok(true);
        };
        let mut cursor = at_start.clone();
        let mut batch = Vec::new();
        let finished = read_from(path, &mut cursor, |o, at| {
            batch.push((o, at));
            batch.len() < CHUNK_TIMERS
        })?;
        let finer = key.level - 1;
        for (o, at) in batch {
            // Always a finer level, so a bucket is never cascaded into itself.
            let (level, slot) = match place(at, now_ms) {
                (l, s) if l <= finer => (l, s),
                _ => (finer, at.div_euclid(width(finer))),
            };
            self.pending
                .entry((partition, level, slot))
                .or_default()
                .push((o, at));
        }
        let flushed = self.flush();
        if let Some(c) = self.files.get_mut(&partition).and_then(|f| f.get_mut(key)) {
            *c = if flushed.is_ok() { cursor } else { at_start };
        }
        flushed?;
        Ok(finished)
    }

    /// The files wholly loaded so far: a checkpoint taken from now on no longer needs them.
    pub fn take_loaded(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.loaded)
    }

    /// Bucket files not yet wholly loaded.
    #[cfg(test)]
    fn bucket_files(&self) -> usize {
        self.files.values().map(BTreeMap::len).sum()
    }

    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, partition: u32, key: &FileKey) -> PathBuf {
        bucket_path(&self.dir, partition, key)
    }
}

fn bucket_path(dir: &Path, partition: u32, key: &FileKey) -> PathBuf {
    dir.join(format!(
        "{partition}.{}.{}.{}",
        key.level, key.slot, key.generation
    ))
}

impl Drop for DelayStore {
    fn drop(&mut self) {
        self.account(0);
    }
}

/// Deletes files a durable checkpoint made unneeded (blocking; a failure leaves a file a
/// restart reloads, every timer in it stale).
pub fn remove_loaded(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %p.display(), error = %e, "removing a loaded delay bucket failed");
        }
    }
}

fn parse_name(name: &str) -> Option<(u32, FileKey)> {
    let mut it = name.split('.');
    let p = it.next()?.parse().ok()?;
    let level: u32 = it.next()?.parse().ok()?;
    let slot = it.next()?.parse().ok()?;
    let generation = it.next()?.parse().ok()?;
    if it.next().is_some() || level >= LEVELS {
        return None;
    }
    Some((
        p,
        FileKey {
            action_ms: action_ms(level, slot),
            level,
            slot,
            generation,
        },
    ))
}

fn encode(timers: &[(u64, i64)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(timers.len() * TIMER);
    for (o, at) in timers {
        payload.extend_from_slice(&o.to_le_bytes());
        payload.extend_from_slice(&at.to_le_bytes());
    }
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads timers from `cursor` on, handing each to `f` until it returns false. True once the
/// file is read to its end (or to a torn last chunk). A file that is gone is read.
fn read_from(
    path: &Path,
    cursor: &mut Cursor,
    mut f: impl FnMut(u64, i64) -> bool,
) -> Result<bool> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    file.seek(SeekFrom::Start(cursor.chunk))
        .map_err(|e| Error::io("seek", path, e))?;
    let mut file = std::io::BufReader::new(file);
    loop {
        let mut header = [0u8; 8];
        if !read_full(&mut file, &mut header, path)? {
            return Ok(true);
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if !len.is_multiple_of(TIMER) || len > CHUNK_TIMERS * TIMER {
            return torn(path, cursor);
        }
        let mut payload = vec![0u8; len];
        if !read_full(&mut file, &mut payload, path)? || crc32fast::hash(&payload) != crc {
            return torn(path, cursor);
        }
        let timers = payload.chunks_exact(TIMER).skip(cursor.done);
        for t in timers {
            cursor.done += 1;
            let o = u64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
            let at = i64::from_le_bytes(t[8..].try_into().expect("8 bytes"));
            if !f(o, at) {
                if cursor.done == len / TIMER {
                    cursor.chunk += 8 + len as u64;
                    cursor.done = 0;
                }
                return Ok(false);
            }
        }
        cursor.chunk += 8 + len as u64;
        cursor.done = 0;
    }
}

/// A chunk that fails its length or CRC check: only a file's last chunk can be torn (a
/// crash during its write, before its records were recorded as deferred).
fn torn(path: &Path, cursor: &Cursor) -> Result<bool> {
    tracing::warn!(file = %path.display(), at = cursor.chunk, "a delay bucket ends in a torn chunk; its timers were never used");
    Ok(true)
}

/// Fills `buf`; false at the end of the file (a partial fill is a torn chunk: also false).
fn read_full(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything due by `now`, as (offset, at).
    fn due(store: &mut DelayStore, now: i64, max: usize) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        store
            .take_due(0, now, max, |o, at| {
                out.push((o, at));
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn timers_come_back_from_the_finest_bucket_one_span_before_they_are_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DelayStore::open(dir.path().join("q"), DelayBudget::new(u64::MAX)).unwrap();
        let now = 1_000_000_000;
        // Seconds, minutes, hours and a year ahead: four levels.
        let ats = [
            now + 5_000,
            now + 300_000,
            now + 7_200_000,
            now + 31_536_000_000,
        ];
        for (o, at) in ats.iter().enumerate() {
            s.defer(0, o as u64, *at, now);
        }
        s.flush().unwrap();
        assert_eq!(s.bucket_files(), 4);
        for (o, at) in ats.iter().enumerate() {
            assert!(
                due(&mut s, at - 2 * LEVEL0_MS, 10).is_empty(),
                "timer {o} came early"
            );
            let got = due(&mut s, *at, 10);
            assert_eq!(got, [(o as u64, *at)], "timer {o}");
        }
        assert_eq!(s.bucket_files(), 0);
        // Cascaded buckets are gone; loaded ones wait for a checkpoint.
        let left: Vec<_> = fs::read_dir(s.dir()).unwrap().collect();
        assert_eq!(left.len(), 4);
        remove_loaded(&s.take_loaded());
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_partial_load_resumes_where_it_stopped_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let now = 10_000_000;
        let at = now + 10_000;
        let mut s = DelayStore::open(path.clone(), DelayBudget::new(u64::MAX)).unwrap();
        for o in 0..1_000 {
            s.defer(0, o, at, now);
        }
        s.flush().unwrap();
        for o in 1_000..1_500 {
            s.defer(0, o, at, now);
        }
        s.flush().unwrap();
        assert_eq!(s.bucket_files(), 1, "one bucket, one file, two chunks");
        let first = due(&mut s, at, 700);
        assert_eq!(first.len(), 700);
        let rest = due(&mut s, at, 10_000);
        let all: Vec<u64> = first.iter().chain(&rest).map(|t| t.0).collect();
        assert_eq!(all, (0..1_500).collect::<Vec<_>>());
        // A reopen (without the checkpoint that deletes it) reads the bucket again.
        let mut s = DelayStore::open(path, DelayBudget::new(u64::MAX)).unwrap();
        assert_eq!(due(&mut s, at, 10_000).len(), 1_500);
        s.defer(0, 9, at + 60_000, at);
        s.flush().unwrap();
        assert!(
            fs::read_dir(s.dir()).unwrap().any(|f| f
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".1")),
            "a reopened store writes a new generation"
        );
    }

    #[test]
    fn a_torn_last_chunk_ends_the_bucket_and_the_chunks_before_it_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let now = 10_000_000;
        let at = now + 10_000;
        let mut s = DelayStore::open(path.clone(), DelayBudget::new(u64::MAX)).unwrap();
        for o in 0..10 {
            s.defer(0, o, at, now);
        }
        s.flush().unwrap();
        s.defer(0, 10, at, now);
        s.flush().unwrap();
        let file = fs::read_dir(&path).unwrap().next().unwrap().unwrap().path();
        let len = fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut s = DelayStore::open(path, DelayBudget::new(u64::MAX)).unwrap();
        let got: Vec<u64> = due(&mut s, at, 100).iter().map(|t| t.0).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
