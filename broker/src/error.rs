//! The broker layer's one error type. Mapped to gRPC status codes in one place:
//! `service/status.rs`.

use std::path::PathBuf;

/// What can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage engine failed; its own variant says how.
    #[error(transparent)]
    Storage(#[from] spool_storage::Error),
    /// The request is malformed; the message says which field and how to fix it.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("partition {partition} does not exist: topic {topic:?} has partitions 0..{partitions}")]
    PartitionNotFound {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("queue {queue:?} on topic {topic:?} does not exist")]
    QueueNotFound { topic: String, queue: String },
    /// A queue exists with another config; the message says which.
    #[error("{0}")]
    QueueExists(String),
    /// A committed offset past the partition's end.
    #[error("offset {offset} is past the end offset {end} of {topic:?} partition {partition}")]
    CommitOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        end: u64,
    },
    /// A resource limit was hit; the message names it.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is valid but the broker's state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A second stream took over this consumer group member.
    #[error("{0}")]
    Aborted(String),
    /// The principal may not do this; the message names the operation and resource.
    #[error("{0}")]
    PermissionDenied(String),
    /// The broker is shutting down.
    /// No leader right now (an election, or this node cut off from a majority): retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("the broker is shutting down; retry against the restarted broker")]
    ShuttingDown,
    /// Broker metadata on disk could not be used.
    #[error("metadata file {path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    /// A file operation of the broker itself (not the log) failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task died (a bug): never expected.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Result alias for the broker layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a file operation's error; running out of file descriptors is the storage
    /// layer's `TooManyOpenFiles` wherever it happens, so it always reads the same.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if spool_storage::error::is_out_of_descriptors(&source) {
            return Error::Storage(spool_storage::Error::io(op, path, source));
        }
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
