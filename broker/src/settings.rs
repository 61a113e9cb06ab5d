//! A topic's settings: what `topic.json` stores (every default filled in), how a request's
//! `TopicConfig` resolves against the broker's defaults, and the log configuration they
//! give each partition.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use spool_proto::v1;
use spool_storage::config::{Codec as StorageCodec, Compression};
use spool_storage::{Durability, LogConfig};

use crate::config::BrokerConfig;
use crate::error::{Error, Result};

/// How a topic's partitions reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

impl Fsync {
    pub fn parse(s: &str) -> Option<Fsync> {
        match s {
            "always" => Some(Fsync::Always),
            "interval" => Some(Fsync::Interval),
            "never" => Some(Fsync::Never),
            _ => None,
        }
    }
}

/// How a topic's batches are stored on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "none" => Some(Codec::None),
            "lz4" => Some(Codec::Lz4),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Codec::None
    }

    pub fn storage(self, level: i32) -> Compression {
        let codec = match self {
            Codec::None => StorageCodec::None,
            Codec::Lz4 => StorageCodec::Lz4,
            Codec::Zstd => StorageCodec::Zstd,
        };
        Compression { codec, level }
    }

    pub fn to_proto(self) -> v1::Compression {
        match self {
            Codec::None => v1::Compression::None,
            Codec::Lz4 => v1::Compression::Lz4,
            Codec::Zstd => v1::Compression::Zstd,
        }
    }
}

/// What a topic removes: whole old segments (delete), superseded records (compact), or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cleanup {
    #[default]
    Delete,
    Compact,
    CompactDelete,
}

impl Cleanup {
    pub fn parse(s: &str) -> Option<Cleanup> {
        match s {
            "delete" => Some(Cleanup::Delete),
            "compact" => Some(Cleanup::Compact),
            "compact_delete" | "compact,delete" => Some(Cleanup::CompactDelete),
            _ => None,
        }
    }

    pub fn is_delete(&self) -> bool {
        *self == Cleanup::Delete
    }

    /// Compaction runs on the topic.
    pub fn compacts(self) -> bool {
        self != Cleanup::Delete
    }

    /// Retention removes whole old segments.
    pub fn deletes(self) -> bool {
        self != Cleanup::Compact
    }

    pub fn to_proto(self) -> v1::CleanupPolicy {
        match self {
            Cleanup::Delete => v1::CleanupPolicy::Delete,
            Cleanup::Compact => v1::CleanupPolicy::Compact,
            Cleanup::CompactDelete => v1::CleanupPolicy::CompactDelete,
        }
    }
}

/// The codec named `name` (`none`, `lz4`, `zstd`) checked with `level`.
pub fn codec_of(name: &str, level: i32) -> std::result::Result<Codec, String> {
    let codec = Codec::parse(name)
        .ok_or_else(|| format!("compression must be none, lz4 or zstd, not {name:?}"))?;
    check_level(codec, level)?;
    Ok(codec)
}

/// Checks that `codec` has `level` (storage's rule, its message).
fn check_level(codec: Codec, level: i32) -> std::result::Result<(), String> {
    spool_storage::config::check_compression(codec.storage(level)).map_err(|e| match e {
        spool_storage::Error::InvalidConfig(m) => m,
        e => e.to_string(),
    })
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A topic's effective settings: every default already filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    /// 0 = keep everything.
    pub retention_bytes: u64,
    /// 0 = keep everything.
    pub retention_ms: u64,
    pub segment_bytes: u64,
    pub fsync: Fsync,
    pub fsync_interval_ms: u64,
    pub max_record_bytes: u32,
    /// An idempotent producer is forgotten after this many milliseconds without appends;
    /// 0 = never (the caps still apply). Absent in topics created before it existed: the
    /// broker's setting applies (filled in when the topic is opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_id_expiration_ms: Option<u64>,
    /// Absent (none) in topics created before compression existed, and when none: the
    /// CRC of their `topic.json` is over the fields they had.
    #[serde(default, skip_serializing_if = "Codec::is_none")]
    pub compression: Codec,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compression_level: i32,
    /// Absent (delete) in older topics and when delete.
    #[serde(default, skip_serializing_if = "Cleanup::is_delete")]
    pub cleanup_policy: Cleanup,
    /// How long compaction keeps a tombstone; absent in older topics (the broker's
    /// default applies, filled in when the topic is opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_retention_ms: Option<u64>,
    /// The active segment's longest life; absent in older topics as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_ms: Option<u64>,
}

impl TopicSettings {
    /// The expiration in effect: the topic's own, else the broker's.
    pub fn producer_expiration_ms(&self, config: &BrokerConfig) -> u64 {
        self.producer_id_expiration_ms
            .unwrap_or(config.producer_id_expiration_ms)
    }

    /// Fills the fields older topics lack with the broker's defaults in force.
    pub fn fill_defaults(&mut self, config: &BrokerConfig) {
        let d = &config.topic_defaults;
        self.producer_id_expiration_ms = Some(self.producer_expiration_ms(config));
        self.delete_retention_ms
            .get_or_insert(d.delete_retention_ms);
        self.segment_ms.get_or_insert(d.segment_ms);
    }

    pub fn log_config(&self, config: &BrokerConfig) -> LogConfig {
        let max_request_bytes = config.max_request_bytes;
        let expiration = self.producer_expiration_ms(config);
        let segment_ms = self.segment_ms.unwrap_or(config.topic_defaults.segment_ms);
        LogConfig {
            segment_bytes: self.segment_bytes,
            durability: match self.fsync {
                Fsync::Always => Durability::Always,
                Fsync::Interval => {
                    Durability::Interval(Duration::from_millis(self.fsync_interval_ms.max(1)))
                }
                Fsync::Never => Durability::Never,
            },
            // A compact-only topic removes superseded records, never whole segments.
            retention_bytes: (self.cleanup_policy.deletes() && self.retention_bytes > 0)
                .then_some(self.retention_bytes),
            retention: (self.cleanup_policy.deletes() && self.retention_ms > 0)
                .then(|| Duration::from_millis(self.retention_ms)),
            segment_age: (segment_ms > 0).then(|| Duration::from_millis(segment_ms)),
            // The broker checks payload sizes itself with a clear message; the log's limits
            // are backstops that allow for the record framing.
            max_record_bytes: u64::from(self.max_record_bytes) + 1024,
            max_batch_bytes: (max_request_bytes as u64 + 64 * 1024).min(u64::from(u32::MAX)),
            producer_expiration: (expiration > 0).then(|| Duration::from_millis(expiration)),
            max_producers: config.max_producers_per_partition.max(1),
            compression: self.compression.storage(self.compression_level),
            ..LogConfig::default()
        }
    }
}

/// Resolves a requested config against the broker defaults.
pub fn resolve(config: &BrokerConfig, req: &spool_proto::v1::TopicConfig) -> Result<TopicSettings> {
    use spool_proto::v1::FsyncPolicy;
    let d = &config.topic_defaults;
    let fsync = match FsyncPolicy::try_from(req.fsync) {
        Ok(FsyncPolicy::Unspecified) => Fsync::parse(&d.fsync).unwrap_or(Fsync::Always),
        Ok(FsyncPolicy::Always) => Fsync::Always,
        Ok(FsyncPolicy::Interval) => Fsync::Interval,
        Ok(FsyncPolicy::Never) => Fsync::Never,
        Err(_) => {
            return Err(Error::invalid(format!(
                "config.fsync {} is not a FsyncPolicy value",
                req.fsync
            )));
        }
    };
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    // The default never exceeds what one request can carry; an explicit value must fit.
    let request_cap = u32::try_from(config.max_request_bytes).unwrap_or(u32::MAX);
    let max_record_bytes = if req.max_record_bytes == 0 {
        d.max_record_bytes.min(request_cap)
    } else {
        req.max_record_bytes
    };
    if max_record_bytes as usize > config.max_request_bytes {
        return Err(Error::invalid(format!(
            "config.max_record_bytes {max_record_bytes} exceeds the broker's request limit of {} bytes",
            config.max_request_bytes
        )));
    }
    let (compression, compression_level) = compression_for(config, req)?;
    let cleanup_policy = match v1::CleanupPolicy::try_from(req.cleanup_policy) {
        Ok(v1::CleanupPolicy::Unspecified) => Cleanup::parse(&d.cleanup_policy).unwrap_or_default(),
        Ok(v1::CleanupPolicy::Delete) => Cleanup::Delete,
        Ok(v1::CleanupPolicy::Compact) => Cleanup::Compact,
        Ok(v1::CleanupPolicy::CompactDelete) => Cleanup::CompactDelete,
        Err(_) => {
            return Err(Error::invalid(format!(
                "config.cleanup_policy {} is not a CleanupPolicy value",
                req.cleanup_policy
            )));
        }
    };
    let segment_bytes = or(req.segment_bytes, d.segment_bytes)
        .clamp(spool_storage::config::MIN_SEGMENT_BYTES, 1 << 30);
    Ok(TopicSettings {
        retention_bytes: or(req.retention_bytes, d.retention_bytes),
        retention_ms: or(req.retention_ms, d.retention_ms),
        segment_bytes,
        fsync,
        fsync_interval_ms: or(req.fsync_interval_ms, d.fsync_interval_ms),
        max_record_bytes,
        producer_id_expiration_ms: Some(or(
            req.producer_id_expiration_ms,
            config.producer_id_expiration_ms,
        )),
        compression,
        compression_level,
        cleanup_policy,
        delete_retention_ms: Some(or(req.delete_retention_ms, d.delete_retention_ms)),
        segment_ms: Some(or(req.segment_ms, d.segment_ms)),
    })
}

/// The codec and level a request asks for: an unspecified codec is the broker's default
/// (with the default's level unless the request names one).
fn compression_for(config: &BrokerConfig, req: &v1::TopicConfig) -> Result<(Codec, i32)> {
    let d = &config.topic_defaults;
    let (codec, level) = match v1::Compression::try_from(req.compression) {
        Ok(v1::Compression::Unspecified) => {
            let codec = Codec::parse(&d.compression).unwrap_or_default();
            let level = if req.compression_level != 0 {
                req.compression_level
            } else {
                d.compression_level
            };
            (codec, level)
        }
        Ok(v1::Compression::None) => (Codec::None, req.compression_level),
        Ok(v1::Compression::Lz4) => (Codec::Lz4, req.compression_level),
        Ok(v1::Compression::Zstd) => (Codec::Zstd, req.compression_level),
        Err(_) => {
            return Err(Error::invalid(format!(
                "config.compression {} is not a Compression value",
                req.compression
            )));
        }
    };
    check_level(codec, level).map_err(|e| Error::invalid(format!("config.{e}")))?;
    Ok((codec, level))
}

/// A `TopicConfig` field as `AlterTopic` sees it: its proto name, whether a request sets
/// it (non-zero), and how a kept value is copied from the current settings.
struct Field {
    name: &'static str,
    set: fn(&v1::TopicConfig) -> bool,
    keep: fn(&mut TopicSettings, &TopicSettings),
    /// A field whose change (set or reset) changes this one too.
    follows: Option<&'static str>,
}

/// A field set when non-zero, kept by copying it.
macro_rules! field {
    ($name:ident) => {
        Field {
            name: stringify!($name),
            set: |r| r.$name != 0,
            keep: |o, c| o.$name = c.$name,
            follows: None,
        }
    };
}

/// The `TopicConfig` fields `AlterTopicRequest.reset` may name.
const FIELDS: [Field; 12] = [
    field!(retention_bytes),
    field!(retention_ms),
    field!(segment_bytes),
    field!(fsync),
    field!(fsync_interval_ms),
    field!(max_record_bytes),
    field!(producer_id_expiration_ms),
    field!(compression),
    field!(cleanup_policy),
    field!(delete_retention_ms),
    field!(segment_ms),
    Field {
        // A new (or reset) codec without a level takes that codec's default.
        follows: Some("compression"),
        ..field!(compression_level)
    },
];

/// `current` altered by `req` (a field at 0 / unspecified keeps its value) and `reset`
/// (fields set to the broker's default in force now). A field both set and reset, or an
/// unknown name in `reset`, is `INVALID_ARGUMENT`.
pub fn alter(
    config: &BrokerConfig,
    current: &TopicSettings,
    req: &v1::TopicConfig,
    reset: &[String],
) -> Result<TopicSettings> {
    for name in reset {
        let Some(f) = FIELDS.iter().find(|f| f.name == name) else {
            let names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
            return Err(Error::invalid(format!(
                "reset names {name:?}, which is not a TopicConfig field; use one of {}",
                names.join(", ")
            )));
        };
        if (f.set)(req) {
            return Err(Error::invalid(format!(
                "config.{name} is both set and reset: do one"
            )));
        }
    }
    let resetting = |name: &str| reset.iter().any(|n| n == name);
    // The asked-for values and the defaults, resolved (and checked) as creation would;
    // a level alone is checked against the topic's codec.
    let mut asked = *req;
    if req.compression == 0 && req.compression_level != 0 && !resetting("compression") {
        asked.compression = current.compression.to_proto() as i32;
    }
    let mut out = resolve(config, &asked)?;
    let changed = |f: &Field| (f.set)(req) || resetting(f.name);
    for f in &FIELDS {
        let mut follows = FIELDS.iter().filter(|o| Some(o.name) == f.follows);
        if !changed(f) && !follows.any(changed) {
            (f.keep)(&mut out, current);
        }
    }
    check_level(out.compression, out.compression_level)
        .map_err(|e| Error::invalid(format!("config.{e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd9() -> (BrokerConfig, TopicSettings) {
        let config = BrokerConfig::default();
        let req = v1::TopicConfig {
            compression: v1::Compression::Zstd as i32,
            compression_level: 9,
            ..Default::default()
        };
        let current = resolve(&config, &req).unwrap();
        (config, current)
    }

    #[test]
    fn resetting_the_codec_resets_its_level() {
        let (config, current) = zstd9();
        let out = alter(
            &config,
            &current,
            &v1::TopicConfig::default(),
            &["compression".into()],
        );
        let out = out.unwrap();
        assert_eq!((out.compression, out.compression_level), (Codec::None, 0));
    }

    #[test]
    fn a_new_codec_takes_its_default_level_and_a_level_alone_keeps_the_codec() {
        let (config, current) = zstd9();
        let lz4 = v1::TopicConfig {
            compression: v1::Compression::Lz4 as i32,
            ..Default::default()
        };
        let out = alter(&config, &current, &lz4, &[]).unwrap();
        assert_eq!((out.compression, out.compression_level), (Codec::Lz4, 0));
        let level = v1::TopicConfig {
            compression_level: -3,
            ..Default::default()
        };
        let out = alter(&config, &current, &level, &[]).unwrap();
        assert_eq!((out.compression, out.compression_level), (Codec::Zstd, -3));
        assert_eq!(out.retention_ms, current.retention_ms);
    }
}
