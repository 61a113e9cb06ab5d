//! Append and AppendStream.
//!
//! The batch is written (and visible to readers) on the blocking pool, in request order (the
//! request's task waits for it). Under `FSYNC_POLICY_ALWAYS` the wait for the disk is a
//! future (`Log::sync_async`): concurrent appends share one fdatasync, run on the blocking
//! pool by whichever append found no flush running, and the others wait without holding a
//! thread. AppendStream keeps the write order of its requests and lets their fsyncs overlap,
//! answering strictly in request order.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use spool_proto::v1::{AppendRequest, AppendResponse, Durability};
use spool_storage::{Log, ProducerStamp, SyncWait};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Inner;
use super::convert;
use crate::auth::{Operation, Principal, Resource};
use crate::error::{Error, Result};
use crate::quota::Direction;
use crate::registry::Fsync;

/// An append whose bytes are in the log; what is left is waiting for the disk.
enum Pending {
    Done(Result<AppendResponse>),
    Syncing(Pin<Box<dyn Future<Output = Result<AppendResponse>> + Send>>),
}

impl Pending {
    async fn finish(self) -> Result<AppendResponse> {
        match self {
            Pending::Done(r) => r,
            Pending::Syncing(f) => f.await,
        }
    }
}

/// Checks, throttles and writes one request; returns what remains to wait for.
async fn start(inner: &Arc<Inner>, who: &Principal, req: AppendRequest) -> Pending {
    match write(inner, who, req).await {
        Ok(p) => p,
        Err(e) => Pending::Done(Err(e)),
    }
}

async fn write(inner: &Arc<Inner>, who: &Principal, req: AppendRequest) -> Result<Pending> {
    let began = Instant::now();
    inner
        .auth
        .check(who, Operation::Append, Resource::Topic(&req.topic))?;
    let topic = inner.registry.get(&req.topic)?;
    let partition = if req.partition.is_none()
        && req.partition_key.is_empty()
        && topic.settings.cleanup_policy.compacts()
    {
        topic.partition_by_record_keys(&req.records)?
    } else {
        topic.choose_partition(req.partition, &req.partition_key)?
    };
    let (records, bytes) = convert::to_storage(
        req.records,
        topic.settings.max_record_bytes,
        crate::now_ms(),
    )?;
    super::throttle(inner, who, Direction::Produce, bytes).await?;
    let stamp = ProducerStamp {
        producer_id: req.producer_id,
        producer_epoch: 0,
        sequence: req.sequence,
    };
    let log = Arc::clone(&partition.log);
    let record_count = records.len() as u64;
    // The write (and a roll's fsyncs under ALWAYS) may wait on the disk: never on a runtime
    // worker thread.
    let appended = {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || log.append_unsynced(&records, stamp)).await??
    };
    let mut response = AppendResponse {
        request_id: req.request_id,
        partition: partition.index,
        base_offset: appended.base_offset,
        record_count: appended.record_count,
        duplicate: appended.duplicate,
        durability: Durability::Written as i32,
    };
    let end = appended.base_offset + u64::from(appended.record_count);
    let counted = if appended.duplicate { 0 } else { record_count };
    if topic.settings.fsync != Fsync::Always {
        if log.durable_offset() >= end {
            response.durability = Durability::Fsynced as i32;
        }
        inner
            .metrics
            .observe_append(&topic.name, counted, bytes, began.elapsed());
        return Ok(Pending::Done(Ok(response)));
    }
    let inner = Arc::clone(inner);
    let name = topic.name.clone();
    // Started now (a leader's flush begins at once), awaited when the answer is due.
    let durable = durable(&log, end);
    let synced = Instant::now();
    Ok(Pending::Syncing(Box::pin(async move {
        durable.await?;
        inner
            .metrics
            .fsync_latency
            .observe(synced.elapsed().as_secs_f64());
        response.durability = Durability::Fsynced as i32;
        inner
            .metrics
            .observe_append(&name, counted, bytes, began.elapsed());
        Ok(response)
    })))
}

/// Waits until every offset below `end` is on disk: a flush this append leads runs on the
/// blocking pool (started before this returns); otherwise the wait holds no thread.
fn durable(log: &Arc<Log>, end: u64) -> impl Future<Output = Result<()>> + Send + 'static {
    enum Wait {
        Flush(tokio::task::JoinHandle<spool_storage::Result<()>>),
        Follow(spool_storage::Durable),
        Done(spool_storage::Result<()>),
    }
    let wait = match log.sync_async(end) {
        SyncWait::Lead(leader) => Wait::Flush(tokio::task::spawn_blocking(move || leader.run())),
        SyncWait::Follow(f) => Wait::Follow(f),
        SyncWait::Done(r) => Wait::Done(r),
    };
    async move {
        let r = match wait {
            Wait::Flush(flush) => flush.await?,
            Wait::Follow(f) => f.await,
            Wait::Done(r) => r,
        };
        r.map_err(Error::from)
    }
}

pub async fn unary(
    inner: &Arc<Inner>,
    who: &Principal,
    req: AppendRequest,
) -> Result<AppendResponse> {
    if inner.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    start(inner, who, req).await.finish().await
}

/// Runs an AppendStream: a decoding task hands requests to a writer task, which writes them
/// in order and queues their pending fsyncs (at most `max_in_flight_appends`, which is the
/// stream's backpressure); an answering task resolves them in order. The first failure ends
/// the stream.
pub fn pipelined(
    inner: Arc<Inner>,
    who: Principal,
    mut requests: Streaming<AppendRequest>,
) -> impl Stream<Item = Result<AppendResponse, Status>> {
    let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(inner.config.max_in_flight_appends);
    let (out_tx, out_rx) = mpsc::channel(inner.config.stream_buffer.max(64));
    // Decoding (tonic copies each request out of its HTTP/2 frames) runs on its own task,
    // one request ahead of the writer, so the two copies of a batch overlap.
    let (decoded_tx, mut decoded) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            // Stop (and drop the request stream) as soon as the writer is gone, even while
            // the client sends nothing: a shutdown must not wait for the client.
            let item = tokio::select! {
                item = requests.next() => item,
                () = decoded_tx.closed() => return,
            };
            let Some(item) = item else { return };
            let failed = item.is_err();
            if decoded_tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let reader_inner = Arc::clone(&inner);
    tokio::spawn(async move {
        let inner = reader_inner;
        loop {
            let next = tokio::select! {
                next = decoded.recv() => next,
                () = inner.shutdown.cancelled() => {
                    let _ = pending_tx.send(Pending::Done(Err(Error::ShuttingDown))).await;
                    return;
                }
            };
            let req = match next {
                None => return,
                Some(Err(status)) => {
                    if status.code() == tonic::Code::OutOfRange
                        && status.message().contains("too large")
                    {
                        // A request over the size limit: answer with the API's code.
                        let e = Error::ResourceExhausted(format!(
                            "request over the broker's limit of {} bytes: {}",
                            inner.config.max_request_bytes,
                            status.message()
                        ));
                        let _ = pending_tx.send(Pending::Done(Err(e))).await;
                    } else if status.code() == tonic::Code::Internal {
                        // The request could not be decoded: end the stream with an error,
                        // never a clean end that reads as "all done".
                        let e = Error::invalid(format!(
                            "malformed AppendRequest: {}",
                            status.message()
                        ));
                        let _ = pending_tx.send(Pending::Done(Err(e))).await;
                    } else {
                        tracing::debug!(%status, "append stream ended by the client");
                    }
                    return;
                }
                Some(Ok(req)) => req,
            };
            let pending = start(&inner, &who, req).await;
            let failed = matches!(pending, Pending::Done(Err(_)));
            if pending_tx.send(pending).await.is_err() || failed {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(pending) = pending_rx.recv().await {
            let result = pending.finish().await;
            let failed = result.is_err();
            if out_tx.send(result.map_err(Status::from)).await.is_err() || failed {
                return;
            }
        }
    });
    ReceiverStream::new(out_rx)
}
