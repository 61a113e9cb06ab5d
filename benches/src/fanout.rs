//! `spool-bench fanout`: many readers on one broker at once, as a fan-out service or a
//! big worker pool would run it. Phase one opens `--subscribers` Subscribe streams on one
//! partition (each a [`Reader`] from the end, spread over [`CONNECTIONS`] connections);
//! phase two starts `--members` members of one group on a topic with as many partitions
//! (each member ends up with one). In each phase, once every stream is live, a producer
//! appends one record at a time at `--rate` records per second for `--duration` seconds,
//! each carrying its send time, and every delivery's latency (received minus sent) is
//! recorded; the broker's `VmRSS` and `RssAnon` are read while every stream is open.
//! Bench, broker and readers share the machine: on 2 cores the readers' own scheduling is
//! part of the latency.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use spool_client::v1::{AppendRequest, Record, TopicConfig};
use spool_client::{Client, GroupConsumer, GroupOptions, Reader, ReaderOptions, Start};
use tokio::task::JoinSet;

use crate::Fsync;
use crate::report::{self, new_histogram};
use crate::spool::Spoold;

/// Connections the readers share (HTTP/2 streams multiplex over each).
pub const CONNECTIONS: usize = 16;
/// The longest any phase may take to get every stream live or to drain.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const WARMUP: &[u8] = b"warmup";
const STOP: &[u8] = b"stop";

/// What one phase measured.
pub struct Phase {
    pub name: &'static str,
    pub streams: usize,
    /// From the first stream opened to every stream live.
    pub setup: Duration,
    pub sent: u64,
    pub deliveries: u64,
    pub latency: Histogram<u64>,
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
}

pub async fn run(
    subscribers: usize,
    members: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Vec<Phase>> {
    ensure!(
        subscribers > 0 && members > 0,
        "--subscribers and --members must be at least 1"
    );
    let spoold = tokio::task::block_in_place(|| Spoold::start(Fsync::Never))?;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(spoold.endpoint()).await?);
    }
    let bench = Bench {
        spoold,
        clients,
        rate,
        duration,
        base: Instant::now(),
    };
    let subscribe = subscribe_phase(&bench, subscribers).await?;
    let group = group_phase(&bench, members).await?;
    tokio::task::block_in_place(|| drop(bench));
    Ok(vec![subscribe, group])
}

/// What every phase runs against.
struct Bench {
    spoold: Spoold,
    clients: Vec<Client>,
    rate: f64,
    duration: Duration,
    /// Send times are microseconds since this.
    base: Instant,
}

/// Once `n` readers are reading `partitions` of `topic`: warms them up, reads the broker's
/// memory, produces and collects every reader's latencies.
async fn measure(
    b: &Bench,
    name: &'static str,
    topic: &str,
    partitions: &[u32],
    readers: JoinSet<anyhow::Result<Tally>>,
    warm: &AtomicU64,
    began: Instant,
) -> anyhow::Result<Phase> {
    let n = readers.len();
    let setup = warm_up(&b.clients[0], topic, partitions, warm, n as u64, began).await?;
    let (rss_kib, rss_anon_kib) = b.spoold.memory_kib()?;
    let sent = produce(&b.clients[0], topic, partitions, b.rate, b.duration, b.base).await?;
    finish(readers, name, n, setup, sent, rss_kib, rss_anon_kib).await
}

async fn subscribe_phase(b: &Bench, n: usize) -> anyhow::Result<Phase> {
    let clients = &b.clients;
    let topic = "fanout-subscribe";
    clients[0]
        .create_topic(topic, 1, TopicConfig::default())
        .await?;
    let warm = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut readers = JoinSet::new();
    for i in 0..n {
        let reader = Reader::new(
            &clients[i % clients.len()],
            topic,
            ReaderOptions {
                start: Start::Latest,
                ..ReaderOptions::default()
            },
        )
        .await
        .with_context(|| format!("opening subscriber {i}"))?;
        readers.spawn(tally(
            Box::pin(reader.map(|m| m.map(|m| m.value))),
            Arc::clone(&warm),
            b.base,
        ));
    }
    let phase = measure(b, "subscribe", topic, &[0], readers, &warm, began).await?;
    ensure!(
        phase.deliveries == phase.sent * n as u64,
        "{} deliveries of {} records to {n} subscribers",
        phase.deliveries,
        phase.sent
    );
    Ok(phase)
}

async fn group_phase(b: &Bench, n: usize) -> anyhow::Result<Phase> {
    let clients = &b.clients;
    let topic = "fanout-group";
    let partitions = u32::try_from(n).context("--members fits a partition count")?;
    clients[0]
        .create_topic(topic, partitions, TopicConfig::default())
        .await?;
    let all: Vec<u32> = (0..partitions).collect();
    let warm = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut states = Vec::with_capacity(n);
    let mut readers = JoinSet::new();
    for i in 0..n {
        let member = GroupConsumer::new(
            &clients[i % clients.len()],
            "fanout",
            topic,
            GroupOptions {
                auto_commit: true,
                ..GroupOptions::default()
            },
        )
        .await
        .with_context(|| format!("starting member {i}"))?;
        states.push(member.assignments());
        readers.spawn(tally(
            Box::pin(member.map(|m| m.map(|m| m.value))),
            Arc::clone(&warm),
            b.base,
        ));
    }
    // Live means every member holds exactly one partition, all of them covered: the group
    // has settled after its joins.
    let settled = tokio::time::timeout(PHASE_TIMEOUT, async {
        loop {
            let mut held: Vec<u32> = states
                .iter()
                .flat_map(|s| s.borrow().partitions.clone())
                .collect();
            held.sort_unstable();
            if held == all && states.iter().all(|s| s.borrow().partitions.len() == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if settled.is_err() {
        bail!("{n} members did not settle on one partition each within {PHASE_TIMEOUT:?}");
    }
    let phase = measure(b, "group members", topic, &all, readers, &warm, began).await?;
    // At least once: a rebalance during the run could deliver a record twice.
    ensure!(
        phase.deliveries >= phase.sent,
        "{} deliveries of {} records",
        phase.deliveries,
        phase.sent
    );
    Ok(phase)
}

/// A reader's stream of record values.
type Values = Pin<Box<dyn futures::Stream<Item = spool_client::Result<Bytes>> + Send>>;
/// A reader's latencies, and its stream: kept open until every reader is done, so no
/// member leaves (and moves partitions) while others still read.
type Tally = (Histogram<u64>, Values);

/// Reads until the stop record: counts the first warm-up record, records every other
/// delivery's latency from the send time it carries (microseconds since `base`).
async fn tally(mut stream: Values, warm: Arc<AtomicU64>, base: Instant) -> anyhow::Result<Tally> {
    let mut h = new_histogram();
    let mut warmed = false;
    while let Some(value) = stream.next().await {
        let value = value?;
        match &value[..] {
            STOP => return Ok((h, stream)),
            WARMUP => {
                if !warmed {
                    warmed = true;
                    warm.fetch_add(1, Ordering::Relaxed);
                }
            }
            v => {
                let sent_us = u64::from_le_bytes(v[..8].try_into().context("an 8-byte time")?);
                let now_us = base.elapsed().as_micros() as u64;
                report::record(&mut h, now_us.saturating_sub(sent_us) * 1000, 1);
            }
        }
    }
    bail!("a stream ended before the stop record")
}

/// Appends warm-up records to `partitions` until `n` readers saw one; the time since `began`.
async fn warm_up(
    client: &Client,
    topic: &str,
    partitions: &[u32],
    warm: &AtomicU64,
    n: u64,
    began: Instant,
) -> anyhow::Result<Duration> {
    while warm.load(Ordering::Relaxed) < n {
        ensure!(
            began.elapsed() < PHASE_TIMEOUT,
            "only {} of {n} streams went live",
            warm.load(Ordering::Relaxed)
        );
        for &p in partitions {
            append(client, topic, p, Bytes::from_static(WARMUP)).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(began.elapsed())
}

/// One record at a time at `rate` per second (open loop: each is due at its slot, so a
/// slow append delays the next send and shows up as latency), round robin over
/// `partitions`; then a stop record to each. Returns how many were sent.
async fn produce(
    client: &Client,
    topic: &str,
    partitions: &[u32],
    rate: f64,
    duration: Duration,
    base: Instant,
) -> anyhow::Result<u64> {
    let began = tokio::time::Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    for k in 0..total {
        tokio::time::sleep_until(began + Duration::from_secs_f64(k as f64 / rate)).await;
        let sent_us = base.elapsed().as_micros() as u64;
        let p = partitions[k as usize % partitions.len()];
        append(
            client,
            topic,
            p,
            Bytes::copy_from_slice(&sent_us.to_le_bytes()),
        )
        .await?;
    }
    for &p in partitions {
        append(client, topic, p, Bytes::from_static(STOP)).await?;
    }
    Ok(total)
}

async fn append(client: &Client, topic: &str, partition: u32, value: Bytes) -> anyhow::Result<()> {
    client
        .append(AppendRequest {
            topic: topic.to_string(),
            partition: Some(partition),
            records: vec![Record {
                value,
                ..Record::default()
            }],
            ..AppendRequest::default()
        })
        .await?;
    Ok(())
}

async fn finish(
    mut readers: JoinSet<anyhow::Result<Tally>>,
    name: &'static str,
    streams: usize,
    setup: Duration,
    sent: u64,
    rss_kib: u64,
    rss_anon_kib: u64,
) -> anyhow::Result<Phase> {
    let mut latency = new_histogram();
    let mut done = Vec::with_capacity(streams);
    let drained = tokio::time::timeout(PHASE_TIMEOUT, async {
        while let Some(r) = readers.join_next().await {
            let (h, stream) = r??;
            latency.add(&h)?;
            done.push(stream);
        }
        anyhow::Ok(())
    })
    .await;
    drained.context("readers did not all reach the stop record")??;
    drop(done);
    Ok(Phase {
        name,
        streams,
        setup,
        sent,
        deliveries: latency.len(),
        latency,
        rss_kib,
        rss_anon_kib,
    })
}

impl Phase {
    pub fn text(&self) -> String {
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let h = &self.latency;
        format!(
            "{}: {} streams live in {:.2} s; {} records sent, {} deliveries; latency p50 {} p99 {} p999 {} max {}; broker RSS {} MiB (anonymous {} MiB)",
            self.name,
            self.streams,
            self.setup.as_secs_f64(),
            self.sent,
            self.deliveries,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            self.rss_kib / 1024,
            self.rss_anon_kib / 1024,
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let h = &self.latency;
        serde_json::json!({
            "phase": self.name,
            "streams": self.streams,
            "setup_s": self.setup.as_secs_f64(),
            "sent": self.sent,
            "deliveries": self.deliveries,
            "latency_us": {
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
            "rss_kib": self.rss_kib,
            "rss_anon_kib": self.rss_anon_kib,
        })
    }
}
