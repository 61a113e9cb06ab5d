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

/// The codec named `name` (`none`, `lz4`, `zstd`) checked with `level`.
pub fn codec_of(name: &str, level: i32) -> std::result::Result<Codec, String> {
    let codec = Codec::parse(name)
        .ok_or_else(|| format!("compression must be none, lz4 or zstd, not {name:?}"))?;
    spool_storage::config::check_compression(codec.storage(level)).map_err(|e| match e {
        spool_storage::Error::InvalidConfig(m) => m,
        e => e.to_string(),
    })?;
    Ok(codec)
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
}

impl TopicSettings {
    /// The expiration in effect: the topic's own, else the broker's.
    pub fn producer_expiration_ms(&self, config: &BrokerConfig) -> u64 {
        self.producer_id_expiration_ms
            .unwrap_or(config.producer_id_expiration_ms)
    }

    pub fn log_config(&self, config: &BrokerConfig) -> LogConfig {
        let max_request_bytes = config.max_request_bytes;
        let expiration = self.producer_expiration_ms(config);
        LogConfig {
            segment_bytes: self.segment_bytes,
            durability: match self.fsync {
                Fsync::Always => Durability::Always,
                Fsync::Interval => {
                    Durability::Interval(Duration::from_millis(self.fsync_interval_ms.max(1)))
                }
                Fsync::Never => Durability::Never,
            },
            retention_bytes: (self.retention_bytes > 0).then_some(self.retention_bytes),
            retention: (self.retention_ms > 0).then(|| Duration::from_millis(self.retention_ms)),
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
    let name = format!("{codec:?}").to_lowercase();
    codec_of(&name, level).map_err(|e| Error::invalid(format!("config.{e}")))?;
    Ok((codec, level))
}

/// The `TopicConfig` fields `AlterTopicRequest.reset` may name, by their proto names.
pub const FIELDS: [&str; 9] = [
    "retention_bytes",
    "retention_ms",
    "segment_bytes",
    "fsync",
    "fsync_interval_ms",
    "max_record_bytes",
    "producer_id_expiration_ms",
    "compression",
    "compression_level",
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
        if !FIELDS.contains(&name.as_str()) {
            return Err(Error::invalid(format!(
                "reset names {name:?}, which is not a TopicConfig field; use one of {}",
                FIELDS.join(", ")
            )));
        }
    }
    let set = |name: &str| -> bool {
        match name {
            "retention_bytes" => req.retention_bytes != 0,
            "retention_ms" => req.retention_ms != 0,
            "segment_bytes" => req.segment_bytes != 0,
            "fsync" => req.fsync != 0,
            "fsync_interval_ms" => req.fsync_interval_ms != 0,
            "max_record_bytes" => req.max_record_bytes != 0,
            "producer_id_expiration_ms" => req.producer_id_expiration_ms != 0,
            "compression" => req.compression != 0,
            _ => req.compression_level != 0,
        }
    };
    if let Some(both) = reset.iter().find(|n| set(n)) {
        return Err(Error::invalid(format!(
            "config.{both} is both set and reset: do one"
        )));
    }
    // The asked-for values and the defaults, resolved (and checked) as creation would;
    // a level without a codec is checked against the topic's codec.
    let mut asked = *req;
    let resetting = |name: &str| reset.iter().any(|n| n == name);
    if req.compression == 0 && req.compression_level != 0 && !resetting("compression") {
        asked.compression = current.compression.to_proto() as i32;
    }
    let resolved = resolve(config, &asked)?;
    let keep = |name: &str| !set(name) && !resetting(name);
    let mut out = resolved.clone();
    if keep("retention_bytes") {
        out.retention_bytes = current.retention_bytes;
    }
    if keep("retention_ms") {
        out.retention_ms = current.retention_ms;
    }
    if keep("segment_bytes") {
        out.segment_bytes = current.segment_bytes;
    }
    if keep("fsync") {
        out.fsync = current.fsync;
    }
    if keep("fsync_interval_ms") {
        out.fsync_interval_ms = current.fsync_interval_ms;
    }
    if keep("max_record_bytes") {
        out.max_record_bytes = current.max_record_bytes;
    }
    if keep("producer_id_expiration_ms") {
        out.producer_id_expiration_ms = current.producer_id_expiration_ms;
    }
    // A new codec without a level takes the codec's default level (0); a level alone
    // keeps the codec.
    if keep("compression") && keep("compression_level") {
        out.compression = current.compression;
        out.compression_level = current.compression_level;
    } else if keep("compression") {
        out.compression = current.compression;
    }
    let name = format!("{:?}", out.compression).to_lowercase();
    codec_of(&name, out.compression_level).map_err(|e| Error::invalid(format!("config.{e}")))?;
    Ok(out)
}
