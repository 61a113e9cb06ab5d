//! Per-log configuration: segment size, durability, retention and size limits.

use std::time::Duration;

pub use crate::batch::{Codec, Compression};
use crate::error::{Error, Result};

/// The smallest segment a log accepts (the broker honours `segment_bytes` down to this).
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// The largest segment: index entries hold 32-bit byte positions.
pub const MAX_SEGMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024 - 1;

/// How long an idempotent producer is remembered without appending, by default (7 days).
pub const DEFAULT_PRODUCER_EXPIRATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// When an append reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns once the batch is fdatasync'd; concurrent appends share one flush.
    Always,
    /// A background flusher fdatasyncs dirty logs at this interval; `append` returns once
    /// the batch is written to the page cache.
    Interval(Duration),
    /// The operating system decides when dirty pages reach the disk.
    Never,
}

/// How one log (one partition) behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is closed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// One offset index entry per this many bytes of log (and at most one time entry).
    pub index_interval_bytes: u32,
    /// The active segment's new index entries reach its index files every this many
    /// appended bytes (and the files are rewritten whole on a roll or close), so the
    /// active segment holds one file open; recovery after a crash CRC-checks at most about
    /// this much beyond the last entry on disk.
    pub index_persist_bytes: u64,
    /// Disk space reserved ahead of the writer (fallocate), in steps that start at 64 KiB and
    /// double with each reservation up to this many bytes.
    pub preallocate_bytes: u64,
    pub durability: Durability,
    /// Delete the oldest closed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete closed segments whose newest record is older than this.
    pub retention: Option<Duration>,
    /// Largest encoded record accepted.
    pub max_record_bytes: u64,
    /// Largest encoded batch accepted.
    pub max_batch_bytes: u64,
    /// An idempotent producer is forgotten once it has not appended for this long (by the
    /// broker's clock); `None` keeps producers until the caps evict them.
    pub producer_expiration: Option<Duration>,
    /// The most idempotent producers the log remembers; the least recently appending one
    /// is forgotten first.
    pub max_producers: usize,
    /// How appended batches are compressed on disk (reads inflate them).
    pub compression: Compression,
    /// The active segment is closed once its first batch was appended this long ago (by
    /// the append clock), on the next append or [`crate::Log::roll_if_aged`].
    pub segment_age: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 * 1024 * 1024,
            index_interval_bytes: 4096,
            index_persist_bytes: 1024 * 1024,
            preallocate_bytes: 4 * 1024 * 1024,
            durability: Durability::Always,
            retention_bytes: None,
            retention: None,
            max_record_bytes: 1024 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
            producer_expiration: Some(DEFAULT_PRODUCER_EXPIRATION),
            max_producers: 10_000,
            compression: Compression::default(),
            segment_age: None,
        }
    }
}

impl LogConfig {
    /// Checks that the values are usable, saying which one is not.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(Error::InvalidConfig(format!(
                "segment_bytes {} must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::InvalidConfig(
                "index_interval_bytes must be at least 1".into(),
            ));
        }
        if self.index_persist_bytes == 0 {
            return Err(Error::InvalidConfig(
                "index_persist_bytes must be at least 1".into(),
            ));
        }
        if self.preallocate_bytes == 0 {
            return Err(Error::InvalidConfig(
                "preallocate_bytes must be at least 1".into(),
            ));
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return Err(Error::InvalidConfig(
                "a durability interval must be at least 1 ms".into(),
            ));
        }
        if self.max_record_bytes == 0 || self.max_batch_bytes == 0 {
            return Err(Error::InvalidConfig(
                "record and batch size limits must be at least 1 byte".into(),
            ));
        }
        check_compression(self.compression)?;
        if self.max_batch_bytes > u64::from(u32::MAX) {
            return Err(Error::InvalidConfig(format!(
                "max_batch_bytes {} exceeds the format's 4 GiB batch limit",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }
}

/// zstd's levels: negatives trade ratio for speed, 22 is the slowest and smallest.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// Checks that `c` names a level its codec has (0 is every codec's default).
pub fn check_compression(c: Compression) -> Result<()> {
    match c.codec {
        Codec::Zstd if !ZSTD_LEVELS.contains(&c.level) => Err(Error::InvalidConfig(format!(
            "compression_level {} is outside zstd's levels {}..={} (0 = its default, 3)",
            c.level,
            ZSTD_LEVELS.start(),
            ZSTD_LEVELS.end()
        ))),
        Codec::Lz4 | Codec::None if c.level != 0 => Err(Error::InvalidConfig(format!(
            "compression_level {} given, but {} has no levels: leave it 0",
            c.level,
            if c.codec == Codec::Lz4 {
                "lz4"
            } else {
                "no compression"
            }
        ))),
        _ => Ok(()),
    }
}

/// Process-wide storage settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// Closed segment and index files mapped at once, least recently used released first.
    /// Bounds `vm.max_map_count` use however many partitions and segments exist.
    pub max_mapped_files: usize,
    /// The most idempotent producers all logs together remember (each log keeps at least
    /// its newest). About 300 bytes each.
    pub max_producers: usize,
    /// Bytes of inflated compressed chunks all reads together hold at once; a read that
    /// would pass it returns the records it has, or fails with
    /// [`crate::Error::DecompressBudget`] when it has none.
    pub decompress_budget_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_mapped_files: 4096,
            max_producers: 1_000_000,
            decompress_budget_bytes: 256 * 1024 * 1024,
        }
    }
}
