//! [`Producer`]: batching, pipelined, idempotent appends.
//!
//! Records are batched per partition (by count, size and linger time) and sent over one
//! `AppendStream` with several batches in flight. Every batch carries the producer's id and
//! a per-partition sequence number, so when the connection drops or the broker restarts the
//! producer resends what was not acknowledged and the broker drops what it already has:
//! no record is lost and none is written twice. At most five batches per partition are in
//! flight, within what the broker remembers per producer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_proto::v1::{AppendRequest, AppendResponse, Header, Record};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Client;
use crate::error::{Error, Result};

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
    /// Records buffered before [`Producer::enqueue`] waits (backpressure).
    pub buffer_records: usize,
    /// Stamp batches with a producer id and sequence so retries never duplicate.
    pub idempotent: bool,
    /// How long records wait for an unreachable broker before they fail.
    pub delivery_timeout: Duration,
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
        }
    }
}

/// Batches per partition in flight: within the five the broker remembers per producer.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 5;

type Reply = oneshot::Sender<Result<Delivery>>;

enum Cmd {
    Send(ProducerRecord, Reply),
    SendMany(Vec<(ProducerRecord, Reply)>),
    Flush(oneshot::Sender<()>),
}

/// A record accepted by the producer, resolving once the broker acknowledged it.
pub struct PendingDelivery(oneshot::Receiver<Result<Delivery>>);

impl Future for PendingDelivery {
    type Output = Result<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
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
/// producer.close().await?;
/// # Ok(()) }
/// ```
pub struct Producer {
    tx: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    partitions: u32,
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
        let partitions = info.partitions.max(1);
        let (tx, rx) = mpsc::channel(1024);
        let actor = Actor::new(client.clone(), topic.to_string(), partitions, options);
        let task = tokio::spawn(actor.run(rx));
        Ok(Producer {
            tx,
            task,
            partitions,
        })
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        self.enqueue(record).await?.await
    }

    /// Hands one record to the producer, waiting only while its buffer is full; the
    /// returned future resolves with the acknowledgement.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<PendingDelivery> {
        if let Some(p) = record.partition
            && p >= self.partitions
        {
            return Err(Error::InvalidArgument(format!(
                "partition {p} does not exist: the topic has partitions 0..{}",
                self.partitions
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(record, reply))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(PendingDelivery(rx))
    }

    /// Hands many records to the producer at once (cheaper than one [`Producer::enqueue`]
    /// each); one future per record, in order.
    pub async fn enqueue_many(
        &self,
        records: impl IntoIterator<Item = ProducerRecord>,
    ) -> Result<Vec<PendingDelivery>> {
        let mut batch = Vec::new();
        let mut pending = Vec::new();
        for record in records {
            if let Some(p) = record.partition
                && p >= self.partitions
            {
                return Err(Error::InvalidArgument(format!(
                    "partition {p} does not exist: the topic has partitions 0..{}",
                    self.partitions
                )));
            }
            let (reply, rx) = oneshot::channel();
            batch.push((record, reply));
            pending.push(PendingDelivery(rx));
        }
        self.tx
            .send(Cmd::SendMany(batch))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(pending)
    }

    /// Sends everything buffered and waits until every record sent so far is answered.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Flushes, then stops.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        drop(self.tx);
        self.task.await.map_err(|_| Error::Closed)
    }
}

struct Accumulator {
    records: VecDeque<(Record, Reply)>,
    bytes: usize,
    since: Option<Instant>,
}

struct Batch {
    request_id: u64,
    partition: u32,
    sequence: u64,
    records: Vec<Record>,
    replies: Vec<Reply>,
}

struct Conn {
    tx: mpsc::Sender<AppendRequest>,
    rx: Streaming<AppendResponse>,
}

struct Actor {
    client: Client,
    topic: String,
    partitions: u32,
    options: ProducerOptions,
    producer_id: u64,
    acc: Vec<Accumulator>,
    buffered: usize,
    next_seq: Vec<u64>,
    in_flight: VecDeque<Batch>,
    per_partition: Vec<usize>,
    next_request_id: u64,
    sticky: u32,
    conn: Option<Conn>,
    attempt: u32,
    down_since: Option<Instant>,
    flushes: Vec<oneshot::Sender<()>>,
}

fn new_producer_id() -> u64 {
    rand::random::<u64>().max(1)
}

fn payload(r: &Record) -> usize {
    r.key.len()
        + r.value.len()
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

impl Actor {
    fn new(client: Client, topic: String, partitions: u32, options: ProducerOptions) -> Actor {
        let n = partitions as usize;
        Actor {
            client,
            topic,
            partitions,
            producer_id: if options.idempotent {
                new_producer_id()
            } else {
                0
            },
            options,
            acc: (0..n)
                .map(|_| Accumulator {
                    records: VecDeque::new(),
                    bytes: 0,
                    since: None,
                })
                .collect(),
            buffered: 0,
            next_seq: vec![0; n],
            in_flight: VecDeque::new(),
            per_partition: vec![0; n],
            next_request_id: 1,
            sticky: rand::random::<u32>() % partitions,
            conn: None,
            attempt: 0,
            down_since: None,
            flushes: Vec::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut open = true;
        loop {
            self.dispatch().await;
            if !self.flushes.is_empty() && self.buffered == 0 && self.in_flight.is_empty() {
                for f in self.flushes.drain(..) {
                    let _ = f.send(());
                }
            }
            if !open && self.buffered == 0 && self.in_flight.is_empty() {
                return;
            }
            let linger_at = self
                .acc
                .iter()
                .filter_map(|a| a.since)
                .min()
                .map(|t| t + self.options.linger);
            let needs_conn =
                self.conn.is_none() && (!self.in_flight.is_empty() || self.buffered > 0);
            let accept = open && self.buffered < self.options.buffer_records;
            tokio::select! {
                cmd = rx.recv(), if accept => {
                    let mut next = cmd;
                    // Take what is already queued in one turn: one pass of the loop (clock,
                    // timers, dispatch) per burst of records, not per record.
                    loop {
                        match next {
                            Some(Cmd::Send(record, reply)) => self.add(record, reply),
                            Some(Cmd::SendMany(batch)) => {
                                for (record, reply) in batch {
                                    self.add(record, reply);
                                }
                            }
                            Some(Cmd::Flush(done)) => self.flushes.push(done),
                            None => {
                                open = false;
                                break;
                            }
                        }
                        if self.buffered >= self.options.buffer_records {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    }
                }
                resp = next_response(&mut self.conn), if self.conn.is_some() => self.on_response(resp),
                () = sleep_until(linger_at), if linger_at.is_some() && self.conn.is_some() => {}
                () = tokio::time::sleep(self.options.backoff_delay(&self.client, self.attempt)), if needs_conn => {
                    self.reconnect().await;
                }
            }
        }
    }

    fn add(&mut self, record: ProducerRecord, reply: Reply) {
        let p = match record.partition {
            Some(p) => p,
            None if !record.key.is_empty() => {
                spool_proto::partitioning::partition_for_key(&record.key, self.partitions)
            }
            None => self.sticky,
        };
        let r = Record {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
            offset: 0,
        };
        let acc = &mut self.acc[p as usize];
        acc.bytes += payload(&r);
        acc.since.get_or_insert_with(Instant::now);
        acc.records.push_back((r, reply));
        self.buffered += 1;
    }

    fn ready(&self, p: usize, now: Instant) -> bool {
        let a = &self.acc[p];
        !a.records.is_empty()
            && (a.records.len() >= self.options.batch_records
                || a.bytes >= self.options.batch_bytes
                || a.since.is_some_and(|t| now >= t + self.options.linger)
                || !self.flushes.is_empty())
    }

    /// Moves ready batches into flight and sends them, within the in-flight limits.
    async fn dispatch(&mut self) {
        let now = Instant::now();
        let mut p = 0;
        while p < self.acc.len() {
            if self.in_flight.len() >= self.options.max_in_flight {
                return;
            }
            if self.per_partition[p] >= MAX_IN_FLIGHT_PER_PARTITION || !self.ready(p, now) {
                p += 1;
                continue;
            }
            let acc = &mut self.acc[p];
            let mut records = Vec::new();
            let mut replies = Vec::new();
            let mut bytes = 0;
            while let Some((r, _)) = acc.records.front() {
                let n = payload(r);
                if !records.is_empty()
                    && (records.len() >= self.options.batch_records
                        || bytes + n > self.options.batch_bytes)
                {
                    break;
                }
                let (r, reply) = acc.records.pop_front().expect("front exists");
                bytes += n;
                acc.bytes -= n;
                records.push(r);
                replies.push(reply);
            }
            acc.since = (!acc.records.is_empty()).then_some(now);
            self.buffered -= records.len();
            if p as u32 == self.sticky {
                self.sticky = (self.sticky + 1) % self.partitions;
            }
            let batch = Batch {
                request_id: self.next_request_id,
                partition: p as u32,
                sequence: self.next_seq[p],
                records,
                replies,
            };
            self.next_request_id += 1;
            self.next_seq[p] += 1;
            self.per_partition[p] += 1;
            let req = self.request(&batch);
            self.in_flight.push_back(batch);
            if let Some(conn) = &self.conn
                && conn.tx.send(req).await.is_err()
            {
                self.conn = None;
                return;
            }
        }
    }

    fn request(&self, b: &Batch) -> AppendRequest {
        AppendRequest {
            topic: self.topic.clone(),
            partition: Some(b.partition),
            partition_key: Bytes::new(),
            records: b.records.clone(),
            producer_id: self.producer_id,
            sequence: b.sequence,
            request_id: b.request_id,
        }
    }

    /// Opens a new stream and resends every unacknowledged batch, in order.
    async fn reconnect(&mut self) {
        self.conn = None;
        let (tx, rx) = mpsc::channel(self.options.max_in_flight + 8);
        let mut raw = self.client.raw();
        match raw.append_stream(ReceiverStream::new(rx)).await {
            Ok(resp) => {
                let conn = Conn {
                    tx,
                    rx: resp.into_inner(),
                };
                for b in &self.in_flight {
                    if conn.tx.send(self.request(b)).await.is_err() {
                        return self.failed_attempt();
                    }
                }
                self.conn = Some(conn);
            }
            Err(status) => {
                let e = self.client.error(status);
                if !e.is_retriable() {
                    self.fail_everything(e);
                    return;
                }
                self.failed_attempt();
            }
        }
    }

    fn failed_attempt(&mut self) {
        self.attempt += 1;
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.options.delivery_timeout {
            let e = Error::Unreachable {
                endpoint: self.client.endpoint().to_string(),
                reason: format!("no connection for {:?}", self.options.delivery_timeout),
            };
            self.fail_everything(e);
        }
    }

    /// Fails every buffered and in-flight record. Their outcome may be unknown, so the
    /// producer continues under a new id with fresh sequences.
    fn fail_everything(&mut self, e: Error) {
        for b in self.in_flight.drain(..) {
            for r in b.replies {
                let _ = r.send(Err(e.clone()));
            }
        }
        for a in &mut self.acc {
            for (_, r) in a.records.drain(..) {
                let _ = r.send(Err(e.clone()));
            }
            a.bytes = 0;
            a.since = None;
        }
        self.buffered = 0;
        self.per_partition.iter_mut().for_each(|n| *n = 0);
        self.next_seq.iter_mut().for_each(|s| *s = 0);
        if self.options.idempotent {
            self.producer_id = new_producer_id();
        }
        self.down_since = None;
        self.attempt = 0;
    }

    fn on_response(&mut self, resp: Result<Option<AppendResponse>, tonic::Status>) {
        match resp {
            Ok(Some(r)) => {
                let Some(front) = self.in_flight.front() else {
                    tracing::warn!("answer with nothing in flight; reconnecting");
                    self.conn = None;
                    return;
                };
                if front.request_id != r.request_id {
                    tracing::warn!(
                        expected = front.request_id,
                        got = r.request_id,
                        "answers out of order; reconnecting"
                    );
                    self.conn = None;
                    return;
                }
                let b = self.in_flight.pop_front().expect("front exists");
                self.per_partition[b.partition as usize] -= 1;
                for (i, reply) in b.replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(Delivery {
                        partition: r.partition,
                        offset: r.base_offset + i as u64,
                    }));
                }
                self.attempt = 0;
                self.down_since = None;
            }
            Ok(None) => {
                // The broker ended the stream (shutting down): resend on a new one.
                self.conn = None;
                self.down_since.get_or_insert_with(Instant::now);
            }
            Err(status) => {
                self.conn = None;
                // Only a status the broker itself sent (no transport error underneath) says
                // the first unanswered batch was refused and nothing after it appended. Any
                // other failure leaves their outcome unknown: resend them all, as they are.
                let from_broker = std::error::Error::source(&status).is_none();
                let e = self.client.error(status);
                if e.is_retriable() || !from_broker {
                    self.down_since.get_or_insert_with(Instant::now);
                    return;
                }
                // The first unanswered batch failed and nothing after it was appended:
                // fail it and close the gap its sequence number leaves.
                let Some(b) = self.in_flight.pop_front() else {
                    return;
                };
                let p = b.partition as usize;
                self.per_partition[p] -= 1;
                self.next_seq[p] -= 1;
                for later in self
                    .in_flight
                    .iter_mut()
                    .filter(|l| l.partition == b.partition)
                {
                    later.sequence -= 1;
                }
                for r in b.replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    }
}

impl ProducerOptions {
    /// No wait before the first connection attempt; backoff after failures.
    fn backoff_delay(&self, client: &Client, attempt: u32) -> Duration {
        if attempt == 0 {
            Duration::ZERO
        } else {
            client.options().backoff.delay(attempt - 1)
        }
    }
}

async fn next_response(conn: &mut Option<Conn>) -> Result<Option<AppendResponse>, tonic::Status> {
    match conn {
        Some(c) => c.rx.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
