//! `spool-bench delayed`: delayed delivery at scale. `--count` records (default 10 million)
//! of `--message-size` bytes are produced, each due at a pseudo-random time spread over
//! `--spread` seconds (default 600) that start 60 s after production begins, while
//! `--consumers` workers hold `Work` streams (1,000 leases outstanding each) on a queue over them and ack each delivery.
//!
//! Reported: the broker's memory (`VmRSS`, `RssAnon`) before producing and its peak
//! while records wait; how late deliveries were (the lease's grant time by the broker's
//! clock, `lease_expires_ms − lease_ms`, minus the record's `deliver_at_ms`: p50, p99,
//! max) and how many came early (must be 0); and, with `--restart`, how long a kill -9 and
//! restart took with every record deferred.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use spool_client::v1::{QueueConfig, TopicConfig, work_response};
use spool_client::{Client, Producer, ProducerOptions, ProducerRecord};
use std::sync::Mutex as StdMutex;
use tokio::sync::watch;

use crate::Fsync;
use crate::spool::Spoold;

const LEASE_MS: u32 = 30_000;
const LEAD_MS: i64 = 60_000;

pub struct Shape {
    pub count: u64,
    pub spread: Duration,
    pub size: usize,
    pub consumers: usize,
    pub restart: bool,
}

pub struct DelayedRun {
    pub count: u64,
    pub spread_s: f64,
    pub produce_s: f64,
    pub rss_before_kib: u64,
    pub anon_before_kib: u64,
    pub rss_peak_kib: u64,
    pub anon_peak_kib: u64,
    /// Peak `RssAnon` after the restart: what serving the delayed records costs, without
    /// what producing them left in the heap.
    pub anon_after_restart_kib: Option<u64>,
    pub restart_s: Option<f64>,
    pub early: u64,
    pub late_ms: Histogram<u64>,
}

impl DelayedRun {
    pub fn text(&self) -> String {
        let q = |p: f64| self.late_ms.value_at_quantile(p);
        let restart = match (self.restart_s, self.anon_after_restart_kib) {
            (Some(s), Some(a)) => format!(
                "; kill -9 + restart {s:.2} s, then RssAnon peak {} MiB",
                a / 1024
            ),
            _ => String::new(),
        };
        format!(
            "delayed: {} records over {:.0} s (produced in {:.1} s); broker RssAnon {} MiB before, peak {} MiB (VmRSS {} → {} MiB){restart}; lateness p50 {} ms, p99 {} ms, max {} ms; {} early",
            self.count,
            self.spread_s,
            self.produce_s,
            self.anon_before_kib / 1024,
            self.anon_peak_kib / 1024,
            self.rss_before_kib / 1024,
            self.rss_peak_kib / 1024,
            q(0.5),
            q(0.99),
            self.late_ms.max(),
            self.early
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "delayed",
            "count": self.count,
            "spread_s": self.spread_s,
            "produce_s": self.produce_s,
            "rss_before_kib": self.rss_before_kib,
            "anon_before_kib": self.anon_before_kib,
            "rss_peak_kib": self.rss_peak_kib,
            "anon_peak_kib": self.anon_peak_kib,
            "restart_s": self.restart_s,
            "anon_after_restart_kib": self.anon_after_restart_kib,
            "early": self.early,
            "late_p50_ms": self.late_ms.value_at_quantile(0.5),
            "late_p99_ms": self.late_ms.value_at_quantile(0.99),
            "late_max_ms": self.late_ms.max(),
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fixed pseudo-random permutation of due times (splitmix64).
fn spread(i: u64, spread_ms: u64) -> i64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % spread_ms.max(1)) as i64
}

/// What the workers share: the broker's address (it changes on a restart), the lateness
/// histogram and the count of acks.
struct Shared {
    endpoint: watch::Receiver<String>,
    late: StdMutex<(Histogram<u64>, u64)>,
    acked: std::sync::atomic::AtomicU64,
    done: tokio_util::sync::CancellationToken,
    count: u64,
}

pub async fn run(shape: &Shape) -> anyhow::Result<DelayedRun> {
    let mut spoold = tokio::task::block_in_place(|| Spoold::start(Fsync::Always))?;
    let (endpoint_tx, endpoint) = watch::channel(spoold.endpoint().to_string());
    let client = Client::connect(spoold.endpoint()).await?;
    let topic = "delayed-bench";
    client
        .create_topic(topic, 1, TopicConfig::default())
        .await?;
    let config = QueueConfig {
        lease_ms: LEASE_MS,
        ..QueueConfig::default()
    };
    client.create_queue(topic, "bench", config, None).await?;
    let (rss_before_kib, anon_before_kib) = spoold.memory_kib()?;
    let shared = Arc::new(Shared {
        endpoint,
        late: StdMutex::new((
            Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds"),
            0,
        )),
        acked: Default::default(),
        done: Default::default(),
        count: shape.count,
    });
    let workers: Vec<_> = (0..shape.consumers)
        .map(|w| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { worker(topic, w, shared).await })
        })
        .collect();
    // (VmRSS, RssAnon) peaks overall, and RssAnon's since the restart.
    let peak = Arc::new(StdMutex::new((rss_before_kib, anon_before_kib, 0u64)));
    let pid = Arc::new(std::sync::atomic::AtomicU32::new(spoold.pid()));
    let sampler = {
        let (peak, pid, done) = (Arc::clone(&peak), Arc::clone(&pid), shared.done.clone());
        tokio::spawn(async move {
            while !done.is_cancelled() {
                let pid = pid.load(std::sync::atomic::Ordering::Relaxed);
                if let Ok((rss, anon)) = crate::spool::memory_of(pid) {
                    let mut p = peak.lock().expect("not poisoned");
                    *p = (p.0.max(rss), p.1.max(anon), p.2.max(anon));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let began = Instant::now();
    let base = now_ms() + LEAD_MS;
    let spread_ms = shape.spread.as_millis() as u64;
    let producer = Producer::new(&client, topic, ProducerOptions::default()).await?;
    let value = Bytes::from(vec![b'd'; shape.size]);
    let mut pending = Vec::new();
    for i in 0..shape.count {
        let mut r = ProducerRecord::new(value.clone());
        r.deliver_at_ms = base + spread(i, spread_ms);
        pending.push(producer.enqueue(r).await?);
        if pending.len() >= 100_000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    producer.close().await?;
    let produce_s = began.elapsed().as_secs_f64();
    eprintln!("produced {} records in {produce_s:.1} s", shape.count);
    let mut restart_s = None;
    if shape.restart {
        // Once the queue has deferred every record, crash the broker and time its restart.
        loop {
            let q = client.describe_queue(topic, "bench").await?;
            if q.delayed >= shape.count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::ensure!(now_ms() < base, "deferring took past the first due time");
        let t = Instant::now();
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            spoold.kill()?;
            spoold.start_again()
        })?;
        restart_s = Some(t.elapsed().as_secs_f64());
        peak.lock().expect("not poisoned").2 = 0;
        pid.store(spoold.pid(), std::sync::atomic::Ordering::Relaxed);
        endpoint_tx.send_replace(spoold.endpoint().to_string());
        let c = Client::connect(spoold.endpoint()).await?;
        let q = c.describe_queue(topic, "bench").await?;
        eprintln!(
            "restarted in {:.2} s; delayed {} right after",
            restart_s.unwrap_or(0.0),
            q.delayed
        );
    }
    for w in workers {
        w.await??;
    }
    sampler.await?;
    let (late_ms, early) = std::mem::replace(
        &mut *shared.late.lock().expect("not poisoned"),
        (Histogram::new(1)?, 0),
    );
    let (rss_peak_kib, anon_peak_kib, after) = *peak.lock().expect("not poisoned");
    tokio::task::block_in_place(|| drop(spoold));
    Ok(DelayedRun {
        count: shape.count,
        spread_s: shape.spread.as_secs_f64(),
        produce_s,
        rss_before_kib,
        anon_before_kib,
        rss_peak_kib,
        anon_peak_kib,
        anon_after_restart_kib: restart_s.map(|_| after),
        restart_s,
        early,
        late_ms,
    })
}

/// Holds a Work stream until every record is acked, reconnecting after a restart.
async fn worker(topic: &str, w: usize, shared: Arc<Shared>) -> anyhow::Result<()> {
    while !shared.done.is_cancelled() {
        let endpoint = shared.endpoint.borrow().clone();
        if let Err(e) = stream(topic, w, &shared, &endpoint).await {
            if shared.done.is_cancelled() {
                break;
            }
            eprintln!("worker {w}: {e:#}; reconnecting");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn stream(topic: &str, w: usize, shared: &Shared, endpoint: &str) -> anyhow::Result<()> {
    let client = Client::connect(endpoint).await?;
    let (tx, mut responses) = crate::queue::open_work(&client, topic, w).await?;
    loop {
        let msg = tokio::select! {
            m = responses.message() => m?,
            () = shared.done.cancelled() => return Ok(()),
        };
        let msg = msg.context("the Work stream ended")?;
        match msg.kind {
            Some(work_response::Kind::Delivery(d)) => {
                let record = d.record.context("a delivery without its record")?;
                let leased_at = d.lease_expires_ms - i64::from(LEASE_MS);
                {
                    let mut late = shared.late.lock().expect("not poisoned");
                    let by = leased_at - record.deliver_at_ms;
                    if by < 0 {
                        late.1 += 1;
                    } else {
                        late.0.saturating_record(by.max(1) as u64);
                    }
                }
                tx.send(crate::queue::ack_request(&[(
                    d.partition,
                    record.offset,
                    d.lease_id,
                )]))
                .await?;
            }
            Some(work_response::Kind::Settled(s)) => {
                let n = crate::queue::acked(&s);
                let total = shared
                    .acked
                    .fetch_add(n, std::sync::atomic::Ordering::AcqRel)
                    + n;
                if total >= shared.count {
                    shared.done.cancel();
                }
            }
            None => {}
        }
    }
}
