//! CreateQueue, DeleteQueue, ListQueues, DescribeQueue, RedriveQueue, Receive, Settle and
//! Work: the queue RPCs over `crate::queue`. Permissions are checked here; leasing and
//! settling run on the blocking pool (they read logs and append to the queue log), and
//! nothing answers before the events of its change are durable.

use std::sync::Arc;
use std::time::Duration;

use spool_proto::v1::*;

use super::Inner;
use crate::auth::{Operation as Op, Principal, Resource};
use crate::error::{Error, Result};
use crate::queue::config::lease_ms;
use crate::queue::leasing::{Leased, Limit, Queue};
use crate::registry::validate_name;

const DEFAULT_MAX_RECORDS: u32 = 100;
const MAX_RECORDS: u32 = 10_000;
const MAX_WAIT_MS: u32 = 30_000;
pub(super) const MAX_SETTLEMENTS: usize = 10_000;
/// The key and value bytes one `Receive` answers with at most (past one record): under
/// the 4 MiB message limit gRPC clients apply by default.
const RECEIVE_BYTES: usize = 3 << 20;

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

pub async fn list(
    inner: &Arc<Inner>,
    who: &Principal,
    req: ListQueuesRequest,
) -> Result<ListQueuesResponse> {
    if !req.topic.is_empty() {
        validate_name("topic", &req.topic)?;
    }
    let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
    let shown: Vec<Arc<Queue>> = inner
        .queues
        .list(topic)
        .into_iter()
        .filter(|q| {
            inner
                .auth
                .allows(who, Op::Describe, Resource::Queue(&q.name))
        })
        .collect();
    let i = Arc::clone(inner);
    let queues =
        tokio::task::spawn_blocking(move || shown.iter().map(|q| info(&i, q)).collect()).await?;
    Ok(ListQueuesResponse { queues })
}

pub async fn describe(
    inner: &Arc<Inner>,
    who: &Principal,
    req: DescribeQueueRequest,
) -> Result<DescribeQueueResponse> {
    names(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Describe, Resource::Queue(&req.queue))?;
    let q = inner.queues.get(&req.topic, &req.queue)?;
    let i = Arc::clone(inner);
    let queue = tokio::task::spawn_blocking(move || info(&i, &q)).await?;
    Ok(DescribeQueueResponse { queue: Some(queue) })
}

/// Starts a redrive: `commit` on the queue (it changes what the queue delivers, as a
/// settlement does) and `read` on its dead-letter topic (it reads the dead letters).
pub async fn redrive(
    inner: &Arc<Inner>,
    who: &Principal,
    req: RedriveQueueRequest,
) -> Result<RedriveQueueResponse> {
    names(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Commit, Resource::Queue(&req.queue))?;
    let q = inner.queues.get(&req.topic, &req.queue)?;
    inner
        .auth
        .check(who, Op::Read, Resource::Topic(&q.config.dead_letter_topic))?;
    let i = Arc::clone(inner);
    let (start_offset, end_offset) = tokio::task::spawn_blocking(move || {
        i.queues
            .redrive(&i.registry, &req.topic, &req.queue, req.max_per_second)
    })
    .await??;
    Ok(RedriveQueueResponse {
        start_offset,
        end_offset,
    })
}

/// Blocking (see [`Queue::info`]).
fn info(inner: &Inner, q: &Queue) -> QueueInfo {
    let topic = inner.registry.get(&q.topic).ok();
    q.info(topic.as_deref(), crate::now_ms())
}

/// Receive and Work take records: `read` on the topic and `commit` on the queue.
pub(super) fn check_work(
    inner: &Inner,
    who: &Principal,
    topic: &str,
    queue: &str,
) -> Result<Arc<Queue>> {
    names(topic, queue)?;
    inner.auth.check(who, Op::Read, Resource::Topic(topic))?;
    inner.auth.check(who, Op::Commit, Resource::Queue(queue))?;
    inner.queues.get(topic, queue)
}

/// One look for records, durable before it returns.
pub(super) async fn lease_once(
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
pub(super) async fn wait_for_records(
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
pub(super) fn check_settlements(q: &Queue, settlements: &[Settlement]) -> Result<()> {
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

/// Applies settlements, each request's already checked by `check_settlements` (a `Work`
/// batch may join several requests, so their sum may pass one request's limit), and
/// returns once they are durable.
pub(super) async fn settle_on(
    inner: &Arc<Inner>,
    q: &Arc<Queue>,
    settlements: Vec<Settlement>,
) -> Result<SettleResponse> {
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
