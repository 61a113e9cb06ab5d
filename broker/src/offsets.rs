//! Committed offsets, durable on an internal log of the storage engine.
//!
//! Every commit appends one record (key `group \0 topic \0 partition`, value the offset as
//! u64 little-endian followed by the UTF-8 metadata; an empty value deletes) to the log
//! `internal/offsets`, fsync'd before the commit is acknowledged (concurrent commits share
//! the fsync). On start the log is replayed into memory; when it holds far more records
//! than live entries it is compacted: the live entries are written to a fresh log, which
//! then replaces the old one by directory renames (each step safe to crash in).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use spool_storage::{Durability, Log, LogConfig, ProducerStamp, Record, Storage, sync_dir};

use crate::error::{Error, Result};

const LOG: &str = "internal/offsets";
const COMPACT: &str = "internal/offsets.compact";
const OLD: &str = "internal/offsets.old";

/// A group's committed position in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group will read.
    pub offset: u64,
    pub metadata: String,
    /// Where in the offsets log this commit was written: commits become visible only once
    /// durable, which may be out of write order, so a commit never replaces a later one.
    written_at: u64,
}

type Table = BTreeMap<String, BTreeMap<String, BTreeMap<u32, Committed>>>;

/// The broker's committed offsets.
pub struct OffsetStore {
    log: Arc<Log>,
    /// group → topic → partition → committed, applied once durable (see `commit_many`).
    table: Mutex<Table>,
    /// group → when it last committed or was seen with members (ms since the epoch), for
    /// [`OffsetStore::expire`]. In memory: a restart counts as activity, so a restart can
    /// delay an expiry but never bring one forward.
    activity: Mutex<HashMap<String, i64>>,
    /// Held by every append to the log, and by compaction from its read of the log to its
    /// checkpoint, so no commit lands between the two (see [`OffsetStore::compact`]).
    writes: Mutex<()>,
}

/// Segments of the offsets log stay small so that compaction while running (which deletes
/// whole closed segments) keeps the log within a few of them.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Compact when the log holds more records than twice the live commits plus this.
const SLACK_RECORDS: u64 = 10_000;

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        durability: Durability::Always,
        max_record_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

impl OffsetStore {
    /// Opens (and if worthwhile compacts) the offsets log.
    pub fn open(storage: &Storage) -> Result<OffsetStore> {
        Self::open_with(storage, SLACK_RECORDS)
    }

    /// Opens the log, compacting it when it holds more than `2 × live + slack` records.
    pub fn open_with(storage: &Storage, slack: u64) -> Result<OffsetStore> {
        finish_interrupted_compaction(storage.root())?;
        let log = storage.open_log(LOG, log_config())?;
        let (table, records) = replay(&log)?;
        let live: usize = table
            .values()
            .flat_map(|t| t.values())
            .map(|p| p.len())
            .sum();
        if records > 2 * live as u64 + slack {
            drop(log);
            compact(storage, &table)?;
            let log = storage.open_log(LOG, log_config())?;
            tracing::info!(records, live, "compacted the offsets log");
            // The same commits, at their positions in the compacted log.
            let (table, _) = replay(&log)?;
            return Ok(OffsetStore {
                log,
                table: Mutex::new(table),
                activity: Mutex::default(),
                writes: Mutex::default(),
            });
        }
        Ok(OffsetStore {
            log,
            table: Mutex::new(table),
            activity: Mutex::default(),
            writes: Mutex::default(),
        })
    }

    /// Commits durably (blocking: run off the async threads).
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        metadata: &str,
    ) -> Result<()> {
        self.commit_many(group, topic, &[(partition, offset)], metadata)
    }

    /// Commits several partitions in one append and one fsync (blocking).
    pub fn commit_many(
        &self,
        group: &str,
        topic: &str,
        commits: &[(u32, u64)],
        metadata: &str,
    ) -> Result<()> {
        if commits.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = commits
            .iter()
            .map(|&(p, o)| encode(group, topic, p, Some((o, metadata))))
            .collect();
        let a = {
            let _w = self.writes.lock();
            self.log
                .append_unsynced(&records, ProducerStamp::default())?
        };
        // Visible only once durable: a commit that `GetOffsets`, `DescribeGroup` or a
        // subscription from the committed offset saw must survive a crash, and a failed
        // fsync must leave it unseen.
        self.log
            .sync_to(a.base_offset + u64::from(a.record_count))?;
        self.activity
            .lock()
            .insert(group.to_string(), crate::now_ms());
        let mut table = self.table.lock();
        let parts = table
            .entry(group.to_string())
            .or_default()
            .entry(topic.to_string())
            .or_default();
        for (i, &(p, offset)) in commits.iter().enumerate() {
            let written_at = a.base_offset + i as u64;
            if parts.get(&p).is_some_and(|c| c.written_at > written_at) {
                continue;
            }
            parts.insert(
                p,
                Committed {
                    offset,
                    metadata: metadata.to_string(),
                    written_at,
                },
            );
        }
        Ok(())
    }

    /// A group's committed offsets on a topic.
    pub fn get(&self, group: &str, topic: &str) -> BTreeMap<u32, Committed> {
        self.table
            .lock()
            .get(group)
            .and_then(|t| t.get(topic))
            .cloned()
            .unwrap_or_default()
    }

    /// One partition's committed offset.
    pub fn get_one(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.table
            .lock()
            .get(group)?
            .get(topic)?
            .get(&partition)
            .map(|c| c.offset)
    }

    /// Every group with the topics it has commits on.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        self.table
            .lock()
            .iter()
            .map(|(g, t)| (g.clone(), t.keys().cloned().collect()))
            .collect()
    }

    /// Deletes every commit on `topic` (the topic was deleted). Blocking.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let mut tombstones = Vec::new();
        {
            let table = self.table.lock();
            for (group, topics) in table.iter() {
                if let Some(parts) = topics.get(topic) {
                    for p in parts.keys() {
                        tombstones.push(encode(group, topic, *p, None));
                    }
                }
            }
        }
        if tombstones.is_empty() {
            return Ok(());
        }
        let a = {
            let _w = self.writes.lock();
            self.log
                .append_unsynced(&tombstones, ProducerStamp::default())?
        };
        self.log
            .sync_to(a.base_offset + u64::from(a.record_count))?;
        let mut table = self.table.lock();
        for topics in table.values_mut() {
            if let Some(parts) = topics.get_mut(topic) {
                // A commit written after the tombstones (the topic created again) stays.
                parts.retain(|_, c| c.written_at >= a.base_offset);
                if parts.is_empty() {
                    topics.remove(topic);
                }
            }
        }
        table.retain(|_, t| !t.is_empty());
        Ok(())
    }

    /// Deletes, durably, the committed offsets of every group outside `active` (the groups
    /// with members now) that neither committed nor had members for `retention_ms`.
    /// Returns how many groups it deleted. Blocking.
    pub fn expire(
        &self,
        now_ms: i64,
        retention_ms: u64,
        active: &HashSet<String>,
    ) -> Result<usize> {
        let retention = i64::try_from(retention_ms).unwrap_or(i64::MAX);
        let mut tombstones = Vec::new();
        let mut doomed = Vec::new();
        {
            let table = self.table.lock();
            let mut activity = self.activity.lock();
            activity.retain(|g, _| table.contains_key(g) || active.contains(g));
            for g in active {
                activity.insert(g.clone(), now_ms);
            }
            for (group, topics) in table.iter() {
                let last = *activity.entry(group.clone()).or_insert(now_ms);
                if now_ms.saturating_sub(last) <= retention {
                    continue;
                }
                doomed.push(group.clone());
                for (topic, parts) in topics {
                    for p in parts.keys() {
                        tombstones.push(encode(group, topic, *p, None));
                    }
                }
            }
        }
        if tombstones.is_empty() {
            return Ok(0);
        }
        let a = {
            let _w = self.writes.lock();
            self.log
                .append_unsynced(&tombstones, ProducerStamp::default())?
        };
        self.log
            .sync_to(a.base_offset + u64::from(a.record_count))?;
        let mut table = self.table.lock();
        for group in &doomed {
            if let Some(topics) = table.get_mut(group) {
                // A commit made since the scan was written after the tombstones: it stays.
                for parts in topics.values_mut() {
                    parts.retain(|_, c| c.written_at >= a.base_offset);
                }
                topics.retain(|_, parts| !parts.is_empty());
                if topics.is_empty() {
                    table.remove(group);
                    self.activity.lock().remove(group);
                }
            }
        }
        tracing::info!(
            groups = doomed.len(),
            "expired the committed offsets of groups without members"
        );
        Ok(doomed.len())
    }

    /// Compacts the log while the broker runs, once it holds more than twice the live
    /// commits (plus slack) and has a closed segment to drop: the latest commit of every
    /// partition, read from the log itself (so commits written but still waiting for their
    /// fsync are included), is appended again as a checkpoint, and every closed segment
    /// before the point it was read to is deleted. Commits are held off from the read to
    /// the checkpoint's append, so none lands between them and is overridden on replay by
    /// an older checkpoint entry. Returns the number of segments deleted. Blocking.
    pub fn compact(&self) -> Result<usize> {
        let records = self.log.end_offset() - self.log.start_offset();
        let live: u64 = self
            .table
            .lock()
            .values()
            .flat_map(|t| t.values())
            .map(|p| p.len() as u64)
            .sum();
        if self.log.segment_count() < 2 || records <= 2 * live + SLACK_RECORDS {
            return Ok(0);
        }
        let upto = {
            let _w = self.writes.lock();
            let upto = self.log.end_offset();
            let (latest, _) = replay(&self.log)?;
            let mut batch = Vec::new();
            for (group, topics) in &latest {
                for (topic, parts) in topics {
                    for (p, c) in parts {
                        batch.push(encode(group, topic, *p, Some((c.offset, &c.metadata))));
                        if batch.len() == 1000 {
                            self.log.append_unsynced(&batch, ProducerStamp::default())?;
                            batch.clear();
                        }
                    }
                }
            }
            if !batch.is_empty() {
                self.log.append_unsynced(&batch, ProducerStamp::default())?;
            }
            upto
        };
        self.log.sync()?;
        let removed = self.log.remove_before(upto)?;
        tracing::info!(
            records,
            live,
            segments = removed,
            "compacted the offsets log"
        );
        Ok(removed)
    }

    /// Groups with committed offsets (for tests and metrics).
    pub fn group_count(&self) -> usize {
        self.table.lock().len()
    }

    pub fn close(&self) -> Result<()> {
        Ok(self.log.close()?)
    }
}

fn encode(group: &str, topic: &str, partition: u32, value: Option<(u64, &str)>) -> Record {
    let key = format!("{group}\0{topic}\0{partition}");
    let value = match value {
        Some((offset, metadata)) => {
            let mut v = Vec::with_capacity(8 + metadata.len());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(metadata.as_bytes());
            Bytes::from(v)
        }
        None => Bytes::new(),
    };
    Record {
        key: Bytes::from(key),
        value,
        headers: Vec::new(),
        timestamp_ms: crate::now_ms(),
    }
}

/// Replays the log into a table; returns it and the number of records read.
fn replay(log: &Log) -> Result<(Table, u64)> {
    let mut table = Table::new();
    let mut next = log.start_offset();
    let end = log.end_offset();
    let mut records = 0u64;
    while next < end {
        let batch = match log.read(next, 10_000, 16 * 1024 * 1024) {
            Ok(b) => b,
            // Damage is skipped, loudly: the commits after it are intact and the newest
            // commit per partition usually is. A group whose latest commit was in the
            // damaged range resumes from an older one (duplicates, never loss).
            Err(spool_storage::Error::Corrupt {
                path,
                position,
                offsets: Some(lost),
                reason,
            }) if lost.end > next => {
                tracing::error!(
                    path = %path.display(),
                    position,
                    lost = ?lost,
                    %reason,
                    "committed offsets log is damaged; skipping the damaged commits (run `spoold verify` for details)"
                );
                next = lost.end;
                continue;
            }
            Err(e) => {
                return Err(Error::Metadata {
                    path: log.dir().to_path_buf(),
                    reason: format!(
                        "committed offsets cannot be read: {e}; restore the directory from a backup, or move it away to start with no committed offsets"
                    ),
                });
            }
        };
        let Some(last) = batch.last() else { break };
        next = last.offset + 1;
        for r in batch {
            records += 1;
            let key = String::from_utf8_lossy(&r.key);
            let mut parts = key.split('\0');
            let (Some(group), Some(topic), Some(Ok(partition))) = (
                parts.next(),
                parts.next(),
                parts.next().map(str::parse::<u32>),
            ) else {
                return Err(Error::Metadata {
                    path: log.dir().to_path_buf(),
                    reason: format!("offset record {} has a malformed key", r.offset),
                });
            };
            let topics = table.entry(group.to_string()).or_default();
            if r.value.is_empty() {
                if let Some(t) = topics.get_mut(topic) {
                    t.remove(&partition);
                    if t.is_empty() {
                        topics.remove(topic);
                    }
                }
                if topics.is_empty() {
                    table.remove(group);
                }
                continue;
            }
            if r.value.len() < 8 {
                return Err(Error::Metadata {
                    path: log.dir().to_path_buf(),
                    reason: format!("offset record {} has a malformed value", r.offset),
                });
            }
            let offset = u64::from_le_bytes(r.value[..8].try_into().expect("8 bytes"));
            let metadata = String::from_utf8_lossy(&r.value[8..]).into_owned();
            topics.entry(topic.to_string()).or_default().insert(
                partition,
                Committed {
                    offset,
                    metadata,
                    written_at: r.offset,
                },
            );
        }
    }
    Ok((table, records))
}

fn compact(storage: &Storage, table: &Table) -> Result<()> {
    let root = storage.root();
    let compact_dir = root.join(COMPACT);
    if compact_dir.exists() {
        fs::remove_dir_all(&compact_dir).map_err(|e| Error::io("remove", &compact_dir, e))?;
    }
    {
        let log = storage.open_log(COMPACT, log_config())?;
        let mut batch = Vec::new();
        for (group, topics) in table {
            for (topic, parts) in topics {
                for (p, c) in parts {
                    batch.push(encode(group, topic, *p, Some((c.offset, &c.metadata))));
                    if batch.len() == 1000 {
                        log.append_unsynced(&batch, ProducerStamp::default())?;
                        batch.clear();
                    }
                }
            }
        }
        if !batch.is_empty() {
            log.append_unsynced(&batch, ProducerStamp::default())?;
        }
        log.sync()?;
        log.close()?;
    }
    let (live, old) = (root.join(LOG), root.join(OLD));
    fs::rename(&live, &old).map_err(|e| Error::io("rename", &live, e))?;
    fs::rename(&compact_dir, &live).map_err(|e| Error::io("rename", &compact_dir, e))?;
    sync_dir(&root.join("internal"))?;
    fs::remove_dir_all(&old).map_err(|e| Error::io("remove", &old, e))?;
    Ok(())
}

/// Completes or rolls back a compaction a crash interrupted.
fn finish_interrupted_compaction(root: &Path) -> Result<()> {
    let (live, compact, old) = (root.join(LOG), root.join(COMPACT), root.join(OLD));
    if !live.exists() && compact.exists() {
        // Crashed between the two renames: the compacted log is complete.
        fs::rename(&compact, &live).map_err(|e| Error::io("rename", &compact, e))?;
    }
    for dir in [compact, old] {
        if dir.exists() && live.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_storage::StorageConfig;

    #[test]
    fn commits_survive_reopen_and_compaction_keeps_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
            let store = OffsetStore::open_with(&storage, 100).unwrap();
            for i in 0..300u64 {
                store
                    .commit("g", "t", (i % 3) as u32, i, "m")
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            store.commit("g2", "other", 0, 5, "").unwrap();
            store.delete_topic("other").unwrap();
        }
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let store = OffsetStore::open_with(&storage, 100).unwrap();
        let got = store.get("g", "t");
        assert_eq!(got.len(), 3);
        assert_eq!(got[&0].offset, 297);
        assert_eq!(got[&2].offset, 299);
        assert_eq!(got[&2].metadata, "m");
        assert_eq!(store.get_one("g2", "other", 0), None);
        assert!(!store.groups().contains_key("g2"));
        drop(store);
        let log = storage.open_log(LOG, log_config()).unwrap();
        assert!(
            log.end_offset() < 10,
            "compaction ran: {} records",
            log.end_offset()
        );
    }

    #[test]
    fn a_commit_is_visible_only_once_durable_and_never_after_a_failed_fsync() {
        use spool_storage::faults::{self, Op};
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let store = OffsetStore::open(&storage).unwrap();
        store.commit("g", "t", 0, 5, "").unwrap();
        faults::fail(&dir.path().join("internal"), Op::Sync, 1, 5);
        assert!(store.commit("g", "t", 0, 9, "").is_err());
        assert_eq!(
            store.get_one("g", "t", 0),
            Some(5),
            "a commit whose fsync failed must not be seen"
        );
        faults::clear(dir.path());
    }

    #[test]
    fn commits_applied_out_of_write_order_keep_the_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let store = OffsetStore::open_with(&storage, 0).unwrap();
        store.commit("g", "t", 0, 7, "").unwrap();
        // An older write (a lower log position) that becomes durable later changes nothing.
        let mut table = store.table.lock();
        let newer = table["g"]["t"][&0].written_at;
        table.get_mut("g").unwrap().get_mut("t").unwrap().insert(
            0,
            Committed {
                offset: 7,
                metadata: String::new(),
                written_at: newer + 10,
            },
        );
        drop(table);
        store.commit("g", "t", 0, 3, "").unwrap();
        assert_eq!(store.get_one("g", "t", 0), Some(7));
    }

    #[test]
    fn groups_without_members_lose_their_offsets_after_the_retention_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let store = OffsetStore::open(&storage).unwrap();
        for g in 0..500 {
            store
                .commit(&format!("invented-{g}"), "t", 0, 1, "")
                .unwrap();
        }
        store.commit("kept", "t", 0, 4, "").unwrap();
        store.commit("busy", "t", 1, 6, "").unwrap();
        let retention = 60_000;
        let active: HashSet<String> = ["busy".to_string()].into();
        let now = crate::now_ms();
        assert_eq!(
            store.expire(now, retention, &active).unwrap(),
            0,
            "nothing is old yet"
        );
        // Later: the invented groups are idle past the retention; `kept` committed since.
        store.commit("kept", "t", 0, 5, "").unwrap();
        let later = now + retention as i64 + 1;
        store.activity.lock().insert("kept".into(), later);
        assert_eq!(store.expire(later, retention, &active).unwrap(), 500);
        assert_eq!(store.group_count(), 2);
        assert_eq!(
            store.activity.lock().len(),
            2,
            "the activity map shrinks too"
        );
        assert_eq!(store.get_one("invented-7", "t", 0), None);
        assert_eq!(store.get_one("kept", "t", 0), Some(5));
        assert_eq!(
            store.get_one("busy", "t", 1),
            Some(6),
            "a group with members is kept"
        );
        drop(store);
        let store = OffsetStore::open(&storage).unwrap();
        assert_eq!(store.group_count(), 2, "expiry is durable");
        assert_eq!(store.get_one("invented-499", "t", 0), None);
    }

    #[test]
    fn compaction_while_running_keeps_the_log_bounded_and_the_latest_commits() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let store = OffsetStore::open(&storage).unwrap();
        // 1,000 live partitions, committed 300 times each: 300,000 records, ~20 MiB.
        let mut largest = 0;
        for round in 0..300u64 {
            let commits: Vec<(u32, u64)> = (0..1000).map(|p| (p, round)).collect();
            store.commit_many("g", "t", &commits, "").unwrap();
            if round % 10 == 0 {
                store.compact().unwrap();
            }
            largest = largest.max(store.log.size_bytes());
        }
        store.compact().unwrap();
        assert!(
            largest < 3 * SEGMENT_BYTES,
            "the offsets log grew to {largest} bytes"
        );
        assert!(store.log.start_offset() > 0, "compaction deleted segments");
        assert_eq!(store.get_one("g", "t", 999), Some(299));
        drop(store);
        let store = OffsetStore::open(&storage).unwrap();
        let got = store.get("g", "t");
        assert_eq!(got.len(), 1000);
        assert!(
            got.values().all(|c| c.offset == 299),
            "a restart keeps the latest commits"
        );
    }
}
