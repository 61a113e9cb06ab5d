//! The one place where errors become gRPC status codes.

use spool_storage::Error as StorageError;
use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = code_of(&e);
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "request failed");
        }
        Status::new(code, e.to_string())
    }
}

/// The status code of a broker error. Exhaustive on purpose: a new variant must choose.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::Storage(s) => storage_code(s),
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::TopicNotFound(_) => Code::NotFound,
        Error::TopicExists(_) => Code::AlreadyExists,
        Error::QueueNotFound { .. } => Code::NotFound,
        Error::QueueExists(_) => Code::AlreadyExists,
        Error::PartitionNotFound { .. } => Code::InvalidArgument,
        Error::CommitOutOfRange { .. } => Code::OutOfRange,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Aborted(_) => Code::Aborted,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::ShuttingDown | Error::Unavailable(_) => Code::Unavailable,
        Error::Metadata { .. } | Error::Io { .. } | Error::Task(_) => Code::Internal,
    }
}

fn storage_code(e: &StorageError) -> Code {
    match e {
        StorageError::Io { .. } => Code::Internal,
        StorageError::DiskFull { .. } => Code::ResourceExhausted,
        StorageError::TooManyOpenFiles { .. } => Code::ResourceExhausted,
        StorageError::Locked { .. } => Code::FailedPrecondition,
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
        StorageError::RecordTooLarge { .. } => Code::InvalidArgument,
        StorageError::BatchTooLarge { .. } => Code::InvalidArgument,
        StorageError::EmptyBatch => Code::InvalidArgument,
        StorageError::OffsetMismatch { .. } => Code::FailedPrecondition,
        StorageError::NotBatchBoundary { .. } => Code::InvalidArgument,
        StorageError::SequenceGap { .. } => Code::FailedPrecondition,
        StorageError::SequenceTooOld { .. } => Code::FailedPrecondition,
        StorageError::UnknownProducer { .. } => Code::FailedPrecondition,
        StorageError::ForgottenProducer { .. } => Code::FailedPrecondition,
        StorageError::Poisoned { .. } => Code::Unavailable,
        StorageError::LogFull { .. } => Code::ResourceExhausted,
        StorageError::InvalidName { .. } => Code::InvalidArgument,
        StorageError::InvalidConfig(_) => Code::InvalidArgument,
        StorageError::DecompressBudget { .. } => Code::ResourceExhausted,
        StorageError::NewerFormat { .. } => Code::FailedPrecondition,
        // `spool_storage::Error` is non-exhaustive: a variant added there lands here until
        // it is given its own code above.
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_out_of_range_carry_the_valid_range() {
        let s = Status::from(Error::Storage(StorageError::OffsetOutOfRange {
            requested: 90,
            start: 10,
            end: 50,
        }));
        assert_eq!(s.code(), Code::OutOfRange);
        assert!(s.message().contains("10..50"), "{}", s.message());
    }

    #[test]
    fn corruption_is_data_loss_and_full_disk_is_resource_exhausted() {
        let corrupt = StorageError::Corrupt {
            path: "x.log".into(),
            position: 3,
            offsets: Some(4..9),
            reason: "crc".into(),
        };
        assert_eq!(Status::from(Error::from(corrupt)).code(), Code::DataLoss);
        let full = StorageError::DiskFull {
            path: "x.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            Status::from(Error::from(full)).code(),
            Code::ResourceExhausted
        );
    }
}
