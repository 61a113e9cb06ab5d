//! Read (with long poll) and Subscribe (catch up, then tail live).
//!
//! Reads run on the blocking pool (a read may fault pages in from disk). A subscription
//! runs one pump task per partition feeding one bounded queue: when the client reads
//! slowly, HTTP/2 flow control fills the queue and the pumps wait, so a stalled
//! subscriber holds at most the queue plus one batch per partition, and appends never wait
//! for it. A pump with nothing to read waits on its partition's end-offset channel.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::{ReadRequest, ReadResponse, SubscribeRequest, SubscribeResponse};
use spool_storage::StoredRecord;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Inner;
use super::convert;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::quota::Direction;
use crate::registry::{Partition, Topic, validate_name};

/// Most records one Read or one stream message may carry, whatever the request asks.
const MAX_RECORDS_CAP: u32 = 100_000;

/// The effective (max_records, max_bytes) of a request: 0 means the broker default.
pub fn limits(inner: &Inner, max_records: u32, max_bytes: u32) -> (usize, usize) {
    let records = match max_records {
        0 => inner.config.default_max_records,
        n => n.min(MAX_RECORDS_CAP),
    };
    let bytes = match max_bytes {
        0 => inner.config.default_max_bytes as usize,
        n => (n as usize).min(inner.config.max_request_bytes),
    };
    (records as usize, bytes)
}

/// Reads on the blocking pool; counts damage in the metrics.
pub async fn read_blocking(
    inner: &Inner,
    partition: &Partition,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<StoredRecord>> {
    let log = Arc::clone(&partition.log);
    let result =
        tokio::task::spawn_blocking(move || log.read(offset, max_records, max_bytes)).await?;
    if let Err(spool_storage::Error::Corrupt { .. }) = &result {
        inner.metrics.data_loss_errors.inc();
    }
    Ok(result?)
}

pub async fn read(inner: &Arc<Inner>, who: &Principal, req: ReadRequest) -> Result<ReadResponse> {
    let topic = inner.registry.get(&req.topic)?;
    let partition = topic.partition(req.partition)?;
    let (max_records, max_bytes) = limits(inner, req.max_records, req.max_bytes);
    let log = &partition.log;
    if req.offset == log.end_offset() && req.max_wait_ms > 0 {
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(inner.config.max_wait_ms)));
        let mut end = partition.watch_end();
        let arrived = async {
            loop {
                if *end.borrow_and_update() > req.offset {
                    return;
                }
                if end.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = arrived => {}
            () = tokio::time::sleep(wait) => {}
            () = topic.deleted.cancelled() => return Err(Error::TopicNotFound(topic.name.clone())),
            () = inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
        }
    }
    let records = read_blocking(inner, partition, req.offset, max_records, max_bytes).await?;
    let (records, bytes) = convert::records_to_proto(records);
    super::throttle(inner, who, Direction::Consume, bytes).await?;
    inner.metrics.observe_read(&topic.name, bytes);
    Ok(ReadResponse {
        records,
        start_offset: log.start_offset(),
        end_offset: log.end_offset(),
    })
}

/// Where a subscription starts in one partition.
async fn start_offset(
    inner: &Inner,
    topic: &Topic,
    partition: &Partition,
    req: &SubscribeRequest,
) -> Result<u64> {
    let log = &partition.log;
    let start = req.start.unwrap_or_default();
    let kind = Kind::try_from(start.kind).map_err(|_| {
        Error::invalid(format!(
            "start.kind {} is not a StartPosition.Kind",
            start.kind
        ))
    })?;
    Ok(match kind {
        Kind::Unspecified | Kind::Earliest => log.start_offset(),
        Kind::Latest => log.end_offset(),
        Kind::Offset => {
            let (s, e) = (log.start_offset(), log.end_offset());
            if start.offset < s || start.offset > e {
                return Err(spool_storage::Error::OffsetOutOfRange {
                    requested: start.offset,
                    start: s,
                    end: e,
                }
                .into());
            }
            start.offset
        }
        Kind::Timestamp => {
            let log = Arc::clone(log);
            let ts = start.timestamp_ms;
            let found = tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts)).await?;
            if let Err(spool_storage::Error::Corrupt { .. }) = &found {
                inner.metrics.data_loss_errors.inc();
            }
            found?
        }
        Kind::Committed => inner
            .offsets
            .get_one(&req.group, &topic.name, partition.index)
            .map_or(log.start_offset(), |c| c.max(log.start_offset())),
    })
}

/// Decrements the active-subscription gauge when the last pump of a stream ends.
struct SubscriptionGuard(Arc<Inner>);

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.metrics.active_subscriptions.dec();
    }
}

pub async fn subscribe(
    inner: &Arc<Inner>,
    who: Principal,
    req: SubscribeRequest,
) -> Result<impl Stream<Item = Result<SubscribeResponse, Status>> + use<>> {
    let topic = inner.registry.get(&req.topic)?;
    let kind = req.start.map(|s| s.kind).unwrap_or_default();
    if kind == Kind::Committed as i32 {
        if req.group.is_empty() {
            return Err(Error::invalid("start KIND_COMMITTED needs a group"));
        }
        validate_name("group", &req.group)?;
    }
    let mut indexes: Vec<u32> = if req.partitions.is_empty() {
        (0..topic.partitions.len() as u32).collect()
    } else {
        req.partitions.clone()
    };
    indexes.sort_unstable();
    indexes.dedup();
    let mut starts = Vec::with_capacity(indexes.len());
    for &i in &indexes {
        let p = topic.partition(i)?;
        starts.push((i, start_offset(inner, &topic, p, &req).await?));
    }
    let (max_records, _) = limits(inner, req.max_batch_records, 0);
    let max_bytes = inner.config.stream_max_bytes.max(1) as usize;
    let (tx, rx) = mpsc::channel(inner.config.stream_buffer);
    inner.metrics.active_subscriptions.inc();
    let guard = Arc::new(SubscriptionGuard(Arc::clone(inner)));
    let free = Arc::new(FreeSlot::default());
    let stream = tx.clone();
    let spawn = {
        let inner = Arc::clone(inner);
        move |topic: &Arc<Topic>, index: u32, from: u64| {
            let pump = Pump {
                who: who.clone(),
                inner: Arc::clone(&inner),
                topic: Arc::clone(topic),
                index,
                next: from,
                max_records,
                max_bytes,
                tx: tx.clone(),
                free: Arc::clone(&free),
                _guard: Arc::clone(&guard),
            };
            tokio::spawn(pump.run());
        }
    };
    for (index, from) in starts {
        spawn(&topic, index, from);
    }
    if req.partitions.is_empty() {
        tokio::spawn(follow_new_partitions(
            Arc::clone(inner),
            topic,
            stream,
            spawn,
        ));
    }
    // A message gives its room back once tonic takes it to encode.
    Ok(ReceiverStream::new(rx).map(|(item, room): Queued| {
        match room {
            Room::Free(slot) => slot.release(),
            Room::Budget(permit) => drop(permit),
            Room::None => {}
        }
        item
    }))
}

/// Starts a pump, from its first offset, for each partition `AlterTopic` adds to `topic`
/// while the subscription (of every partition) lives: it ends when the client's stream
/// does (`stream` closes) or the topic is deleted.
async fn follow_new_partitions(
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    stream: mpsc::Sender<Queued>,
    spawn: impl Fn(&Arc<Topic>, u32, u64) + Send + 'static,
) {
    let mut count = topic.partition_count.subscribe();
    let mut have = topic.partitions.len() as u32;
    loop {
        tokio::select! {
            changed = count.changed() => if changed.is_err() { return },
            () = topic.deleted.cancelled() => return,
            () = stream.closed() => return,
        }
        let Ok(now) = inner.registry.get(&topic.name) else {
            return;
        };
        for p in have..now.partitions.len() as u32 {
            spawn(&now, p, now.partitions[p as usize].log.start_offset());
        }
        have = have.max(now.partitions.len() as u32);
    }
}

/// Each stream may always queue one message outside the shared budget, so a stream never
/// starves because others stalled; further messages need room in the budget.
#[derive(Default)]
struct FreeSlot {
    taken: std::sync::atomic::AtomicBool,
    returned: tokio::sync::Notify,
}

impl FreeSlot {
    fn try_take(&self) -> bool {
        !self.taken.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    fn release(&self) {
        self.taken
            .store(false, std::sync::atomic::Ordering::Release);
        self.returned.notify_waiters();
    }
}

/// The largest message a stream may queue in its own free slot (one record may exceed it).
const FREE_SLOT_BYTES: usize = 64 * 1024;

/// What a queued message occupies until tonic takes it.
enum Room {
    Free(Arc<FreeSlot>),
    Budget(tokio::sync::OwnedSemaphorePermit),
    None,
}

/// A queued stream message and the room it holds.
type Queued = (Result<SubscribeResponse, Status>, Room);

struct Pump {
    who: Principal,
    inner: Arc<Inner>,
    topic: Arc<Topic>,
    index: u32,
    next: u64,
    max_records: usize,
    max_bytes: usize,
    tx: mpsc::Sender<Queued>,
    free: Arc<FreeSlot>,
    _guard: Arc<SubscriptionGuard>,
}

impl Pump {
    async fn run(mut self) {
        if let Err(e) = self.pump().await {
            let _ = self.tx.send((Err(Status::from(e)), Room::None)).await;
        }
    }

    async fn pump(&mut self) -> Result<()> {
        let partition = self.topic.partition(self.index)?;
        let mut end = partition.watch_end();
        let budget = Arc::clone(&self.inner.stream_budget);
        let small = self.max_bytes.min(FREE_SLOT_BYTES);
        let mut force_small = false;
        loop {
            // Full-size messages while the shared budget has ample room; messages that fit
            // the stream's own free slot when it does not, so a stream always progresses.
            let roomy = budget.available_permits() as u64 * 1024 >= 4 * self.max_bytes as u64;
            let cap = if roomy && !force_small {
                self.max_bytes
            } else {
                small
            };
            force_small = false;
            let records =
                read_blocking(&self.inner, partition, self.next, self.max_records, cap).await?;
            if records.is_empty() {
                if *end.borrow_and_update() > self.next {
                    continue;
                }
                tokio::select! {
                    changed = end.changed() => if changed.is_err() { return Ok(()) },
                    () = self.tx.closed() => return Ok(()),
                    () = self.topic.deleted.cancelled() => return Err(Error::TopicNotFound(self.topic.name.clone())),
                    () = self.inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
                }
                continue;
            }
            let next = records.last().map_or(self.next, |r| r.offset + 1);
            let (records, bytes) = convert::records_to_proto(records);
            // Queued messages of all streams share one memory budget (records cost their
            // payload plus their in-memory frame).
            let kib =
                ((bytes + 128 * records.len() as u64) / 1024 + 1).min(u64::from(u32::MAX)) as u32;
            let total = (self.inner.config.stream_memory_bytes / 1024)
                .clamp(1024, u64::from(u32::MAX)) as u32;
            let room = kib.min(total).max(1);
            let fits_free_slot = bytes <= small as u64 || records.len() == 1;
            let permit = if !fits_free_slot {
                // A large message goes only into room the budget has right now; if others
                // took it meanwhile, the records are read again as a small message.
                match Arc::clone(&budget).try_acquire_many_owned(room) {
                    Ok(p) => Room::Budget(p),
                    Err(_) => {
                        force_small = true;
                        continue;
                    }
                }
            } else {
                loop {
                    let returned = self.free.returned.notified();
                    if self.free.try_take() {
                        break Room::Free(Arc::clone(&self.free));
                    }
                    tokio::select! {
                        p = Arc::clone(&budget).acquire_many_owned(room) => match p {
                            Ok(p) => break Room::Budget(p),
                            Err(_) => return Err(Error::ShuttingDown),
                        },
                        () = returned => {}
                        () = self.tx.closed() => return Ok(()),
                        () = self.topic.deleted.cancelled() => return Err(Error::TopicNotFound(self.topic.name.clone())),
                        () = self.inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
                    }
                }
            };
            self.next = next;
            super::throttle(&self.inner, &self.who, Direction::Consume, bytes).await?;
            self.inner.metrics.observe_read(&self.topic.name, bytes);
            let msg = SubscribeResponse {
                partition: self.index,
                records,
                end_offset: partition.log.end_offset(),
            };
            tokio::select! {
                sent = self.tx.send((Ok(msg), permit)) => if sent.is_err() { return Ok(()) },
                () = self.topic.deleted.cancelled() => return Err(Error::TopicNotFound(self.topic.name.clone())),
                () = self.inner.shutdown.cancelled() => return Err(Error::ShuttingDown),
            }
        }
    }
}
