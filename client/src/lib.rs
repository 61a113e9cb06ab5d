//! Spool's Rust client: a [`Client`] for administration, a batching idempotent
//! [`Producer`], and consumers as `futures::Stream`s: a plain [`Reader`] from any
//! position and a [`GroupConsumer`] whose partitions the broker assigns. All of them
//! survive broker restarts and network blips without losing or duplicating records.
//!
//! ```
//! # use futures::StreamExt;
//! use spool_client::{Client, Producer, ProducerRecord, Reader, ReaderOptions};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), spool_client::Error> {
//! # let broker = spool_broker::testing::TempBroker::start().await;
//! # let endpoint = broker.endpoint();
//! let client = Client::connect(endpoint).await?;
//! client.create_topic("greetings", 1, Default::default()).await?;
//! let producer = Producer::new(&client, "greetings", Default::default()).await?;
//! producer.send(ProducerRecord::new("hello").key("k").header("lang", "en")).await?;
//! let mut reader = Reader::new(&client, "greetings", ReaderOptions::default()).await?;
//! let msg = reader.next().await.unwrap()?;
//! assert_eq!((msg.offset, &msg.value[..]), (0, &b"hello"[..]));
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client`: [`Client`], connection options and the administrative calls.
//! - `producer`: [`Producer`]: batching per partition, pipelining, idempotent retries.
//! - `consumer`: [`Reader`] and [`GroupConsumer`].
//! - `queue`: [`QueueConsumer`], a queue's worker with automatic lease extension.
//! - `backoff`: exponential backoff with jitter for reconnects.
//! - `error`: the one error type, which says whether a retry could help.
//! - `cli/` (binary `spool` only): the command line.

mod backoff;
mod client;
mod consumer;
mod error;
mod producer;
mod queue;

pub use backoff::Backoff;
pub use client::{AuthHeader, Client, ClientOptions, GrpcCompression, TlsOptions, Transport};
pub use consumer::{
    GroupConsumer, GroupOptions, MAX_PENDING_COMMITS, MemberState, Message, Reader, ReaderOptions,
    Start,
};
pub use error::{Error, Result};
pub use producer::{
    Delivery, PendingBatch, PendingDelivery, Producer, ProducerOptions, ProducerRecord,
};
pub use queue::{Job, QueueConsumer, QueueOptions};
pub use spool_proto::v1;

/// The endpoint the CLI and examples use when none is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7450";
