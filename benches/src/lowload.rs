//! `spool-bench lowload`: the latency of one durable append when nothing else is going on,
//! beside what the disk itself takes. At `--rate` requests per second for `--duration`
//! seconds (open loop: a request sent late, because the one before overran its slot,
//! counts its latency from its slot; one sent on time, from when the pacer woke),
//! alternately: the disk alone (a 4 KiB `pwrite` then `fdatasync`, appending to a file in
//! the broker's data directory, so the same file system) and Spool (a unary `Append` of
//! one 1 KiB record, one in flight, to a topic with `--fsync`: `always` by default, `never`
//! isolates the rest of the path), and a unary `ListTopics` (the request path alone: no
//! disk). Each is run `ROUNDS` times, interleaved, so all see the same machine.
//!
//! The client side runs on a single-threaded runtime of its own, like the disk probe's one
//! thread: on the bench's multi-threaded runtime, the pacing task and the connection's
//! tasks sit on different threads and every request pays two extra cross-thread wake-ups
//! (~0.1 ms here), which are the harness's, not the broker's.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use spool_client::Client;
use spool_client::v1::{AppendRequest, Record, TopicConfig};

use crate::Fsync;
use crate::report::{self, new_histogram};
use crate::spool::Spoold;

/// Interleaved rounds of each side.
pub const ROUNDS: usize = 2;
const DISK_WRITE: usize = 4096;
const RECORD: usize = 1024;

/// One round of one side.
pub struct Round {
    pub what: &'static str,
    pub latency: Histogram<u64>,
}

pub async fn run(rate: f64, duration: Duration, fsync: Fsync) -> anyhow::Result<Vec<Round>> {
    anyhow::ensure!(
        rate > 0.0 && rate.is_finite(),
        "--rate must be a positive number"
    );
    let spoold = tokio::task::block_in_place(|| Spoold::start(fsync))?;
    let probe = spoold.data_dir().join("disk-probe");
    let endpoint = spoold.endpoint().to_string();
    let append = match fsync {
        Fsync::Always => "spool: unary Append, 1 KiB, fsync always",
        Fsync::Interval => "spool: unary Append, 1 KiB, fsync interval",
        Fsync::Never => "spool: unary Append, 1 KiB, fsync never",
    };
    let rounds = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Round>> {
        let client_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = client_runtime.block_on(async {
            let client = Client::connect(endpoint).await?;
            client
                .create_topic(TOPIC, 1, TopicConfig::default())
                .await?;
            anyhow::Ok(client)
        })?;
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            rounds.push(Round {
                what: "disk: 4 KiB pwrite + fdatasync",
                latency: disk_round(&probe, rate, duration)?,
            });
            rounds.push(Round {
                what: append,
                latency: client_runtime.block_on(paced(rate, duration, || append_one(&client)))?,
            });
            rounds.push(Round {
                what: "spool: unary ListTopics (no disk)",
                latency: client_runtime.block_on(paced(rate, duration, || async {
                    client.list_topics().await.map(drop)
                }))?,
            });
        }
        Ok(rounds)
    })
    .await??;
    tokio::task::block_in_place(|| drop(spoold));
    Ok(rounds)
}

const TOPIC: &str = "lowload";

/// The number of requests in a round and the time request `k` is due.
fn schedule(rate: f64, duration: Duration) -> (u64, impl Fn(u64) -> Duration) {
    let total = (rate * duration.as_secs_f64()).max(1.0) as u64;
    (total, move |k| Duration::from_secs_f64(k as f64 / rate))
}

fn disk_round(
    path: &std::path::Path,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let block = vec![0xA5u8; DISK_WRITE];
    let mut h = new_histogram();
    let (total, due) = schedule(rate, duration);
    let began = Instant::now();
    for k in 0..total {
        let mut at = began + due(k);
        if at > Instant::now() {
            std::thread::sleep(at - Instant::now());
            // On time: count from the wake-up, so the sleep's overshoot is not latency.
            at = Instant::now();
        }
        file.write_all_at(&block, k * DISK_WRITE as u64)?;
        file.sync_data()?;
        report::record(&mut h, at.elapsed().as_nanos() as u64, 1);
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(h)
}

/// Runs `call` at `rate` for `duration`, one at a time, and returns its latencies.
async fn paced<F, Fut>(rate: f64, duration: Duration, call: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = spool_client::Result<()>>,
{
    let mut h = new_histogram();
    let (total, due) = schedule(rate, duration);
    let began = tokio::time::Instant::now();
    for k in 0..total {
        let mut at = began + due(k);
        if at > tokio::time::Instant::now() {
            tokio::time::sleep_until(at).await;
            // On time: count from the wake-up (tokio's timer wheel rounds sleeps up to the
            // next millisecond, which is the bench's delay, not the broker's).
            at = tokio::time::Instant::now();
        }
        call().await?;
        report::record(&mut h, at.elapsed().as_nanos() as u64, 1);
    }
    Ok(h)
}

async fn append_one(client: &Client) -> spool_client::Result<()> {
    client
        .append(AppendRequest {
            topic: TOPIC.to_string(),
            partition: Some(0),
            records: vec![Record {
                value: Bytes::from_static(&[0x5A; RECORD]),
                ..Record::default()
            }],
            ..AppendRequest::default()
        })
        .await
        .map(drop)
}

impl Round {
    pub fn text(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let h = &self.latency;
        format!(
            "{}: {} requests, p50 {} p99 {} p999 {} max {}",
            self.what,
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let h = &self.latency;
        serde_json::json!({
            "what": self.what,
            "requests": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
        })
    }
}
