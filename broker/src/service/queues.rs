//! CreateQueue, DeleteQueue, ListQueues, DescribeQueue, Receive, Settle and Work: the
//! queue RPCs over `crate::queue`. Permissions are checked here; leasing and settling run
//! on the blocking pool (they read logs and append to the queue log), and nothing answers
//! before the events of its change are durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use spool_proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Inner;
use crate::auth::{Operation as Op, Principal, Resource};
use crate::error::{Error, Result};
use crate::queue::config::lease_ms;
use crate::queue::leasing::{Leased, Limit, Queue};
use crate::registry::validate_name;

const DEFAULT_MAX_RECORDS: u32 = 100;
const MAX_RECORDS: u32 = 10_000;
const MAX_WAIT_MS: u32 = 30_000;
const MAX_SETTLEMENTS: usize = 10_000;
const DEFAULT_OUTSTANDING: u32 = 100;
const MAX_OUTSTANDING: u32 = 10_000;
/// The key and value bytes one `Receive` answers with at most (past one record): under
/// the 4 MiB message limit gRPC clients apply by default.
const RECEIVE_BYTES: usize = 3 << 20;
/// The key and value bytes a `Work` stream leases at once at most (past one record); it
/// holds them until they are sent, and leases again once all are.
const WORK_LEASE_BYTES: usize = 4 << 20;
/// A `Work` stream's answers in flight to tonic's writer.
const WORK_ANSWERS: usize = 64;

fn names(topic: &str, queue: &str) -> Result<()> {
    validate_name("topic", topic)?;
    validate_name("queue", queue)
}

pub async fn create(
    inner: &Arc<Inner>,
    who: &Principal,
    req: CreateQueueRequest,
) -> Result<CreateQueueResponse> {
    names(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Create, Resource::Queue(&req.queue))?;
    if let Some(dlq) = req.config.as_ref().map(|c| &c.dead_letter_topic)
        && !dlq.is_empty()
        && inner.registry.get(dlq).is_ok()
    {
        inner.auth.check(who, Op::Append, Resource::Topic(dlq))?;
    }
    let i = Arc::clone(inner);
    let q = tokio::task::spawn_blocking(move || i.queues.create(&i.registry, &req)).await??;
    Ok(CreateQueueResponse {
        queue: Some(info(inner, &q)),
    })
}

pub async fn delete(
    inner: &Arc<Inner>,
    who: &Principal,
    req: DeleteQueueRequest,
) -> Result<DeleteQueueResponse> {
    names(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Delete, Resource::Queue(&req.queue))?;
    let i = Arc::clone(inner);
    tokio::task::spawn_blocking(move || i.queues.delete(&req.topic, &req.queue)).await??;
    Ok(DeleteQueueResponse {})
}

pub fn list(inner: &Inner, who: &Principal, req: ListQueuesRequest) -> Result<ListQueuesResponse> {
    if !req.topic.is_empty() {
        validate_name("topic", &req.topic)?;
    }
    let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
    let queues = inner
        .queues
        .list(topic)
        .iter()
        .filter(|q| {
            inner
                .auth
                .allows(who, Op::Describe, Resource::Queue(&q.name))
        })
        .map(|q| info(inner, q))
        .collect();
    Ok(ListQueuesResponse { queues })
}

pub fn describe(
    inner: &Inner,
    who: &Principal,
    req: DescribeQueueRequest,
) -> Result<DescribeQueueResponse> {
    names(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Describe, Resource::Queue(&req.queue))?;
    let q = inner.queues.get(&req.topic, &req.queue)?;
    Ok(DescribeQueueResponse {
        queue: Some(info(inner, &q)),
    })
}

fn info(inner: &Inner, q: &Queue) -> QueueInfo {
    let topic = inner.registry.get(&q.topic).ok();
    q.info(topic.as_deref(), crate::now_ms())
}

/// Receive and Work take records: `read` on the topic and `commit` on the queue.
fn check_work(inner: &Inner, who: &Principal, topic: &str, queue: &str) -> Result<Arc<Queue>> {
    names(topic, queue)?;
    inner.auth.check(who, Op::Read, Resource::Topic(topic))?;
    inner.auth.check(who, Op::Commit, Resource::Queue(queue))?;
    inner.queues.get(topic, queue)
}

/// One look for records, durable before it returns.
async fn lease_once(
    inner: &Arc<Inner>,
    q: &Arc<Queue>,
    limit: Limit,
    lease: u32,
    consumer: &str,
) -> Result<Leased> {
    let topic = inner.registry.get(&q.topic)?;
    let (i, q2, consumer) = (Arc::clone(inner), Arc::clone(q), consumer.to_string());
    tokio::task::spawn_blocking(move || -> Result<Leased> {
        let leased = q2.lease(&topic, limit, lease, &consumer, crate::now_ms())?;
        if leased.dead_letters_due {
            i.queues.dead_letters.notify_one();
        }
        i.queues.persist(&leased.events)?;
        Ok(leased)
    })
    .await?
}

/// Waits until records may have become available for `q`: an append to its topic, a
/// settlement, `due_ms`, or `deadline`; false once the deadline passed or the queue is gone.
async fn wait_for_records(
    inner: &Inner,
    q: &Queue,
    due_ms: Option<i64>,
    deadline: tokio::time::Instant,
) -> Result<bool> {
    let topic = inner.registry.get(&q.topic)?;
    let mut ends: Vec<_> = topic.partitions.iter().map(|p| p.watch_end()).collect();
    let changed = q.changed.notified();
    let appended = futures::future::select_all(ends.iter_mut().map(|w| Box::pin(w.changed())));
    let until = match due_ms {
        Some(due) => {
            let wait = Duration::from_millis((due - crate::now_ms()).max(0) as u64);
            deadline.min(tokio::time::Instant::now() + wait)
        }
        None => deadline,
    };
    tokio::select! {
        () = changed => {}
        _ = appended => {}
        () = tokio::time::sleep_until(until) => {}
        () = q.deleted.cancelled() => {}
        () = topic.deleted.cancelled() => {}
    }
    if q.deleted.is_cancelled() {
        return Err(Error::QueueNotFound {
            topic: q.topic.clone(),
            queue: q.name.clone(),
        });
    }
    Ok(tokio::time::Instant::now() < deadline)
}

pub async fn receive(
    inner: &Arc<Inner>,
    who: &Principal,
    req: ReceiveRequest,
) -> Result<ReceiveResponse> {
    let q = check_work(inner, who, &req.topic, &req.queue)?;
    let limit = Limit {
        records: match req.max_records {
            0 => DEFAULT_MAX_RECORDS,
            n => n.min(MAX_RECORDS),
        } as usize,
        bytes: RECEIVE_BYTES,
    };
    let lease = lease_ms(req.lease_ms, q.config.lease_ms);
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::from(req.wait_ms.min(MAX_WAIT_MS)));
    loop {
        let leased = lease_once(inner, &q, limit, lease, &req.consumer).await?;
        if !leased.deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(ReceiveResponse {
                deliveries: leased.deliveries,
            });
        }
        if !wait_for_records(inner, &q, leased.next_due_ms, deadline).await? {
            // One last look at the deadline: a record may have arrived with it.
            let last = lease_once(inner, &q, limit, lease, &req.consumer).await?;
            return Ok(ReceiveResponse {
                deliveries: last.deliveries,
            });
        }
    }
}

/// Checks a whole settle request before anything is applied.
fn check_settlements(q: &Queue, settlements: &[Settlement]) -> Result<()> {
    if settlements.len() > MAX_SETTLEMENTS {
        return Err(Error::invalid(format!(
            "{} settlements in one request; send at most {MAX_SETTLEMENTS}",
            settlements.len()
        )));
    }
    let partitions = q.partitions() as u32;
    for (i, s) in settlements.iter().enumerate() {
        match SettleAction::try_from(s.action) {
            Ok(SettleAction::Unspecified) | Err(_) => {
                return Err(Error::invalid(format!(
                    "settlements[{i}].action is {}: set SETTLE_ACTION_ACK, _NACK, _EXTEND or _REJECT (nothing was applied)",
                    s.action
                )));
            }
            Ok(_) => {}
        }
        if s.partition >= partitions {
            return Err(Error::invalid(format!(
                "settlements[{i}].partition {} does not exist: topic {:?} has partitions 0..{partitions} (nothing was applied)",
                s.partition, q.topic
            )));
        }
    }
    Ok(())
}

/// Applies settlements and returns once they are durable.
async fn settle_on(
    inner: &Arc<Inner>,
    q: &Arc<Queue>,
    settlements: Vec<Settlement>,
) -> Result<SettleResponse> {
    check_settlements(q, &settlements)?;
    let dlq_end = inner
        .registry
        .get(&q.config.dead_letter_topic)
        .ok()
        .and_then(|t| t.partitions.first().map(|p| p.log.end_offset()))
        .unwrap_or(0);
    let (i, q2) = (Arc::clone(inner), Arc::clone(q));
    let (outcomes, dead_letters) = tokio::task::spawn_blocking(move || -> Result<_> {
        let (outcomes, events) = q2.settle(&settlements, crate::now_ms(), dlq_end);
        i.queues.persist(&events)?;
        let dead_letters = events
            .iter()
            .any(|e| matches!(e, crate::queue::store::Event::DeadLetter { .. }));
        Ok((outcomes, dead_letters))
    })
    .await??;
    if dead_letters {
        inner.queues.dead_letters.notify_one();
    }
    // A nack may have made a record available at once.
    q.changed.notify_waiters();
    Ok(SettleResponse { outcomes })
}

pub async fn settle(
    inner: &Arc<Inner>,
    who: &Principal,
    req: SettleRequest,
) -> Result<SettleResponse> {
    let q = check_work(inner, who, &req.topic, &req.queue)?;
    check_settlements(&q, &req.settlements)?;
    settle_on(inner, &q, req.settlements).await
}

/// A worker's message on a `Work` stream after its start: a settle request (`Ok(Some)`),
/// the end of the stream (`Err(None)`), or a reason to end it (`Err(Some)`).
fn classify(
    msg: Option<Result<WorkRequest, Status>>,
) -> Result<Option<SettleRequest>, Option<Error>> {
    match msg {
        None => Err(None),
        Some(Err(status)) => {
            tracing::debug!(%status, "work stream ended by the worker");
            Err(None)
        }
        Some(Ok(WorkRequest {
            kind: Some(work_request::Kind::Settle(s)),
        })) => Ok(Some(s)),
        Some(Ok(_)) => Err(Some(Error::invalid(
            "a Work stream takes one WorkStart, then SettleRequests",
        ))),
    }
}

/// Applies a Work stream's settle requests as one durable batch and answers each, in
/// order; updates the stream's held leases (`mine`).
async fn settle_batch(
    inner: &Arc<Inner>,
    q: &Arc<Queue>,
    batch: Vec<SettleRequest>,
    mine: &mut std::collections::HashMap<(u32, u64, u64), i64>,
) -> Result<Vec<SettleResponse>> {
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
        check_settlements(q, &settle.settlements)?;
        sizes.push(settle.settlements.len());
        all.extend(settle.settlements);
    }
    let keys: Vec<((u32, u64, u64), bool)> = all
        .iter()
        .map(|s| {
            (
                (s.partition, s.offset, s.lease_id),
                s.action == SettleAction::Extend as i32,
            )
        })
        .collect();
    let resp = settle_on(inner, q, all).await?;
    for ((key, extend), outcome) in keys.iter().zip(&resp.outcomes) {
        if *extend && outcome.result == SettleResult::Ok as i32 {
            if let Some(e) = mine.get_mut(key) {
                *e = outcome.lease_expires_ms;
            }
        } else {
            mine.remove(key);
        }
    }
    let mut outcomes = resp.outcomes.into_iter();
    Ok(sizes
        .into_iter()
        .map(|n| SettleResponse {
            outcomes: outcomes.by_ref().take(n).collect(),
        })
        .collect())
}

/// Runs a `Work` stream: a task reads the worker's messages (settle requests are answered
/// in order), and pushes deliveries while the stream holds fewer than `max_outstanding`
/// unsettled leases. The answer channel is bounded; the worker's requests are read only
/// while there is room in it, so a worker that reads nothing stops being read.
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
    let outstanding_max = match start.max_outstanding {
        0 => DEFAULT_OUTSTANDING,
        n => n.min(MAX_OUTSTANDING),
    } as usize;
    let lease = lease_ms(start.lease_ms, q.config.lease_ms);
    let (tx, rx) = mpsc::channel::<Result<WorkResponse, Status>>(WORK_ANSWERS);
    tokio::spawn(async move {
        // (partition, offset, lease id) → lease end, of this stream's unsettled leases.
        let mut mine: std::collections::HashMap<(u32, u64, u64), i64> = Default::default();
        // Leased deliveries not yet handed to the answer channel (one lease's worth at
        // most: the stream leases again only once all are handed over).
        let mut pending: VecDeque<WorkResponse> = VecDeque::new();
        let mut due: Option<i64> = None;
        loop {
            let now = crate::now_ms();
            mine.retain(|_, expires| *expires > now);
            let room = outstanding_max.saturating_sub(mine.len());
            // Lease in batches (each look is an fsync): when an eighth of the credit is
            // free, or nothing is held.
            if room > 0
                && pending.is_empty()
                && (mine.is_empty() || room >= (outstanding_max / 8).max(1))
                && tx.capacity() > 0
            {
                let limit = Limit {
                    records: room,
                    bytes: WORK_LEASE_BYTES,
                };
                match lease_once(&inner, &q, limit, lease, &start.consumer).await {
                    Ok(leased) => {
                        due = leased.next_due_ms;
                        for d in leased.deliveries {
                            mine.insert(
                                (
                                    d.partition,
                                    d.record.as_ref().map_or(0, |r| r.offset),
                                    d.lease_id,
                                ),
                                d.lease_expires_ms,
                            );
                            pending.push_back(WorkResponse {
                                kind: Some(work_response::Kind::Delivery(d)),
                            });
                        }
                        // Hand over what fits now; the rest as the channel drains.
                        while let Some(msg) = pending.pop_front() {
                            match tx.try_reserve() {
                                Ok(permit) => permit.send(Ok(msg)),
                                Err(mpsc::error::TrySendError::Full(())) => {
                                    pending.push_front(msg);
                                    break;
                                }
                                Err(mpsc::error::TrySendError::Closed(())) => return,
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            // The earliest of this stream's leases to end frees credit.
            let credit_back = mine.values().min().copied();
            let wake = match (due, credit_back) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let until = tokio::time::Instant::now()
                + Duration::from_millis(
                    wake.map_or(60_000, |w| (w - crate::now_ms()).clamp(0, 60_000) as u64),
                );
            let records = async {
                if mine.len() < outstanding_max && pending.is_empty() {
                    let _ = wait_for_records(&inner, &q, None, until).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                msg = requests.next(), if tx.capacity() > 0 => {
                    // This request and any already waiting share one fsync.
                    let mut batch = Vec::new();
                    let mut stop = None;
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        match classify(msg) {
                            Ok(Some(s)) => batch.push(s),
                            Ok(None) => {}
                            Err(e) => {
                                stop = Some(e);
                                break;
                            }
                        }
                        let settlements: usize = batch.iter().map(|s| s.settlements.len()).sum();
                        if settlements < MAX_SETTLEMENTS {
                            next = requests.next().now_or_never();
                        }
                    }
                    if !batch.is_empty() {
                        match settle_batch(&inner, &q, batch, &mut mine).await {
                            Ok(answers) => {
                                for resp in answers {
                                    let msg = WorkResponse { kind: Some(work_response::Kind::Settled(resp)) };
                                    if tx.send(Ok(msg)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        }
                    }
                    if let Some(e) = stop {
                        if let Some(e) = e {
                            let _ = tx.send(Err(e.into())).await;
                        }
                        return;
                    }
                }
                // Room again in the answer channel: hand over pending deliveries, and read
                // the worker's requests again.
                permit = tx.reserve(), if tx.capacity() == 0 || !pending.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(msg) = pending.pop_front() {
                        permit.send(Ok(msg));
                        while !pending.is_empty() {
                            let Ok(permit) = tx.try_reserve() else { break };
                            permit.send(Ok(pending.pop_front().expect("not empty")));
                        }
                    }
                }
                () = records => {}
                () = tokio::time::sleep_until(until) => {}
                () = q.deleted.cancelled() => {
                    let e = Error::QueueNotFound { topic: q.topic.clone(), queue: q.name.clone() };
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                () = inner.shutdown.cancelled() => {
                    let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
