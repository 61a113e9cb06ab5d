//! The `Work` RPC: a worker's stream. The broker pushes deliveries while the stream holds
//! fewer than `max_outstanding` unsettled leases, and answers the worker's settle requests
//! in order.
//!
//! A stream runs one task with at most one look for records and one settle batch in
//! flight at once, so a lease's fsync and a settlement's share the disk's time instead of
//! taking turns. Settle requests that arrive while one batch is in flight wait in the
//! transport and form the next batch (one fsync for all). Outgoing messages wait in
//! `outgoing` until the bounded answer channel has room; the worker's requests are read
//! only while little waits there, so a worker that reads nothing stops being read, and
//! a stream holds at most one look's deliveries (≤ `WORK_LEASE_BYTES` past one record)
//! and one batch's answers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use spool_proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Inner;
use super::queues::{
    MAX_SETTLEMENTS, check_settlements, check_work, lease_once, settle_on, wait_for_records,
};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::queue::config::lease_ms;
use crate::queue::leasing::{Leased, Limit, Queue};

const DEFAULT_OUTSTANDING: u32 = 100;
const MAX_OUTSTANDING: u32 = 10_000;
/// The key and value bytes a stream leases at once at most (past one record); it holds
/// them until they are handed to the answer channel, and leases again once all are.
const WORK_LEASE_BYTES: usize = 4 << 20;
/// A stream's answers in flight to tonic's writer.
const WORK_ANSWERS: usize = 64;

/// (partition, offset, lease id): one of a stream's leases.
type LeaseKey = (u32, u64, u64);

/// A settle batch's outcome: the answers, and what they change in the stream's leases.
struct Settled {
    answers: Vec<SettleResponse>,
    /// Each settlement's lease, the lease end an OK extend set, or `None`: no longer held.
    leases: Vec<(LeaseKey, Option<i64>)>,
}

/// Runs a `Work` stream (its first message is read here; the rest by the stream's task).
pub async fn work(
    inner: Arc<Inner>,
    who: Principal,
    mut requests: Streaming<WorkRequest>,
) -> Result<impl Stream<Item = Result<WorkResponse, Status>>> {
    let first = requests
        .next()
        .await
        .ok_or_else(|| Error::invalid("the Work stream ended before its WorkStart"))?
        .map_err(|s| Error::invalid(format!("reading WorkStart: {}", s.message())))?;
    let Some(work_request::Kind::Start(start)) = first.kind else {
        return Err(Error::invalid(
            "the first message of a Work stream must be a WorkStart",
        ));
    };
    let q = check_work(&inner, &who, &start.topic, &start.queue)?;
    let (tx, rx) = mpsc::channel::<Result<WorkResponse, Status>>(WORK_ANSWERS);
    let worker = Worker {
        outstanding_max: match start.max_outstanding {
            0 => DEFAULT_OUTSTANDING,
            n => n.min(MAX_OUTSTANDING),
        } as usize,
        lease_ms: lease_ms(start.lease_ms, q.config.lease_ms),
        consumer: start.consumer,
        inner,
        q,
        tx,
        mine: HashMap::new(),
        outgoing: VecDeque::new(),
        due: None,
    };
    tokio::spawn(worker.run(requests));
    Ok(ReceiverStream::new(rx))
}

struct Worker {
    inner: Arc<Inner>,
    q: Arc<Queue>,
    consumer: String,
    outstanding_max: usize,
    lease_ms: u32,
    tx: mpsc::Sender<Result<WorkResponse, Status>>,
    /// This stream's unsettled leases → when each ends.
    mine: HashMap<LeaseKey, i64>,
    /// Messages waiting for room in the answer channel, in order.
    outgoing: VecDeque<WorkResponse>,
    /// When a record not available at the last look becomes so.
    due: Option<i64>,
}

/// Awaits `f` if there is one, else never.
async fn in_flight<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Worker {
    async fn run(mut self, mut requests: Streaming<WorkRequest>) {
        let mut leasing: Option<BoxFuture<'static, Result<Leased>>> = None;
        let mut settling: Option<BoxFuture<'static, Result<Settled>>> = None;
        let mut ended = false;
        loop {
            let now = crate::now_ms();
            self.mine.retain(|_, expires| *expires > now);
            if !ended && leasing.is_none() && self.outgoing.is_empty() && self.tx.capacity() > 0 {
                leasing = self.look();
            }
            if ended && settling.is_none() && leasing.is_none() && self.outgoing.is_empty() {
                // The worker ended its side: what was in flight is durable and handed over
                // (a look's leases are granted, so they are delivered, not dropped).
                return;
            }
            let until = self.wake_at();
            // Records becoming available matter while there is credit and room.
            let wait = leasing.is_none()
                && self.mine.len() < self.outstanding_max
                && self.outgoing.is_empty();
            // A permit borrows its sender: this one, not `self`'s.
            let tx = self.tx.clone();
            let read = !ended && settling.is_none() && self.outgoing.len() < WORK_ANSWERS;
            tokio::select! {
                leased = in_flight(&mut leasing) => {
                    leasing = None;
                    match leased {
                        Ok(leased) => self.leased(leased),
                        Err(e) => return self.fail(e).await,
                    }
                }
                settled = in_flight(&mut settling) => {
                    settling = None;
                    match settled {
                        Ok(s) => self.settled(s),
                        Err(e) => return self.fail(e).await,
                    }
                }
                msg = requests.next(), if read => {
                    match self.batch(msg, &mut requests) {
                        Ok((batch, end)) => {
                            ended = end;
                            if !batch.is_empty() {
                                settling = Some(settle_batch(&self.inner, &self.q, batch).boxed());
                            }
                        }
                        Err(e) => return self.fail(e).await,
                    }
                }
                // Room in the answer channel: hand over what waits.
                permit = tx.reserve(), if !self.outgoing.is_empty() => {
                    let Ok(permit) = permit else { return };
                    let first = self.outgoing.pop_front().expect("not empty");
                    permit.send(Ok(first));
                    self.hand_over();
                }
                _ = wait_for_records(&self.inner, &self.q, None, until), if wait => {}
                () = tokio::time::sleep_until(until) => {}
                () = self.q.deleted.cancelled() => {
                    let e = Error::QueueNotFound { topic: self.q.topic.clone(), queue: self.q.name.clone() };
                    return self.fail(e).await;
                }
                () = self.inner.shutdown.cancelled() => return self.fail(Error::ShuttingDown).await,
            }
        }
    }

    /// A look for records, if the stream has credit for a batch (each look is an
    /// fsync): an eighth of its credit free, or nothing held.
    fn look(&self) -> Option<BoxFuture<'static, Result<Leased>>> {
        let room = self.outstanding_max.saturating_sub(self.mine.len());
        if room == 0 || (!self.mine.is_empty() && room < (self.outstanding_max / 8).max(1)) {
            return None;
        }
        let limit = Limit {
            records: room,
            bytes: WORK_LEASE_BYTES,
        };
        let (inner, q, consumer) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.q),
            self.consumer.clone(),
        );
        let lease = self.lease_ms;
        Some(async move { lease_once(&inner, &q, limit, lease, &consumer).await }.boxed())
    }

    /// When to look again: the next record's time, or the first of this stream's leases
    /// to end (credit back), at most a minute away.
    fn wake_at(&self) -> tokio::time::Instant {
        let credit_back = self.mine.values().min().copied();
        let wake = match (self.due, credit_back) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::time::Instant::now()
            + Duration::from_millis(
                wake.map_or(60_000, |w| (w - crate::now_ms()).clamp(0, 60_000) as u64),
            )
    }

    fn leased(&mut self, leased: Leased) {
        self.due = leased.next_due_ms;
        for d in leased.deliveries {
            let key = (
                d.partition,
                d.record.as_ref().map_or(0, |r| r.offset),
                d.lease_id,
            );
            self.mine.insert(key, d.lease_expires_ms);
            self.outgoing.push_back(WorkResponse {
                kind: Some(work_response::Kind::Delivery(d)),
            });
        }
        self.hand_over();
    }

    fn settled(&mut self, s: Settled) {
        for (key, extended) in s.leases {
            match extended {
                Some(expires) => {
                    if let Some(e) = self.mine.get_mut(&key) {
                        *e = expires;
                    }
                }
                None => {
                    self.mine.remove(&key);
                }
            }
        }
        for resp in s.answers {
            self.outgoing.push_back(WorkResponse {
                kind: Some(work_response::Kind::Settled(resp)),
            });
        }
        self.hand_over();
    }

    /// Moves waiting messages into the answer channel while it has room.
    fn hand_over(&mut self) {
        while !self.outgoing.is_empty() {
            let Ok(permit) = self.tx.try_reserve() else {
                return;
            };
            permit.send(Ok(self.outgoing.pop_front().expect("not empty")));
        }
    }

    /// The settle requests in `first` and those already waiting behind it (one batch,
    /// one fsync), and whether the worker ended its side of the stream.
    fn batch(
        &self,
        first: Option<Result<WorkRequest, Status>>,
        requests: &mut Streaming<WorkRequest>,
    ) -> Result<(Vec<SettleRequest>, bool)> {
        let mut batch = Vec::new();
        let mut next = Some(first);
        let mut settlements = 0;
        while let Some(msg) = next.take() {
            match classify(msg)? {
                Some(s) => {
                    settlements += s.settlements.len();
                    batch.push(s);
                }
                None => return Ok((batch, true)),
            }
            if settlements < MAX_SETTLEMENTS {
                next = requests.next().now_or_never();
            }
        }
        Ok((batch, false))
    }

    /// Ends the stream with `e`, once what waits for the worker is handed over.
    async fn fail(mut self, e: Error) {
        while let Some(msg) = self.outgoing.pop_front() {
            if self.tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        let _ = self.tx.send(Err(e.into())).await;
    }
}

/// A message after the start: a settle request (`Some`), the end of the worker's side
/// (`None`), or a reason to end the stream.
fn classify(msg: Option<Result<WorkRequest, Status>>) -> Result<Option<SettleRequest>> {
    match msg {
        None => Ok(None),
        Some(Err(status)) => {
            tracing::debug!(%status, "work stream ended by the worker");
            Ok(None)
        }
        Some(Ok(WorkRequest {
            kind: Some(work_request::Kind::Settle(s)),
        })) => Ok(Some(s)),
        Some(Ok(_)) => Err(Error::invalid(
            "a Work stream takes one WorkStart, then SettleRequests",
        )),
    }
}

/// Applies a stream's settle requests as one durable batch; an answer for each, in order.
fn settle_batch(
    inner: &Arc<Inner>,
    q: &Arc<Queue>,
    batch: Vec<SettleRequest>,
) -> impl std::future::Future<Output = Result<Settled>> + Send + 'static {
    let (inner, q) = (Arc::clone(inner), Arc::clone(q));
    async move {
        let mut sizes = Vec::with_capacity(batch.len());
        let mut all = Vec::new();
        for settle in batch {
            if (!settle.topic.is_empty() && settle.topic != q.topic)
                || (!settle.queue.is_empty() && settle.queue != q.name)
            {
                return Err(Error::invalid(format!(
                    "this Work stream serves queue {:?} on topic {:?}: leave SettleRequest.topic and .queue empty, or use Settle",
                    q.name, q.topic
                )));
            }
            check_settlements(&q, &settle.settlements)?;
            sizes.push(settle.settlements.len());
            all.extend(settle.settlements);
        }
        let keys: Vec<(LeaseKey, bool)> = all
            .iter()
            .map(|s| {
                (
                    (s.partition, s.offset, s.lease_id),
                    s.action == SettleAction::Extend as i32,
                )
            })
            .collect();
        let resp = settle_on(&inner, &q, all).await?;
        let leases = keys
            .into_iter()
            .zip(&resp.outcomes)
            .map(|((key, extend), o)| {
                let ok = o.result == SettleResult::Ok as i32;
                (key, (extend && ok).then_some(o.lease_expires_ms))
            })
            .collect();
        let mut outcomes = resp.outcomes.into_iter();
        let answers = sizes
            .into_iter()
            .map(|n| SettleResponse {
                outcomes: outcomes.by_ref().take(n).collect(),
            })
            .collect();
        Ok(Settled { answers, leases })
    }
}
