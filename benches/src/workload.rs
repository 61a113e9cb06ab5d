//! The measured loops, shared by every target: producers with optional open-loop pacing,
//! acknowledgement collectors, consumers, and the clock that e2e payloads carry.
//!
//! A target only says how to hand a batch of values to its client ([`Sender`]) and how
//! to take delivered values out of it ([`Source`]); everything that is timed lives here,
//! so the three targets are measured by the same code.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};

use crate::payload::{self, Payload};
use crate::report::{self, Progress, Summary};

/// Resolves once the values of one [`Sender::send`] are acknowledged.
pub type AckFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One producer's connection to a target.
pub trait Sender: Send + 'static {
    /// Hands `values` for `partition` to the client, waiting only while the client's
    /// window is full, and returns a future of their acknowledgement. The values must be on
    /// their way when this returns (not waiting for the future to be polled).
    fn send(
        &mut self,
        partition: u32,
        values: Vec<Bytes>,
    ) -> impl Future<Output = anyhow::Result<AckFuture>> + Send;
}

/// One consumer's subscription to some partitions, from their beginning.
pub trait Source: Send + 'static {
    /// Waits for at least one delivered value and appends what is ready to `out`.
    fn next(&mut self, out: &mut Vec<Bytes>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A system under test, set up for one run (its topic/streams/keys exist).
pub trait Target: Send + Sync + 'static {
    type Sender: Sender;
    type Source: Source;
    fn name(&self) -> &'static str;
    fn sender(&self, producer: usize) -> impl Future<Output = anyhow::Result<Self::Sender>> + Send;
    /// A consumer of `partitions`, reading from the first message.
    fn source(
        &self,
        partitions: Vec<u32>,
    ) -> impl Future<Output = anyhow::Result<Self::Source>> + Send;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
}

/// The workload, independent of the target.
#[derive(Clone, Debug)]
pub struct Workload {
    pub mode: Mode,
    pub producers: usize,
    pub consumers: usize,
    pub partitions: u32,
    pub message_size: usize,
    pub batch_size: usize,
    /// Messages to send (produce, e2e) or to pre-fill and read (consume).
    pub count: u64,
    /// Send for this long instead of `count` messages (produce, e2e); read for at most this
    /// long (consume).
    pub duration: Option<Duration>,
    /// Open loop: total messages per second, each latency taken from its intended send time.
    pub rate: Option<f64>,
    /// What the messages hold.
    pub payload: Payload,
}

/// Nanoseconds since the process's first call: the clock e2e payloads carry.
pub fn now_ns() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_nanos() as u64
}

/// Intended send times of one batch: `first + i * step_ns`.
#[derive(Clone, Copy, Debug)]
struct Times {
    first: u64,
    step_ns: u64,
    n: u64,
}

/// Longest a consumer may see nothing before the run is declared stuck.
const STALL: Duration = Duration::from_secs(60);

/// Runs the workload against `target` and returns what it measured.
pub async fn run<T: Target>(target: Arc<T>, w: &Workload) -> anyhow::Result<Summary> {
    now_ns();
    match w.mode {
        Mode::Produce => produce(target, w).await,
        Mode::Consume => consume(target, w).await,
        Mode::E2e => e2e(target, w).await,
    }
}

async fn produce<T: Target>(target: Arc<T>, w: &Workload) -> anyhow::Result<Summary> {
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("{} produce", target.name()), Arc::clone(&acked));
    let started = Instant::now();
    let out = run_producers(&target, w, false, Arc::clone(&acked)).await?;
    progress.finish().await;
    let elapsed = out.last_ack.unwrap_or(started).duration_since(started);
    Ok(Summary {
        target: target.name(),
        mode: "produce",
        messages: out.acked,
        message_size: w.message_size,
        elapsed,
        latency: out.latency,
    })
}

async fn consume<T: Target>(target: Arc<T>, w: &Workload) -> anyhow::Result<Summary> {
    // Pre-fill, untimed, closed loop, through the same producers.
    let fill = Workload {
        rate: None,
        duration: None,
        ..w.clone()
    };
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("{} prefill", target.name()), Arc::clone(&acked));
    let filled = run_producers(&target, &fill, false, acked).await?;
    progress.finish().await;
    let expected = watch::channel(Some(filled.acked)).1;

    let received = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("{} consume", target.name()), Arc::clone(&received));
    let started = Instant::now();
    let deadline = w.duration.map(|d| started + d);
    let out = run_consumers(&target, w, false, expected, deadline, Arc::clone(&received)).await?;
    progress.finish().await;
    Ok(Summary {
        target: target.name(),
        mode: "consume",
        messages: out.received,
        message_size: w.message_size,
        elapsed: out.last.unwrap_or(started).duration_since(started),
        latency: out.latency,
    })
}

async fn e2e<T: Target>(target: Arc<T>, w: &Workload) -> anyhow::Result<Summary> {
    if w.message_size < 8 {
        bail!(
            "e2e needs --message-size of at least 8 bytes (the send time travels in the payload)"
        );
    }
    let received = Arc::new(AtomicU64::new(0));
    // Consumers are subscribed before the first send.
    let (expected_tx, expected_rx) = watch::channel(if w.duration.is_none() {
        Some(w.count)
    } else {
        None
    });
    let consumers = {
        let target = Arc::clone(&target);
        let w = w.clone();
        let received = Arc::clone(&received);
        let mut sources = Vec::new();
        for parts in split_partitions(w.partitions, w.consumers) {
            sources.push(target.source(parts).await?);
        }
        tokio::spawn(async move {
            drive_consumers(sources, &w, true, expected_rx, None, received).await
        })
    };
    let progress = Progress::start(format!("{} e2e", target.name()), Arc::clone(&received));
    let started = Instant::now();
    let sent = run_producers(&target, w, true, Arc::new(AtomicU64::new(0))).await?;
    let _ = expected_tx.send(Some(sent.acked));
    let out = consumers.await.context("consumer task")??;
    progress.finish().await;
    Ok(Summary {
        target: target.name(),
        mode: "e2e",
        messages: out.received,
        message_size: w.message_size,
        elapsed: out.last.unwrap_or(started).duration_since(started),
        latency: out.latency,
    })
}

/// Partitions of consumer `c`: every `consumers`-th one starting at `c`.
fn split_partitions(partitions: u32, consumers: usize) -> Vec<Vec<u32>> {
    let c = consumers.clamp(1, partitions.max(1) as usize);
    (0..c)
        .map(|i| (0..partitions).filter(|p| *p as usize % c == i).collect())
        .collect()
}

struct Produced {
    acked: u64,
    last_ack: Option<Instant>,
    latency: Histogram<u64>,
}

async fn run_producers<T: Target>(
    target: &Arc<T>,
    w: &Workload,
    stamp: bool,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Produced> {
    let mut senders = Vec::new();
    for i in 0..w.producers {
        senders.push(target.sender(i).await?);
    }
    let pool: Arc<[Bytes]> = payload::pool(w.payload, w.message_size).into();
    let start_ns = now_ns();
    let deadline = w.duration.map(|d| start_ns + d.as_nanos() as u64);
    let mut tasks = Vec::new();
    for (i, sender) in senders.into_iter().enumerate() {
        let quota =
            w.count / w.producers as u64 + u64::from((i as u64) < w.count % w.producers as u64);
        let quota = if deadline.is_some() { u64::MAX } else { quota };
        let plan = Plan {
            producer: i,
            partitions: w.partitions,
            batch_size: w.batch_size,
            quota,
            deadline,
            start_ns,
            step_ns: w
                .rate
                .map(|r| (1e9 * w.producers as f64 / r).max(1.0) as u64),
            stamp,
            pool: Arc::clone(&pool),
        };
        tasks.push(tokio::spawn(produce_one(sender, plan, Arc::clone(&acked))));
    }
    let mut out = Produced {
        acked: 0,
        last_ack: None,
        latency: report::new_histogram(),
    };
    for t in tasks {
        let (n, last, h) = t.await.context("producer task")??;
        out.acked += n;
        out.last_ack = out.last_ack.max(last);
        out.latency.add(&h).context("merging histograms")?;
    }
    Ok(out)
}

struct Plan {
    producer: usize,
    partitions: u32,
    batch_size: usize,
    quota: u64,
    deadline: Option<u64>,
    start_ns: u64,
    /// Open loop: nanoseconds between this producer's intended sends.
    step_ns: Option<u64>,
    /// Write the intended send time into the first 8 bytes of each value.
    stamp: bool,
    /// Message `i` of this producer is `pool[i % pool.len()]`.
    pool: Arc<[Bytes]>,
}

fn value(plan: &Plan, i: u64, at_ns: u64) -> Bytes {
    let base = &plan.pool[(i % plan.pool.len() as u64) as usize];
    if !plan.stamp {
        return base.clone();
    }
    let mut b = BytesMut::with_capacity(base.len());
    b.put_u64_le(at_ns);
    b.extend_from_slice(&base[8..]);
    b.freeze()
}

async fn produce_one<S: Sender>(
    mut sender: S,
    plan: Plan,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Option<Instant>, Histogram<u64>)> {
    let (tx, rx) = mpsc::channel(4096);
    let collector = tokio::spawn(collect(rx, acked));
    let mut sent: u64 = 0;
    let mut batch_no: u64 = 0;
    let result: anyhow::Result<()> = async {
        while sent < plan.quota {
            let now = now_ns();
            if plan.deadline.is_some_and(|d| now >= d) {
                break;
            }
            let room = (plan.quota - sent).min(plan.batch_size as u64);
            let times = match plan.step_ns {
                None => Times {
                    first: now,
                    step_ns: 0,
                    n: room,
                },
                Some(step) => {
                    let next_at = plan.start_ns + sent * step;
                    if next_at > now {
                        tokio::time::sleep(Duration::from_nanos(next_at - now)).await;
                        continue;
                    }
                    // Everything already due, up to one batch.
                    let due = (now - next_at) / step + 1;
                    Times {
                        first: next_at,
                        step_ns: step,
                        n: due.min(room),
                    }
                }
            };
            let values = (0..times.n)
                .map(|i| value(&plan, sent + i, times.first + i * times.step_ns))
                .collect();
            let partition = ((plan.producer as u64 + batch_no) % u64::from(plan.partitions)) as u32;
            let ack = sender.send(partition, values).await?;
            sent += times.n;
            batch_no += 1;
            if tx.send((ack, times)).await.is_err() {
                break; // the collector failed; its error is reported below
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let collected = collector.await.context("ack collector")?;
    result?;
    let (n, last, h) = collected?;
    drop(sender);
    Ok((n, last, h))
}

/// Awaits acknowledgements in whatever order they come and records each message's latency
/// from its intended send time.
async fn collect(
    mut rx: mpsc::Receiver<(AckFuture, Times)>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<(u64, Option<Instant>, Histogram<u64>)> {
    let mut h = report::new_histogram();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    let mut n = 0;
    let mut last = None;
    loop {
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some((ack, times)) => pending.push(async move { (ack.await, times) }),
                None => open = false,
            },
            Some((r, t)) = pending.next(), if !pending.is_empty() => {
                r.context("an append was not acknowledged")?;
                let now = now_ns();
                if t.step_ns == 0 {
                    report::record(&mut h, now.saturating_sub(t.first), t.n);
                } else {
                    for i in 0..t.n {
                        report::record(&mut h, now.saturating_sub(t.first + i * t.step_ns), 1);
                    }
                }
                n += t.n;
                acked.fetch_add(t.n, Ordering::Relaxed);
                last = Some(Instant::now());
            }
            else => break,
        }
    }
    Ok((n, last, h))
}

struct Consumed {
    received: u64,
    last: Option<Instant>,
    latency: Histogram<u64>,
}

async fn run_consumers<T: Target>(
    target: &Arc<T>,
    w: &Workload,
    stamped: bool,
    expected: watch::Receiver<Option<u64>>,
    deadline: Option<Instant>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let mut sources = Vec::new();
    for parts in split_partitions(w.partitions, w.consumers) {
        sources.push(target.source(parts).await?);
    }
    drive_consumers(sources, w, stamped, expected, deadline, received).await
}

/// Reads until `expected` (once known) messages arrived across all consumers.
///
/// Latency recorded: with `stamped` values, now minus the send time in the payload, per
/// message; otherwise the wait of each `Source::next` call (one sample per delivery batch),
/// which shows stalls in a consume run.
async fn drive_consumers<S: Source>(
    sources: Vec<S>,
    _w: &Workload,
    stamped: bool,
    expected: watch::Receiver<Option<u64>>,
    deadline: Option<Instant>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Consumed> {
    let (done_tx, done_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for mut source in sources {
        let received = Arc::clone(&received);
        let mut expected = expected.clone();
        let done_tx = done_tx.clone();
        let mut done_rx = done_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = report::new_histogram();
            let mut n = 0;
            let mut last = None;
            let mut buf = Vec::with_capacity(4096);
            loop {
                if *done_rx.borrow() {
                    break;
                }
                let asked = Instant::now();
                buf.clear();
                tokio::select! {
                    r = tokio::time::timeout(STALL, source.next(&mut buf)) => {
                        r.map_err(|_| anyhow::anyhow!("no message for {STALL:?}: the run is stuck"))??;
                    }
                    _ = done_rx.changed() => break,
                    _ = sleep_until_opt(deadline) => {
                        let _ = done_tx.send(true);
                        break;
                    }
                }
                let now = now_ns();
                if stamped {
                    for v in &buf {
                        let sent = v
                            .get(..8)
                            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                            .context("a delivered value is shorter than its timestamp")?;
                        report::record(&mut h, now.saturating_sub(sent), 1);
                    }
                } else {
                    report::record(&mut h, asked.elapsed().as_nanos() as u64, 1);
                }
                n += buf.len() as u64;
                last = Some(Instant::now());
                let total = received.fetch_add(buf.len() as u64, Ordering::Relaxed) + buf.len() as u64;
                // The expected total is known at once (count) or when the producers stop.
                let want = *expected.borrow_and_update();
                if want.is_some_and(|want| total >= want) {
                    let _ = done_tx.send(true);
                    break;
                }
            }
            // Wake peers that wait on the expected total only.
            drop(expected);
            anyhow::Ok((n, last, h))
        }));
    }
    // Producers may finish after every message arrived: re-check once the total is known.
    let watcher = {
        let mut expected = expected.clone();
        let received = Arc::clone(&received);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            loop {
                let want = *expected.borrow_and_update();
                if want.is_some_and(|want| received.load(Ordering::Relaxed) >= want) {
                    let _ = done_tx.send(true);
                    return;
                }
                if expected.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let mut out = Consumed {
        received: 0,
        last: None,
        latency: report::new_histogram(),
    };
    let mut first_err = None;
    for t in tasks {
        match t.await.context("consumer task")? {
            Ok((n, last, h)) => {
                out.received += n;
                out.last = out.last.max(last);
                out.latency.add(&h).context("merging histograms")?;
            }
            Err(e) => {
                let _ = done_tx.send(true);
                first_err.get_or_insert(e);
            }
        }
    }
    watcher.abort();
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_partitions_gives_every_partition_to_one_consumer() {
        assert_eq!(split_partitions(4, 2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(split_partitions(2, 5), vec![vec![0], vec![1]]);
        assert_eq!(split_partitions(1, 1), vec![vec![0]]);
    }
}
