//! [`QueueConsumer`]: a queue's worker as a `futures::Stream` of [`Job`]s, over one
//! `Work` stream. Each job is settled once, by [`Job::ack`], [`Job::nack`] or
//! [`Job::reject`]; while a job is held (not settled, not dropped) its lease is extended
//! automatically before it ends, like Pub/Sub's client, so a slow handler keeps its record.
//! A job dropped unsettled stops being extended: its lease runs out and the record is
//! delivered again.
//!
//! Memory is bounded: the broker pushes at most `max_outstanding` leases the worker holds,
//! the jobs wait in a channel of that size, and settlements travel through a bounded
//! channel (a settle waits for room). Settlements that wait there together are sent in
//! one settle request (up to 1,000, each with its own outcome): a worker acking jobs as
//! fast as they come sends a request per batch, not per job. When the stream fails (the broker restarts, the
//! queue is deleted) the consumer yields the error and ends; its leases stay valid until
//! they expire, so a new consumer (or `Client::settle`) can still settle them.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use spool_proto::v1::{
    self, SettleAction, SettleOutcome, SettleRequest, SettleResult, Settlement, WorkRequest,
    WorkStart, work_request, work_response,
};
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::{Error, Result};

/// The most settlements one settle request carries (those that wait together go in one).
const SETTLEMENTS_PER_REQUEST: usize = 1_000;

/// Settlements waiting for the worker task at most.
const COMMANDS: usize = 1_024;

/// How a [`QueueConsumer`] works.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// The worker's name, shown by `DescribeQueue`.
    pub consumer: String,
    /// The most jobs held at once (leased and not settled). 0 = the broker's default (100).
    pub max_outstanding: u32,
    /// How long each lease lasts; `None` = the queue's `lease_ms`.
    pub lease: Option<Duration>,
    /// Extend the leases of held jobs before they end.
    pub auto_extend: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            consumer: String::new(),
            max_outstanding: 100,
            lease: None,
            auto_extend: true,
        }
    }
}

/// A leased record, to be settled once.
#[derive(Debug)]
pub struct Job {
    pub partition: u32,
    pub offset: u64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: i64,
    /// 1 on the first delivery.
    pub attempt: u32,
    pub lease_id: u64,
    commands: mpsc::Sender<Command>,
    settled: bool,
}

enum Command {
    Settle(Settlement, oneshot::Sender<Result<SettleOutcome>>),
    /// The job was dropped unsettled: stop extending its lease.
    Release(LeaseKey),
}

type LeaseKey = (u32, u64, u64);

/// Who waits for the outcome of each settlement of one request (`None`: an automatic
/// extension, whose outcome updates the held lease).
type Waiters = Vec<(LeaseKey, Option<oneshot::Sender<Result<SettleOutcome>>>)>;

impl Job {
    fn key(&self) -> LeaseKey {
        (self.partition, self.offset, self.lease_id)
    }

    async fn settle(
        mut self,
        action: SettleAction,
        delay: Option<Duration>,
        reason: String,
    ) -> Result<SettleResult> {
        self.settled = true;
        let settlement = Settlement {
            partition: self.partition,
            offset: self.offset,
            lease_id: self.lease_id,
            action: action as i32,
            delay_ms: delay.map(|d| d.as_millis() as u64),
            reason,
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Settle(settlement, tx))
            .await
            .map_err(|_| Error::Closed)?;
        let outcome = rx.await.map_err(|_| Error::Closed)??;
        Ok(SettleResult::try_from(outcome.result).unwrap_or(SettleResult::Unspecified))
    }

    /// Done: the record is never delivered again. `SettleResult::Ok` if the ack counted;
    /// `LeaseExpired` if the lease ended first (the record will be delivered again).
    pub async fn ack(self) -> Result<SettleResult> {
        self.settle(SettleAction::Ack, None, String::new()).await
    }

    /// Not done: deliver it again after `delay` (`None` = the queue's backoff).
    pub async fn nack(self, delay: Option<Duration>) -> Result<SettleResult> {
        self.settle(SettleAction::Nack, delay, String::new()).await
    }

    /// Give up: dead-letter it now, with `reason`.
    pub async fn reject(self, reason: impl Into<String>) -> Result<SettleResult> {
        self.settle(SettleAction::Reject, None, reason.into()).await
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.settled {
            // Best effort: if the channel is full the lease is extended once more at most.
            let _ = self.commands.try_send(Command::Release(self.key()));
        }
    }
}

/// A queue's worker: a stream of [`Job`]s.
pub struct QueueConsumer {
    jobs: mpsc::Receiver<Result<Job>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueConsumer {
    /// Opens a `Work` stream on `queue` of `topic`. Fails at once if the queue does not
    /// exist or the principal may not work on it.
    pub async fn new(
        client: &Client,
        topic: &str,
        queue: &str,
        options: QueueOptions,
    ) -> Result<QueueConsumer> {
        let outstanding = options.max_outstanding.max(1) as usize;
        let (req_tx, req_rx) = mpsc::channel::<WorkRequest>(16);
        req_tx
            .send(WorkRequest {
                kind: Some(work_request::Kind::Start(WorkStart {
                    topic: topic.to_string(),
                    queue: queue.to_string(),
                    consumer: options.consumer.clone(),
                    max_outstanding: options.max_outstanding,
                    lease_ms: options.lease.map_or(0, |d| d.as_millis() as u32),
                })),
            })
            .await
            .map_err(|_| Error::Closed)?;
        let mut raw = client.raw();
        let responses = raw
            .work(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| client.error(s))?
            .into_inner();
        let (jobs_tx, jobs) = mpsc::channel(outstanding);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS);
        let task = tokio::spawn(
            Worker {
                requests: req_tx,
                responses,
                jobs: jobs_tx,
                commands: cmd_rx,
                command_tx: cmd_tx,
                held: HashMap::new(),
                answers: VecDeque::new(),
                auto_extend: options.auto_extend,
                endpoint: client.endpoint().to_string(),
            }
            .run(),
        );
        Ok(QueueConsumer { jobs, task })
    }
}

impl Stream for QueueConsumer {
    type Item = Result<Job>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Job>>> {
        self.jobs.poll_recv(cx)
    }
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A held job's lease: when it ends and how long an extension lasts.
struct Held {
    expires_ms: i64,
    lease_ms: i64,
}

/// The task behind a [`QueueConsumer`].
struct Worker {
    requests: mpsc::Sender<WorkRequest>,
    responses: tonic::Streaming<v1::WorkResponse>,
    jobs: mpsc::Sender<Result<Job>>,
    commands: mpsc::Receiver<Command>,
    command_tx: mpsc::Sender<Command>,
    held: HashMap<LeaseKey, Held>,
    /// Per settle request sent, in order: who waits for each outcome (`None` for an
    /// automatic extension, whose outcome updates `held`).
    answers: VecDeque<Waiters>,
    auto_extend: bool,
    endpoint: String,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let next_extension = self.next_extension();
            tokio::select! {
                msg = tokio_stream::StreamExt::next(&mut self.responses) => {
                    let failed = match msg {
                        None => Some(Error::Closed),
                        Some(Err(status)) => Some(Error::from_status(status, &self.endpoint)),
                        Some(Ok(m)) => self.on_response(m).await.err(),
                    };
                    if let Some(e) = failed {
                        for waiters in self.answers.drain(..) {
                            for (_, w) in waiters.into_iter() {
                                if let Some(w) = w {
                                    let _ = w.send(Err(Error::Closed));
                                }
                            }
                        }
                        let _ = self.jobs.send(Err(e)).await;
                        return;
                    }
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    // The settlements that wait together go in one request (each its own
                    // settlement, with its own outcome).
                    let mut settlements = Vec::new();
                    let mut waiters = Vec::new();
                    let mut next = Some(cmd);
                    while let Some(cmd) = next.take() {
                        match cmd {
                            Command::Settle(s, reply) => {
                                let key = (s.partition, s.offset, s.lease_id);
                                self.held.remove(&key);
                                settlements.push(s);
                                waiters.push((key, Some(reply)));
                            }
                            Command::Release(key) => {
                                self.held.remove(&key);
                            }
                        }
                        if settlements.len() < SETTLEMENTS_PER_REQUEST {
                            next = self.commands.try_recv().ok();
                        }
                    }
                    if !settlements.is_empty()
                        && self.send_settle(settlements, waiters).await.is_err()
                    {
                        return;
                    }
                }
                () = sleep_until_ms(next_extension) => {
                    if self.extend_due().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn on_response(&mut self, m: v1::WorkResponse) -> Result<()> {
        match m.kind {
            Some(work_response::Kind::Delivery(d)) => {
                let record = d.record.unwrap_or_default();
                let now = crate_now_ms();
                let job = Job {
                    partition: d.partition,
                    offset: record.offset,
                    key: record.key,
                    value: record.value,
                    headers: record
                        .headers
                        .into_iter()
                        .map(|h| (h.key, h.value))
                        .collect(),
                    timestamp_ms: record.timestamp_ms,
                    attempt: d.attempt,
                    lease_id: d.lease_id,
                    commands: self.command_tx.clone(),
                    settled: false,
                };
                self.held.insert(
                    job.key(),
                    Held {
                        expires_ms: d.lease_expires_ms,
                        lease_ms: (d.lease_expires_ms - now).max(100),
                    },
                );
                self.jobs.send(Ok(job)).await.map_err(|_| Error::Closed)
            }
            Some(work_response::Kind::Settled(resp)) => {
                let waiters = self.answers.pop_front().unwrap_or_default();
                for ((key, waiter), outcome) in waiters.into_iter().zip(resp.outcomes) {
                    match waiter {
                        Some(w) => {
                            let _ = w.send(Ok(outcome));
                        }
                        None => {
                            if outcome.result == SettleResult::Ok as i32 {
                                if let Some(h) = self.held.get_mut(&key) {
                                    h.expires_ms = outcome.lease_expires_ms;
                                }
                            } else {
                                // The lease ended or the record was settled elsewhere.
                                self.held.remove(&key);
                            }
                        }
                    }
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn send_settle(&mut self, settlements: Vec<Settlement>, waiters: Waiters) -> Result<()> {
        self.answers.push_back(waiters);
        self.requests
            .send(WorkRequest {
                kind: Some(work_request::Kind::Settle(SettleRequest {
                    topic: String::new(),
                    queue: String::new(),
                    settlements,
                })),
            })
            .await
            .map_err(|_| Error::Closed)
    }

    /// When the next held lease is due for extension: a third of its length before it
    /// ends.
    fn next_extension(&self) -> Option<i64> {
        if !self.auto_extend {
            return None;
        }
        self.held
            .values()
            .map(|h| h.expires_ms - h.lease_ms / 3)
            .min()
    }

    async fn extend_due(&mut self) -> Result<()> {
        let now = crate_now_ms();
        let due: Vec<(LeaseKey, i64)> = self
            .held
            .iter()
            .filter(|(_, h)| h.expires_ms - h.lease_ms / 3 <= now)
            .map(|(k, h)| (*k, h.lease_ms))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for (key, _) in &due {
            // Pushed out until the answer says where it ends now.
            if let Some(h) = self.held.get_mut(key) {
                h.expires_ms = now + h.lease_ms;
            }
        }
        let settlements = due
            .iter()
            .map(|((p, o, id), lease_ms)| Settlement {
                partition: *p,
                offset: *o,
                lease_id: *id,
                action: SettleAction::Extend as i32,
                delay_ms: Some(*lease_ms as u64),
                reason: String::new(),
            })
            .collect();
        let waiters = due.iter().map(|(k, _)| (*k, None)).collect();
        self.send_settle(settlements, waiters).await
    }
}

async fn sleep_until_ms(at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = (at - crate_now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

fn crate_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
