//! `spool-bench queue`: `--consumers` workers drain a pre-filled queue of `--count`
//! records of `--message-size` bytes, each record acked on its own (acks pipelined, many
//! in flight per worker, as a worker library would). Acked records per second, from the
//! first fetch to the last ack:
//!
//! - Spool: a topic of `--partitions` partitions and a queue over it, every worker on a
//!   `Work` stream of its own connection (up to 1,000 leases outstanding), one `SettleRequest` per ack; queue
//!   state durable (each lease and ack fsync'd before it is answered, group-committed).
//! - NATS JetStream: a work-queue file stream, one durable pull consumer with explicit acks
//!   shared by the workers, `ack()` per message (nats-server 2.9 syncs its store on a
//!   timer, never before an ack).
//! - Redis Streams: one stream, one consumer group, `XREADGROUP COUNT 1000` per worker and
//!   one `XACK` per record (the batch's XACKs in one pipeline); `--fsync` sets
//!   `appendfsync` (always / everysec).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use spool_client::v1::{
    QueueConfig, SettleAction, SettleRequest, SettleResult, Settlement, TopicConfig, WorkRequest,
    WorkStart, work_request, work_response,
};
use spool_client::{Client, Producer, ProducerOptions, ProducerRecord};
use tokio_util::sync::CancellationToken;

use crate::Fsync;
use crate::spool::Spoold;

const OUTSTANDING: u32 = 1_000;

/// One run's outcome.
pub struct QueueRun {
    pub target: String,
    pub consumers: usize,
    pub acked: u64,
    pub elapsed: Duration,
}

impl QueueRun {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }

    pub fn text(&self) -> String {
        format!(
            "{}: {} workers acked {} records in {:.2} s: {:.0} acked records/s",
            self.target,
            self.consumers,
            self.acked,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "queue",
            "target": self.target,
            "consumers": self.consumers,
            "acked": self.acked,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "acked_per_sec": self.rate(),
        })
    }
}

/// What a run drains.
pub struct Shape {
    pub consumers: usize,
    pub partitions: u32,
    pub count: u64,
    pub size: usize,
    pub fsync: Fsync,
}

/// Counts acks until `count`, then cancels every worker.
struct Progress {
    acked: AtomicU64,
    count: u64,
    done: CancellationToken,
}

impl Progress {
    fn new(count: u64) -> Arc<Progress> {
        Arc::new(Progress {
            acked: AtomicU64::new(0),
            count,
            done: CancellationToken::new(),
        })
    }

    fn add(&self, n: u64) {
        if self.acked.fetch_add(n, Ordering::AcqRel) + n >= self.count {
            self.done.cancel();
        }
    }
}

fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'q'; size])
}

pub async fn spool(server: Option<&str>, shape: &Shape) -> anyhow::Result<QueueRun> {
    let spoold = match server {
        Some(_) => None,
        None => Some(tokio::task::block_in_place(|| Spoold::start(shape.fsync))?),
    };
    let endpoint = server.map_or_else(
        || spoold.as_ref().expect("started").endpoint().to_string(),
        str::to_string,
    );
    let client = Client::connect(endpoint.as_str()).await?;
    let topic = format!("queue-bench-{}", std::process::id());
    client
        .create_topic(&topic, shape.partitions, TopicConfig::default())
        .await?;
    let producer = Producer::new(&client, &topic, ProducerOptions::default()).await?;
    let value = payload(shape.size);
    let mut pending = Vec::new();
    for _ in 0..shape.count {
        pending.push(producer.enqueue(ProducerRecord::new(value.clone())).await?);
    }
    for p in pending {
        p.await?;
    }
    producer.close().await?;
    let config = QueueConfig {
        lease_ms: 60_000,
        ..QueueConfig::default()
    };
    client.create_queue(&topic, "bench", config, None).await?;
    let progress = Progress::new(shape.count);
    let began = Instant::now();
    let mut workers = Vec::new();
    for w in 0..shape.consumers {
        // A connection per worker, as separate worker processes have (and as the Redis
        // workers below).
        let client = Client::connect(endpoint.as_str()).await?;
        let (topic, progress) = (topic.clone(), Arc::clone(&progress));
        workers.push(tokio::spawn(async move {
            spool_worker(client, topic, w, progress).await
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = began.elapsed();
    drop(client);
    if let Some(s) = spoold {
        tokio::task::block_in_place(|| drop(s));
    }
    Ok(QueueRun {
        target: format!("spool (fsync {})", shape.fsync.spool_name()),
        consumers: shape.consumers,
        acked: progress.acked.load(Ordering::Acquire),
        elapsed,
    })
}

async fn spool_worker(
    client: Client,
    topic: String,
    w: usize,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let (tx, mut responses) = open_work(&client, &topic, w).await?;
    loop {
        let msg = tokio::select! {
            m = responses.message() => m?,
            () = progress.done.cancelled() => return Ok(()),
        };
        let Some(msg) = msg else {
            anyhow::bail!("the Work stream ended")
        };
        // Every delivery already received is acked in one request (one settlement each),
        // as `spool_client::QueueConsumer` sends the settlements that wait together.
        let mut acks = Vec::new();
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg.kind {
                Some(work_response::Kind::Delivery(d)) => {
                    acks.push((d.partition, d.record.map_or(0, |r| r.offset), d.lease_id));
                }
                Some(work_response::Kind::Settled(s)) => progress.add(acked(&s)),
                None => {}
            }
            if acks.len() < MAX_ACKS_PER_REQUEST {
                next = match responses.message().now_or_never() {
                    Some(m) => Some(m?.ok_or_else(|| anyhow::anyhow!("the Work stream ended"))?),
                    None => None,
                };
            }
        }
        if !acks.is_empty() {
            tx.send(ack_request(&acks)).await?;
        }
    }
}

/// The most acks one settle request of the bench's workers carries.
const MAX_ACKS_PER_REQUEST: usize = 1_000;

/// Opens a `Work` stream on queue `bench` of `topic` as worker `w` (up to `OUTSTANDING`
/// leases): the sender for its settlements and its answers.
pub async fn open_work(
    client: &Client,
    topic: &str,
    w: usize,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<WorkRequest>,
    tonic::Streaming<spool_client::v1::WorkResponse>,
)> {
    let (tx, rx) = tokio::sync::mpsc::channel(OUTSTANDING as usize + 16);
    tx.send(WorkRequest {
        kind: Some(work_request::Kind::Start(WorkStart {
            topic: topic.into(),
            queue: "bench".into(),
            consumer: format!("w{w}"),
            max_outstanding: OUTSTANDING,
            lease_ms: 0,
        })),
    })
    .await?;
    let responses = client
        .raw()
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, responses))
}

/// A settle request acking each delivery `(partition, offset, lease id)`, one settlement
/// each, on the stream's own queue.
pub fn ack_request(deliveries: &[(u32, u64, u64)]) -> WorkRequest {
    let settlements = deliveries
        .iter()
        .map(|&(partition, offset, lease_id)| Settlement {
            partition,
            offset,
            lease_id,
            action: SettleAction::Ack as i32,
            delay_ms: None,
            reason: String::new(),
        })
        .collect();
    WorkRequest {
        kind: Some(work_request::Kind::Settle(SettleRequest {
            topic: String::new(),
            queue: String::new(),
            settlements,
        })),
    }
}

/// How many settlements of an answer counted.
pub fn acked(s: &spool_client::v1::SettleResponse) -> u64 {
    s.outcomes
        .iter()
        .filter(|o| o.result == SettleResult::Ok as i32)
        .count() as u64
}

pub async fn nats(server: &str, shape: &Shape) -> anyhow::Result<QueueRun> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(server)
        .await
        .with_context(|| format!("connecting to nats at {server} (benches/peers/nats.sh start)"))?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(4_096)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let name = format!("QBENCH_{}", std::process::id());
    let subject = format!("qbench.{}", std::process::id());
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .context("creating the work-queue stream")?;
    let value = payload(shape.size);
    let mut acks = Vec::new();
    for _ in 0..shape.count {
        acks.push(js.publish(subject.clone(), value.clone()).await?);
        if acks.len() >= 4_096 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    s.create_consumer(consumer::pull::Config {
        durable_name: Some("bench".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: (OUTSTANDING as i64) * shape.consumers as i64,
        ack_wait: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .context("creating the pull consumer")?;
    let progress = Progress::new(shape.count);
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..shape.consumers {
        let (js, name, progress) = (js.clone(), name.clone(), Arc::clone(&progress));
        workers.push(tokio::spawn(async move {
            let stream = js.get_stream(&name).await?;
            let c: consumer::PullConsumer = stream
                .get_consumer("bench")
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let mut messages = c
                .stream()
                .max_messages_per_batch(OUTSTANDING as usize)
                .messages()
                .await?;
            loop {
                let m = tokio::select! {
                    m = messages.next() => m,
                    () = progress.done.cancelled() => return anyhow::Ok(()),
                };
                let m = m
                    .context("the pull stream ended")?
                    .map_err(|e| anyhow::anyhow!(e))?;
                m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                progress.add(1);
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = began.elapsed();
    let _ = js.delete_stream(&name).await;
    Ok(QueueRun {
        target: "nats jetstream".into(),
        consumers: shape.consumers,
        acked: progress.acked.load(Ordering::Acquire),
        elapsed,
    })
}

pub async fn redis(server: &str, shape: &Shape) -> anyhow::Result<QueueRun> {
    use redis::AsyncConnectionConfig;
    let client = redis::Client::open(server).with_context(|| format!("redis URL {server}"))?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| {
            format!("connecting to redis at {server} (benches/peers/redis.sh start)")
        })?;
    let appendfsync = match shape.fsync {
        Fsync::Always => "always",
        Fsync::Interval => "everysec",
        Fsync::Never => "no",
    };
    let _: redis::Value = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg(appendfsync)
        .query_async(&mut conn)
        .await?;
    let key = format!("qbench:{}", std::process::id());
    let value = payload(shape.size);
    let mut left = shape.count;
    while left > 0 {
        let n = left.min(1_000);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("v")
                .arg(value.as_ref())
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        left -= n;
    }
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("bench")
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let progress = Progress::new(shape.count);
    let began = Instant::now();
    let mut workers = Vec::new();
    for w in 0..shape.consumers {
        let (mut conn, key, progress) = (
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
            key.clone(),
            Arc::clone(&progress),
        );
        workers.push(tokio::spawn(async move {
            let me = format!("w{w}");
            while !progress.done.is_cancelled() {
                let reply: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("bench")
                    .arg(&me)
                    .arg("COUNT")
                    .arg(OUTSTANDING)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await?;
                let ids = entry_ids(reply);
                if ids.is_empty() {
                    if progress.acked.load(Ordering::Acquire) >= progress.count {
                        break;
                    }
                    continue;
                }
                // One XACK naming every entry of the batch (each acked on its own), as
                // the Spool workers send one settle request for the deliveries at hand.
                let acked: u64 = redis::cmd("XACK")
                    .arg(&key)
                    .arg("bench")
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await?;
                progress.add(acked);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = began.elapsed();
    let _: redis::Value = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok(QueueRun {
        target: format!("redis (appendfsync {appendfsync})"),
        consumers: shape.consumers,
        acked: progress.acked.load(Ordering::Acquire),
        elapsed,
    })
}

/// The entry ids of an `XREADGROUP` reply: `[[key, [[id, fields], ...]], ...]`, or nil.
fn entry_ids(reply: redis::Value) -> Vec<Vec<u8>> {
    use redis::Value;
    let mut ids = Vec::new();
    if let Value::Array(keys) = reply {
        for k in keys {
            if let Value::Array(mut pair) = k
                && pair.len() == 2
                && let Value::Array(entries) = pair.remove(1)
            {
                for e in entries {
                    if let Value::Array(mut fields) = e
                        && !fields.is_empty()
                    {
                        match fields.remove(0) {
                            Value::BulkString(id) => ids.push(id),
                            Value::SimpleString(id) => ids.push(id.into_bytes()),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    ids
}
