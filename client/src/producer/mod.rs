//! [`Producer`]: batching, pipelined, idempotent appends.
//!
//! Records are batched per partition (by count, size and linger time) and sent over one
//! `AppendStream` with several batches in flight. Every batch carries the producer's id and
//! a per-partition sequence number, so when the connection drops or the broker restarts the
//! producer resends what was not acknowledged and the broker drops what it already has:
//! no record is lost and none is written twice. At most five batches per partition are in
//! flight, within what the broker remembers per producer.
//!
//! Memory is bounded by records, not calls: [`ProducerOptions::buffer_records`] records
//! may be accepted and not yet answered; beyond that, enqueueing waits for answers.

mod actor;
mod replies;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_proto::v1::Header;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, Result};
use actor::Actor;
use replies::Slots;
pub use replies::{PendingBatch, PendingDelivery};

/// One record to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// 0 = broker time.
    pub timestamp_ms: i64,
    /// An explicit partition; otherwise the key's hash, otherwise round-robin.
    pub partition: Option<u32>,
    /// When queues may deliver it, ms since the Unix epoch (broker clock); 0 = at once.
    pub deliver_at_ms: i64,
}

impl ProducerRecord {
    pub fn new(value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            value: value.into(),
            ..ProducerRecord::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = key.into();
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = ts;
        self
    }

    /// Queues deliver the record no earlier than `at` (plain reads see it at once).
    pub fn deliver_at(mut self, at: std::time::SystemTime) -> Self {
        self.deliver_at_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
}

/// Batching and pipelining settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerOptions {
    /// A batch is sent once it holds this many records...
    pub batch_records: usize,
    /// ...or this many payload bytes...
    pub batch_bytes: usize,
    /// ...or its first record has waited this long.
    pub linger: Duration,
    /// Batches sent and not yet acknowledged, across partitions.
    pub max_in_flight: usize,
    /// Records accepted and not yet answered (buffered or in flight) before enqueueing
    /// waits: the bound on the producer's memory.
    pub buffer_records: usize,
    /// Stamp batches with a producer id and sequence so retries never duplicate.
    pub idempotent: bool,
    /// How long records wait for an unreachable broker before they fail.
    pub delivery_timeout: Duration,
    /// How often the producer asks the broker for its topic's partition count, so keys
    /// hash over partitions AlterTopic added (a record naming a new partition asks at
    /// once). Default [`METADATA_REFRESH`].
    pub metadata_refresh: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            batch_records: 1000,
            batch_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 32,
            buffer_records: 100_000,
            idempotent: true,
            delivery_timeout: Duration::from_secs(120),
            metadata_refresh: METADATA_REFRESH,
        }
    }
}

/// The default [`ProducerOptions::metadata_refresh`].
pub const METADATA_REFRESH: Duration = Duration::from_secs(30);

/// What callers hand the producer's task.
enum Cmd {
    Send(ProducerRecord, oneshot::Sender<Result<Delivery>>),
    /// Records `first..first + records.len()` of one [`Producer::enqueue_batch`] call.
    SendBatch {
        records: Vec<ProducerRecord>,
        slots: Arc<Slots>,
        first: usize,
    },
    Flush(oneshot::Sender<()>),
    /// The topic has this many partitions now (AlterTopic added some): sent before the
    /// first record for one of them, so the task never sees a partition it lacks.
    Grow(u32),
}

/// A batching, pipelined, idempotent producer for one topic.
///
/// ```
/// # use spool_client::{Client, Producer, ProducerOptions, ProducerRecord};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spool_client::Error> {
/// # let broker = spool_broker::testing::TempBroker::start().await;
/// # let endpoint = broker.endpoint();
/// let client = Client::connect(endpoint).await?;
/// client.create_topic("orders", 3, Default::default()).await?;
/// let producer = Producer::new(&client, "orders", ProducerOptions::default()).await?;
/// let delivery = producer.send(ProducerRecord::new("one").key("customer-7")).await?;
/// println!("stored at partition {} offset {}", delivery.partition, delivery.offset);
/// for i in 0..1000 {
///     // enqueue() returns once the record is buffered; await the result later or flush.
///     let _pending = producer.enqueue(ProducerRecord::new(format!("order {i}"))).await?;
/// }
/// // Cheapest: many records per call, one answer for all of them.
/// let batch = (0..1000).map(|i| ProducerRecord::new(format!("event {i}")));
/// let deliveries = producer.enqueue_batch(batch).await?.await?;
/// assert_eq!(deliveries.len(), 1000);
/// producer.close().await?;
/// # Ok(()) }
/// ```
pub struct Producer {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Room for unanswered records, shared with the task (see [`ProducerOptions::buffer_records`]).
    room: Arc<Semaphore>,
    capacity: usize,
    task: tokio::task::JoinHandle<()>,
    /// The partition count as last learnt (the task refreshes it too, see
    /// [`ProducerOptions::metadata_refresh`]).
    partitions: Arc<std::sync::atomic::AtomicU32>,
    /// The client and topic, to ask for the partition count (boxed: the handle stays small).
    topic: Arc<(Client, String)>,
}

impl Producer {
    /// Starts a producer for `topic`, which must exist.
    pub async fn new(client: &Client, topic: &str, options: ProducerOptions) -> Result<Producer> {
        if options.batch_records == 0 || options.max_in_flight == 0 || options.buffer_records == 0 {
            return Err(Error::InvalidArgument(
                "batch_records, max_in_flight and buffer_records must be at least 1".into(),
            ));
        }
        let info = client.describe_topic(topic).await?;
        let partitions = Arc::new(std::sync::atomic::AtomicU32::new(info.partitions.max(1)));
        // Room is taken in u32-sized steps (tokio's acquire_many).
        let capacity = options
            .buffer_records
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        let room = Arc::new(Semaphore::new(capacity));
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor::new(
            client.clone(),
            topic.to_string(),
            Arc::clone(&partitions),
            options,
            Arc::clone(&room),
        );
        let task = tokio::spawn(actor.run(rx));
        Ok(Producer {
            tx,
            room,
            capacity,
            task,
            partitions,
            topic: Arc::new((client.clone(), topic.to_string())),
        })
    }

    /// The topic's partition count, as last learnt: at the start, every
    /// [`ProducerOptions::metadata_refresh`], and whenever a record names a partition past it.
    pub fn partitions(&self) -> u32 {
        self.partitions.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        self.enqueue(record).await?.await
    }

    /// Hands one record to the producer, waiting only while it holds
    /// [`ProducerOptions::buffer_records`] unanswered records; the returned future
    /// resolves with the acknowledgement.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<PendingDelivery> {
        self.check_partitions(std::slice::from_ref(&record)).await?;
        self.reserve(1).await?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(record, reply))
            .map_err(|_| Error::Closed)?;
        Ok(PendingDelivery(rx))
    }

    /// Hands many records to the producer at once, one future per record, in order.
    /// [`Producer::enqueue_batch`] is cheaper when one answer for all of them will do.
    pub async fn enqueue_many(
        &self,
        records: impl IntoIterator<Item = ProducerRecord>,
    ) -> Result<Vec<PendingDelivery>> {
        let records: Vec<ProducerRecord> = records.into_iter().collect();
        self.check_partitions(&records).await?;
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            self.reserve(1).await?;
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Cmd::Send(record, reply))
                .map_err(|_| Error::Closed)?;
            pending.push(PendingDelivery(rx));
        }
        Ok(pending)
    }

    /// Hands many records to the producer at once; the returned future resolves when all
    /// of them are answered, with their deliveries in the order given. The cheapest way to
    /// produce: the records travel and are answered as runs, not one by one.
    ///
    /// Waits while the producer holds [`ProducerOptions::buffer_records`] unanswered
    /// records; a call larger than that is handed over in parts as room frees up.
    pub async fn enqueue_batch(
        &self,
        records: impl IntoIterator<Item = ProducerRecord>,
    ) -> Result<PendingBatch> {
        let mut records: Vec<ProducerRecord> = records.into_iter().collect();
        self.check_partitions(&records).await?;
        if records.is_empty() {
            return Ok(PendingBatch::ready(Ok(Vec::new())));
        }
        let (slots, pending) = Slots::new(records.len());
        let mut first = 0;
        while !records.is_empty() {
            let n = records.len().min(self.capacity);
            self.reserve(n).await?;
            let rest = records.split_off(n);
            let part = std::mem::replace(&mut records, rest);
            self.tx
                .send(Cmd::SendBatch {
                    records: part,
                    slots: Arc::clone(&slots),
                    first,
                })
                .map_err(|_| Error::Closed)?;
            first += n;
        }
        Ok(pending)
    }

    /// Refuses records naming a partition the topic does not have, after asking the
    /// broker whether AlterTopic added it (and telling the task if so).
    async fn check_partitions(&self, records: &[ProducerRecord]) -> Result<()> {
        let Some(wanted) = records.iter().filter_map(|r| r.partition).max() else {
            return Ok(());
        };
        if wanted < self.partitions() {
            return Ok(());
        }
        let (client, topic) = &*self.topic;
        let now = client.describe_topic(topic).await?.partitions;
        if now > self.partitions() {
            self.partitions
                .fetch_max(now, std::sync::atomic::Ordering::AcqRel);
            self.tx.send(Cmd::Grow(now)).map_err(|_| Error::Closed)?;
        }
        if wanted >= now {
            return Err(Error::InvalidArgument(format!(
                "partition {wanted} does not exist: the topic has partitions 0..{now}"
            )));
        }
        Ok(())
    }

    /// Takes room for `n` records; the producer's task gives it back as they are answered.
    async fn reserve(&self, n: usize) -> Result<()> {
        let permits = u32::try_from(n).expect("n is at most capacity, which fits a u32");
        self.room
            .acquire_many(permits)
            .await
            .map_err(|_| Error::Closed)?
            .forget();
        Ok(())
    }

    /// Sends everything buffered and waits until every record sent so far is answered.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Flushes, then stops.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        drop(self.tx);
        self.task.await.map_err(|_| Error::Closed)
    }
}
