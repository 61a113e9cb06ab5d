//! The storage layer's one error type.
//!
//! Every variant carries what a reader of the message needs to act: the file, the position,
//! the valid offset range. The broker maps these to gRPC status codes in one place
//! (`broker/src/service/status.rs`).

use std::io;
use std::ops::Range;
use std::path::PathBuf;

/// Result alias for the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed; `op` says which, `path` on what.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file system has no room for the append; nothing was written.
    #[error(
        "disk full while writing {path}: {source}; free space (retention, deleting topics) and retry"
    )]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The process ran out of file descriptors (`EMFILE`) or the system did (`ENFILE`).
    #[error(
        "too many open files while trying to {op} {path}: {source}; raise the open file limit (RLIMIT_NOFILE, e.g. `ulimit -n` or systemd's LimitNOFILE=; each partition holds about one file open, plus one per read in flight) or delete unused topics"
    )]
    TooManyOpenFiles {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is locked by another process (is another spoold running on it?)"
    )]
    Locked { path: PathBuf },
    /// Stored bytes failed their checks (length, magic, CRC). Never served as data.
    #[error("corrupt data in {path} at byte {position}{}: {reason}", fmt_offsets(.offsets))]
    Corrupt {
        path: PathBuf,
        position: u64,
        /// The offsets known to be lost, when the damage could be bounded.
        offsets: Option<Range<u64>>,
        reason: String,
    },
    /// The requested offset is outside the log.
    #[error(
        "offset {requested} is out of range: valid offsets are {start}..{end} (start inclusive, end exclusive)"
    )]
    OffsetOutOfRange {
        requested: u64,
        start: u64,
        end: u64,
    },
    /// One record exceeds the log's record size limit.
    #[error("record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },
    /// The whole batch exceeds the log's batch size limit.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: u64, max: u64 },
    /// An append carried no records.
    #[error("an append must carry at least one record")]
    EmptyBatch,
    /// `append_at` named an offset other than the log's end (a follower out of step).
    #[error("append at offset {got} does not match the log end offset {expected}")]
    OffsetMismatch { expected: u64, got: u64 },
    /// `truncate` named an offset inside a batch.
    #[error("offset {offset} is not a batch boundary (the batch spans {batch_start}..{batch_end})")]
    NotBatchBoundary {
        offset: u64,
        batch_start: u64,
        batch_end: u64,
    },
    /// An idempotent producer skipped sequence numbers.
    #[error("producer {producer_id}: sequence {got} skips ahead of the expected {expected}")]
    SequenceGap {
        producer_id: u64,
        expected: u64,
        got: u64,
    },
    /// An idempotent producer retried a sequence too old to be remembered.
    #[error(
        "producer {producer_id}: sequence {got} is older than the oldest remembered ({oldest}); its outcome is unknown"
    )]
    SequenceTooOld {
        producer_id: u64,
        got: u64,
        oldest: u64,
    },
    /// A sequence above 0 from a producer id this log does not know: never seen, or
    /// forgotten (expired or evicted), so whether it is a retry cannot be told.
    #[error(
        "producer {producer_id} is not known to this partition (it never appended here, or was forgotten after producer_id_expiration_ms without appends or evicted by max_producers_per_partition), so sequence {sequence} cannot be checked for duplicates; start again with a new producer id at sequence 0"
    )]
    UnknownProducer { producer_id: u64, sequence: u64 },
    /// A sequence 0 from a producer id this log forgot (or, rarely, one its bounded filter
    /// of forgotten ids mistakes for one): it may be a retry of a batch already appended.
    #[error(
        "producer {producer_id} was forgotten by this partition (expired or evicted), so its sequence 0 may be a retry of a batch already appended; choose a new producer id"
    )]
    ForgottenProducer { producer_id: u64 },
    /// The offsets of an append would pass `u64::MAX`.
    #[error("the log's end offset {end} leaves no room for more records")]
    LogFull { end: u64 },
    /// A previous fsync failed; the log refuses writes until it is reopened.
    #[error("log {path} stopped accepting writes after an fsync failure; restart to recover")]
    Poisoned { path: PathBuf },
    /// A log name that would escape the data directory or is otherwise unusable.
    #[error("invalid log name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A log configuration value outside what the log supports.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// Reading compressed records would inflate more than the storage's decompression
    /// budget holds right now (other reads hold the rest).
    #[error(
        "reading compressed records needs {needed} bytes of the {limit}-byte decompression budget, which concurrent reads hold; retry shortly, read fewer records at once, or raise decompress_budget_bytes"
    )]
    DecompressBudget { needed: usize, limit: usize },
    /// The data directory, or a log in it, was written by a newer build in a format this
    /// build does not know; nothing was changed.
    #[error(
        "{path} holds data in format version {version}, newer than this build reads ({known}); run the spoold that wrote it, or a newer one"
    )]
    NewerFormat {
        path: PathBuf,
        version: u32,
        known: u32,
    },
}

fn fmt_offsets(offsets: &Option<Range<u64>>) -> String {
    match offsets {
        Some(r) => format!(" (offsets {}..{} lost)", r.start, r.end),
        None => String::new(),
    }
}

impl Error {
    /// Wraps an I/O error, turning "no space" into [`Error::DiskFull`] and "no file
    /// descriptors" into [`Error::TooManyOpenFiles`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            Error::DiskFull { path, source }
        } else if is_out_of_descriptors(&source) {
            Error::TooManyOpenFiles { op, path, source }
        } else {
            Error::Io { op, path, source }
        }
    }
}

/// `EMFILE` (this process's limit) or `ENFILE` (the system's).
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(28) // ENOSPC
        || e.raw_os_error() == Some(122) // EDQUOT
}
