//! Topics: their configuration on disk, their partitions' logs, and the wake-up channel
//! each partition publishes its end offset on.
//!
//! On disk a topic is `topics/<name>/topic.json` plus one log directory per partition
//! (`topics/<name>/<partition>/`). `topic.json` is written last on create (temporary file,
//! fsync, rename, fsync the directory) and removed first on delete, so a crash in between
//! leaves a directory without it, which the next start removes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use spool_storage::{Log, LogConfig, Storage, sync_dir};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};
pub use crate::settings::{Fsync, TopicSettings};

/// Longest topic name.
pub const MAX_TOPIC_NAME: usize = 249;
const META_FILE: &str = "topic.json";
const META_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    version: u32,
    name: String,
    partitions: u32,
    config: TopicSettings,
    /// CRC-32 of this JSON serialised with `crc32` = 0: a flipped bit anywhere (say in
    /// `partitions`) is refused, never acted on.
    #[serde(default)]
    crc32: u32,
}

impl TopicMeta {
    fn checksum(&self) -> u32 {
        let unsigned = TopicMeta {
            version: self.version,
            name: self.name.clone(),
            partitions: self.partitions,
            config: self.config.clone(),
            crc32: 0,
        };
        crc32fast::hash(&serde_json::to_vec(&unsigned).expect("serialisable"))
    }

    fn sealed(mut self) -> TopicMeta {
        self.crc32 = self.checksum();
        self
    }
}

/// What to do about a topic metadata file the broker cannot use.
const META_ADVICE: &str = "restore the file from a backup, or delete the topic's directory to drop the topic (run `spoold verify` to check its data)";

/// What an operator does about a partition whose log failed.
const FAILURE_ADVICE: &str = "The partition refuses appends (UNAVAILABLE) because written data may not have reached the disk; reads still work. Check the disk (kernel log), then restart the broker: the log reopens and recovery checks its tail (acknowledged fsynced records stay). Or delete the topic";

/// One partition: its log and the channel that announces its end offset. Clones share
/// both (an altered topic keeps its partitions).
#[derive(Clone)]
pub struct Partition {
    pub index: u32,
    pub log: Arc<Log>,
    end: Arc<watch::Sender<u64>>,
}

impl Partition {
    fn new(index: u32, log: Arc<Log>) -> Partition {
        let end = Arc::new(watch::Sender::new(log.end_offset()));
        let tx = Arc::clone(&end);
        log.add_listener(Box::new(move |offset| {
            tx.send_replace(offset);
        }));
        Partition { index, log, end }
    }

    /// A receiver that wakes whenever the end offset changes.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Why the partition refuses appends, with what the operator does about it, or `None`
    /// while it is healthy (see `PartitionState` in the API).
    pub fn failure(&self) -> Option<String> {
        self.log
            .failure()
            .map(|what| format!("{what}. {FAILURE_ADVICE}"))
    }
}

/// A topic and its open partitions.
pub struct Topic {
    pub name: String,
    pub settings: TopicSettings,
    pub partitions: Vec<Partition>,
    /// Cancelled when the topic is deleted: streams on it end.
    pub deleted: CancellationToken,
    /// The partition count, announced again when `AlterTopic` adds partitions (shared by
    /// every version of the topic), so all-partition subscriptions take them up.
    pub partition_count: Arc<watch::Sender<u32>>,
    round_robin: AtomicU32,
}

impl Topic {
    pub fn partition(&self, index: u32) -> Result<&Partition> {
        self.partitions
            .get(index as usize)
            .ok_or_else(|| Error::PartitionNotFound {
                topic: self.name.clone(),
                partition: index,
                partitions: self.partitions.len() as u32,
            })
    }

    /// The partition an append goes to: explicit, else by key hash, else round-robin.
    pub fn choose_partition(&self, explicit: Option<u32>, key: &[u8]) -> Result<&Partition> {
        let n = self.partitions.len() as u32;
        let index = match explicit {
            Some(p) => p,
            None if !key.is_empty() => spool_proto::partitioning::partition_for_key(key, n),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.partition(index)
    }

    /// The partition of a compacted topic's append that names none: the one its records'
    /// keys hash to, so a key lives in one partition (records without a key go
    /// round-robin). Keys hashing to different partitions are `INVALID_ARGUMENT`.
    pub fn partition_by_record_keys(
        &self,
        records: &[spool_proto::v1::Record],
    ) -> Result<&Partition> {
        let n = self.partitions.len() as u32;
        let mut chosen: Option<u32> = None;
        for r in records.iter().filter(|r| !r.key.is_empty()) {
            let p = spool_proto::partitioning::partition_for_key(&r.key, n);
            match chosen {
                Some(c) if c != p => {
                    return Err(Error::invalid(format!(
                        "topic {:?} is compacted and this append names no partition, so each record goes to the partition its key hashes to, but its keys hash to partitions {c} and {p}: send them in separate appends or set partition_key",
                        self.name
                    )));
                }
                _ => chosen = Some(p),
            }
        }
        self.choose_partition(chosen, &[])
    }
}

/// All topics of the broker.
pub struct Registry {
    storage: Arc<Storage>,
    config: Arc<BrokerConfig>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises create and delete (blocking file work, run off the async threads).
    admin: Mutex<()>,
}

/// Checks a topic or group name: `[A-Za-z0-9._-]{1,249}`, never `.` or `..`.
/// Checks a new topic's partition count.
pub fn check_partitions(config: &BrokerConfig, partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > config.max_partitions {
        return Err(Error::invalid(format!(
            "partitions must be 1 to {}, got {partitions}",
            config.max_partitions
        )));
    }
    Ok(())
}

/// Checks an alteration of `old` to `partitions` (0 = unchanged) and `settings`, returning
/// the partition count it leaves.
pub fn check_alter(
    config: &BrokerConfig,
    old: &Topic,
    partitions: u32,
    settings: &TopicSettings,
) -> Result<u32> {
    let name = &old.name;
    let have = old.partitions.len() as u32;
    let want = if partitions == 0 { have } else { partitions };
    if want < have {
        return Err(Error::invalid(format!(
            "partitions {want} is fewer than the topic's {have}: partitions can only be added"
        )));
    }
    if want > config.max_partitions {
        return Err(Error::invalid(format!(
            "partitions must be at most {}, got {want}",
            config.max_partitions
        )));
    }
    if want > have && settings.cleanup_policy.compacts() {
        return Err(Error::invalid(format!(
            "topic {name:?} is compacted: its keys hash over {have} partitions, and adding partitions would leave a key's older values in another partition than its new ones; create a new topic instead"
        )));
    }
    settings.log_config(config).validate()?;
    Ok(want)
}

pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOPIC_NAME {
        return Err(Error::invalid(format!(
            "{kind} name must be 1 to {MAX_TOPIC_NAME} characters, got {}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(format!(
            "{kind} name may not be `.` or `..`"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "{kind} name {name:?} contains {c:?}: use only A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl Registry {
    /// Opens every topic found in the data directory, recovering its partitions.
    pub fn open(storage: Arc<Storage>, config: Arc<BrokerConfig>) -> Result<Registry> {
        let root = storage.root().join("topics");
        fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        let mut metas = Vec::new();
        let entries = fs::read_dir(&root).map_err(|e| Error::io("list", &root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &root, e))?;
            let dir = entry.path();
            let meta_path = dir.join(META_FILE);
            if !meta_path.exists() {
                tracing::warn!(dir = %dir.display(), "removing a topic directory without topic.json (an interrupted create or delete)");
                fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
                continue;
            }
            let meta = read_meta(&meta_path)?;
            remove_uncommitted_partitions(&storage, &meta)?;
            metas.push(meta);
        }
        let topics = open_topics(&storage, &config, metas)?
            .into_iter()
            .map(|t| (t.name.clone(), Arc::new(t)))
            .collect();
        Ok(Registry {
            storage,
            config,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Resolves a requested config against the broker defaults.
    pub fn settings_for(&self, req: &spool_proto::v1::TopicConfig) -> Result<TopicSettings> {
        crate::settings::resolve(&self.config, req)
    }

    /// Creates a topic (blocking: run off the async threads).
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>> {
        validate_name("topic", name)?;
        check_partitions(&self.config, partitions)?;
        let _admin = self.admin.lock();
        if self.topics.read().contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        let dir = self.topic_dir(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let topic = match self.create_files(name, partitions, settings, &dir) {
            Ok(topic) => topic,
            Err(e) => {
                // The partitions opened so far are closed (dropped) by now: nothing of the
                // topic stays, on disk or in memory, and the name can be created again.
                if let Err(cleanup) = fs::remove_dir_all(&dir)
                    .map_err(|e| Error::io("remove", &dir, e))
                    .and_then(|()| Ok(sync_dir(&self.storage.root().join("topics"))?))
                {
                    tracing::error!(topic = name, error = %cleanup, "could not remove a half-created topic; the next start or create removes it");
                }
                return Err(e);
            }
        };
        let topic = Arc::new(topic);
        self.topics
            .write()
            .insert(name.to_string(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Opens the new topic's partitions and then writes its metadata, which is what makes
    /// it exist after a restart.
    fn create_files(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
        dir: &Path,
    ) -> Result<Topic> {
        let meta = TopicMeta {
            version: META_VERSION,
            name: name.to_string(),
            partitions,
            config: settings,
            crc32: 0,
        };
        let topic = open_topics(&self.storage, &self.config, vec![meta])?
            .pop()
            .expect("one topic");
        write_meta(dir, name, partitions, &topic.settings)?;
        sync_dir(&self.storage.root().join("topics"))?;
        Ok(topic)
    }

    /// Deletes a topic and its files (blocking).
    pub fn delete(&self, name: &str) -> Result<()> {
        validate_name("topic", name)?;
        let _admin = self.admin.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        topic.deleted.cancel();
        let dir = self.topic_dir(name);
        let meta = dir.join(META_FILE);
        fs::remove_file(&meta).map_err(|e| Error::io("remove", &meta, e))?;
        sync_dir(&dir)?;
        for p in &topic.partitions {
            self.storage.delete_log(&p.log)?;
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        sync_dir(&self.storage.root().join("topics"))?;
        Ok(())
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.storage.root().join("topics").join(name)
    }

    /// Alters a topic (blocking: run off the async threads): `settings` apply to every
    /// partition at once, partitions up to `partitions` (0 = unchanged) are created empty.
    /// The new `topic.json` is the commit point: a crash before it leaves the topic as it
    /// was (empty partition directories past its count are removed on start).
    pub fn alter(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>> {
        let _admin = self.admin.lock();
        let old = self.get(name)?;
        let have = old.partitions.len() as u32;
        let want = check_alter(&self.config, &old, partitions, &settings)?;
        let log_config = settings.log_config(&self.config);
        let mut parts = old.partitions.clone();
        for p in have..want {
            let log = self
                .storage
                .open_log(&format!("topics/{name}/{p}"), log_config.clone())?;
            parts.push(Partition::new(p, log));
        }
        write_meta(&self.topic_dir(name), name, want, &settings)?;
        for p in &old.partitions {
            self.storage.reconfigure_log(&p.log, log_config.clone())?;
        }
        let topic = Arc::new(Topic {
            name: name.to_string(),
            settings,
            partitions: parts,
            deleted: old.deleted.clone(),
            partition_count: Arc::clone(&old.partition_count),
            round_robin: AtomicU32::new(0),
        });
        self.topics
            .write()
            .insert(name.to_string(), Arc::clone(&topic));
        topic.partition_count.send_replace(want);
        Ok(topic)
    }

    /// Flushes and closes every partition (clean shutdown); false if any close failed.
    pub fn close(&self) -> bool {
        let mut all = true;
        for topic in self.list() {
            for p in &topic.partitions {
                if let Err(e) = p.log.close() {
                    tracing::error!(topic = %topic.name, partition = p.index, error = %e, "close failed");
                    all = false;
                }
            }
        }
        all
    }

    /// The storage the topics live in.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
}

/// Opens the partitions of `metas` (recovering each), several at once.
fn open_topics(
    storage: &Storage,
    config: &BrokerConfig,
    metas: Vec<TopicMeta>,
) -> Result<Vec<Topic>> {
    let jobs: Vec<(String, LogConfig)> = metas
        .iter()
        .flat_map(|m| {
            let log_config = m.config.log_config(config);
            (0..m.partitions).map(move |p| (format!("topics/{}/{p}", m.name), log_config.clone()))
        })
        .collect();
    let mut logs = open_logs(storage, &jobs)?.into_iter();
    let mut topics = Vec::with_capacity(metas.len());
    for meta in metas {
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for p in 0..meta.partitions {
            let log = logs.next().expect("one log per partition");
            let r = log.open_report();
            if r.dropped_bytes > 0 {
                tracing::warn!(topic = %meta.name, partition = p, dropped_bytes = r.dropped_bytes, "recovery cut a torn tail");
            }
            partitions.push(Partition::new(p, log));
        }
        let mut settings = meta.config;
        settings.fill_defaults(config);
        topics.push(Topic {
            name: meta.name,
            settings,
            partition_count: Arc::new(watch::Sender::new(partitions.len() as u32)),
            partitions,
            deleted: CancellationToken::new(),
            round_robin: AtomicU32::new(0),
        });
    }
    Ok(topics)
}

/// Threads that open logs at once: opening waits on the disk (listing, reading indexes,
/// snapshots and the tail), so ten thousand partitions recover in parallel, not in turn.
const OPEN_THREADS: usize = 8;

/// Opens the logs `jobs` names, in order; stops at the first failure (the logs opened so
/// far are closed again when the result is dropped).
fn open_logs(storage: &Storage, jobs: &[(String, LogConfig)]) -> Result<Vec<Arc<Log>>> {
    let threads = OPEN_THREADS.min(jobs.len());
    if threads <= 1 {
        return jobs
            .iter()
            .map(|(name, c)| Ok(storage.open_log(name, c.clone())?))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let opened: Vec<Mutex<Option<Arc<Log>>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while failure.lock().is_none() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, c)) = jobs.get(i) else { break };
                    match storage.open_log(name, c.clone()) {
                        Ok(log) => *opened[i].lock() = Some(log),
                        Err(e) => {
                            failure.lock().get_or_insert(e.into());
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    Ok(opened
        .into_iter()
        .map(|m| m.into_inner().expect("every log opened"))
        .collect())
}

/// Checks a `topic.json` as the broker would on start (`spoold verify`).
pub fn check_metadata(path: &Path) -> Result<()> {
    read_meta(path).map(|_| ())
}

fn read_meta(path: &Path) -> Result<TopicMeta> {
    let bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let refuse = |what: String| Error::Metadata {
        path: path.to_path_buf(),
        reason: format!("{what}; {META_ADVICE}"),
    };
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| refuse(e.to_string()))?;
    if meta.version != META_VERSION {
        return Err(refuse(format!("unsupported version {}", meta.version)));
    }
    if meta.crc32 != meta.checksum() {
        return Err(refuse("checksum mismatch: the file is damaged".into()));
    }
    let dir_name = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if dir_name.as_deref() != Some(meta.name.as_str()) {
        return Err(refuse(format!(
            "names topic {:?} but lives in directory {dir_name:?}",
            meta.name
        )));
    }
    Ok(meta)
}

/// Writes the `topic.json` of a topic in `dir`, atomically.
fn write_meta(dir: &Path, name: &str, partitions: u32, settings: &TopicSettings) -> Result<()> {
    let meta = TopicMeta {
        version: META_VERSION,
        name: name.to_string(),
        partitions,
        config: settings.clone(),
        crc32: 0,
    }
    .sealed();
    let json = serde_json::to_vec_pretty(&meta).expect("serialisable");
    write_atomically(&dir.join(META_FILE), &json)
}

/// Removes partition directories of `meta`'s topic numbered past its count: what an
/// `AlterTopic` that crashed before its `topic.json` left (they hold no records: nothing
/// could append to them).
fn remove_uncommitted_partitions(storage: &Storage, meta: &TopicMeta) -> Result<()> {
    let dir = storage.root().join("topics").join(&meta.name);
    let entries = fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io("list", &dir, e))?.path();
        let index = path
            .file_name()
            .and_then(|n| n.to_str()?.parse::<u32>().ok());
        if index.is_some_and(|i| i >= meta.partitions) && path.is_dir() {
            tracing::warn!(dir = %path.display(), "removing a partition an interrupted AlterTopic created");
            fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
            sync_dir(&dir)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io("write", path, e))?;
    Ok(sync_dir(path.parent().unwrap_or(Path::new(".")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_with_a_reason() {
        assert!(validate_name("topic", "orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b", "é", &"x".repeat(250)] {
            let e = validate_name("topic", bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}");
        }
        assert!(validate_name("topic", &"x".repeat(249)).is_ok());
    }
}
