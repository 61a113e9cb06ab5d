//! The producer's task: per-partition accumulators, the in-flight window, one
//! `AppendStream` and the resend-after-reconnect logic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use bytes::Bytes;
use spool_proto::v1::{AppendRequest, AppendResponse, Record};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::replies::{Replies, Reply, deliver_all};
use super::{Cmd, ProducerOptions, ProducerRecord};
use crate::client::Client;
use crate::error::{Error, Result};

/// Batches per partition in flight: within the five the broker remembers per producer.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 5;

#[derive(Default)]
struct Accumulator {
    records: VecDeque<Record>,
    /// Each record's payload size, measured once when it is queued.
    sizes: VecDeque<usize>,
    replies: Replies,
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

pub(super) struct Actor {
    client: Client,
    topic: String,
    partitions: u32,
    /// Shared with the handle: the count as last learnt by either.
    known_partitions: Arc<AtomicU32>,
    /// When the task next asks the broker for the partition count.
    refresh_at: Instant,
    options: ProducerOptions,
    /// Records accepted and not yet answered; a permit goes back per answered record.
    room: Arc<Semaphore>,
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
    /// No connection attempt before this instant (backoff after a failed one). A deadline,
    /// not a delay: the loop wakes for every enqueued record, and a delay restarted on each
    /// wake-up would never run out while records keep coming.
    retry_at: Instant,
    down_since: Option<Instant>,
    flushes: Vec<oneshot::Sender<()>>,
}

fn new_producer_id() -> u64 {
    rand::random::<u64>().max(1)
}

impl Actor {
    pub(super) fn new(
        client: Client,
        topic: String,
        known_partitions: Arc<AtomicU32>,
        options: ProducerOptions,
        room: Arc<Semaphore>,
    ) -> Actor {
        let partitions = known_partitions.load(Ordering::Acquire);
        let n = partitions as usize;
        Actor {
            client,
            topic,
            partitions,
            known_partitions,
            refresh_at: Instant::now() + options.metadata_refresh,
            producer_id: if options.idempotent {
                new_producer_id()
            } else {
                0
            },
            options,
            room,
            acc: (0..n).map(|_| Accumulator::default()).collect(),
            buffered: 0,
            next_seq: vec![0; n],
            in_flight: VecDeque::new(),
            per_partition: vec![0; n],
            next_request_id: 1,
            sticky: rand::random::<u32>() % partitions,
            conn: None,
            attempt: 0,
            retry_at: Instant::now(),
            down_since: None,
            flushes: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        // Callers waiting for room learn that the producer is gone, however it ends.
        let _closer = CloseOnDrop(Arc::clone(&self.room));
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
            let linger_at = self.linger_deadline();
            let needs_conn =
                self.conn.is_none() && (!self.in_flight.is_empty() || self.buffered > 0);
            tokio::select! {
                biased;
                resp = next_response(&mut self.conn), if self.conn.is_some() => self.on_response(resp),
                cmd = rx.recv(), if open => {
                    let mut next = cmd;
                    // Take what is already queued in one turn: one pass of the loop (clock,
                    // timers, dispatch) per burst of records, not per record.
                    loop {
                        match next {
                            Some(cmd) => self.take(cmd),
                            None => {
                                open = false;
                                break;
                            }
                        }
                        match rx.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    }
                }
                () = sleep_until(linger_at), if linger_at.is_some() && self.conn.is_some() => {}
                () = sleep_until(Some(self.retry_at)), if needs_conn => {
                    self.reconnect().await;
                }
                () = sleep_until(Some(self.refresh_at)) => self.refresh_partitions().await,
            }
        }
    }

    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send(record, reply) => {
                let p = self.partition_of(&record);
                self.push(p, record);
                self.acc[p].replies.push(Reply::One(reply));
            }
            Cmd::SendBatch {
                records,
                slots,
                first,
            } => {
                // One reply run per stretch of records bound for the same partition.
                let mut run: Option<(usize, usize, usize)> = None; // (partition, start, len)
                for (i, record) in records.into_iter().enumerate() {
                    let p = self.partition_of(&record);
                    self.push(p, record);
                    match &mut run {
                        Some((rp, _, len)) if *rp == p => *len += 1,
                        _ => {
                            if let Some((rp, start, len)) = run.take() {
                                let slots = Arc::clone(&slots);
                                self.acc[rp].replies.push(Reply::Run { slots, start, len });
                            }
                            run = Some((p, first + i, 1));
                        }
                    }
                }
                if let Some((rp, start, len)) = run {
                    self.acc[rp].replies.push(Reply::Run { slots, start, len });
                }
            }
            Cmd::Flush(done) => self.flushes.push(done),
            Cmd::Grow(n) => self.grow(n),
        }
    }

    /// Asks the broker for the topic's partition count (AlterTopic may have added some,
    /// which keys now hash over); a failure waits for the next refresh.
    async fn refresh_partitions(&mut self) {
        self.refresh_at = Instant::now() + self.options.metadata_refresh;
        if let Ok(info) = self.client.describe_topic(&self.topic).await {
            self.grow(info.partitions);
        }
    }

    /// Takes up partitions up to `n` (never fewer: a topic does not shrink).
    fn grow(&mut self, n: u32) {
        if n <= self.partitions {
            return;
        }
        self.partitions = n;
        self.known_partitions.fetch_max(n, Ordering::AcqRel);
        let n = n as usize;
        self.acc.resize_with(n, Accumulator::default);
        self.next_seq.resize(n, 0);
        self.per_partition.resize(n, 0);
    }

    /// The record's explicit partition, else its key's, else the current sticky one.
    fn partition_of(&self, record: &ProducerRecord) -> usize {
        let p = match record.partition {
            Some(p) => p,
            None if !record.key.is_empty() => {
                spool_proto::partitioning::partition_for_key(&record.key, self.partitions)
            }
            None => self.sticky,
        };
        p as usize
    }

    /// Queues a record on partition `p`; its reply is queued by the caller.
    fn push(&mut self, p: usize, record: ProducerRecord) {
        let r = Record {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
            offset: 0,
            deliver_at_ms: record.deliver_at_ms,
        };
        let acc = &mut self.acc[p];
        let size = r.payload_len();
        acc.bytes += size;
        acc.sizes.push_back(size);
        acc.since.get_or_insert_with(Instant::now);
        acc.records.push_back(r);
        self.buffered += 1;
    }

    /// Whether partition `p` may put another batch in flight now.
    fn has_window(&self, p: usize) -> bool {
        self.in_flight.len() < self.options.max_in_flight
            && self.per_partition[p] < MAX_IN_FLIGHT_PER_PARTITION
    }

    /// When the oldest partial batch that could be sent is due. Partitions with no room in
    /// the window wait for an answer instead: arming their (expired) timer would wake the
    /// loop over and over with nothing to do.
    fn linger_deadline(&self) -> Option<Instant> {
        (0..self.acc.len())
            .filter(|&p| self.has_window(p))
            .filter_map(|p| self.acc[p].since)
            .min()
            .map(|t| t + self.options.linger)
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
            if !self.has_window(p) || !self.ready(p, now) {
                p += 1;
                continue;
            }
            let acc = &mut self.acc[p];
            let mut n = 0;
            let mut bytes = 0;
            for &size in &acc.sizes {
                if n > 0
                    && (n >= self.options.batch_records || bytes + size > self.options.batch_bytes)
                {
                    break;
                }
                n += 1;
                bytes += size;
            }
            let records: Vec<Record> = acc.records.drain(..n).collect();
            acc.sizes.drain(..n);
            let replies = acc.replies.take_front(n);
            acc.bytes -= bytes;
            acc.since = (!acc.records.is_empty()).then_some(now);
            self.buffered -= n;
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

    /// Backs off before the next connection attempt.
    fn failed_attempt(&mut self) {
        self.retry_at = Instant::now() + self.client.options().backoff.delay(self.attempt);
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
        let mut answered = 0;
        for b in self.in_flight.drain(..) {
            answered += b.records.len();
            b.replies.into_iter().for_each(|r| r.fail(&e));
        }
        for a in &mut self.acc {
            answered += a.records.len();
            a.records.clear();
            a.sizes.clear();
            a.replies.drain().for_each(|r| r.fail(&e));
            a.bytes = 0;
            a.since = None;
        }
        self.room.add_permits(answered);
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
                let n = b.records.len();
                deliver_all(b.replies, r.partition, r.base_offset);
                self.room.add_permits(n);
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
                let forgotten = status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains(FORGOTTEN_MARK);
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
                let n = b.records.len();
                b.replies.into_iter().for_each(|r| r.fail(&e));
                self.room.add_permits(n);
                if forgotten && self.options.idempotent {
                    // The partition forgot this producer (it expired or was evicted): every
                    // later sequence would be refused too. Go on under a new id.
                    self.fail_everything(e);
                }
            }
        }
    }
}

/// What the broker's refusal of a forgotten (expired or evicted) or unknown producer says
/// (see `AppendRequest` in spool.proto).
const FORGOTTEN_MARK: &str = "new producer id";

/// Closes the producer's room when its task ends, so waiting callers get
/// [`Error::Closed`] instead of waiting forever.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
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
