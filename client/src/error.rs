//! The client's one error type: says what failed and whether a retry could help.

use std::time::Duration;

use tonic::Code;

/// Result alias for the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to a broker.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection could be made (or kept) to the broker.
    #[error("cannot reach the broker at {endpoint}: {reason}; is spoold running?")]
    Unreachable { endpoint: String, reason: String },
    /// The endpoint is not a usable URL.
    #[error("invalid broker address {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The broker refused or failed the request.
    #[error("{message}")]
    Broker { code: Code, message: String },
    /// A request took longer than the configured timeout.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// A commit was refused because the member does not own the partition.
    #[error("commit of partition {partition} refused: {reason}")]
    CommitRejected { partition: u32, reason: String },

    /// A bound on work waiting for the broker was reached; wait for earlier work first.
    #[error(
        "{limit} commits are waiting for the broker's answer: await earlier commits before making more"
    )]
    TooManyPending { limit: usize },
    /// The caller passed something the client cannot send.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// Whether the same request may succeed if retried later (the broker was unreachable,
    /// restarting or overloaded). Appends from [`crate::Producer`] are safe to retry: they
    /// are idempotent.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout(_) => true,
            Error::Broker { code, .. } => matches!(
                code,
                Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Unknown
            ),
            _ => false,
        }
    }

    /// The gRPC code, for errors the broker returned.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Converts a status, recognising transport failures as [`Error::Unreachable`].
    pub(crate) fn from_status(status: tonic::Status, endpoint: &str) -> Error {
        // A status carrying a transport error as its source did not come from the broker:
        // the connection failed (tonic reports a request handed to a connection that just
        // died as CANCELLED). Only statuses the broker sent have no such source.
        if let Some(reason) = transport_reason(&status) {
            return Error::Unreachable {
                endpoint: endpoint.to_string(),
                reason,
            };
        }
        Error::Broker {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub(crate) fn unreachable(endpoint: &str, e: &(dyn std::error::Error + 'static)) -> Error {
        Error::Unreachable {
            endpoint: endpoint.to_string(),
            reason: root_cause(e),
        }
    }
}

/// The innermost cause of a transport error, in words a person can act on.
fn transport_reason(status: &tonic::Status) -> Option<String> {
    let source = std::error::Error::source(status)?;
    Some(root_cause(source))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // "Connection refused (os error 111)" → "connection refused"
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
        None => "connection failed".into(),
    }
}
